/**
 * The SQLite catalog's schema: its tables and indexes, the version kept in `PRAGMA user_version`, the object
 * states, and fixed planner statistics.
 *
 * @module
 */

import type { ChangeFeedEntry } from "./catalog.ts";

export const SCHEMA_VERSION = 4;

// deno-fmt-ignore
const PLANNER_STATS_TEXT = "studies_key 1000000 100000 1, studies_order 1000000 100000 100 50 1, studies_patient_id 1000000 100000 3, studies_accession 1000000 100000 1, studies_study_id 1000000 100000 20, studies_patient_name 1000000 100000 3, series_key 3000000 300000 3 1, series_uid 3000000 300000 1, series_modality 3000000 300000 30000, objects_key 60000000 6000000 1, objects_series 60000000 6000000 60 20 10, objects_sop 60000000 6000000 1, objects_state 60000000 6000000 2000000 1";

/**
 * Fixed planner statistics (`sqlite_stat1`) shaped like a large catalog: few AETs, unique UIDs and IDs. Without
 * them SQLite walks the date-ordered index for `PatientID=x` instead of looking the ID up; with `ANALYZE` on a
 * small or empty catalog it would guess just as badly. Format: the index, then rows and rows per value of each
 * index prefix; the table is the index name's first word.
 */
export const PLANNER_STATS: [table: string, index: string, stat: string][] = PLANNER_STATS_TEXT.split(", ")
  .map((entry) => {
    const index = entry.slice(0, entry.indexOf(" "));
    return [index.slice(0, index.indexOf("_")), index, entry.slice(index.length + 1)];
  });

/** Object states (the `objects.state` column). */
export const LISTED = 0;
export const INDEXED = 1;
export const FAILED = 2;
export const IGNORED = 3;
/** Change feed actions and states (the `changefeed.action` and `.state` columns). */
export const CREATE = 0;
export const DELETE = 1;
export const CURRENT = 0;
export const REPLACED = 1;
export const DELETED = 2;

/** The states of objects that are (or will be) instances. */
export const VALID = `(${LISTED}, ${INDEXED})`;

export const SCHEMA = `
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE aets (
  aet TEXT PRIMARY KEY, bucket TEXT NOT NULL, complete_at INTEGER, last_error TEXT, owner TEXT, lease_until INTEGER
);
CREATE TABLE objects (
  id INTEGER PRIMARY KEY, aet TEXT NOT NULL, key TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
  study TEXT, series TEXT, sop TEXT, state INTEGER NOT NULL, error TEXT, seen_at INTEGER NOT NULL,
  sop_class TEXT, instance_number INTEGER
);
CREATE UNIQUE INDEX objects_key ON objects (aet, key);
CREATE INDEX objects_series ON objects (aet, study, series, state);
CREATE INDEX objects_sop ON objects (aet, sop);
CREATE INDEX objects_state ON objects (aet, state, key);
CREATE TABLE documents (id INTEGER PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE series (
  id INTEGER PRIMARY KEY, aet TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL,
  modality TEXT, series_number INTEGER, pps_date TEXT, pps_time TEXT, pps_time_high TEXT,
  num_instances INTEGER NOT NULL DEFAULT 0, json TEXT NOT NULL, study_json TEXT NOT NULL,
  source_key TEXT NOT NULL, source_etag TEXT NOT NULL
);
CREATE UNIQUE INDEX series_key ON series (aet, study, series);
CREATE INDEX series_uid ON series (aet, series);
CREATE INDEX series_modality ON series (aet, modality);
CREATE TABLE studies (
  id INTEGER PRIMARY KEY, aet TEXT NOT NULL, study TEXT NOT NULL,
  study_date TEXT, study_time TEXT, study_time_high TEXT, accession TEXT, referring TEXT, patient_name TEXT,
  patient_id TEXT, study_id TEXT, modalities TEXT NOT NULL DEFAULT '', sop_classes TEXT NOT NULL DEFAULT '',
  num_series INTEGER NOT NULL DEFAULT 0,
  num_instances INTEGER NOT NULL DEFAULT 0, json TEXT NOT NULL
);
CREATE UNIQUE INDEX studies_key ON studies (aet, study);
CREATE INDEX studies_order ON studies (aet, study_date DESC, study_time DESC, study);
CREATE INDEX studies_patient_id ON studies (aet, patient_id);
CREATE INDEX studies_accession ON studies (aet, accession);
CREATE INDEX studies_study_id ON studies (aet, study_id);
CREATE INDEX studies_patient_name ON studies (aet, patient_name);
CREATE TABLE changefeed (
  seq INTEGER PRIMARY KEY, aet TEXT NOT NULL, key TEXT NOT NULL, study TEXT NOT NULL,
  series TEXT NOT NULL, sop TEXT NOT NULL, action INTEGER NOT NULL, state INTEGER NOT NULL, at INTEGER NOT NULL
);
CREATE INDEX changefeed_aet ON changefeed (aet, seq);
CREATE INDEX changefeed_time ON changefeed (aet, at, seq);
CREATE INDEX changefeed_key ON changefeed (aet, key, state);
`;

/** A change feed row as both backends read it. */
export interface FeedRow {
  seq: number;
  study: string;
  series: string;
  sop: string;
  action: number;
  state: number;
  at: number;
  json: string | null;
}

/** The SELECT of change feed rows, with the current instances' JSON when `metadata` (both backends). */
export function feedSelect(metadata: boolean): string {
  return metadata
    ? `SELECT c.seq, c.study, c.series, c.sop, c.action, c.state, c.at, d.json FROM changefeed c
       LEFT JOIN objects o ON c.state = ${CURRENT} AND o.aet = c.aet AND o.key = c.key AND o.state = ${INDEXED}
       LEFT JOIN documents d ON d.id = o.id`
    : `SELECT c.seq, c.study, c.series, c.sop, c.action, c.state, c.at, NULL AS json FROM changefeed c`;
}

/** A change feed row as an entry. */
export function feedEntry(aet: string, row: FeedRow): ChangeFeedEntry {
  return {
    sequence: Number(row.seq),
    aet,
    study: row.study,
    series: row.series,
    sop: row.sop,
    action: row.action === CREATE ? "create" : "delete",
    time: Number(row.at),
    state: row.state === CURRENT ? "current" : row.state === REPLACED ? "replaced" : "deleted",
    ...(row.json !== null && row.json !== undefined ? { metadata: row.json } : {}),
  };
}
