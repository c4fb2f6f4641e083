/**
 * The search catalog: a derived index of the study, series and instance attributes found in each AET's bucket,
 * behind one interface ({@linkcode Catalog}) that the crawler fills and QIDO-RS reads.
 *
 * The buckets stay the only source of truth: every row can be rebuilt from a listing and header reads, so
 * deleting the catalog (the SQLite file) is always safe. Per object the catalog keeps the listing's key, size
 * and ETag (an unchanged object is never read again), its state (listed, indexed, failed, ignored) and, once
 * indexed, the instance's DICOM JSON with BulkDataURIs relative to the instance (`bulkdata/7FE00010`;
 * {@linkcode resolveBulkDataUris} makes them absolute per request). Per series and study it keeps the
 * attributes of one representative header plus counts taken from the listing.
 *
 * Implementations: `SqliteCatalog` (lib/catalog/sqlite_catalog.ts, `node:sqlite`, one file or `:memory:`).
 *
 * A shared PostgreSQL catalog (several replicas serving the same buckets) would implement the same interface:
 * - the same tables (`aets`, `objects`, `documents`, `series`, `studies`) with `jsonb` documents, the indexed
 *   columns below and a `text_pattern_ops` index on the folded name columns;
 * - filters on indexed columns become SQL as in the SQLite version; the others become `jsonb_path_exists` or are
 *   evaluated with {@linkcode matchDataset} on rows narrowed by SQL (the same code decides both);
 * - {@linkcode Catalog.beginCrawl} leases become a row lock or `pg_try_advisory_lock(hashtext(aet))`, so one
 *   replica crawls an AET while the others serve (every replica may run the interval timer);
 * - `seenAt` times come from the database clock (`now()`) rather than each replica's.
 * Every method is already async and takes and returns plain data, so nothing else changes.
 *
 * @module
 */

import { type DicomJson, stringifyDicomJson, toDicomJson } from "../dicom/dicom_json.ts";
import { tagToHex } from "../dicom/dictionary.ts";
import { type Filter, type Level, levelOf, normalizeDate, normalizeTime, pnText, TAGS } from "./matching.ts";
import type { Part10Header } from "../dicom/part10.ts";
import type { ObjectInfo } from "../store/store.ts";
import type { InstanceUids } from "../dicom/uid.ts";

/** What a search asks of the catalog (see {@linkcode Catalog.search}). */
export interface CatalogQuery {
  aet: string;
  level: Level;
  /** Restricts to one study (from the path). */
  study?: string;
  /** Restricts to one series (from the path). */
  series?: string;
  filters: Filter[];
  limit: number;
  offset: number;
}

/** One search result: the attributes of its level and of its parents, and the counts. */
export interface SearchRow {
  study: string;
  series?: string;
  sop?: string;
  /** Study and patient attributes of the study (from one representative header). */
  studyJson: DicomJson;
  /** Series attributes (series and instance searches). */
  seriesJson?: DicomJson;
  /** The whole instance, BulkDataURIs relative (instance searches). */
  instanceJson?: DicomJson;
  /** Distinct Modality values of the study's series, sorted. */
  modalities: string[];
  /** SOPClassesInStudy: the SOP classes of the study's instances read so far (at least one per series). */
  sopClasses: string[];
  studySeries: number;
  studyInstances: number;
  seriesInstances?: number;
}

/** The lease of one crawl of one AET (see {@linkcode Catalog.beginCrawl}). */
export interface CrawlTicket {
  aet: string;
  bucket: string;
  owner: string;
  /** Catalog time (ms) the crawl started: rows not seen since are deleted by {@linkcode Catalog.finishListing}. */
  startedAt: number;
}

/** What a listing batch changed. */
export interface ListingCounts {
  added: number;
  changed: number;
  unchanged: number;
  /** Keys outside the `{study}/{series}/{sop}.dcm` layout. */
  ignored: number;
}

/** A series whose study/series rows need a header, and the object to read it from. */
export interface SeriesCandidate {
  study: string;
  series: string;
  info: ObjectInfo;
}

/** Which objects {@linkcode Catalog.pendingObjects} looks at. */
export interface Scope {
  study?: string;
  series?: string;
  /** SOP Instance UIDs (e.g. from a SOPInstanceUID filter). */
  sops?: string[];
}

/** A stored instance document (see {@linkcode Catalog.instanceMetadata}). */
export interface StoredInstance {
  key: string;
  series: string;
  sop: string;
  /** ETag of the object version the JSON was made from. */
  etag: string;
  /** DICOM JSON text, keys in ascending order, BulkDataURIs relative to the instance URL. */
  json: string;
}

