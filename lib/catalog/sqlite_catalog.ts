/**
 * The embedded {@linkcode Catalog}: SQLite through Deno's built-in `node:sqlite`, in one file (WAL mode, safe to
 * share with `deno task index` running beside the server) or in memory.
 *
 * Tables: `aets` (bucket, crawl lease, last complete crawl), `objects` (one row per listed key: size, ETag,
 * UIDs from the key, state, error, indexed instance columns), `documents` (instance DICOM JSON, apart so scans of
 * `objects` stay small), `series` and `studies` (attributes of one representative header, folded/normalized
 * matching columns, counts from the listing). Filters on indexed columns become SQL; the others run
 * `matchDataset` on the stored JSON through the `qido_match` SQL function, so LIMIT/OFFSET stay in SQL.
 *
 * The schema version is kept in `PRAGMA user_version`: a file from another version is emptied and rebuilt
 * (it is derived data), as is one written with another bulk data threshold.
 *
 * Why one file of ~900 lines: {@linkcode SqliteCatalog} is one class over one connection, and its three roles
 * (writing instances, crawling, reading; marked by section comments) share private prepared statements,
 * transactions and the series/study refresh. The schema (sqlite_schema.ts) and the filter-to-SQL compiler
 * (sql_filter.ts) are apart.
 *
 * @module
 */

import type { DatabaseSync, SQLInputValue, StatementSync } from "node:sqlite";
import type {
  AetStatus,
  Catalog,
  CatalogQuery,
  ChangeFeedEntry,
  ChangeFeedQuery,
  CrawlTicket,
  InstanceScope,
  InstanceToRecord,
  ListingCounts,
  ObjectProblem,
  RecordOutcome,
  Scope,
  SearchRow,
  SeriesCandidate,
  StoredInstance,
} from "./catalog.ts";
import { type DicomJson, stringifyDicomJson } from "../dicom/dicom_json.ts";
import type { Filter } from "./qido_query.ts";
import { compareKeys, type ObjectInfo } from "../store/store.ts";
import { type InstanceUids, parseInstanceKey } from "../dicom/uid.ts";
import {
  documentText,
  headerJson,
  type InstanceColumns,
  instanceColumns,
  type InstanceRecord,
  instanceRecord,
  keyMismatch,
  LAYOUT_REASON,
  studyColumns,
} from "./documents.ts";
import type { Part10Header } from "../dicom/dataset.ts";
import {
  CREATE,
  CURRENT,
  DELETE,
  DELETED,
  FAILED,
  feedEntry,
  type FeedRow,
  feedSelect,
  IGNORED,
  INDEXED,
  LISTED,
  PLANNER_STATS,
  REPLACED,
  SCHEMA,
  SCHEMA_VERSION,
  VALID,
} from "./sqlite_schema.ts";
import { condition } from "./sql_filter.ts";
import { matchDataset, matchPersonName } from "./matching.ts";

/** Options for {@linkcode openSqliteCatalog}. */
export interface SqliteCatalogOptions {
  /** Binary values up to this many bytes are stored inline in instance JSON (default 1024, as the config). */
  bulkDataThreshold?: number;
  /** Where warnings go (default `console.warn`). */
  log?: (line: string) => void;
}

/**
 * Opens (or creates) the catalog at `path`; `:memory:` for a catalog that lives as long as the process. When
 * the file cannot be opened (no write permission, read-only file system, Deno Deploy, a corrupt file) it
 * logs a warning and falls back to `:memory:`. Rejects only when `node:sqlite` itself is missing.
 *
 * @example
 * ```ts
 * import { openSqliteCatalog } from "./sqlite_catalog.ts";
 * const catalog = await openSqliteCatalog(":memory:");
 * await catalog.status(); // []
 * await catalog.close();
 * ```
 */
export async function openSqliteCatalog(
  path: string,
  options: SqliteCatalogOptions = {},
): Promise<SqliteCatalog> {
  const log = options.log ?? ((line: string) => console.warn(line));
  let sqlite: typeof import("node:sqlite");
  try {
    sqlite = await import("node:sqlite");
  } catch (error) {
    throw new Error(
      `Cannot open the search catalog: node:sqlite is not available here (${(error as Error).message})`,
      {
        cause: error,
      },
    );
  }
  if (path !== ":memory:") {
    let db: DatabaseSync | undefined;
    try {
      db = new sqlite.DatabaseSync(path);
      return new SqliteCatalog(db, path, options);
    } catch (error) {
      try {
        db?.close();
      } catch {
        // already unusable
      }
      log(
        `Warning: cannot open the catalog file ${path}: ${(error as Error).message}. ` +
          `Using an in-memory catalog, rebuilt at every start (set CATALOG_PATH to a writable file to keep it)`,
      );
    }
  }
  return new SqliteCatalog(new sqlite.DatabaseSync(":memory:"), ":memory:", options);
}

interface ObjectRow {
  id: number;
  key: string;
  size: number;
  etag: string;
  state: number;
  study: string | null;
  series: string | null;
  seen_at: number;
}

/** One instance ready to be recorded (see `SqliteCatalog.recordInstances`): how, and what with. */
type Prepared =
  | { outcome: "ignored" | "failed"; info: ObjectInfo; reason: string }
  | {
    outcome: "indexed";
    info: ObjectInfo;
    uids: InstanceUids;
    json: DicomJson;
    columns: InstanceColumns;
    /** The stored JSON text. */
    text: string;
  };

