/**
 * The search catalog: a derived index of the study, series and instance attributes found in each AET's bucket,
 * behind three role interfaces: {@linkcode CatalogIngest} (filing instances), {@linkcode CrawlState} (the
 * crawler's leases and listing merge) and {@linkcode CatalogSearch} (QIDO-RS and stored metadata), which a
 * backend ({@linkcode Catalog}) implements together.
 *
 * The buckets stay the only source of truth: every row can be rebuilt from a listing and header reads, so
 * deleting the catalog (the SQLite file) is always safe. Per object the catalog keeps the listing's key, size
 * and ETag (an unchanged object is never read again), its state (listed, indexed, failed, ignored) and, once
 * indexed, the instance's DICOM JSON with BulkDataURIs relative to the instance (`bulkdata/7FE00010`;
 * `resolveBulkDataUris` (documents.ts) makes them absolute per request). Per series and study it keeps the
 * attributes of one representative header plus counts taken from the listing.
 *
 * Implementations: `SqliteCatalog` (lib/catalog/sqlite_catalog.ts, `node:sqlite`, one file or `:memory:`, one
 * process) and `PostgresCatalog` (lib/catalog/postgres_catalog.ts, `CATALOG_URL`, shared by every replica):
 * the same tables; leases and `seenAt` times from the database clock; writes serialized per AET by an advisory
 * lock; changes announced to the other replicas ({@linkcode Catalog.onChange}); a database that is down or slow
 * answered with a {@linkcode CatalogUnavailableError} (503) within a bounded time. Every method is async and
 * takes and returns plain data, so nothing above the catalog knows which one it has.
 *
 * @module
 */

import type { DicomJson } from "../dicom/dicom_json.ts";
import type { Filter, Level } from "./qido_query.ts";
import type { ObjectInfo } from "../store/store.ts";
import type { Part10Header } from "../dicom/dataset.ts";
import { BusyError } from "../util/errors.ts";

/**
 * The catalog's database cannot answer now (down, unreachable, or slower than the timeout): search answers
 * 503 with this message, which names the database; retrieval, which needs only the store, goes on.
 */
export class CatalogUnavailableError extends BusyError {}

/** Objects another process filed, changed or forgot (see {@linkcode Catalog.onChange}). */
export interface CatalogChange {
  /** The AET. */
  aet: string;
  /** Its bucket. */
  bucket: string;
  /** The object keys. */
  keys: string[];
}

/**
 * One entry of the change feed (the Azure DICOM service's v2 change feed): an instance the catalog learned was
 * created (filed with a new ETag: STOW-RS, import, C-STORE, a bucket event, or a crawl that found it) or deleted
 * (DELETE, a bucket event, or a crawl that no longer lists it).
 */
export interface ChangeFeedEntry {
  /** Increasing over the catalog (shared by every AET); within an AET in the order the changes were made. */
  sequence: number;
  /** The AET. */
  aet: string;
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID. */
  series: string;
  /** SOP Instance UID. */
  sop: string;
  /** What happened. */
  action: "create" | "delete";
  /** When the catalog recorded it (ms since the epoch, the catalog's clock). */
  time: number;
  /** `current`: the instance as it is; `replaced`: a newer version was filed since; `deleted`: it is gone. */
  state: "current" | "replaced" | "deleted";
  /** The instance's DICOM JSON text (BulkDataURIs relative) when asked for and the entry is current. */
  metadata?: string;
}

/** What {@linkcode CatalogSearch.changeFeed} reads. */
export interface ChangeFeedQuery {
  /** The AET. */
  aet: string;
  /** Entries at or after this time (ms since the epoch). */
  startTime?: number;
  /** Entries before this time (ms since the epoch). */
  endTime?: number;
  /** Entries of the window skipped first. */
  offset: number;
  /** The most entries returned. */
  limit: number;
  /** With the current instances' DICOM JSON. */
  includeMetadata: boolean;
}