/** Counts and crawl times of one AET. */
export interface AetStatus {
  aet: string;
  bucket: string;
  objects: number;
  indexed: number;
  pending: number;
  failed: number;
  ignored: number;
  studies: number;
  series: number;
  /** When the last complete listing + series pass started (ms since the epoch); undefined: never. */
  completeAt?: number;
  lastError?: string;
  /** Process holding the crawl lease, when a crawl is running. */
  crawlingBy?: string;
}

/** An object that could not be indexed. */
export interface ObjectProblem {
  aet: string;
  key: string;
  state: "failed" | "ignored";
  error: string;
  etag: string;
}

/** How {@linkcode Catalog.recordInstance} filed an object. */
export type RecordOutcome = "indexed" | "failed" | "ignored";

/** One instance for {@linkcode Catalog.recordInstances}: the object and its parsed header. */
export interface InstanceToRecord {
  info: ObjectInfo;
  header: Part10Header;
}

/** The search catalog. All methods are async and take plain data, so a server database can implement it. */
export interface Catalog {
  /** `"sqlite"`, ... */
  readonly kind: string;
  /** The database (file path or `:memory:`). */
  readonly location: string;

  /**
   * Files one instance under `aet` from its parsed header (the crawler, a metadata read, or STOW so the instance
   * is searchable at once). The key must follow the layout and the file's UIDs must match it; otherwise the
   * object is recorded as ignored / failed with the reason.
   */
  recordInstance(aet: string, bucket: string, info: ObjectInfo, header: Part10Header): Promise<RecordOutcome>;
  /**
   * Files several instances under `aet` at once (STOW-RS records a request's instances this way). Each item
   * gets what `Promise.allSettled` of one {@linkcode Catalog.recordInstance} call per item, in order, would
   * report, but the batch is written together (SQLite: one transaction) and each series and study it touches
   * is refreshed once. Never rejects: when the batch cannot be written at all, every item is rejected with
   * the reason.
   */
  recordInstances(
    aet: string,
    bucket: string,
    items: InstanceToRecord[],
  ): Promise<PromiseSettledResult<RecordOutcome>[]>;
  /** Records that an object version cannot be read (it is not tried again until its ETag changes). */
  recordFailure(aet: string, info: ObjectInfo, reason: string): Promise<void>;
  /** Forgets one object (deleted from the bucket). */
  removeInstance(aet: string, key: string): Promise<void>;

  /**
   * Starts a crawl of `aet`: takes its lease for `leaseMs` (undefined when another owner holds it). A bucket
   * different from the one recorded clears the AET's rows.
   */
  beginCrawl(aet: string, bucket: string, owner: string, leaseMs: number): Promise<CrawlTicket | undefined>;
  /** Extends the lease; false when it was lost. */
  renewCrawl(ticket: CrawlTicket, leaseMs: number): Promise<boolean>;
  /** Compares a batch of the listing with the stored objects (new, changed ETag or size, unchanged). */
  applyListing(ticket: CrawlTicket, infos: ObjectInfo[]): Promise<ListingCounts>;
  /** After the whole listing: deletes objects not listed, refreshes counts; returns how many were deleted. */
  finishListing(ticket: CrawlTicket): Promise<number>;
  /** Series with objects but no study/series attributes yet, each with the object to read. */
  seriesToRead(aet: string, limit: number): Promise<SeriesCandidate[]>;
  /** Objects listed but not yet indexed, in key order. */
  pendingObjects(aet: string, scope: Scope, limit: number): Promise<ObjectInfo[]>;
  /** Releases the lease; `complete` marks study/series search as complete as of the crawl's start. */
  endCrawl(ticket: CrawlTicket, outcome: { complete: boolean; error?: string }): Promise<void>;

  /** Matching rows, ordered and paged (see the QIDO module for the order). */
  search(query: CatalogQuery): Promise<SearchRow[]>;
  /**
   * The stored instance documents of a study or series (indexed objects only, in key order). Compare `etag` with
   * a fresh listing to know which ones are current.
   */
  instanceMetadata(aet: string, study: string, series?: string): Promise<StoredInstance[]>;
  /** When the last complete crawl of `aet` started (ms since the epoch), or undefined: never. Cheap. */
  completedAt(aet: string): Promise<number | undefined>;
  /** Counts per AET (all AETs known to the catalog, or one). */
  status(aet?: string): Promise<AetStatus[]>;
  /** Failed and ignored objects with their reasons. */
  failures(aet?: string, limit?: number): Promise<ObjectProblem[]>;
  close(): Promise<void>;
}