/** Series (`study\0series`) and studies whose counts to refresh at the end of a batch. */
interface Touched {
  series: Set<string>;
  studies: Set<string>;
}

interface ListingState {
  cursor?: string;
  dirty: Set<string>;
  deleted: number;
}

/** The SQLite catalog (create it with {@linkcode openSqliteCatalog}). */
export class SqliteCatalog implements Catalog {
  readonly kind = "sqlite";
  readonly location: string;
  readonly #db: DatabaseSync;
  readonly #threshold: number;
  readonly #statements = new Map<string, StatementSync>();
  readonly #listings = new WeakMap<CrawlTicket, ListingState>();
  readonly #specs = new Map<string, Filter>();
  readonly #feedListeners = new Set<(entries: ChangeFeedEntry[]) => void>();
  /** Change feed entries of the transaction running, announced when it commits. */
  #feed: ChangeFeedEntry[] = [];

  /** The catalog over an open database (see {@linkcode openSqliteCatalog}). */
  constructor(db: DatabaseSync, location: string, options: SqliteCatalogOptions = {}) {
    this.#db = db;
    this.location = location;
    this.#threshold = options.bulkDataThreshold ?? 1024;
    if (location !== ":memory:") db.exec("PRAGMA journal_mode = WAL");
    db.exec("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA temp_store = MEMORY");
    this.#migrate();
    db.function("qido_match", { deterministic: true }, (doc, spec) => {
      if (typeof doc !== "string") return 0;
      return matchDataset(JSON.parse(doc) as DicomJson, this.#spec(spec as string)) ? 1 : 0;
    });
    db.function("qido_pn", { deterministic: true }, (names, spec) => {
      const filter = this.#spec(spec as string);
      const values = typeof names === "string" && names !== "" ? names.split("\\") : [""];
      return values.some((name) => matchPersonName(name, filter.matcher, filter.fuzzy)) ? 1 : 0;
    });
  }

  #migrate(): void {
    const version = (this.#db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
    if (version !== SCHEMA_VERSION) {
      const tables = this.#db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as {
        name: string;
      }[];
      this.#transaction(() => {
        for (const { name } of tables) this.#db.exec(`DROP TABLE IF EXISTS "${name.replaceAll('"', '""')}"`);
        this.#db.exec(SCHEMA);
        this.#db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      });
      this.#db.exec("ANALYZE sqlite_schema");
      this.#transaction(() => {
        this.#db.exec("DELETE FROM sqlite_stat1");
        const insert = this.#db.prepare("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)");
        for (const row of PLANNER_STATS) insert.run(...row);
      });
      this.#db.exec("ANALYZE sqlite_schema");
    }
    const threshold = String(this.#threshold);
    const stored = this.#q("SELECT value FROM meta WHERE name = 'bulk_threshold'").get() as
      | { value: string }
      | undefined;
    if (stored?.value !== threshold) {
      this.#transaction(() => {
        if (stored) {
          for (const table of ["documents", "studies", "series", "objects", "aets"]) {
            this.#db.exec(`DELETE FROM ${table}`);
          }
        }
        this.#q("INSERT OR REPLACE INTO meta (name, value) VALUES ('bulk_threshold', ?)").run(threshold);
      });
    }
  }

  #q(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#db.prepare(sql);
      // Search SQL varies with the filters given: keep the cache bounded.
      if (this.#statements.size >= 1000) this.#statements.clear();
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  #transaction<T>(fn: () => T): T {
    this.#db.exec("BEGIN IMMEDIATE");
    this.#feed = [];
    let result: T;
    try {
      result = fn();
      this.#db.exec("COMMIT");
    } catch (error) {
      this.#feed = [];
      // SQLite has rolled back already after some errors (a full disk, an I/O error)
      if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
      throw error;
    }
    const entries = this.#feed;
    this.#feed = [];
    if (entries.length > 0) {
      for (const listener of this.#feedListeners) {
        try {
          listener(entries);
        } catch {
          // a listener's failure is its own (webhooks log theirs)
        }
      }
    }
    return result;
  }

  onFeed(listener: (entries: ChangeFeedEntry[]) => void): void {
    this.#feedListeners.add(listener);
  }

  /** A `create` entry for `key` (filed with a new ETag); earlier current entries of the key become `replaced`. */
  #feedCreate(aet: string, key: string, uids: InstanceUids): void {
    const now = Date.now();
    this.#q(`UPDATE changefeed SET state = ${REPLACED} WHERE aet = ? AND key = ? AND state = ${CURRENT}`)
      .run(aet, key);
    const { seq } = this.#q(
      `INSERT INTO changefeed (aet, key, study, series, sop, action, state, at)
       VALUES (?, ?, ?, ?, ?, ${CREATE}, ${CURRENT}, ?) RETURNING seq`,
    ).get(aet, key, uids.study, uids.series, uids.instance, now) as { seq: number };
    this.#feed.push({
      sequence: seq,
      aet,
      study: uids.study,
      series: uids.series,
      sop: uids.instance,
      action: "create",
      time: now,
      state: "current",
    });
  }

  /** A `delete` entry for `key` when the feed announced it; all its entries become `deleted`. */
  #feedDelete(aet: string, key: string): void {
    const uids = parseInstanceKey(key);
    if (uids === null) return;
    const { changes } = this.#q(
      `UPDATE changefeed SET state = ${DELETED} WHERE aet = ? AND key = ? AND state <> ${DELETED}`,
    ).run(aet, key);
    if (Number(changes) === 0) return;
    const now = Date.now();
    const { seq } = this.#q(
      `INSERT INTO changefeed (aet, key, study, series, sop, action, state, at)
       VALUES (?, ?, ?, ?, ?, ${DELETE}, ${DELETED}, ?) RETURNING seq`,
    ).get(aet, key, uids.study, uids.series, uids.instance, now) as { seq: number };
    this.#feed.push({
      sequence: seq,
      aet,
      study: uids.study,
      series: uids.series,
      sop: uids.instance,
      action: "delete",
      time: now,
      state: "deleted",
    });
  }

  #spec(text: string): Filter {
    let filter = this.#specs.get(text);
    if (!filter) {
      filter = JSON.parse(text) as Filter;
      if (this.#specs.size > 200) this.#specs.clear();
      this.#specs.set(text, filter);
    }
    return filter;
  }

  // ---- writing instances ----

  #insertObject(
    aet: string,
    info: ObjectInfo,
    uids: InstanceUids | null | undefined,
    state: number,
    error: string | null,
    seenAt: number,
  ): void {
    this.#q(
      `INSERT INTO objects (aet, key, size, etag, study, series, sop, state, error, seen_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      aet,
      info.key,
      info.size,
      info.etag,
      uids?.study ?? null,
      uids?.series ?? null,
      uids?.instance ?? null,
      state,
      error,
      seenAt,
    );
  }

  recordInstance(
    aet: string,
    bucket: string,
    info: ObjectInfo,
    header: Part10Header,
  ): Promise<RecordOutcome> {
    return this.recordInstances(aet, bucket, [{ info, header }]).then(([result]) => {
      if (result.status === "rejected") throw result.reason;
      return result.value;
    });
  }

  recordInstances(
    aet: string,
    bucket: string,
    items: InstanceToRecord[],
  ): Promise<PromiseSettledResult<RecordOutcome>[]> {
    return settle(() => {
      // The JSON is made before the transaction (which holds the file's write lock); an item that cannot
      // be converted fails alone.
      const prepared = items.map(({ info, header }): Prepared | { error: unknown } => {
        try {
          return this.#prepare(info, header);
        } catch (error) {
          return { error };
        }
      });
      const results: PromiseSettledResult<RecordOutcome>[] = [];
      try {
        this.#transaction(() => {
          this.#q("INSERT OR IGNORE INTO aets (aet, bucket) VALUES (?, ?)").run(aet, bucket);
          const touched: Touched = { series: new Set(), studies: new Set() };
          for (const item of prepared) {
            if ("error" in item) {
              results.push({ status: "rejected", reason: item.error });
              continue;
            }
            // an item failing in SQL is undone alone, as if it had been recorded by a call of its own
            this.#q("SAVEPOINT item").run();
            const feedLength = this.#feed.length;
            try {
              const value = this.#record(aet, item, touched);
              this.#q("RELEASE item").run();
              results.push({ status: "fulfilled", value });
            } catch (error) {
              this.#feed.length = feedLength;
              this.#q("ROLLBACK TO item").run();
              this.#q("RELEASE item").run();
              results.push({ status: "rejected", reason: error });
            }
          }
          // each series and study once, however many of the batch's instances it got
          for (const pair of touched.series) {
            const [study, series] = pair.split("\0");
            this.#refreshSeries(aet, study, series);
          }
          for (const study of touched.studies) this.#refreshStudy(aet, study);
        });
      } catch (error) {
        return items.map(() => ({ status: "rejected", reason: error }));
      }
      return results;
    });
  }

  /** What recording one instance needs, computed outside the transaction. */
  #prepare(info: ObjectInfo, header: Part10Header): Prepared {
    const uids = parseInstanceKey(info.key);
    if (uids === null) return { outcome: "ignored", info, reason: LAYOUT_REASON };
    const json = headerJson(header, this.#threshold);
    const columns = instanceColumns(json);
    const mismatch = keyMismatch(uids, columns);
    if (mismatch !== undefined) return { outcome: "failed", info, reason: mismatch };
    return { outcome: "indexed", info, uids, json, columns, text: documentText(json) };
  }

  /** Files one prepared instance (inside a transaction); the series and study to refresh go to `touched`. */
  #record(aet: string, item: Prepared, touched: Touched): RecordOutcome {
    const { info } = item;
    if (item.outcome !== "indexed") {
      this.#fail(aet, info, item.outcome === "ignored" ? IGNORED : FAILED, item.reason);
      return item.outcome;
    }
    const { uids, columns } = item;
    const previous = this.#object(aet, info.key);
    let id: number;
    const values = [
      info.size,
      info.etag,
      uids.study,
      uids.series,
      uids.instance,
      INDEXED,
      Date.now(),
      columns.sopClass ?? null,
      columns.instanceNumber ?? null,
    ];
    if (previous) {
      id = previous.id;
      this.#q(
        `UPDATE objects SET size = ?, etag = ?, study = ?, series = ?, sop = ?, state = ?, error = NULL, seen_at = ?,
         sop_class = ?, instance_number = ? WHERE id = ?`,
      ).run(...values, id);
    } else {
      id = Number(
        this.#q(
          `INSERT INTO objects (size, etag, study, series, sop, state, seen_at, sop_class, instance_number, aet, key)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(...values, aet, info.key).lastInsertRowid,
      );
    }
    this.#q("INSERT OR REPLACE INTO documents (id, json) VALUES (?, ?)").run(id, item.text);
    if (!(previous?.state === INDEXED && previous.etag === info.etag)) this.#feedCreate(aet, info.key, uids);
    const series = this.#q("SELECT source_key FROM series WHERE aet = ? AND study = ? AND series = ?")
      .get(aet, uids.study, uids.series) as { source_key: string } | undefined;
    let refresh = previous === undefined || (previous.state !== LISTED && previous.state !== INDEXED);
    if (!series || series.source_key === info.key) {
      this.#putSeries(aet, info, instanceRecord(item.json));
      refresh = true;
    }
    if (refresh) {
      touched.series.add(`${uids.study}\0${uids.series}`);
      touched.studies.add(uids.study);
    }
    return "indexed";
  }

  recordFailure(aet: string, info: ObjectInfo, reason: string): Promise<void> {
    return settle(() => {
      const state = parseInstanceKey(info.key) === null ? IGNORED : FAILED;
      this.#transaction(() => this.#fail(aet, info, state, reason));
      return;
    });
  }

  #fail(aet: string, info: ObjectInfo, state: number, reason: string): void {
    const uids = parseInstanceKey(info.key);
    const previous = this.#object(aet, info.key);
    if (previous) {
      this.#q(
        "UPDATE objects SET size = ?, etag = ?, state = ?, error = ?, seen_at = ?, sop_class = NULL, instance_number = NULL WHERE id = ?",
      )
        .run(info.size, info.etag, state, reason, Date.now(), previous.id);
      this.#q("DELETE FROM documents WHERE id = ?").run(previous.id);
    } else {
      this.#insertObject(aet, info, uids, state, reason, Date.now());
    }
    if (uids) this.#afterLoss(aet, uids.study, uids.series, info.key);
  }

  removeInstance(aet: string, key: string): Promise<void> {
    return this.removeInstances(aet, [key]).then(() => {});
  }

  removeInstances(aet: string, keys: readonly string[]): Promise<number> {
    return settle(() => {
      if (keys.length === 0) return 0;
      return this.#transaction(() => {
        const touched = new Set<string>();
        let removed = 0;
        for (const key of keys) {
          const row = this.#object(aet, key);
          if (!row) continue;
          this.#delete(row);
          this.#feedDelete(aet, key);
          removed++;
          if (row.study === null || row.series === null) continue;
          this.#q("DELETE FROM series WHERE aet = ? AND study = ? AND series = ? AND source_key = ?")
            .run(aet, row.study, row.series, key);
          touched.add(`${row.study}\0${row.series}`);
        }
        const studies = new Set<string>();
        for (const pair of touched) {
          const [study, series] = pair.split("\0");
          this.#rebuildSeries(aet, study, series);
          this.#refreshSeries(aet, study, series);
          studies.add(study);
        }
        for (const study of studies) this.#refreshStudy(aet, study);
        return removed;
      });
    });
  }

  objectKeys(aet: string, scope: InstanceScope): Promise<string[]> {
    return settle(() => {
      const where = ["aet = ?", "study = ?"];
      const args: SQLInputValue[] = [aet, scope.study];
      if (scope.series !== undefined) {
        where.push("series = ?");
        args.push(scope.series);
      }
      if (scope.sop !== undefined) {
        where.push("sop = ?");
        args.push(scope.sop);
      }
      const rows = this.#q(`SELECT key FROM objects WHERE ${where.join(" AND ")} ORDER BY key`)
        .all(...args) as { key: string }[];
      return rows.map((row) => row.key);
    });
  }

  #object(aet: string, key: string): ObjectRow | undefined {
    return this.#q(
      "SELECT id, key, size, etag, state, study, series, seen_at FROM objects WHERE aet = ? AND key = ?",
    )
      .get(aet, key) as ObjectRow | undefined;
  }

  #delete(row: ObjectRow): void {
    this.#q("DELETE FROM objects WHERE id = ?").run(row.id);
    this.#q("DELETE FROM documents WHERE id = ?").run(row.id);
  }

  /** After an object left a series (deleted, failed): forget it as the series' source, refresh counts. */
  #afterLoss(aet: string, study: string, series: string, key: string): void {
    this.#q("DELETE FROM series WHERE aet = ? AND study = ? AND series = ? AND source_key = ?").run(
      aet,
      study,
      series,
      key,
    );
    this.#rebuildSeries(aet, study, series);
    this.#refreshSeries(aet, study, series);
    this.#refreshStudy(aet, study);
  }

  /** Rebuilds a missing series row from an indexed instance of it, if there is one; true when done. */
  #rebuildSeries(aet: string, study: string, series: string): boolean {
    if (this.#q("SELECT 1 FROM series WHERE aet = ? AND study = ? AND series = ?").get(aet, study, series)) {
      return true;
    }
    const row = this.#q(
      `SELECT o.key, o.size, o.etag, d.json FROM objects o JOIN documents d ON d.id = o.id
       WHERE o.aet = ? AND o.study = ? AND o.series = ? AND o.state = ${INDEXED} ORDER BY o.key LIMIT 1`,
    ).get(aet, study, series) as { key: string; size: number; etag: string; json: string } | undefined;
    if (!row) return false;
    this.#putSeries(aet, row, instanceRecord(JSON.parse(row.json)));
    return true;
  }

  #putSeries(aet: string, info: Pick<ObjectInfo, "key" | "etag">, record: InstanceRecord): void {
    const c = record.seriesColumns;
    this.#q(
      `INSERT INTO series (aet, study, series, modality, series_number, pps_date, pps_time, pps_time_high, json,
         study_json, source_key, source_etag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (aet, study, series) DO UPDATE SET modality = excluded.modality,
         series_number = excluded.series_number, pps_date = excluded.pps_date, pps_time = excluded.pps_time,
         pps_time_high = excluded.pps_time_high, json = excluded.json, study_json = excluded.study_json,
         source_key = excluded.source_key, source_etag = excluded.source_etag`,
    ).run(
      aet,
      record.study!,
      record.series!,
      c.modality ?? null,
      c.number ?? null,
      c.ppsDate ?? null,
      c.ppsTime ?? null,
      c.ppsTimeHigh ?? null,
      stringifyDicomJson(record.seriesJson),
      stringifyDicomJson(record.studyJson),
      info.key,
      info.etag,
    );
  }

  #refreshSeries(aet: string, study: string, series: string): void {
    const { n } = this.#q(
      `SELECT count(*) AS n FROM objects WHERE aet = ? AND study = ? AND series = ? AND state IN ${VALID}`,
    )
      .get(aet, study, series) as { n: number };
    if (n === 0) {
      this.#q("DELETE FROM series WHERE aet = ? AND study = ? AND series = ?").run(aet, study, series);
    } else {this.#q("UPDATE series SET num_instances = ? WHERE aet = ? AND study = ? AND series = ?").run(
        n,
        aet,
        study,
        series,
      );}
  }

  #refreshStudy(aet: string, study: string): void {
    const rows = this.#q(
      "SELECT modality, study_json FROM series WHERE aet = ? AND study = ? ORDER BY series",
    )
      .all(aet, study) as { modality: string | null; study_json: string }[];
    const counts = this.#q(
      `SELECT count(DISTINCT series) AS series, count(*) AS instances FROM objects
       WHERE aet = ? AND study = ? AND state IN ${VALID}`,
    ).get(aet, study) as { series: number; instances: number };
    if (rows.length === 0 || counts.instances === 0) {
      this.#q("DELETE FROM studies WHERE aet = ? AND study = ?").run(aet, study);
      return;
    }
    const json = rows[0].study_json;
    const c = studyColumns(JSON.parse(json));
    const modalities = [...new Set(rows.map((r) => r.modality).filter((m): m is string => !!m))].sort();
    // SOPClassesInStudy: the classes of the instances read so far (at least one per series)
    const classes = (this.#q(
      `SELECT DISTINCT sop_class FROM objects WHERE aet = ? AND study = ? AND state IN ${VALID}
       AND sop_class IS NOT NULL ORDER BY sop_class`,
    ).all(aet, study) as { sop_class: string }[]).map((r) => r.sop_class);
    this.#q(
      `INSERT INTO studies (aet, study, study_date, study_time, study_time_high, accession, referring, patient_name,
         patient_id, study_id, modalities, sop_classes, num_series, num_instances, json)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (aet, study) DO UPDATE SET study_date = excluded.study_date, study_time = excluded.study_time,
         study_time_high = excluded.study_time_high, accession = excluded.accession, referring = excluded.referring,
         patient_name = excluded.patient_name, patient_id = excluded.patient_id, study_id = excluded.study_id,
         modalities = excluded.modalities, sop_classes = excluded.sop_classes, num_series = excluded.num_series,
         num_instances = excluded.num_instances,
         json = excluded.json`,
    ).run(
      aet,
      study,
      c.date ?? null,
      c.time ?? null,
      c.timeHigh ?? null,
      c.accession ?? null,
      c.referring ?? null,
      c.patientName ?? null,
      c.patientId ?? null,
      c.studyId ?? null,
      modalities.join("\\"),
      classes.join("\\"),
      counts.series,
      counts.instances,
      json,
    );
  }

  // ---- crawling ----

  beginCrawl(aet: string, bucket: string, owner: string, leaseMs: number): Promise<CrawlTicket | undefined> {
    return settle(() => {
      const ticket = this.#transaction(() => {
        const now = Date.now();
        const row = this.#q("SELECT bucket, owner, lease_until FROM aets WHERE aet = ?").get(aet) as
          | { bucket: string; owner: string | null; lease_until: number | null }
          | undefined;
        if (row?.owner && row.owner !== owner && (row.lease_until ?? 0) > now) return undefined;
        if (row && row.bucket !== bucket) this.#wipe(aet);
        this.#q(
          `INSERT INTO aets (aet, bucket, owner, lease_until) VALUES (?, ?, ?, ?) ON CONFLICT (aet) DO UPDATE SET
           bucket = excluded.bucket, owner = excluded.owner, lease_until = excluded.lease_until`,
        ).run(aet, bucket, owner, now + leaseMs);
        return { aet, bucket, owner, startedAt: now };
      });
      if (ticket) this.#listings.set(ticket, { dirty: new Set(), deleted: 0 });
      return ticket;
    });
  }

  #wipe(aet: string): void {
    this.#q("DELETE FROM documents WHERE id IN (SELECT id FROM objects WHERE aet = ?)").run(aet);
    for (const table of ["objects", "series", "studies"]) {
      this.#q(`DELETE FROM ${table} WHERE aet = ?`).run(aet);
    }
    this.#q("UPDATE aets SET complete_at = NULL WHERE aet = ?").run(aet);
  }

  renewCrawl(ticket: CrawlTicket, leaseMs: number): Promise<boolean> {
    return settle(() => {
      const { changes } = this.#q("UPDATE aets SET lease_until = ? WHERE aet = ? AND owner = ?")
        .run(Date.now() + leaseMs, ticket.aet, ticket.owner);
      return Number(changes) > 0;
    });
  }

  applyListing(ticket: CrawlTicket, infos: ObjectInfo[]): Promise<ListingCounts> {
    return settle(() => {
      const state = this.#listing(ticket);
      const counts: ListingCounts = { added: 0, changed: 0, unchanged: 0, ignored: 0 };
      if (infos.length === 0) return counts;
      for (let i = 0; i < infos.length; i++) {
        const previous = i === 0 ? state.cursor : infos[i - 1].key;
        if (previous !== undefined && compareKeys(previous, infos[i].key) >= 0) {
          throw new Error(`The listing of ${ticket.bucket} is not in ascending key order at ${infos[i].key}`);
        }
      }
      const aet = ticket.aet;
      const last = infos[infos.length - 1].key;
      this.#transaction(() => {
        // Merge with the stored rows of the same key range: rows the listing skipped were deleted from the bucket.
        const stored = (state.cursor === undefined
          ? this.#q(
            "SELECT id, key, size, etag, state, study, series, seen_at FROM objects WHERE aet = ? AND key <= ?",
          ).all(aet, last)
          : this.#q(
            "SELECT id, key, size, etag, state, study, series, seen_at FROM objects WHERE aet = ? AND key > ? AND key <= ?",
          )
            .all(aet, state.cursor, last)) as unknown as ObjectRow[];
        const byKey = new Map(stored.map((row) => [row.key, row]));
        const now = Date.now();
        for (const info of infos) {
          const row = byKey.get(info.key);
          byKey.delete(info.key);
          if (row && row.size === info.size && row.etag === info.etag) {
            counts.unchanged++;
            continue;
          }
          const uids = parseInstanceKey(info.key);
          const objectState = uids ? LISTED : IGNORED;
          const error = uids ? null : LAYOUT_REASON;
          if (!uids) {
            counts.ignored++;
          }
          if (row) {
            counts.changed++;
            this.#q(
              `UPDATE objects SET size = ?, etag = ?, state = ?, error = ?, seen_at = ?, sop_class = NULL,
               instance_number = NULL WHERE id = ?`,
            ).run(info.size, info.etag, objectState, error, now, row.id);
            this.#q("DELETE FROM documents WHERE id = ?").run(row.id);
            if (row.study !== null && row.series !== null) {
              this.#q("DELETE FROM series WHERE aet = ? AND study = ? AND series = ? AND source_key = ?")
                .run(aet, row.study, row.series, info.key);
              state.dirty.add(`${row.study}\0${row.series}`);
            }
          } else {
            if (uids) counts.added++;
            this.#insertObject(aet, info, uids, objectState, error, now);
          }
          if (uids) state.dirty.add(`${uids.study}\0${uids.series}`);
        }
        for (const row of byKey.values()) this.#forget(ticket, state, row);
      });
      state.cursor = last;
      return counts;
    });
  }

  /** Deletes a stored row the listing did not show, unless it was written after the crawl began (STOW). */
  #forget(ticket: CrawlTicket, state: ListingState, row: ObjectRow): void {
    if (row.seen_at >= ticket.startedAt) return;
    this.#delete(row);
    this.#feedDelete(ticket.aet, row.key);
    state.deleted++;
    if (row.study !== null && row.series !== null) {
      this.#q("DELETE FROM series WHERE aet = ? AND study = ? AND series = ? AND source_key = ?")
        .run(ticket.aet, row.study, row.series, row.key);
      state.dirty.add(`${row.study}\0${row.series}`);
    }
  }

  #listing(ticket: CrawlTicket): ListingState {
    const state = this.#listings.get(ticket);
    if (!state) throw new TypeError(`Not a crawl ticket of this catalog: ${ticket.aet}`);
    return state;
  }

  finishListing(ticket: CrawlTicket): Promise<number> {
    return settle(() => {
      const state = this.#listing(ticket);
      this.#transaction(() => {
        const rest = (state.cursor === undefined
          ? this.#q("SELECT id, key, size, etag, state, study, series, seen_at FROM objects WHERE aet = ?")
            .all(ticket.aet)
          : this.#q(
            "SELECT id, key, size, etag, state, study, series, seen_at FROM objects WHERE aet = ? AND key > ?",
          )
            .all(ticket.aet, state.cursor)) as unknown as ObjectRow[];
        for (const row of rest) {
          this.#forget(ticket, state, row);
        }
        const studies = new Set<string>();
        for (const pair of state.dirty) {
          const [study, series] = pair.split("\0");
          this.#rebuildSeries(ticket.aet, study, series);
          this.#refreshSeries(ticket.aet, study, series);
          studies.add(study);
        }
        for (const study of studies) {
          this.#refreshStudy(ticket.aet, study);
        }
      });
      const deleted = state.deleted;
      state.dirty.clear();
      state.deleted = 0;
      return deleted;
    });
  }

  seriesToRead(aet: string, limit: number): Promise<SeriesCandidate[]> {
    return settle(() => {
      const candidates: SeriesCandidate[] = [];
      const missing = this.#q(
        `SELECT o.study, o.series FROM objects o WHERE o.aet = ? AND o.state IN ${VALID} AND NOT EXISTS
           (SELECT 1 FROM series se WHERE se.aet = o.aet AND se.study = o.study AND se.series = o.series)
         GROUP BY o.study, o.series LIMIT ?`,
      ).all(aet, limit) as { study: string; series: string }[];
      for (const { study, series } of missing) {
        const rebuilt = this.#transaction(() => {
          if (!this.#rebuildSeries(aet, study, series)) return false;
          this.#refreshSeries(aet, study, series);
          this.#refreshStudy(aet, study);
          return true;
        });
        if (rebuilt) continue;
        const info = this.#q(
          `SELECT key, size, etag FROM objects WHERE aet = ? AND study = ? AND series = ? AND state = ${LISTED}
           ORDER BY key LIMIT 1`,
        ).get(aet, study, series) as ObjectInfo | undefined;
        if (info) {
          candidates.push({ study, series, info: { key: info.key, size: info.size, etag: info.etag } });
        }
      }
      return candidates;
    });
  }

  pendingObjects(aet: string, scope: Scope, limit: number): Promise<ObjectInfo[]> {
    return settle(() => {
      const where = ["aet = ?", `state = ${LISTED}`];
      const args: SQLInputValue[] = [aet];
      if (scope.study !== undefined) {
        where.push("study = ?");
        args.push(scope.study);
      }
      if (scope.series !== undefined) {
        where.push("series = ?");
        args.push(scope.series);
      }
      if (scope.sops !== undefined) {
        where.push(`sop IN (${scope.sops.map(() => "?").join(", ") || "NULL"})`);
        args.push(...scope.sops);
      }
      const rows = this.#q(
        `SELECT key, size, etag FROM objects WHERE ${where.join(" AND ")} ORDER BY key LIMIT ?`,
      )
        .all(...args, limit) as unknown as ObjectInfo[];
      return rows.map((r) => ({ key: r.key, size: r.size, etag: r.etag }));
    });
  }

  endCrawl(ticket: CrawlTicket, outcome: { complete: boolean; error?: string }): Promise<void> {
    return settle(() => {
      this.#q(
        `UPDATE aets SET owner = NULL, lease_until = NULL, last_error = ?,
         complete_at = CASE WHEN ? THEN ? ELSE complete_at END WHERE aet = ? AND owner = ?`,
      ).run(outcome.error ?? null, outcome.complete ? 1 : 0, ticket.startedAt, ticket.aet, ticket.owner);
      this.#listings.delete(ticket);
      return;
    });
  }

  // ---- reading ----

  search(query: CatalogQuery): Promise<SearchRow[]> {
    return settle(() => {
      const { level } = query;
      const args: SQLInputValue[] = [query.aet];
      let select =
        "s.study, s.json AS study_json, s.modalities, s.sop_classes, s.num_series, s.num_instances";
      let from = "studies s";
      const where: string[] = [];
      let order = "s.study_date DESC, s.study_time DESC, s.study";
      if (level === "study") {
        where.push("s.aet = ?");
      } else if (level === "series") {
        select += ", se.series, se.json AS series_json, se.num_instances AS series_instances";
        from = "series se JOIN studies s ON s.aet = se.aet AND s.study = se.study";
        where.push("se.aet = ?");
        order += ", se.series_number IS NULL, se.series_number, se.series";
      } else {
        select +=
          ", se.series, se.json AS series_json, se.num_instances AS series_instances, o.sop, d.json AS instance_json";
        from = `objects o JOIN series se ON se.aet = o.aet AND se.study = o.study AND se.series = o.series
          JOIN studies s ON s.aet = o.aet AND s.study = o.study JOIN documents d ON d.id = o.id`;
        where.push("o.aet = ?", `o.state = ${INDEXED}`);
        order +=
          ", se.series_number IS NULL, se.series_number, se.series, o.instance_number IS NULL, o.instance_number, o.sop";
      }
      const own = level === "study" ? "s" : level === "series" ? "se" : "o";
      if (query.study !== undefined) {
        where.push(`${own}.study = ?`);
        args.push(query.study);
      }
      if (query.series !== undefined) {
        where.push(`${own}.series = ?`);
        args.push(query.series);
      }
      for (const filter of query.filters) where.push(condition(filter, level, args));
      const sql = `SELECT ${select} FROM ${from} WHERE ${
        where.join(" AND ")
      } ORDER BY ${order} LIMIT ? OFFSET ?`;
      args.push(query.limit, query.offset);
      const rows = this.#q(sql).all(...args) as Record<string, string | number | null>[];
      return rows.map((row) => ({
        study: row.study as string,
        series: (row.series ?? undefined) as string | undefined,
        sop: (row.sop ?? undefined) as string | undefined,
        studyJson: JSON.parse(row.study_json as string),
        seriesJson: row.series_json ? JSON.parse(row.series_json as string) : undefined,
        instanceJson: row.instance_json ? JSON.parse(row.instance_json as string) : undefined,
        modalities: row.modalities ? (row.modalities as string).split("\\") : [],
        sopClasses: row.sop_classes ? (row.sop_classes as string).split("\\") : [],
        studySeries: row.num_series as number,
        studyInstances: row.num_instances as number,
        seriesInstances: (row.series_instances ?? undefined) as number | undefined,
      }));
    });
  }

  instanceMetadata(aet: string, study: string, series?: string): Promise<StoredInstance[]> {
    return settle(() => {
      const sql =
        `SELECT o.key, o.series, o.sop, o.etag, d.json FROM objects o JOIN documents d ON d.id = o.id
        WHERE o.aet = ? AND o.study = ? ${
          series === undefined ? "" : "AND o.series = ?"
        } AND o.state = ${INDEXED}
        ORDER BY o.key`;
      const args = series === undefined ? [aet, study] : [aet, study, series];
      return this.#q(sql).all(...args) as unknown as StoredInstance[];
    });
  }

  completedAt(aet: string): Promise<number | undefined> {
    return settle(() => {
      const row = this.#q("SELECT complete_at FROM aets WHERE aet = ?").get(aet) as
        | { complete_at: number | null }
        | undefined;
      return row?.complete_at ?? undefined;
    });
  }

  status(aet?: string): Promise<AetStatus[]> {
    return settle(() => {
      const aets = (aet === undefined
        ? this.#q("SELECT * FROM aets ORDER BY aet").all()
        : this.#q("SELECT * FROM aets WHERE aet = ?").all(aet)) as {
          aet: string;
          bucket: string;
          complete_at: number | null;
          last_error: string | null;
          owner: string | null;
          lease_until: number | null;
        }[];
      const now = Date.now();
      return aets.map((row) => {
        const byState = new Map(
          (this.#q("SELECT state, count(*) AS n FROM objects WHERE aet = ? GROUP BY state").all(row.aet) as {
            state: number;
            n: number;
          }[]).map((r) => [r.state, r.n]),
        );
        const count = (table: string) =>
          (this.#q(`SELECT count(*) AS n FROM ${table} WHERE aet = ?`).get(row.aet) as { n: number }).n;
        const objects = [...byState.values()].reduce((a, b) =>
          a + b, 0);
        return {
          aet: row.aet,
          bucket: row.bucket,
          objects,
          indexed: byState.get(INDEXED) ?? 0,
          pending: byState.get(LISTED) ?? 0,
          failed: byState.get(FAILED) ?? 0,
          ignored: byState.get(IGNORED) ?? 0,
          studies: count("studies"),
          series: count("series"),
          completeAt: row.complete_at ?? undefined,
          lastError: row.last_error ?? undefined,
          crawlingBy: row.owner && (row.lease_until ?? 0) > now ? row.owner : undefined,
        };
      });
    });
  }

  failures(aet?: string, limit = 1000): Promise<ObjectProblem[]> {
    return settle(() => {
      const rows = (aet === undefined
        ? this.#q(
          `SELECT aet, key, state, error, etag FROM objects WHERE state IN (${FAILED}, ${IGNORED}) ORDER BY aet, key LIMIT ?`,
        )
          .all(limit)
        : this.#q(
          `SELECT aet, key, state, error, etag FROM objects WHERE aet = ? AND state IN (${FAILED}, ${IGNORED}) ORDER BY key LIMIT ?`,
        )
          .all(aet, limit)) as {
          aet: string;
          key: string;
          state: number;
          error: string | null;
          etag: string;
        }[];
      return rows.map((r) => ({
        aet: r.aet,
        key: r.key,
        state: r.state === FAILED ? "failed" : "ignored",
        error: r.error ?? "",
        etag: r.etag,
      }));
    });
  }

  changeFeed(query: ChangeFeedQuery): Promise<ChangeFeedEntry[]> {
    return settle(() => {
      const rows = this.#q(
        `${feedSelect(query.includeMetadata)} WHERE c.aet = ? AND c.at >= ? AND c.at < ?
         ORDER BY c.seq LIMIT ? OFFSET ?`,
      ).all(
        query.aet,
        query.startTime ?? -8.64e15,
        query.endTime ?? 8.64e15,
        query.limit,
        query.offset,
      ) as unknown as FeedRow[];
      return rows.map((row) => feedEntry(query.aet, row));
    });
  }

  latestChange(aet: string, includeMetadata: boolean): Promise<ChangeFeedEntry | undefined> {
    return settle(() => {
      const row = this.#q(`${feedSelect(includeMetadata)} WHERE c.aet = ? ORDER BY c.seq DESC LIMIT 1`)
        .get(aet) as FeedRow | undefined;
      return row && feedEntry(aet, row);
    });
  }

  /** Closes the database. */
  close(): Promise<void> {
    return settle(() => {
      if (this.#db.isOpen) this.#db.close();
      return;
    });
  }
}

/** Runs `fn` and hands its result or its error over as a promise. */
function settle<T>(fn: () => T): Promise<T> {
  return new Promise((resolve) => resolve(fn()));
}

// ---- filters → SQL ----
