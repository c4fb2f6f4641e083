/**
 * The shared {@linkcode Catalog}: PostgreSQL through the npm `postgres` client, one database for every replica
 * of the server (`CATALOG_URL=postgres://user:pass@host:5432/db`). The tables, states and refresh rules are
 * SQLite's (sqlite_catalog.ts); what sharing adds:
 *
 * - schema migrations at start under an advisory lock (postgres_schema.ts): N replicas migrate once;
 * - every write transaction first takes the AET's advisory lock, so two replicas filing into one study never
 *   count its series and instances from stale snapshots (SQLite gets this from its single writer);
 * - crawl leases and `seen_at` use the database clock (`catalog_now_ms()`), so replicas' clocks do not matter,
 *   and an expired lease (a killed replica) is taken over by the next replica's crawl;
 * - each write transaction sends `NOTIFY dicomweb_catalog` with the keys it touched; other replicas hear it
 *   ({@linkcode PostgresCatalog.onChange}) and drop what they cached of those objects;
 * - filters SQL cannot decide (non-indexed attributes, person-name patterns) are narrowed in SQL and matched in
 *   this process on the rows read through a cursor (sql_filter.ts `Residual`), then paged;
 * - every call is bounded (`timeoutMs`, and `statement_timeout` on the server); a lost connection marks the
 *   database down: calls fail at once with a {@linkcode CatalogUnavailableError} (503) while a probe retries
 *   every second, and the first probe that succeeds brings search back, in the same process.
 *
 * A database that is down when the server starts is not fatal: retrieval works, search answers 503, and the
 * schema is migrated when the database first answers. Only a schema newer than the code stops the start.
 *
 * @module
 */

import postgres from "postgres";
import { SpanStatusCode, trace } from "@opentelemetry/api";
import type {
  AetStatus,
  Catalog,
  CatalogChange,
  CatalogQuery,
  ChangeFeedEntry,
  ChangeFeedQuery,
  CrawlTicket,
  InstanceScope,
  InstanceToRecord,
  ListingCounts,
  ObjectProblem,
  PoolUse,
  RecordOutcome,
  Scope,
  SearchRow,
  SeriesCandidate,
  StoredInstance,
} from "./catalog.ts";
import { CatalogUnavailableError } from "./catalog.ts";
import { type DicomJson, stringifyDicomJson } from "../dicom/dicom_json.ts";
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
import { CatalogMismatchError, LOCK_CLASS, migrate } from "./postgres_schema.ts";
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
  REPLACED,
} from "./sqlite_schema.ts";
import { condition, numberPlaceholders, POSTGRES, type Residual, type SqlValue } from "./sql_filter.ts";
import { matchDataset, matchPersonName } from "./matching.ts";

export { CatalogMismatchError, SchemaTooNewError } from "./postgres_schema.ts";

type Sql = postgres.Sql;
type Tx = postgres.TransactionSql;

/** Spans of catalog calls (no-ops unless OpenTelemetry is on: `OTEL_DENO=true`). */
const tracer = trace.getTracer("dicomweb-catalog");

/** The channel other replicas' changes arrive on. */
const CHANNEL = "dicomweb_catalog";

/** Options for {@linkcode openPostgresCatalog}. */
export interface PostgresCatalogOptions {
  /** Binary values up to this many bytes are stored inline in instance JSON (default 1024, as the config). */
  bulkDataThreshold?: number;
  /** Connections in the pool (default 10, `CATALOG_POOL_SIZE`). */
  poolSize?: number;
  /** The longest one catalog call may take, pool wait included (default 10 000 ms, `CATALOG_TIMEOUT_MS`). */
  timeoutMs?: number;
  /** Milliseconds between probes while the database is down (default 1000). */
  probeMs?: number;
  /** Where warnings go (default `console.warn`). */
  log?: (line: string) => void;
  /** Reads a CA file named by `sslrootcert` (default `Deno.readTextFile`). */
  readFile?: (path: string) => Promise<string>;
  /**
   * Rows this process writes before it refreshes the planner's statistics itself (default 5,000; then half of
   * all it has written, so a bulk fill of N rows analyzes about log(N) times). 0 leaves it to autovacuum.
   */
  analyzeAfterRows?: number;
}

/** A connection URL taken apart: what the client gets, and what is shown. */
export interface ParsedUrl {
  /** The URL for the client, without the parameters handled here. */
  url: string;
  /** The URL without its password (logs, `/admin/index`, error messages). */
  shown: string;
  /** TLS options for the client, if any. */
  ssl?: boolean | "require" | "prefer" | "allow" | "verify-full" | { ca: string; rejectUnauthorized: true };
  /** `sslrootcert`, a CA file to read. */
  caFile?: string;
}

/**
 * Takes a `postgres://` URL apart: `sslmode` (`disable`, `allow`, `prefer`, `require`: encrypted, the server's
 * certificate not checked, as libpq; `verify-ca`, `verify-full`: checked against the system CAs, or the CA file
 * `sslrootcert`) is handled here; other parameters go to the server as settings (e.g. `application_name`).
 *
 * @example
 * ```ts
 * import { parsePostgresUrl } from "./postgres_catalog.ts";
 * parsePostgresUrl("postgres://u:secret@db:5432/pacs?sslmode=require").shown;
 * // "postgres://u@db:5432/pacs?sslmode=require"
 * ```
 */
export function parsePostgresUrl(text: string): ParsedUrl {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new TypeError(`Not a URL: use postgres://user:password@host:5432/database`);
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    throw new TypeError(
      `Not a postgres:// URL (${url.protocol}): use postgres://user:password@host:5432/database`,
    );
  }
  if (url.pathname.length <= 1) {
    throw new TypeError("The URL names no database: add /database after the host");
  }
  const mode = url.searchParams.get("sslmode") ?? undefined;
  const caFile = url.searchParams.get("sslrootcert") ?? undefined;
  url.searchParams.delete("sslmode");
  url.searchParams.delete("sslrootcert");
  let ssl: ParsedUrl["ssl"];
  switch (mode) {
    case undefined:
    case "disable":
      ssl = false;
      break;
    case "allow":
    case "prefer":
    case "require":
      ssl = mode;
      break;
    case "verify-ca":
    case "verify-full":
      ssl = caFile !== undefined && caFile !== "system" ? undefined : "verify-full";
      break;
    default:
      throw new TypeError(
        `sslmode=${mode} is not known: use disable, allow, prefer, require, verify-ca or verify-full`,
      );
  }
  const client = url.href;
  const shownUrl = new URL(url.href);
  shownUrl.password = "";
  if (mode !== undefined) shownUrl.searchParams.set("sslmode", mode);
  return {
    url: client,
    shown: shownUrl.href,
    ssl,
    caFile: caFile !== undefined && caFile !== "system" && mode?.startsWith("verify") ? caFile : undefined,
  };
}

/**
 * Opens the catalog in the PostgreSQL database at `url` and migrates its schema. Rejects with a
 * {@linkcode SchemaTooNewError} when the database is ahead of this code (a {@linkcode CatalogMismatchError} when it
 * was filled with another bulk data threshold), and with a `TypeError` for a bad URL;
 * a database that does not answer yet is not an error (see the module doc).
 */