/** Top-level (Float/Double Float) Pixel Data: always a BulkDataURI. */
const PIXEL_DATA_PATHS = new Set(["7FE00008", "7FE00009", "7FE00010"]);

/**
 * The DICOM JSON of a header as the catalog stores it: binary values up to `bulkThreshold` bytes inline, larger
 * ones, Pixel Data and values not loaded as BulkDataURIs relative to the instance URL (`bulkdata/{path}`), the
 * same split the metadata route makes.
 */
export function headerJson(header: Part10Header, bulkThreshold: number): DicomJson {
  return toDicomJson(header, {
    bulkDataUri: (path, el) =>
      el.bytes && el.bytes.byteLength <= bulkThreshold && !PIXEL_DATA_PATHS.has(path)
        ? undefined
        : `bulkdata/${path}`,
  });
}

/**
 * The text of an instance's DICOM JSON as the catalog stores it: exactly what {@linkcode stringifyDicomJson}
 * writes (data set keys ascending), faster, as the catalog writes one per stored instance. Only data sets
 * need their keys sorted (JavaScript puts all-digit keys such as "30060020" first), so every attribute that
 * holds none goes through one `JSON.stringify`.
 *
 * @example
 * ```ts
 * import { documentText } from "./catalog.ts";
 * documentText({ "30060020": { vr: "SQ" }, "00100020": { vr: "LO", Value: ["ID1"] } });
 * // '{"00100020":{"vr":"LO","Value":["ID1"]},"30060020":{"vr":"SQ"}}'
 * ```
 */
export function documentText(json: DicomJson): string {
  // JSON.stringify keeps the keys' own order: when that is ascending everywhere, it writes the same text
  if (inAscendingOrder(json)) return JSON.stringify(json);
  let text = "";
  for (const key of Object.keys(json).sort()) {
    const attribute = json[key];
    if (attribute === undefined) continue;
    const items = attribute.vr !== "PN" &&
      attribute.Value?.some((value) => typeof value === "object" && value !== null);
    text += `${text === "" ? "" : ","}"${key}":${
      items ? stringifyDicomJson(attribute) : JSON.stringify(attribute)
    }`;
  }
  return `{${text}}`;
}

/**
 * Whether the keys of `json` and of every data set in it come in ascending order (JavaScript's own order:
 * all-digit keys such as "30060020" first, then the others as they were added).
 */
function inAscendingOrder(json: DicomJson): boolean {
  let previous = "";
  for (const key of Object.keys(json)) {
    if (key <= previous) return false;
    previous = key;
    const attribute = json[key];
    if (attribute?.vr === "PN" || !attribute?.Value) continue;
    for (const value of attribute.Value) {
      if (typeof value === "object" && value !== null && !inAscendingOrder(value as DicomJson)) return false;
    }
  }
  return true;
}

const BULK_KEY = '"BulkDataURI":"';

/**
 * Makes the relative BulkDataURIs of stored JSON text absolute. `instanceUrl` is the instance's absolute URL
 * (no trailing slash); it must not contain `"` or `\` (URLs built from UIDs and an encoded AET never do).
 *
 * @example
 * ```ts
 * import { resolveBulkDataUris } from "./catalog.ts";
 * resolveBulkDataUris('{"7FE00010":{"vr":"OW","BulkDataURI":"bulkdata/7FE00010"}}', "http://h/aets/A/studies/1/series/2/instances/3");
 * // '{"7FE00010":{"vr":"OW","BulkDataURI":"http://h/aets/A/studies/1/series/2/instances/3/bulkdata/7FE00010"}}'
 * ```
 */
export function resolveBulkDataUris(json: string, instanceUrl: string): string {
  return json.replaceAll(BULK_KEY, `${BULK_KEY}${instanceUrl}/`);
}

/** The UIDs and indexed instance columns of one instance's DICOM JSON (see {@linkcode instanceColumns}). */
export interface InstanceColumns {
  study?: string;
  series?: string;
  sop?: string;
  sopClass?: string;
  instanceNumber?: number;
}

/** The columns and documents the catalog derives from one instance's DICOM JSON. */
export interface InstanceRecord extends InstanceColumns {
  /** Study and patient attributes (study level, see `levelOf`). */
  studyJson: DicomJson;
  /** Series attributes. */
  seriesJson: DicomJson;
  studyColumns: StudyColumns;
  seriesColumns: SeriesColumns;
}

/** Indexed study columns (folded / normalized for matching and ordering). */
export interface StudyColumns {
  date?: string;
  time?: string;
  timeHigh?: string;
  accession?: string;
  referring?: string;
  patientName?: string;
  patientId?: string;
  studyId?: string;
}

