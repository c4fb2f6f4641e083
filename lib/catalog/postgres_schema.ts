/**
 * The PostgreSQL catalog's schema as numbered migrations, applied at start by {@linkcode migrate} under an
 * advisory lock: when N replicas start together, one migrates and the others wait for it and find nothing left
 * to do. The version is kept in `catalog_schema`; a database migrated by a newer release of this server (a
 * version above {@linkcode SCHEMA_VERSION}) is refused with a {@linkcode SchemaTooNewError} rather than used.
 *
 * The tables and object states are SQLite's (sqlite_schema.ts) with PostgreSQL types: text columns `COLLATE "C"`, so ordering,
 * `LIKE` and key ranges compare bytes exactly as SQLite (and the crawler's listing merge) do; times in
 * milliseconds from the database clock (`catalog_now_ms()`), the one clock every replica shares; instance
 * JSON as `text`, because its exact text (keys ascending) is what metadata serves.
 *
 * A new migration is appended to {@linkcode MIGRATIONS}, never edited in place once released.
 *
 * @module
 */

import type { Sql } from "postgres";
import { DomainError } from "../util/errors.ts";

/** The advisory lock class ids (two-key form): migrations, and per-AET writes. */
export const LOCK_CLASS = { migrate: 0x4d49, aet: 0x4145 } as const;

const C = 'COLLATE "C"';

/** Migration N (1-based) is `MIGRATIONS[N - 1]`. */
export const MIGRATIONS: readonly string[] = [
  `
CREATE FUNCTION catalog_now_ms() RETURNS bigint LANGUAGE sql VOLATILE
  AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE aets (
  aet text ${C} PRIMARY KEY, bucket text NOT NULL, complete_at bigint, last_error text, owner text, lease_until bigint
);
CREATE TABLE objects (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, aet text ${C} NOT NULL, key text ${C} NOT NULL,
  size bigint NOT NULL, etag text NOT NULL, study text ${C}, series text ${C}, sop text ${C},
  state smallint NOT NULL, error text, seen_at bigint NOT NULL, sop_class text ${C}, instance_number bigint
);
CREATE UNIQUE INDEX objects_key ON objects (aet, key);
CREATE INDEX objects_series ON objects (aet, study, series, state);
CREATE INDEX objects_sop ON objects (aet, sop);
CREATE INDEX objects_state ON objects (aet, state, key);
CREATE TABLE documents (id bigint PRIMARY KEY, json text NOT NULL);
CREATE TABLE series (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, aet text ${C} NOT NULL, study text ${C} NOT NULL,
  series text ${C} NOT NULL, modality text ${C}, series_number bigint, pps_date text ${C}, pps_time text ${C},
  pps_time_high text ${C}, num_instances integer NOT NULL DEFAULT 0, json text NOT NULL, study_json text NOT NULL,
  source_key text ${C} NOT NULL, source_etag text NOT NULL
);
CREATE UNIQUE INDEX series_key ON series (aet, study, series);
CREATE INDEX series_uid ON series (aet, series);
CREATE INDEX series_modality ON series (aet, modality);
CREATE INDEX series_source ON series (aet, source_key);
CREATE TABLE studies (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, aet text ${C} NOT NULL, study text ${C} NOT NULL,
  study_date text ${C}, study_time text ${C}, study_time_high text ${C}, accession text ${C}, referring text ${C},
  patient_name text ${C}, patient_id text ${C}, study_id text ${C}, modalities text NOT NULL DEFAULT '',
  sop_classes text NOT NULL DEFAULT '', num_series integer NOT NULL DEFAULT 0,
  num_instances integer NOT NULL DEFAULT 0, json text NOT NULL
);
CREATE UNIQUE INDEX studies_key ON studies (aet, study);
CREATE INDEX studies_order ON studies (aet, study_date DESC NULLS LAST, study_time DESC NULLS LAST, study);
CREATE INDEX studies_patient_id ON studies (aet, patient_id);
CREATE INDEX studies_accession ON studies (aet, accession);
CREATE INDEX studies_study_id ON studies (aet, study_id);
CREATE INDEX studies_patient_name ON studies (aet, patient_name);
`,
  // 2: the change feed (instances already indexed when it is added are not announced)
  `
CREATE TABLE changefeed (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, aet text ${C} NOT NULL, key text ${C} NOT NULL,
  study text ${C} NOT NULL, series text ${C} NOT NULL, sop text ${C} NOT NULL, action smallint NOT NULL,
  state smallint NOT NULL, at bigint NOT NULL
);
CREATE INDEX changefeed_aet ON changefeed (aet, seq);
CREATE INDEX changefeed_time ON changefeed (aet, at, seq);
CREATE INDEX changefeed_key ON changefeed (aet, key, state);
`,
];

/** The schema version this code writes and reads. */
export const SCHEMA_VERSION: number = MIGRATIONS.length;

/** The database does not fit this server (its schema or settings): it is not used, and the start fails. */
export class CatalogMismatchError extends DomainError {}

/** The database was migrated by a newer release: this one must not use it. */
export class SchemaTooNewError extends CatalogMismatchError {}

/** What {@linkcode migrate} did. */
export interface Migrated {
  /** The version found (0: an empty database). */
  from: number;
  /** The version now. */
  to: number;
}

/**
 * Brings the database to {@linkcode SCHEMA_VERSION}: takes the migration advisory lock (waiting while another
 * replica migrates), reads the version, applies the missing migrations one transaction each, releases the lock.
 * Throws {@linkcode SchemaTooNewError} when the database is ahead of this code.
 */
export async function migrate(sql: Sql, where: string): Promise<Migrated> {
  const connection = await sql.reserve();
  try {
    await connection`SELECT pg_advisory_lock(${LOCK_CLASS.migrate}, 0)`;
    try {
      await connection`CREATE TABLE IF NOT EXISTS catalog_schema (version integer NOT NULL)`;
      const [row] = await connection<
        { version: number }[]
      >`SELECT max(version) AS version FROM catalog_schema`;
      const from = row?.version ?? 0;
      if (from > SCHEMA_VERSION) {
        throw new SchemaTooNewError(
          `The catalog database ${where} has schema version ${from}, newer than this server's ${SCHEMA_VERSION}: ` +
            `it was migrated by a newer release. Run that release (or a newer one), or point CATALOG_URL at ` +
            `another database; this server will not use it`,
        );
      }
      for (let version = from + 1; version <= SCHEMA_VERSION; version++) {
        await connection.unsafe("BEGIN");
        try {
          await connection.unsafe(MIGRATIONS[version - 1]);
          await connection`DELETE FROM catalog_schema`;
          await connection`INSERT INTO catalog_schema (version) VALUES (${version})`;
          await connection.unsafe("COMMIT");
        } catch (error) {
          await connection.unsafe("ROLLBACK").catch(() => {});
          throw error;
        }
      }
      return { from, to: Math.max(from, SCHEMA_VERSION) };
    } finally {
      await connection`SELECT pg_advisory_unlock(${LOCK_CLASS.migrate}, 0)`.catch(() => {});
    }
  } finally {
    connection.release();
  }
}