export async function openPostgresCatalog(
  url: string,
  options: PostgresCatalogOptions = {},
): Promise<PostgresCatalog> {
  const parsed = parsePostgresUrl(url);
  let ssl: postgres.Options<Record<string, never>>["ssl"] = parsed.ssl;
  if (parsed.caFile !== undefined) {
    const read = options.readFile ?? ((path: string) => Deno.readTextFile(path));
    ssl = { ca: await read(parsed.caFile), rejectUnauthorized: true };
  }
  const catalog = new PostgresCatalog(parsed, ssl, options);
  try {
    await catalog.ready();
  } catch (error) {
    if (error instanceof CatalogMismatchError) {
      await catalog.close();
      throw error;
    }
    // Down at start: retrieval works meanwhile; the probe migrates when the database answers.
  }
  return catalog;
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

/** One instance ready to be recorded: how, and what with. */
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

/** A prepared instance to be indexed. */
type Indexed = Extract<Prepared, { outcome: "indexed" }>;

/** Series (`study\0series`) and studies whose counts to refresh at the end of a transaction. */
interface Touched {
  series: Set<string>;
  studies: Set<string>;
  /** Keys whose state changed, announced to the other replicas. */
  keys: Set<string>;
  /** Series known to have their row (no rebuild needed). */
  present: Set<string>;
  /** Change feed entries written, announced to this process's listeners at commit. */
  feed: ChangeFeedEntry[];
}

/** An empty {@linkcode Touched}. */
function untouched(): Touched {
  return { series: new Set(), studies: new Set(), keys: new Set(), present: new Set(), feed: [] };
}

interface ListingState {
  cursor?: string;
  dirty: Set<string>;
  deleted: number;
}

const OBJECT_COLUMNS = "id, key, size, etag, state, study, series, seen_at";

/** Whether `error` says the connection to the database is gone or cannot be made (not a bad query). */
function connectionLost(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  if (typeof code !== "string") {
    return error instanceof Error && /ECONNREFUSED|connect|socket/i.test(error.message);
  }
  return code.startsWith("CONNECT") || code.startsWith("E") || code.startsWith("08") ||
    ["57P01", "57P02", "57P03", "53300", "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED"]
      .includes(code);
}

/** The PostgreSQL catalog (open it with {@linkcode openPostgresCatalog}). */
export class PostgresCatalog implements Catalog {
  readonly kind = "postgresql";
  readonly location: string;
  readonly #sql: Sql;
  readonly #threshold: number;
  readonly #timeoutMs: number;
  readonly #probeMs: number;
  readonly #poolSize: number;
  readonly #log: (line: string) => void;
  readonly #listings = new WeakMap<CrawlTicket, ListingState>();
  readonly #listeners = new Set<(change: CatalogChange) => void>();
  readonly #feedListeners = new Set<(entries: ChangeFeedEntry[]) => void>();
  /** Names this process in notifications, so it ignores its own. */
  readonly #origin = crypto.randomUUID();
  #migrated?: Promise<void>;
  #listening?: Promise<unknown>;
  #listenRetry?: ReturnType<typeof setTimeout>;
  #down?: string;
  #probe?: ReturnType<typeof setTimeout>;
  #busy = 0;
  #closed = false;
  readonly #analyzeAfter: number;
  /** Rows written since this process last ran ANALYZE, and in all. */
  #unanalyzed = 0;
  #written = 0;
  #analyzing = false;

  /** Use {@linkcode openPostgresCatalog}. */
  constructor(
    url: ParsedUrl,
    ssl: postgres.Options<Record<string, never>>["ssl"],
    options: PostgresCatalogOptions = {},
  ) {
    this.location = url.shown;
    this.#threshold = options.bulkDataThreshold ?? 1024;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#probeMs = options.probeMs ?? 1000;
    this.#poolSize = options.poolSize ?? 10;
    this.#analyzeAfter = options.analyzeAfterRows ?? 5000;
    this.#log = options.log ?? ((line: string) => console.warn(line));
    this.#sql = postgres(url.url, {
      max: this.#poolSize,
      ssl,
      onnotice: () => {},
      connect_timeout: Math.max(1, Math.ceil(this.#timeoutMs / 1000)),
      idle_timeout: 60,
      connection: {
        application_name: "dicomweb-catalog",
        // the server gives up a query a little after this process has stopped waiting for it
        statement_timeout: this.#timeoutMs + 1000,
        idle_in_transaction_session_timeout: Math.max(60_000, this.#timeoutMs * 2),
        // Every statement planned for its values (a few tenths of a millisecond): the generic plan PostgreSQL
        // keeps for a prepared statement after five runs, when made while the tables were small (the first
        // writes into an empty catalog), scans them whole once they have grown, until the next ANALYZE
        // (measured: 50-75 ms per write batch of 50 at 10,000 studies instead of 2-3 ms).
        plan_cache_mode: "force_custom_plan",
      },
      // bigint columns (sizes, times, ids, counts) as numbers: every value here is far below 2^53
      types: {
        bigint: {
          to: 20,
          from: [20],
          serialize: (x: number) => String(x),
          parse: (x: string) => Number(x),
        },
      },
    });
  }

  /** Migrates the schema once the database answers (every call waits for it); rejects while it does not. */
  ready(): Promise<void> {
    this.#migrated ??= migrate(this.#sql, this.location).then((done) => {
      if (done.from !== done.to) {
        this.#log(
          `catalog: PostgreSQL schema of ${this.location} migrated from version ${done.from} to ${done.to}`,
        );
      }
      const stored = this.#sql<{ value: string }[]>`SELECT value FROM meta WHERE name = 'bulk_threshold'`;
      return stored.then(async ([row]) => {
        const threshold = String(this.#threshold);
        if (row?.value === threshold) return;
        if (row !== undefined) {
          const [{ n }] = await this.#sql<{ n: number }[]>`SELECT count(*) AS n FROM objects`;
          if (n > 0) {
            throw new CatalogMismatchError(
              `The catalog database ${this.location} was filled with BULKDATA_THRESHOLD=${row.value}, ` +
                `this server has ${threshold}: give every replica the same setting, or empty the catalog ` +
                `(TRUNCATE aets, objects, documents, series, studies; it is rebuilt from the buckets)`,
            );
          }
        }
        await this.#sql`INSERT INTO meta (name, value) VALUES ('bulk_threshold', ${threshold})
          ON CONFLICT (name) DO UPDATE SET value = excluded.value`;
      });
    }).catch((error) => {
      this.#migrated = undefined; // tried again by the next call or probe
      if (error instanceof CatalogMismatchError) throw error;
      throw this.#unavailable(error);
    });
    return this.#migrated;
  }

  /** The error a failed call is answered with, marking the database down when the connection is the cause. */
  #unavailable(error: unknown): Error {
    if (error instanceof CatalogUnavailableError || this.#closed) return error as Error;
    if (!connectionLost(error)) return error as Error;
    const why = error instanceof Error ? error.message : String(error);
    if (this.#down === undefined) {
      this.#log(
        `catalog: PostgreSQL ${this.location} is unavailable: ${why}; search answers 503 until it is back`,
      );
      this.#down = why;
      this.#scheduleProbe();
    }
    return new CatalogUnavailableError(
      `Search is unavailable: the catalog database (PostgreSQL ${this.location}) does not answer: ${why}. ` +
        `Retrieval still works; retry in a few seconds`,
      { cause: error },
    );
  }

  #scheduleProbe(): void {
    if (this.#closed || this.#probe !== undefined) return;
    this.#probe = setTimeout(async () => {
      try {
        await this.#sql`SELECT 1`.execute();
        this.#down = undefined;
        await this.ready();
        this.#log(`catalog: PostgreSQL ${this.location} answers again: search is back`);
        this.#probe = undefined;
      } catch {
        this.#probe = undefined;
        if (this.#down === undefined) this.#down = "not migrated yet";
        this.#scheduleProbe();
      }
    }, this.#probeMs);
  }

  /** Runs one catalog call as a span: fails at once while the database is down, else within `timeoutMs`. */
  #run<T>(what: string, fn: (sql: Sql) => Promise<T>): Promise<T> {
    return tracer.startActiveSpan(`catalog ${what}`, {
      attributes: { "db.system": "postgresql", "db.namespace": this.location },
    }, async (span) => {
      try {
        return await this.#call(what, fn);
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        throw error;
      } finally {
        span.end();
      }
    });
  }

  async #call<T>(what: string, fn: (sql: Sql) => Promise<T>): Promise<T> {
    if (this.#closed) throw new Error(`The catalog ${this.location} is closed`);
    if (this.#down !== undefined) {
      throw new CatalogUnavailableError(
        `Search is unavailable: the catalog database (PostgreSQL ${this.location}) does not answer: ${this.#down}. ` +
          `Retrieval still works; retry in a few seconds`,
      );
    }
    this.#busy++;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() =>
          reject(
            new CatalogUnavailableError(
              `Search is unavailable: the catalog database (PostgreSQL ${this.location}) did not answer ${what} ` +
                `within ${this.#timeoutMs / 1000} s (busy or locked). Retrieval still works; retry later`,
            ),
          ), this.#timeoutMs);
      });
      const work = (async () => {
        await this.ready();
        return await fn(this.#sql);
      })();
      work.catch(() => {}); // after a timeout its failure is of no interest
      return await Promise.race([work, timeout]);
    } catch (error) {
      throw this.#unavailable(error);
    } finally {
      clearTimeout(timer);
      this.#busy--;
    }
  }

  /** A write transaction on `aet`: its advisory lock first, the changed keys announced at commit. */
  #write<T>(
    what: string,
    aet: string,
    bucket: string | undefined,
    fn: (tx: Tx, touched: Touched) => Promise<T>,
  ) {
    return this.#run(what, async (sql) => {
      let feed: ChangeFeedEntry[] = [];
      let written = 0;
      const result = await sql.begin(async (tx) => {
        await tx`SELECT pg_advisory_xact_lock(${LOCK_CLASS.aet}, hashtext(${aet}))`;
        const touched = untouched();
        const result = await fn(tx, touched);
        await this.#refresh(tx, aet, touched);
        if (touched.keys.size > 0) await this.#notify(tx, aet, bucket, [...touched.keys]);
        feed = touched.feed;
        written = touched.keys.size;
        return result as T;
      }) as T;
      this.#wrote(written);
      if (feed.length > 0) {
        for (const listener of this.#feedListeners) {
          try {
            listener(feed);
          } catch {
            // a listener's failure is its own (webhooks log theirs)
          }
        }
      }
      return result;
    });
  }

  /**
   * Counts written rows and, after a bulk of them, refreshes the planner's statistics in the background.
   * Autovacuum does it too, but up to a minute (its naptime) later: measured after filling 100,000 studies,
   * plans made from the statistics of a small table sorted all rows on disk for a deep QIDO page (390 ms
   * instead of 2 ms).
   */
  #wrote(rows: number): void {
    if (this.#analyzeAfter === 0 || rows === 0) return;
    this.#unanalyzed += rows;
    this.#written += rows;
    const due = Math.max(this.#analyzeAfter, (this.#written - this.#unanalyzed) / 2);
    if (this.#unanalyzed < due || this.#analyzing || this.#closed) return;
    this.#unanalyzed = 0;
    this.#analyzing = true;
    this.#sql`ANALYZE objects, series, studies`
      .catch((error) => {
        const why = error instanceof Error ? error.message : String(error);
        this.#log(`catalog: refreshing the planner's statistics failed (autovacuum will): ${why}`);
      })
      .finally(() => this.#analyzing = false);
  }

  onFeed(listener: (entries: ChangeFeedEntry[]) => void): void {
    this.#feedListeners.add(listener);
  }

  /** A `create` entry for `key` (filed with a new ETag); earlier current entries of the key become `replaced`. */
  async #feedCreate(tx: Tx, aet: string, key: string, uids: InstanceUids, touched: Touched): Promise<void> {
    const [row] = await tx<FeedRow[]>`
      WITH replaced AS (UPDATE changefeed SET state = ${REPLACED}
        WHERE aet = ${aet} AND key = ${key} AND state = ${CURRENT})
      INSERT INTO changefeed (aet, key, study, series, sop, action, state, at)
      VALUES (${aet}, ${key}, ${uids.study}, ${uids.series}, ${uids.instance}, ${CREATE}, ${CURRENT},
        catalog_now_ms())
      RETURNING seq, study, series, sop, action, state, at, NULL AS json`;
    touched.feed.push(feedEntry(aet, row));
  }

  /** `delete` entries for the keys the feed announced; all their entries become `deleted`. */
  async #feedDelete(tx: Tx, aet: string, keys: string[], touched: Touched): Promise<void> {
    if (keys.length === 0) return;
    const rows = await tx<FeedRow[]>`
      WITH marked AS (UPDATE changefeed SET state = ${DELETED}
        WHERE aet = ${aet} AND key = ANY(${keys}) AND state <> ${DELETED}
        RETURNING key, study, series, sop)
      INSERT INTO changefeed (aet, key, study, series, sop, action, state, at)
      SELECT ${aet}, m.key, min(m.study), min(m.series), min(m.sop), ${DELETE}, ${DELETED}, catalog_now_ms()
      FROM marked m GROUP BY m.key ORDER BY m.key
      RETURNING seq, study, series, sop, action, state, at, NULL AS json`;
    for (const row of rows) touched.feed.push(feedEntry(aet, row));
  }

  async #notify(tx: Tx, aet: string, bucket: string | undefined, keys: string[]): Promise<void> {
    if (bucket === undefined) {
      const [row] = await tx<{ bucket: string }[]>`SELECT bucket FROM aets WHERE aet = ${aet}`;
      if (!row) return;
      bucket = row.bucket;
    }
    // a payload holds at most 8000 bytes
    let chunk: string[] = [];
    let size = 0;
    const send = async () => {
      if (chunk.length === 0) return;
      const payload = JSON.stringify({ o: this.#origin, a: aet, b: bucket, k: chunk });
      await tx`SELECT pg_notify(${CHANNEL}, ${payload})`;
      chunk = [];
      size = 0;
    };
    for (const key of keys) {
      if (size + key.length + 8 > 7000) await send();
      chunk.push(key);
      size += key.length + 8;
    }
    await send();
  }

  onChange(listener: (change: CatalogChange) => void): void {
    this.#listeners.add(listener);
    this.#listen();
  }

  #listen(): void {
    if (this.#listening || this.#closed) return;
    this.#listening = this.#sql.listen(CHANNEL, (payload) => {
      let message: { o: string; a: string; b: string; k: string[] };
      try {
        message = JSON.parse(payload);
      } catch {
        return;
      }
      if (message.o === this.#origin) return;
      for (const listener of this.#listeners) {
        try {
          listener({ aet: message.a, bucket: message.b, keys: message.k });
        } catch (error) {
          this.#log(`catalog: a change listener failed: ${(error as Error).message}`);
        }
      }
    }).catch(() => {
      // the database is down: listen again when it answers (the client re-listens after reconnects itself)
      this.#listening = undefined;
      if (this.#closed) return;
      this.#listenRetry = setTimeout(() => this.#listen(), this.#probeMs);
    });
  }

  check(): Promise<void> {
    return this.#run("a health check", async (sql) => {
      await sql`SELECT 1`;
    });
  }

  pool(): PoolUse {
    return { size: this.#poolSize, busy: this.#busy, down: this.#down !== undefined };
  }

  // ---- writing instances ----

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

  async recordInstances(
    aet: string,
    bucket: string,
    items: InstanceToRecord[],
  ): Promise<PromiseSettledResult<RecordOutcome>[]> {
    if (items.length === 0) return [];
    // The JSON is made before the transaction; an item that cannot be converted fails alone.
    const prepared = items.map(({ info, header }): Prepared | { error: unknown } => {
      try {
        return this.#prepare(info, header);
      } catch (error) {
        return { error };
      }
    });
    // Fast path: the batch in one transaction, one statement chain per item. When an item fails in SQL, the
    // batch is filed again with a savepoint per item, so that it fails alone.
    try {
      return await this.#recordBatch(aet, bucket, prepared, false);
    } catch (error) {
      if (error instanceof CatalogUnavailableError || connectionLost(error) || this.#closed) {
        return items.map(() => ({ status: "rejected", reason: error }));
      }
    }
    try {
      return await this.#recordBatch(aet, bucket, prepared, true);
    } catch (error) {
      return items.map(() => ({ status: "rejected", reason: error }));
    }
  }

  #recordBatch(
    aet: string,
    bucket: string,
    prepared: (Prepared | { error: unknown })[],
    savepoints: boolean,
  ): Promise<PromiseSettledResult<RecordOutcome>[]> {
    return this.#write("a write", aet, bucket, async (tx, touched) => {
      await tx`INSERT INTO aets (aet, bucket) VALUES (${aet}, ${bucket}) ON CONFLICT (aet) DO NOTHING`;
      if (!savepoints) {
        const ready = prepared.filter((item): item is Prepared => !("error" in item));
        const keys = new Set(ready.map((item) => item.info.key));
        if (keys.size === ready.length && ready.every((item) => item.outcome === "indexed")) {
          // the usual batch (STOW-RS): distinct keys, all to be indexed: a few statements for the whole batch
          await this.#recordMany(tx, aet, ready as Indexed[], touched);
          for (const key of keys) touched.keys.add(key);
          return prepared.map((item): PromiseSettledResult<RecordOutcome> =>
            "error" in item
              ? { status: "rejected", reason: item.error }
              : { status: "fulfilled", value: "indexed" }
          );
        }
      }
      const results: PromiseSettledResult<RecordOutcome>[] = [];
      for (const item of prepared) {
        if ("error" in item) {
          results.push({ status: "rejected", reason: item.error });
          continue;
        }
        if (!savepoints) {
          results.push({ status: "fulfilled", value: await this.#record(tx, aet, item, touched) });
          touched.keys.add(item.info.key);
          continue;
        }
        // an item failing in SQL is undone alone, as if it had been recorded by a call of its own
        const mine = untouched();
        try {
          const value = await tx.savepoint((sp) => this.#record(sp, aet, item, mine)) as RecordOutcome;
          touched.feed.push(...mine.feed);
          for (const s of mine.series) touched.series.add(s);
          for (const s of mine.studies) touched.studies.add(s);
          for (const s of mine.present) touched.present.add(s);
          touched.keys.add(item.info.key);
          results.push({ status: "fulfilled", value });
        } catch (error) {
          if (connectionLost(error)) throw error;
          results.push({ status: "rejected", reason: error });
        }
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

  /**
   * Files prepared instances of distinct keys, all to be indexed, in four statements (the objects and documents;
   * then, pipelined, the change feed entries and the series rows), with the effects {@linkcode #record} has
   * called item by item: each item reads the series row as the items before it left it.
   */
  async #recordMany(tx: Tx, aet: string, items: Indexed[], touched: Touched): Promise<void> {
    const input = items.map((item, ord) => ({
      ord,
      key: item.info.key,
      size: item.info.size,
      etag: item.info.etag,
      study: item.uids.study,
      series: item.uids.series,
      sop: item.uids.instance,
      sop_class: item.columns.sopClass ?? null,
      instance_number: item.columns.instanceNumber ?? null,
      doc: item.text,
    }));
    const rows = await tx<
      { ord: number; previous: number | null; previous_etag: string | null; source_key: string | null }[]
    >`
      WITH input AS (SELECT * FROM json_to_recordset(${JSON.stringify(input)}::text::json) AS r(ord integer,
        key text COLLATE "C", size bigint, etag text, study text COLLATE "C", series text COLLATE "C",
        sop text COLLATE "C", sop_class text COLLATE "C", instance_number bigint, doc text)),
      previous AS (SELECT o.key, o.state, o.etag FROM objects o JOIN input i ON o.aet = ${aet} AND o.key = i.key),
      o AS (
        INSERT INTO objects (aet, key, size, etag, study, series, sop, state, seen_at, sop_class, instance_number)
        SELECT ${aet}, i.key, i.size, i.etag, i.study, i.series, i.sop, ${INDEXED}, catalog_now_ms(), i.sop_class,
          i.instance_number
        FROM input i ORDER BY i.ord
        ON CONFLICT (aet, key) DO UPDATE SET size = excluded.size, etag = excluded.etag, study = excluded.study,
          series = excluded.series, sop = excluded.sop, state = excluded.state, error = NULL,
          seen_at = excluded.seen_at, sop_class = excluded.sop_class, instance_number = excluded.instance_number
        RETURNING id, key),
      d AS (INSERT INTO documents (id, json) SELECT o.id, i.doc FROM o JOIN input i ON i.key = o.key
        ON CONFLICT (id) DO UPDATE SET json = excluded.json)
      SELECT i.ord, p.state AS previous, p.etag AS previous_etag,
        (SELECT se.source_key FROM series se WHERE se.aet = ${aet} AND se.study = i.study AND se.series = i.series)
          AS source_key
      FROM input i LEFT JOIN previous p ON p.key = i.key ORDER BY i.ord`;
    const creates: typeof input = [];
    const puts: Record<string, SqlValue>[] = [];
    /** The series rows' source keys as the items filed so far leave them. */
    const sources = new Map<string, string | null>();
    for (const row of rows) {
      const item = items[row.ord];
      const { info, uids } = item;
      if (!(row.previous === INDEXED && row.previous_etag === info.etag)) creates.push(input[row.ord]);
      const pair = `${uids.study}\0${uids.series}`;
      const source = sources.has(pair) ? sources.get(pair)! : row.source_key;
      let refresh = row.previous === null || (row.previous !== LISTED && row.previous !== INDEXED);
      if (source === null || source === info.key) {
        const record = instanceRecord(item.json);
        const c = record.seriesColumns;
        puts.push({
          study: record.study!,
          series: record.series!,
          modality: c.modality ?? null,
          series_number: c.number ?? null,
          pps_date: c.ppsDate ?? null,
          pps_time: c.ppsTime ?? null,
          pps_time_high: c.ppsTimeHigh ?? null,
          json: stringifyDicomJson(record.seriesJson),
          study_json: stringifyDicomJson(record.studyJson),
          source_key: info.key,
          source_etag: info.etag,
        });
        sources.set(pair, info.key);
        refresh = true;
      } else {
        sources.set(pair, source);
      }
      if (refresh) {
        touched.series.add(pair);
        touched.studies.add(uids.study);
      }
      touched.present.add(pair);
    }
    const [feed] = await Promise.all([
      creates.length === 0 ? [] : tx<FeedRow[]>`
        WITH input AS (SELECT * FROM json_to_recordset(${
        JSON.stringify(creates.map(({ ord, key, study, series, sop }) => ({ ord, key, study, series, sop })))
      }::text::json) AS r(ord integer, key text COLLATE "C", study text COLLATE "C", series text COLLATE "C",
          sop text COLLATE "C")),
        replaced AS (UPDATE changefeed c SET state = ${REPLACED} FROM input i
          WHERE c.aet = ${aet} AND c.key = i.key AND c.state = ${CURRENT})
        INSERT INTO changefeed (aet, key, study, series, sop, action, state, at)
        SELECT ${aet}, i.key, i.study, i.series, i.sop, ${CREATE}, ${CURRENT}, catalog_now_ms()
        FROM input i ORDER BY i.ord
        RETURNING seq, study, series, sop, action, state, at, NULL AS json`,
      puts.length === 0 ? [] : tx`
        INSERT INTO series (aet, study, series, modality, series_number, pps_date, pps_time, pps_time_high, json,
          study_json, source_key, source_etag)
        SELECT ${aet}, r.study, r.series, r.modality, r.series_number, r.pps_date, r.pps_time, r.pps_time_high,
          r.json, r.study_json, r.source_key, r.source_etag
        FROM json_to_recordset(${JSON.stringify(puts)}::text::json) AS r(study text COLLATE "C",
          series text COLLATE "C", modality text COLLATE "C", series_number bigint, pps_date text COLLATE "C",
          pps_time text COLLATE "C", pps_time_high text COLLATE "C", json text, study_json text,
          source_key text COLLATE "C", source_etag text)
        ON CONFLICT (aet, study, series) DO UPDATE SET modality = excluded.modality,
          series_number = excluded.series_number, pps_date = excluded.pps_date, pps_time = excluded.pps_time,
          pps_time_high = excluded.pps_time_high, json = excluded.json, study_json = excluded.study_json,
          source_key = excluded.source_key, source_etag = excluded.source_etag`,
    ]);
    for (const row of [...feed].sort((a, b) => Number(a.seq) - Number(b.seq))) {
      touched.feed.push(feedEntry(aet, row));
    }
  }

  /** Files one prepared instance (inside a transaction); the series and study to refresh go to `touched`. */
  async #record(tx: Tx, aet: string, item: Prepared, touched: Touched): Promise<RecordOutcome> {
    const { info } = item;
    if (item.outcome !== "indexed") {
      await this.#fail(tx, aet, info, item.outcome === "ignored" ? IGNORED : FAILED, item.reason, touched);
      return item.outcome;
    }
    const { uids, columns } = item;
    // one round trip: the object row, its document, and what the series row says
    const [row] = await tx<
      { id: number; previous: number | null; previous_etag: string | null; source_key: string | null }[]
    >`
      WITH previous AS (SELECT state, etag FROM objects WHERE aet = ${aet} AND key = ${info.key}),
      o AS (
        INSERT INTO objects (aet, key, size, etag, study, series, sop, state, seen_at, sop_class, instance_number)
        VALUES (${aet}, ${info.key}, ${info.size}, ${info.etag}, ${uids.study}, ${uids.series}, ${uids.instance},
          ${INDEXED}, catalog_now_ms(), ${columns.sopClass ?? null}, ${columns.instanceNumber ?? null})
        ON CONFLICT (aet, key) DO UPDATE SET size = excluded.size, etag = excluded.etag, study = excluded.study,
          series = excluded.series, sop = excluded.sop, state = excluded.state, error = NULL,
          seen_at = excluded.seen_at, sop_class = excluded.sop_class, instance_number = excluded.instance_number
        RETURNING id),
      d AS (INSERT INTO documents (id, json) SELECT id, ${item.text} FROM o
        ON CONFLICT (id) DO UPDATE SET json = excluded.json)
      SELECT o.id, (SELECT state FROM previous) AS previous, (SELECT etag FROM previous) AS previous_etag,
        (SELECT source_key FROM series WHERE aet = ${aet} AND study = ${uids.study} AND series = ${uids.series})
          AS source_key
      FROM o`;
    if (!(row.previous === INDEXED && row.previous_etag === info.etag)) {
      await this.#feedCreate(tx, aet, info.key, uids, touched);
    }
    const series = row.source_key === null ? undefined : { source_key: row.source_key };
    let refresh = row.previous === null || (row.previous !== LISTED && row.previous !== INDEXED);
    if (!series || series.source_key === info.key) {
      await this.#putSeries(tx, aet, info, instanceRecord(item.json));
      refresh = true;
    }
    if (refresh) {
      touched.series.add(`${uids.study}\0${uids.series}`);
      touched.studies.add(uids.study);
    }
    touched.present.add(`${uids.study}\0${uids.series}`);
    return "indexed";
  }

  recordFailure(aet: string, info: ObjectInfo, reason: string): Promise<void> {
    const state = parseInstanceKey(info.key) === null ? IGNORED : FAILED;
    return this.#write("a write", aet, undefined, async (tx, touched) => {
      await this.#fail(tx, aet, info, state, reason, touched);
      touched.keys.add(info.key);
    });
  }

  async #fail(tx: Tx, aet: string, info: ObjectInfo, state: number, reason: string, touched: Touched) {
    const uids = parseInstanceKey(info.key);
    const [row] = await tx<{ id: number }[]>`
      INSERT INTO objects (aet, key, size, etag, study, series, sop, state, error, seen_at)
      VALUES (${aet}, ${info.key}, ${info.size}, ${info.etag}, ${uids?.study ?? null}, ${
      uids?.series ?? null
    },
        ${uids?.instance ?? null}, ${state}, ${reason}, catalog_now_ms())
      ON CONFLICT (aet, key) DO UPDATE SET size = excluded.size, etag = excluded.etag, state = excluded.state,
        error = excluded.error, seen_at = excluded.seen_at, sop_class = NULL, instance_number = NULL
      RETURNING id`;
    await tx`DELETE FROM documents WHERE id = ${row.id}`;
    if (uids) await this.#afterLoss(tx, aet, uids.study, uids.series, info.key, touched);
  }

  removeInstance(aet: string, key: string): Promise<void> {
    return this.removeInstances(aet, [key]).then(() => {});
  }

  async removeInstances(aet: string, keys: readonly string[]): Promise<number> {
    if (keys.length === 0) return 0;
    return await this.#write("a delete", aet, undefined, async (tx, touched) => {
      const rows = await tx<ObjectRow[]>`DELETE FROM objects WHERE aet = ${aet} AND key = ANY(${[...keys]})
        RETURNING ${tx.unsafe(OBJECT_COLUMNS)}`;
      if (rows.length === 0) return 0;
      await tx`DELETE FROM documents WHERE id = ANY(${rows.map((row) => row.id)})`;
      await this.#feedDelete(tx, aet, rows.map((row) => row.key), touched);
      for (const row of rows) {
        touched.keys.add(row.key);
        if (row.study === null || row.series === null) continue;
        await tx`DELETE FROM series WHERE aet = ${aet} AND study = ${row.study} AND series = ${row.series}
          AND source_key = ${row.key}`;
        touched.series.add(`${row.study}\0${row.series}`);
        touched.studies.add(row.study);
      }
      return rows.length;
    });
  }

  objectKeys(aet: string, scope: InstanceScope): Promise<string[]> {
    return this.#run("a key listing", async (sql) => {
      const rows = await sql<{ key: string }[]>`SELECT key FROM objects WHERE aet = ${aet}
        AND study = ${scope.study}
        ${scope.series === undefined ? sql`` : sql`AND series = ${scope.series}`}
        ${scope.sop === undefined ? sql`` : sql`AND sop = ${scope.sop}`}
        ORDER BY key`;
      return rows.map((row) => row.key);
    });
  }

  /** After an object left a series (deleted, failed): another instance becomes its source; counts at the end. */
  async #afterLoss(tx: Tx, aet: string, study: string, series: string, key: string, touched: Touched) {
    await tx`DELETE FROM series WHERE aet = ${aet} AND study = ${study} AND series = ${series} AND source_key = ${key}`;
    await this.#rebuildSeries(tx, aet, study, series);
    touched.series.add(`${study}\0${series}`);
    touched.studies.add(study);
  }

  /**
   * Rebuilds the missing series rows and refreshes the counts of what `touched` names: the rebuilds pipelined
   * (independent of each other), then one statement for the series counts and one read for the studies (sent
   * together: the server runs them in order), then one delete and one upsert for the studies.
   */
  async #refresh(tx: Tx, aet: string, touched: Touched): Promise<void> {
    const series = [...touched.series].map((pair) => pair.split("\0"));
    const studies = [...touched.studies];
    touched.series.clear();
    touched.studies.clear();
    await Promise.all(
      series.filter(([study, uid]) => !touched.present.has(`${study}\0${uid}`))
        .map(([study, uid]) => this.#rebuildSeries(tx, aet, study, uid)),
    );
    touched.present.clear();
    if (series.length === 0 && studies.length === 0) return;
    const [, counts] = await Promise.all([
      series.length === 0 ? [] : tx`
        WITH t AS (SELECT * FROM json_to_recordset(${
        JSON.stringify(series.map(([study, uid]) => ({ study, series: uid })))
      }::text::json) AS r(study text COLLATE "C", series text COLLATE "C")),
        n AS MATERIALIZED (SELECT
          (SELECT se.id FROM series se WHERE se.aet = ${aet} AND se.study = t.study AND se.series = t.series) AS id,
          (SELECT count(*) FROM objects o WHERE o.aet = ${aet} AND o.study = t.study AND o.series = t.series
            AND o.state IN (${LISTED}, ${INDEXED})) AS n
          FROM t),
        gone AS (DELETE FROM series WHERE id = ANY (ARRAY(SELECT id FROM n WHERE n = 0 AND id IS NOT NULL)))
        UPDATE series se SET num_instances = (SELECT n.n FROM n WHERE n.id = se.id)
        WHERE se.id = ANY (ARRAY(SELECT id FROM n WHERE n > 0 AND id IS NOT NULL))
          AND se.num_instances <> (SELECT n.n FROM n WHERE n.id = se.id)`,
      studies.length === 0 ? [] : tx<
        {
          study: string;
          study_json: string | null;
          modalities: (string | null)[] | null;
          series: number;
          instances: number;
          classes: string[] | null;
        }[]
      >`
        WITH t AS (SELECT * FROM json_to_recordset(${
        JSON.stringify(studies.map((study) => ({ study })))
      }::text::json) AS r(study text COLLATE "C"))
        SELECT t.study, f.study_json, m.modalities, c.series, c.instances, c.classes
        FROM t
        LEFT JOIN LATERAL (SELECT se.study_json FROM series se WHERE se.aet = ${aet} AND se.study = t.study
          ORDER BY se.series LIMIT 1) f ON TRUE
        LEFT JOIN LATERAL (SELECT array_agg(se.modality) AS modalities FROM series se
          WHERE se.aet = ${aet} AND se.study = t.study) m ON TRUE
        LEFT JOIN LATERAL (SELECT count(DISTINCT o.series) AS series, count(*) AS instances,
          array_agg(DISTINCT o.sop_class ORDER BY o.sop_class) FILTER (WHERE o.sop_class IS NOT NULL) AS classes
          FROM objects o WHERE o.aet = ${aet} AND o.study = t.study AND o.state IN (${LISTED}, ${INDEXED})) c
          ON TRUE`,
    ]);
    const gone: string[] = [];
    const rows: Record<string, SqlValue>[] = [];
    for (const row of counts) {
      if (row.study_json === null || row.instances === 0) {
        gone.push(row.study);
        continue;
      }
      const c = studyColumns(JSON.parse(row.study_json));
      const modalities = [...new Set((row.modalities ?? []).filter((m): m is string => !!m))].sort();
      rows.push({
        study: row.study,
        study_date: c.date ?? null,
        study_time: c.time ?? null,
        study_time_high: c.timeHigh ?? null,
        accession: c.accession ?? null,
        referring: c.referring ?? null,
        patient_name: c.patientName ?? null,
        patient_id: c.patientId ?? null,
        study_id: c.studyId ?? null,
        modalities: modalities.join("\\"),
        sop_classes: (row.classes ?? []).join("\\"),
        num_series: row.series,
        num_instances: row.instances,
        json: row.study_json,
      });
    }
    await Promise.all([
      gone.length === 0 ? [] : tx`DELETE FROM studies WHERE aet = ${aet} AND study = ANY(${gone})`,
      rows.length === 0 ? [] : tx`
        INSERT INTO studies (aet, study, study_date, study_time, study_time_high, accession, referring, patient_name,
          patient_id, study_id, modalities, sop_classes, num_series, num_instances, json)
        SELECT ${aet}, r.study, r.study_date, r.study_time, r.study_time_high, r.accession, r.referring,
          r.patient_name, r.patient_id, r.study_id, r.modalities, r.sop_classes, r.num_series, r.num_instances, r.json
        FROM json_to_recordset(${JSON.stringify(rows)}::text::json) AS r(study text COLLATE "C",
          study_date text COLLATE "C", study_time text COLLATE "C", study_time_high text COLLATE "C",
          accession text COLLATE "C", referring text COLLATE "C", patient_name text COLLATE "C",
          patient_id text COLLATE "C", study_id text COLLATE "C", modalities text, sop_classes text,
          num_series integer, num_instances integer, json text)
        ON CONFLICT (aet, study) DO UPDATE SET study_date = excluded.study_date, study_time = excluded.study_time,
          study_time_high = excluded.study_time_high, accession = excluded.accession, referring = excluded.referring,
          patient_name = excluded.patient_name, patient_id = excluded.patient_id, study_id = excluded.study_id,
          modalities = excluded.modalities, sop_classes = excluded.sop_classes, num_series = excluded.num_series,
          num_instances = excluded.num_instances, json = excluded.json`,
    ]);
  }

  /** Rebuilds a missing series row from an indexed instance of it, if there is one; true when done. */
  async #rebuildSeries(tx: Tx, aet: string, study: string, series: string): Promise<boolean> {
    const [row] = await tx<
      { present: boolean; key: string | null; etag: string | null; json: string | null }[]
    >`
      SELECT EXISTS (SELECT 1 FROM series WHERE aet = ${aet} AND study = ${study} AND series = ${series}) AS present,
        f.key, f.etag, f.json
      FROM (SELECT 1) one LEFT JOIN LATERAL (
        SELECT o.key, o.etag, d.json FROM objects o JOIN documents d ON d.id = o.id
        WHERE o.aet = ${aet} AND o.study = ${study} AND o.series = ${series} AND o.state = ${INDEXED}
        ORDER BY o.key LIMIT 1) f ON TRUE`;
    if (row.present) return true;
    if (row.key === null || row.json === null) return false;
    await this.#putSeries(tx, aet, { key: row.key, etag: row.etag! }, instanceRecord(JSON.parse(row.json)));
    return true;
  }

  async #putSeries(tx: Tx, aet: string, info: Pick<ObjectInfo, "key" | "etag">, record: InstanceRecord) {
    const c = record.seriesColumns;
    await tx`
      INSERT INTO series (aet, study, series, modality, series_number, pps_date, pps_time, pps_time_high, json,
        study_json, source_key, source_etag)
      VALUES (${aet}, ${record.study!}, ${record.series!}, ${c.modality ?? null}, ${c.number ?? null},
        ${c.ppsDate ?? null}, ${c.ppsTime ?? null}, ${c.ppsTimeHigh ?? null}, ${
      stringifyDicomJson(record.seriesJson)
    },
        ${stringifyDicomJson(record.studyJson)}, ${info.key}, ${info.etag})
      ON CONFLICT (aet, study, series) DO UPDATE SET modality = excluded.modality,
        series_number = excluded.series_number, pps_date = excluded.pps_date, pps_time = excluded.pps_time,
        pps_time_high = excluded.pps_time_high, json = excluded.json, study_json = excluded.study_json,
        source_key = excluded.source_key, source_etag = excluded.source_etag`;
  }

  // ---- crawling ----

  async beginCrawl(
    aet: string,
    bucket: string,
    owner: string,
    leaseMs: number,
  ): Promise<CrawlTicket | undefined> {
    const ticket = await this.#write("a crawl lease", aet, undefined, async (tx) => {
      const [row] = await tx<
        { bucket: string | null; owner: string | null; lease_until: number | null; now: number }[]
      >`
        SELECT a.bucket, a.owner, a.lease_until, catalog_now_ms() AS now
        FROM (SELECT 1) one LEFT JOIN aets a ON a.aet = ${aet}`;
      const now = row.now;
      if (row.owner && row.owner !== owner && (row.lease_until ?? 0) > now) return undefined;
      if (row.bucket !== null && row.bucket !== bucket) {
        await tx`DELETE FROM documents WHERE id IN (SELECT id FROM objects WHERE aet = ${aet})`;
        await tx`DELETE FROM objects WHERE aet = ${aet}`;
        await tx`DELETE FROM series WHERE aet = ${aet}`;
        await tx`DELETE FROM studies WHERE aet = ${aet}`;
        await tx`UPDATE aets SET complete_at = NULL WHERE aet = ${aet}`;
      }
      await tx`INSERT INTO aets (aet, bucket, owner, lease_until) VALUES (${aet}, ${bucket}, ${owner}, ${
        now + leaseMs
      })
        ON CONFLICT (aet) DO UPDATE SET bucket = excluded.bucket, owner = excluded.owner,
          lease_until = excluded.lease_until`;
      return { aet, bucket, owner, startedAt: now };
    });
    if (ticket) this.#listings.set(ticket, { dirty: new Set(), deleted: 0 });
    return ticket;
  }

  renewCrawl(ticket: CrawlTicket, leaseMs: number): Promise<boolean> {
    return this.#run("a lease renewal", async (sql) => {
      const rows = await sql`UPDATE aets SET lease_until = catalog_now_ms() + ${leaseMs}
        WHERE aet = ${ticket.aet} AND owner = ${ticket.owner} RETURNING 1`;
      return rows.length > 0;
    });
  }

  #listing(ticket: CrawlTicket): ListingState {
    const state = this.#listings.get(ticket);
    if (!state) throw new TypeError(`Not a crawl ticket of this catalog: ${ticket.aet}`);
    return state;
  }

  async applyListing(ticket: CrawlTicket, infos: ObjectInfo[]): Promise<ListingCounts> {
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
    await this.#write("a listing batch", aet, ticket.bucket, async (tx, touched) => {
      // Merge with the stored rows of the same key range: rows the listing skipped were deleted from the bucket.
      const stored = state.cursor === undefined
        ? await tx<ObjectRow[]>`SELECT ${tx.unsafe(OBJECT_COLUMNS)} FROM objects
            WHERE aet = ${aet} AND key <= ${last}`
        : await tx<ObjectRow[]>`SELECT ${tx.unsafe(OBJECT_COLUMNS)} FROM objects
            WHERE aet = ${aet} AND key > ${state.cursor} AND key <= ${last}`;
      const byKey = new Map(stored.map((row) => [row.key, row]));
      const inserts: Record<string, SqlValue>[] = [];
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
        if (!uids) counts.ignored++;
        touched.keys.add(info.key);
        if (row) {
          counts.changed++;
          await tx`UPDATE objects SET size = ${info.size}, etag = ${info.etag}, state = ${objectState},
            error = ${error}, seen_at = catalog_now_ms(), sop_class = NULL, instance_number = NULL WHERE id = ${row.id}`;
          await tx`DELETE FROM documents WHERE id = ${row.id}`;
          if (row.study !== null && row.series !== null) {
            await tx`DELETE FROM series WHERE aet = ${aet} AND study = ${row.study} AND series = ${row.series}
              AND source_key = ${info.key}`;
            state.dirty.add(`${row.study}\0${row.series}`);
          }
        } else {
          if (uids) counts.added++;
          inserts.push({
            key: info.key,
            size: info.size,
            etag: info.etag,
            study: uids?.study ?? null,
            series: uids?.series ?? null,
            sop: uids?.instance ?? null,
            state: objectState,
            error,
          });
        }
        if (uids) state.dirty.add(`${uids.study}\0${uids.series}`);
      }
      if (inserts.length > 0) {
        await tx`INSERT INTO objects (aet, key, size, etag, study, series, sop, state, error, seen_at)
          SELECT ${aet}, r.key, r.size, r.etag, r.study, r.series, r.sop, r.state, r.error, catalog_now_ms()
          FROM json_to_recordset(${JSON.stringify(inserts)}::text::json)
            AS r(key text, size bigint, etag text, study text, series text, sop text, state smallint, error text)`;
      }
      await this.#forget(tx, ticket, state, [...byKey.values()], touched);
    });
    state.cursor = last;
    return counts;
  }

  /** Deletes stored rows the listing did not show, unless written after the crawl began (STOW). */
  async #forget(tx: Tx, ticket: CrawlTicket, state: ListingState, rows: ObjectRow[], touched: Touched) {
    const gone = rows.filter((row) => row.seen_at < ticket.startedAt);
    if (gone.length === 0) return;
    const ids = JSON.stringify(gone.map((row) => row.id));
    const keys = JSON.stringify(gone.map((row) => row.key));
    await tx`DELETE FROM objects WHERE id IN (SELECT (json_array_elements_text(${ids}::text::json))::bigint)`;
    await tx`DELETE FROM documents WHERE id IN (SELECT (json_array_elements_text(${ids}::text::json))::bigint)`;
    await tx`DELETE FROM series WHERE aet = ${ticket.aet}
      AND source_key IN (SELECT json_array_elements_text(${keys}::text::json))`;
    await this.#feedDelete(tx, ticket.aet, gone.map((row) => row.key), touched);
    state.deleted += gone.length;
    for (const row of gone) {
      touched.keys.add(row.key);
      if (row.study !== null && row.series !== null) state.dirty.add(`${row.study}\0${row.series}`);
    }
  }

  async finishListing(ticket: CrawlTicket): Promise<number> {
    const state = this.#listing(ticket);
    const aet = ticket.aet;
    await this.#write("the end of a listing", aet, ticket.bucket, async (tx, touched) => {
      const rest = state.cursor === undefined
        ? await tx<ObjectRow[]>`SELECT ${tx.unsafe(OBJECT_COLUMNS)} FROM objects WHERE aet = ${aet}`
        : await tx<ObjectRow[]>`SELECT ${tx.unsafe(OBJECT_COLUMNS)} FROM objects
            WHERE aet = ${aet} AND key > ${state.cursor}`;
      await this.#forget(tx, ticket, state, rest, touched);
      // Only series that have a row or an indexed instance can change: a first crawl's series have neither.
      const dirty = [...state.dirty].map((pair) => pair.split("\0"));
      if (dirty.length === 0) return;
      const affected = await tx<{ study: string; series: string }[]>`
        SELECT d.study, d.series FROM json_to_recordset(${
        JSON.stringify(dirty.map(([study, series]) => ({ study, series })))
      }::text::json)
          AS d(study text, series text)
        WHERE EXISTS (SELECT 1 FROM series se WHERE se.aet = ${aet} AND se.study = d.study AND se.series = d.series)
          OR EXISTS (SELECT 1 FROM objects o WHERE o.aet = ${aet} AND o.study = d.study AND o.series = d.series
            AND o.state = ${INDEXED})
          OR EXISTS (SELECT 1 FROM studies s WHERE s.aet = ${aet} AND s.study = d.study)`;
      for (const { study, series } of affected) {
        touched.series.add(`${study}\0${series}`);
        touched.studies.add(study);
      }
    });
    const deleted = state.deleted;
    state.dirty.clear();
    state.deleted = 0;
    return deleted;
  }

  seriesToRead(aet: string, limit: number): Promise<SeriesCandidate[]> {
    return this.#run("a query", async (sql) => {
      const missing = await sql<{ study: string; series: string; indexed: boolean; key: string | null }[]>`
        SELECT o.study, o.series, bool_or(o.state = ${INDEXED}) AS indexed,
          min(o.key) FILTER (WHERE o.state = ${LISTED}) AS key
        FROM objects o WHERE o.aet = ${aet} AND o.state IN (${LISTED}, ${INDEXED}) AND NOT EXISTS
          (SELECT 1 FROM series se WHERE se.aet = o.aet AND se.study = o.study AND se.series = o.series)
        GROUP BY o.study, o.series LIMIT ${limit}`;
      const candidates: SeriesCandidate[] = [];
      const toRead: { study: string; series: string; key: string }[] = [];
      for (const row of missing) {
        if (row.indexed) {
          const rebuilt = await this.#write("a series rebuild", aet, undefined, async (tx, touched) => {
            if (!await this.#rebuildSeries(tx, aet, row.study, row.series)) return false;
            touched.series.add(`${row.study}\0${row.series}`);
            touched.studies.add(row.study);
            return true;
          });
          if (rebuilt) continue;
        }
        if (row.key !== null) toRead.push({ study: row.study, series: row.series, key: row.key });
      }
      if (toRead.length > 0) {
        const infos = await sql<{ key: string; size: number; etag: string }[]>`
          SELECT key, size, etag FROM objects WHERE aet = ${aet}
            AND key IN (SELECT json_array_elements_text(${
          JSON.stringify(toRead.map((r) => r.key))
        }::text::json))`;
        const byKey = new Map(infos.map((info) => [info.key, info]));
        for (const { study, series, key } of toRead) {
          const info = byKey.get(key);
          if (info) {
            candidates.push({ study, series, info: { key: info.key, size: info.size, etag: info.etag } });
          }
        }
      }
      return candidates;
    });
  }

  pendingObjects(aet: string, scope: Scope, limit: number): Promise<ObjectInfo[]> {
    return this.#run("a query", async (sql) => {
      const where = ["aet = ?", `state = ${LISTED}`];
      const args: SqlValue[] = [aet];
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
      args.push(limit);
      const rows = await sql.unsafe<{ key: string; size: number; etag: string }[]>(
        numberPlaceholders(
          `SELECT key, size, etag FROM objects WHERE ${where.join(" AND ")} ORDER BY key LIMIT ?`,
        ),
        args,
        { prepare: true },
      );
      return rows.map((r) => ({ key: r.key, size: r.size, etag: r.etag }));
    });
  }

  endCrawl(ticket: CrawlTicket, outcome: { complete: boolean; error?: string }): Promise<void> {
    return this.#run("the end of a crawl", async (sql) => {
      await sql`UPDATE aets SET owner = NULL, lease_until = NULL, last_error = ${outcome.error ?? null},
        complete_at = CASE WHEN ${outcome.complete} THEN ${ticket.startedAt}::bigint ELSE complete_at END
        WHERE aet = ${ticket.aet} AND owner = ${ticket.owner}`;
      this.#listings.delete(ticket);
    });
  }

  // ---- reading ----

  search(query: CatalogQuery): Promise<SearchRow[]> {
    return this.#run("a search", async (sql) => {
      const { level } = query;
      const args: SqlValue[] = [query.aet];
      let select =
        "s.study, s.json AS study_json, s.modalities, s.sop_classes, s.num_series, s.num_instances";
      let from = "studies s";
      const where: string[] = [];
      let order = "s.study_date DESC NULLS LAST, s.study_time DESC NULLS LAST, s.study";
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
      const residuals: Residual[] = [];
      for (const filter of query.filters) where.push(condition(filter, level, args, POSTGRES, residuals));
      for (const r of residuals) if (r.kind === "pn") select += `, ${r.column} AS pn${r.index}`;
      const base = `SELECT ${select} FROM ${from} WHERE ${where.join(" AND ")} ORDER BY ${order}`;
      if (residuals.length === 0 && query.offset === 0) {
        args.push(query.limit);
        const rows = await sql.unsafe<Row[]>(numberPlaceholders(`${base} LIMIT ?`), args, { prepare: true });
        return rows.map(toSearchRow);
      }
      if (residuals.length === 0) {
        // A deep page: OFFSET walks the skipped rows, so walk them on the keys alone (the order index covers the
        // study level) and read the documents of the page's rows only.
        const keys = level === "study"
          ? { select: "s.study AS page_study", join: "s.study = page.page_study" }
          : level === "series"
          ? {
            select: "se.study AS page_study, se.series AS page_series",
            join: "se.study = page.page_study AND se.series = page.page_series",
          }
          : { select: "o.id AS page_id", join: "o.id = page.page_id" };
        const page = `SELECT ${keys.select} FROM ${from} WHERE ${
          where.join(" AND ")
        } ORDER BY ${order} LIMIT ? OFFSET ?`;
        args.push(query.limit, query.offset, query.aet);
        const text =
          `SELECT ${select} FROM ${from} JOIN (${page}) page ON ${keys.join} WHERE ${own}.aet = ? ORDER BY ${order}`;
        const rows = await sql.unsafe<Row[]>(numberPlaceholders(text), args, { prepare: true });
        return rows.map(toSearchRow);
      }
      // Some filters are matched here: read matching candidates in order through a cursor, page after matching.
      const results: SearchRow[] = [];
      let skip = query.offset;
      const wanted = query.limit;
      if (wanted === 0) return results;
      const accepts = (row: Row) =>
        residuals.every((r) => {
          if (r.kind === "pn") {
            const names = row[`pn${r.index}`];
            const values = typeof names === "string" && names !== "" ? names.split("\\") : [""];
            return values.some((name) => matchPersonName(name, r.filter.matcher, r.filter.fuzzy));
          }
          const text = r.filter.level === "study"
            ? row.study_json
            : r.filter.level === "series"
            ? row.series_json
            : row.instance_json;
          return typeof text === "string" && matchDataset(JSON.parse(text) as DicomJson, r.filter);
        });
      await sql.begin(async (tx) => {
        const cursor = tx.unsafe<Row[]>(numberPlaceholders(base), args, { prepare: true }).cursor(200);
        for await (const batch of cursor) {
          for (const row of batch) {
            if (!accepts(row)) continue;
            if (skip > 0) {
              skip--;
              continue;
            }
            results.push(toSearchRow(row));
            if (results.length >= wanted) return;
          }
        }
      });
      return results;
    });
  }

  instanceMetadata(aet: string, study: string, series?: string): Promise<StoredInstance[]> {
    return this.#run("a metadata query", async (sql) => {
      const rows = series === undefined
        ? await sql<StoredInstance[]>`SELECT o.key, o.series, o.sop, o.etag, d.json
            FROM objects o JOIN documents d ON d.id = o.id
            WHERE o.aet = ${aet} AND o.study = ${study} AND o.state = ${INDEXED} ORDER BY o.key`
        : await sql<StoredInstance[]>`SELECT o.key, o.series, o.sop, o.etag, d.json
            FROM objects o JOIN documents d ON d.id = o.id
            WHERE o.aet = ${aet} AND o.study = ${study} AND o.series = ${series} AND o.state = ${INDEXED}
            ORDER BY o.key`;
      return rows.map((r) => ({ key: r.key, series: r.series, sop: r.sop, etag: r.etag, json: r.json }));
    });
  }

  completedAt(aet: string): Promise<number | undefined> {
    return this.#run("a query", async (sql) => {
      const [row] = await sql<
        { complete_at: number | null }[]
      >`SELECT complete_at FROM aets WHERE aet = ${aet}`;
      return row?.complete_at ?? undefined;
    });
  }

  status(aet?: string): Promise<AetStatus[]> {
    return this.#run("a status query", async (sql) => {
      const rows = await sql<{
        aet: string;
        bucket: string;
        complete_at: number | null;
        last_error: string | null;
        owner: string | null;
        lease_until: number | null;
        now: number;
        objects: number;
        indexed: number;
        pending: number;
        failed: number;
        ignored: number;
        studies: number;
        series: number;
      }[]>`
        SELECT a.aet, a.bucket, a.complete_at, a.last_error, a.owner, a.lease_until, catalog_now_ms() AS now,
          c.objects, c.indexed, c.pending, c.failed, c.ignored,
          (SELECT count(*) FROM studies s WHERE s.aet = a.aet) AS studies,
          (SELECT count(*) FROM series se WHERE se.aet = a.aet) AS series
        FROM aets a LEFT JOIN LATERAL (
          SELECT count(*) AS objects, count(*) FILTER (WHERE state = ${INDEXED}) AS indexed,
            count(*) FILTER (WHERE state = ${LISTED}) AS pending, count(*) FILTER (WHERE state = ${FAILED}) AS failed,
            count(*) FILTER (WHERE state = ${IGNORED}) AS ignored
          FROM objects o WHERE o.aet = a.aet) c ON TRUE
        WHERE ${aet ?? null}::text IS NULL OR a.aet = ${aet ?? null}
        ORDER BY a.aet`;
      return rows.map((row) => ({
        aet: row.aet,
        bucket: row.bucket,
        objects: row.objects,
        indexed: row.indexed,
        pending: row.pending,
        failed: row.failed,
        ignored: row.ignored,
        studies: row.studies,
        series: row.series,
        completeAt: row.complete_at ?? undefined,
        lastError: row.last_error ?? undefined,
        crawlingBy: row.owner && (row.lease_until ?? 0) > row.now ? row.owner : undefined,
      }));
    });
  }

  failures(aet?: string, limit = 1000): Promise<ObjectProblem[]> {
    return this.#run("a query", async (sql) => {
      const rows = aet === undefined
        ? await sql<{ aet: string; key: string; state: number; error: string | null; etag: string }[]>`
            SELECT aet, key, state, error, etag FROM objects WHERE state IN (${FAILED}, ${IGNORED})
            ORDER BY aet, key LIMIT ${limit}`
        : await sql<{ aet: string; key: string; state: number; error: string | null; etag: string }[]>`
            SELECT aet, key, state, error, etag FROM objects WHERE aet = ${aet} AND state IN (${FAILED}, ${IGNORED})
            ORDER BY key LIMIT ${limit}`;
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
    return this.#run("a change feed query", async (sql) => {
      const rows = await sql<FeedRow[]>`${sql.unsafe(feedSelect(query.includeMetadata))}
        WHERE c.aet = ${query.aet} AND c.at >= ${query.startTime ?? -8.64e15} AND c.at < ${
        query.endTime ?? 8.64e15
      }
        ORDER BY c.seq LIMIT ${query.limit} OFFSET ${query.offset}`;
      return rows.map((row) => feedEntry(query.aet, row));
    });
  }

  latestChange(aet: string, includeMetadata: boolean): Promise<ChangeFeedEntry | undefined> {
    return this.#run("a change feed query", async (sql) => {
      const [row] = await sql<FeedRow[]>`${sql.unsafe(feedSelect(includeMetadata))}
        WHERE c.aet = ${aet} ORDER BY c.seq DESC LIMIT 1`;
      return row && feedEntry(aet, row);
    });
  }

  /** Closes the pool (waiting up to 5 s for running queries). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#probe);
    clearTimeout(this.#listenRetry);
    this.#probe = undefined;
    await this.#sql.end({ timeout: 5 });
  }
}

type Row = Record<string, string | number | null>;

function toSearchRow(row: Row): SearchRow {
  return {
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
  };
}