/** Indexed series columns. */
export interface SeriesColumns {
  modality?: string;
  number?: number;
  ppsDate?: string;
  ppsTime?: string;
  ppsTimeHigh?: string;
}

/** The first value of a top-level attribute as text, or undefined. */
export function firstValue(json: DicomJson, tag: number): string | undefined {
  const value = json[tagToHex(tag)]?.Value?.[0];
  if (value === null || value === undefined) return undefined;
  if (typeof value === "object") return undefined;
  const text = String(value);
  return text === "" ? undefined : text;
}

function integer(json: DicomJson, tag: number): number | undefined {
  const text = firstValue(json, tag);
  const n = text === undefined ? NaN : Number(text);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** All PN values of an attribute folded (see `normalizePn`) and joined by `\`. */
function names(json: DicomJson, tag: number): string | undefined {
  const values = json[tagToHex(tag)]?.Value ?? [];
  const text = values.map(pnText).filter((v) => v !== "").join("\\");
  return text === "" ? undefined : text;
}

/**
 * The UIDs and indexed instance columns of an instance's DICOM JSON: the part of {@linkcode instanceRecord}
 * every instance needs (the study and series parts only matter for a series' representative).
 */
export function instanceColumns(json: DicomJson): InstanceColumns {
  return {
    study: firstValue(json, TAGS.StudyInstanceUID),
    series: firstValue(json, TAGS.SeriesInstanceUID),
    sop: firstValue(json, TAGS.SOPInstanceUID),
    sopClass: firstValue(json, TAGS.SOPClassUID),
    instanceNumber: integer(json, TAGS.InstanceNumber),
  };
}

/** Splits an instance's DICOM JSON into study, series and instance parts and the indexed columns. */
export function instanceRecord(json: DicomJson): InstanceRecord {
  const studyJson: DicomJson = {};
  const seriesJson: DicomJson = {};
  for (const [key, attribute] of Object.entries(json)) {
    const level = levelOf(parseInt(key, 16) >>> 0);
    if (level === "study") studyJson[key] = attribute;
    else if (level === "series") seriesJson[key] = attribute;
  }
  return {
    ...instanceColumns(json),
    studyJson,
    seriesJson,
    studyColumns: studyColumns(studyJson),
    seriesColumns: seriesColumns(seriesJson),
  };
}

/** The indexed study columns of study-level JSON. */
export function studyColumns(json: DicomJson): StudyColumns {
  const time = firstValue(json, TAGS.StudyTime);
  return {
    date: normalizeDate(firstValue(json, TAGS.StudyDate) ?? ""),
    time: time === undefined ? undefined : normalizeTime(time),
    timeHigh: time === undefined ? undefined : normalizeTime(time, true),
    accession: firstValue(json, TAGS.AccessionNumber),
    referring: names(json, TAGS.ReferringPhysicianName),
    patientName: names(json, TAGS.PatientName),
    patientId: firstValue(json, TAGS.PatientID),
    studyId: firstValue(json, TAGS.StudyID),
  };
}

/** The indexed series columns of series-level JSON. */
export function seriesColumns(json: DicomJson): SeriesColumns {
  const time = firstValue(json, TAGS.PerformedProcedureStepStartTime);
  return {
    modality: firstValue(json, TAGS.Modality),
    number: integer(json, TAGS.SeriesNumber),
    ppsDate: normalizeDate(firstValue(json, TAGS.PerformedProcedureStepStartDate) ?? ""),
    ppsTime: time === undefined ? undefined : normalizeTime(time),
    ppsTimeHigh: time === undefined ? undefined : normalizeTime(time, true),
  };
}

/** Why a file's UIDs do not fit its key, or undefined when they do. */
export function keyMismatch(
  uids: InstanceUids,
  record: Pick<InstanceRecord, "study" | "series" | "sop">,
): string | undefined {
  const checks: [string, string | undefined, string][] = [
    ["StudyInstanceUID", record.study, uids.study],
    ["SeriesInstanceUID", record.series, uids.series],
    ["SOPInstanceUID", record.sop, uids.instance],
  ];
  for (const [name, found, expected] of checks) {
    if (found === undefined) return `The file has no ${name}: the key says ${expected}`;
    if (found !== expected) return `The file's ${name} ${found} does not match the key (${expected})`;
  }
  return undefined;
}

/** The reason recorded for keys outside the layout. */
export const LAYOUT_REASON =
  "Key is not {StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm with valid UIDs";