/** Connections of a pooled catalog (see {@linkcode Catalog.pool}). */
export interface PoolUse {
  /** Connections the pool may open. */
  size: number;
  /** Calls running or waiting for a connection now. */
  busy: number;
  /** Whether the database is known to be down (calls fail at once until a probe succeeds). */
  down: boolean;
}

/** What a search asks of the catalog (see {@linkcode CatalogSearch.search}). */
export interface CatalogQuery {
  /** The AET searched. */
  aet: string;
  /** The level of the results. */
  level: Level;
  /** Restricts to one study (from the path). */
  study?: string;
  /** Restricts to one series (from the path). */
  series?: string;
  /** The attribute filters (matching as PS3.4 C.2.2.2). */
  filters: Filter[];
  /** The most rows returned. */
  limit: number;
  /** Rows skipped first. */
  offset: number;
}

/** One search result: the attributes of its level and of its parents, and the counts. */
export interface SearchRow {
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID (series and instance results). */
  series?: string;
  /** SOP Instance UID (instance results). */
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
  /** Number of Study Related Series. */
  studySeries: number;
  /** Number of Study Related Instances. */
  studyInstances: number;
  /** Number of Series Related Instances (series and instance results). */
  seriesInstances?: number;
}

/** The lease of one crawl of one AET (see {@linkcode CrawlState.beginCrawl}). */
export interface CrawlTicket {
  /** The AET crawled. */
  aet: string;
  /** Its bucket. */
  bucket: string;
  /** Who holds the lease (one process). */
  owner: string;
  /** Catalog time (ms) the crawl started: rows not seen since are deleted by {@linkcode CrawlState.finishListing}. */
  startedAt: number;
}

/** What a listing batch changed. */
export interface ListingCounts {
  /** Keys new to the catalog. */
  added: number;
  /** Keys whose ETag or size changed. */
  changed: number;
  /** Keys seen before, unchanged. */
  unchanged: number;
  /** Keys outside the `{study}/{series}/{sop}.dcm` layout. */
  ignored: number;
}

/** A series whose study/series rows need a header, and the object to read it from. */
export interface SeriesCandidate {
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID. */
  series: string;
  /** The object to read the series' attributes from. */
  info: ObjectInfo;
}

/** Which objects {@linkcode CrawlState.pendingObjects} looks at. */
export interface Scope {
  /** Only this study. */
  study?: string;
  /** Only this series. */
  series?: string;
  /** SOP Instance UIDs (e.g. from a SOPInstanceUID filter). */
  sops?: string[];
}

/** A stored instance document (see {@linkcode CatalogSearch.instanceMetadata}). */
export interface StoredInstance {
  /** The object key. */
  key: string;
  /** Series Instance UID. */
  series: string;
  /** SOP Instance UID. */
  sop: string;
  /** ETag of the object version the JSON was made from. */
  etag: string;
  /** DICOM JSON text, keys in ascending order, BulkDataURIs relative to the instance URL. */
  json: string;
}

/** Counts and crawl times of one AET. */
export interface AetStatus {
  /** The AET. */
  aet: string;
  /** Its bucket. */
  bucket: string;
  /** Objects listed. */
  objects: number;
  /** Instances indexed. */
  indexed: number;
  /** Objects listed but not read yet. */
  pending: number;
  /** Objects that could not be read. */
  failed: number;
  /** Keys outside the layout. */
  ignored: number;
  /** Studies known. */
  studies: number;
  /** Series known. */
  series: number;
  /** When the last complete listing + series pass started (ms since the epoch); undefined: never. */
  completeAt?: number;
  /** Why the last crawl failed, if it did. */
  lastError?: string;
  /** Process holding the crawl lease, when a crawl is running. */
  crawlingBy?: string;
}

/** An object that could not be indexed. */
export interface ObjectProblem {
  /** The AET. */
  aet: string;
  /** The object key. */
  key: string;
  /** Failed (not readable) or ignored (outside the layout). */
  state: "failed" | "ignored";
  /** Why. */
  error: string;
  /** The ETag of the version that failed (tried again when it changes). */
  etag: string;
}

/** How {@linkcode CatalogIngest.recordInstance} filed an object. */
export type RecordOutcome = "indexed" | "failed" | "ignored";

/** One instance for {@linkcode CatalogIngest.recordInstances}: the object and its parsed header. */
export interface InstanceToRecord {
  /** The object as listed. */
  info: ObjectInfo;
  /** Its parsed header. */
  header: Part10Header;
}

/**
 * Filing instances (the crawler, a metadata read, STOW-RS; later DELETE and bucket events): what a write
 * path needs of the catalog.
 */
export interface CatalogIngest {
  /**
   * Files one instance under `aet` from its parsed header (the crawler, a metadata read, or STOW so the instance
   * is searchable at once). The key must follow the layout and the file's UIDs must match it; otherwise the
   * object is recorded as ignored / failed with the reason.
   */
  recordInstance(aet: string, bucket: string, info: ObjectInfo, header: Part10Header): Promise<RecordOutcome>;
  /**
   * Files several instances under `aet` at once (STOW-RS records a request's instances this way). Each item
   * gets what `Promise.allSettled` of one {@linkcode CatalogIngest.recordInstance} call per item, in order,
   * would report, but the batch is written together (SQLite: one transaction) and each series and study it
   * touches is refreshed once. Never rejects: when the batch cannot be written at all, every item is rejected
   * with the reason.
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
   * Forgets objects deleted from the bucket (DELETE, a bucket event) in one write; returns how many rows
   * there were. Keys the catalog does not know are skipped.
   */
  removeInstances(aet: string, keys: readonly string[]): Promise<number>;
  /**
   * The keys the catalog holds (any state) of one study, series or instance, in key order: what a DELETE
   * must forget besides what the bucket lists.
   */
  objectKeys(aet: string, scope: InstanceScope): Promise<string[]>;
}

/** One study, series or instance (see {@linkcode CatalogIngest.objectKeys}). */
export interface InstanceScope {
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID. */
  series?: string;
  /** SOP Instance UID (with `series`). */
  sop?: string;
}

/**
 * The crawler's state: leases (one crawler per AET at a time, across processes sharing the catalog), the
 * merge of a bucket listing with the stored objects, and what is left to read.
 */
export interface CrawlState {
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
}

/** Reading the catalog: QIDO-RS search, stored metadata, and the state shown by `GET /admin/index`. */
export interface CatalogSearch {
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
  /** The change feed of one AET in a time window, in sequence order, paged by `offset` and `limit`. */
  changeFeed(query: ChangeFeedQuery): Promise<ChangeFeedEntry[]>;
  /** The last entry of the change feed of `aet`, or undefined when it is empty. */
  latestChange(aet: string, includeMetadata: boolean): Promise<ChangeFeedEntry | undefined>;
}

/**
 * A catalog backend: the three roles over one database. Every method is async and takes and returns plain
 * data, so a server database can implement it; tests/catalog/_catalog_contract.ts is the suite every backend
 * passes.
 */
export interface Catalog extends CatalogIngest, CrawlState, CatalogSearch {
  /** `"sqlite"`, ... */
  readonly kind: string;
  /** The database (file path or `:memory:`). */
  readonly location: string;
  /** Closes the database. */
  close(): Promise<void>;
  /**
   * Resolves when the database answers (for `/readyz`); rejects with a {@linkcode CatalogUnavailableError}
   * naming it otherwise. Absent: an embedded database, always there.
   */
  check?(): Promise<void>;
  /**
   * Calls `listener` when another process (a replica sharing the database) has filed, changed or forgotten
   * objects, so caches of this process can drop what they hold of them. Absent: no other process writes.
   */
  onChange?(listener: (change: CatalogChange) => void): void;
  /**
   * Calls `listener` with the change feed entries this process has written, once their transaction has
   * committed (webhooks go out from the replica that made the change, so each goes out once).
   */
  onFeed(listener: (entries: ChangeFeedEntry[]) => void): void;
  /** Pool use now (for `/metrics`); absent without a pool. */
  pool?(): PoolUse;
}
