/**
 * Fills the {@linkcode Catalog} from the buckets, cheaply:
 *
 * 1. one flat, paginated listing per AET (`store.list(bucket, "")`), compared with the stored key, size and
 *    ETag: unchanged objects are never read again, objects gone from the listing are deleted;
 * 2. one header per series (a ranged read of the object's front, never its pixel data): study and series
 *    attributes are the same in every instance of a series, and the counts come from the listing, so study and
 *    series search are complete after this step;
 * 3. the remaining instance headers, in the background (`eagerInstances`) and on demand for the series a QIDO
 *    instance search or a metadata request needs ({@linkcode Crawler.ensureIndexed}).
 *
 * Objects that cannot be read are recorded as failed with the reason (not retried until their ETag changes);
 * store failures (unreachable, denied) end the crawl instead, without blaming any object. Crawls run at start-up,
 * every `intervalSeconds`, and on demand; progress is logged at most every few seconds.
 *
 * @module
 */

import type { AetRegistry } from "../objects/aets.ts";
import type { Catalog, CrawlTicket, Scope } from "./catalog.ts";
import { HeaderCache, loadHeader } from "../objects/header_cache.ts";
import { type ObjectInfo, type ObjectStore, StoreError } from "../store/store.ts";
import { CorruptObjectError, NotFoundError } from "../util/errors.ts";

/** What a crawler needs. */
export interface CrawlerOptions {
  /** The store to list and read. */
  store: ObjectStore;
  /** The AETs to crawl and their buckets. */
  aets: Pick<AetRegistry, "entries" | "bucket">;
  /** The catalog to fill. */
  catalog: Catalog;
  /** Log sink (default `console.log`). */
  log?: (line: string) => void;
  /** Must equal the server's `bulkDataThreshold` so stored JSON matches the metadata route (default 1024). */
  bulkDataThreshold?: number;
  /** Header reads in flight per AET (default 8). */
  concurrency?: number;
  /** Read every instance header in the background after the series pass (default true). */
  eagerInstances?: boolean;
  /** Minimum milliseconds between two progress lines (default 5000). */
  progressInterval?: number;
  /**
   * Crawl lease duration; a timer renews it every third of it while the crawl runs (default 40 s). A server crawler
   * ({@linkcode Crawler.start}) that finds the lease held tries again every quarter of it until the holder
   * completes or its lease runs out, so a killed replica's crawl is taken over within about a minute.
   */
  leaseMs?: number;
  /** Names this process in leases (default a random id). */
  owner?: string;
}

/** The outcome of one crawl of one AET. */
export interface CrawlReport {
  /** The AET crawled. */
  aet: string;
  /** Its bucket, once known. */
  bucket?: string;
  /** How the crawl ended. */
  outcome: "complete" | "failed" | "skipped" | "stopped";
  /** Objects listed. */
  listed: number;
  /** Keys new to the catalog. */
  added: number;
  /** Keys whose ETag or size changed. */
  changed: number;
  /** Keys unchanged. */
  unchanged: number;
  /** Keys outside the layout. */
  ignored: number;
  /** Keys no longer in the bucket, forgotten. */
  deleted: number;
  /** Headers read to fill study and series rows (one per new or changed series). */
  seriesHeaders: number;
  /** Objects recorded as failed during this crawl. */
  failed: number;
  /** Bytes of headers read (ranged GETs) during this crawl's series pass. */
  headerBytes: number;
  /** Milliseconds the listing took. */
  listingMs: number;
  /** When the crawl started (ms since the epoch). */
  startedAt: number;
  /** When it finished. */
  finishedAt?: number;
  /** Why it failed, if it did. */
  error?: string;
}

/** Live progress of one AET (for `GET /admin/index`). */
export interface AetProgress {
  /** The AET. */
  aet: string;
  /** What the crawler is doing now. */
  phase: "idle" | "listing" | "series" | "instances";
  /** Objects listed by the running crawl. */
  listed: number;
  /** Headers read since the process started (series and instances). */
  headersRead: number;
  /** Bytes read for those headers. */
  headerBytes: number;
  /** Headers that could not be read. */
  failed: number;
  /** Instance headers still to read by the background pass (when running). */
  instancesPending?: number;
  /** The last finished crawl. */
  last?: CrawlReport;
}

interface AetState {
  progress: AetProgress;
  crawl?: Promise<CrawlReport>;
  fill?: Promise<void>;
  /** Resolves when a crawl has made study/series search complete. */
  ready: Promise<void>;
  /** Whether the catalog says a crawl completed (in this process or an earlier one). */
  complete?: boolean;
  /** While another process holds the lease: the timer that tries again. */
  takeover?: ReturnType<typeof setInterval>;
  /** The catalog's completion time when the lease was last found held (null: never completed). */
  takeoverSince?: number | null;
  markReady: () => void;
}

/** What reading one object into the catalog did (see {@linkcode Crawler.index}). */
export type ReadOutcome = "indexed" | "failed" | "ignored" | "gone";

/** One crawl under way: its lease, report and progress, its progress lines, and whether the lease is held. */
interface CrawlRun {
  ticket: CrawlTicket;
  report: CrawlReport;
  progress: AetProgress;
  throttle: Throttle;
  /** Throws once the lease was lost (another process took the crawl over). */
  checkLease: () => void;
}

/**
 * Crawls AETs into a catalog. One per catalog in a process: the server's routes, its background timer and the
 * index CLI each get theirs passed in (see lib/app/open.ts), so they share progress and in-flight reads.
 */
export class Crawler {
  readonly #store: ObjectStore;
  readonly #aets: Pick<AetRegistry, "entries" | "bucket">;
  readonly #catalog: Catalog;
  readonly #log: (line: string) => void;
  readonly #threshold: number;
  readonly #concurrency: number;
  readonly #eager: boolean;
  readonly #every: number;
  readonly #leaseMs: number;
  readonly #owner: string;
  readonly #states = new Map<string, AetState>();
  readonly #inflight = new Map<string, Promise<ReadOutcome>>();
  /** Counts bytes and misses of header reads; never caches (a crawl would only evict the server's hot headers). */
  readonly #headers = new HeaderCache(0);
  #timer?: ReturnType<typeof setInterval>;
  #stopped = false;
  /** Started by {@linkcode Crawler.start}: a skipped crawl is tried again (see `leaseMs`). */
  #serving = false;

  /** A crawler of `options.catalog` (start its timer with {@linkcode Crawler.start}). */
  constructor(options: CrawlerOptions) {
    this.#store = options.store;
    this.#aets = options.aets;
    this.#catalog = options.catalog;
    this.#log = options.log ?? ((line) => console.log(line));
    this.#threshold = options.bulkDataThreshold ?? 1024;
    this.#concurrency = options.concurrency ?? 8;
    this.#eager = options.eagerInstances ?? true;
    this.#every = options.progressInterval ?? 5_000;
    this.#leaseMs = options.leaseMs ?? 40_000;
    this.#owner = options.owner ?? `crawler-${crypto.randomUUID().slice(0, 8)}`;
  }

  /** The name this process holds crawl leases under (`crawlingBy` in the catalog's status). */
  get owner(): string {
    return this.#owner;
  }

  /** Header reads and bytes so far (all AETs). */
  get headerReads(): { count: number; bytes: number } {
    return { count: this.#headers.misses, bytes: this.#headers.bytesRead };
  }

  /**
   * Crawls every AET now, then every `intervalSeconds` (0: only now). Never throws: failures are logged and
   * reported by {@linkcode Crawler.progress}.
   */
  start(intervalSeconds: number): void {
    this.#stopped = false;
    this.#serving = true;
    const run = () => {
      this.crawlAll().catch((error) => this.#log(`catalog: crawl failed: ${message(error)}`));
    };
    run();
    if (intervalSeconds > 0 && this.#timer === undefined) {
      this.#timer = setInterval(run, intervalSeconds * 1000);
    }
  }

  /** Stops the timer and background reads; resolves when running crawls have stopped. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    for (const state of this.#states.values()) {
      clearInterval(state.takeover);
      state.takeover = undefined;
    }
    const running = [...this.#states.values()].flatMap((s) => [s.crawl, s.fill]).filter((p) =>
      p !== undefined
    );
    await Promise.allSettled(running);
  }

  /** Crawls every AET (one after another). */
  async crawlAll(options: { waitForInstances?: boolean } = {}): Promise<CrawlReport[]> {
    const reports: CrawlReport[] = [];
    for (const [aet] of await this.#aets.entries()) reports.push(await this.crawl(aet, options));
    return reports;
  }

  /**
   * Crawls one AET: listing and series pass (joins the running crawl of that AET if there is one). The instance
   * pass then runs in the background when `eagerInstances`; `waitForInstances` waits for it too (or runs it, unless
   * the crawl was skipped because another process holds the lease).
   */
  crawl(aet: string, options: { waitForInstances?: boolean } = {}): Promise<CrawlReport> {
    const state = this.#state(aet);
    state.crawl ??= this.#crawl(aet, state).finally(() => {
      state.crawl = undefined;
    });
    if (!options.waitForInstances) return state.crawl;
    return state.crawl.then(async (report) => {
      // a skipped crawl leaves the instance pass to the process that holds the lease
      if (report.outcome !== "skipped") await (state.fill ?? this.#fill(aet, report.bucket));
      return report;
    });
  }

  /** Progress of every AET crawled since start. */
  progress(): AetProgress[] {
    return [...this.#states.values()].map((s) => ({ ...s.progress })).sort((a, b) => a.aet < b.aet ? -1 : 1);
  }

  /**
   * Waits until study/series search of `aet` is complete: at once when a crawl has completed before (in this
   * process or, per the catalog, in an earlier one); else starts a crawl if none runs and waits up to
   * `timeoutMs`. Resolves to whether search is complete.
   */
  async ready(aet: string, timeoutMs: number): Promise<boolean> {
    const state = this.#state(aet);
    if (state.complete || state.progress.last?.outcome === "complete") return true;
    if (await this.#catalog.completedAt(aet) !== undefined) {
      state.complete = true;
      return true;
    }
    const crawl = state.crawl ?? this.crawl(aet);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), timeoutMs));
    try {
      // A failed or skipped crawl answers at once (false) rather than after the timeout.
      const done = crawl.then((report) => report.outcome === "complete", () => false);
      return await Promise.race([state.ready.then(() => true), done, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Reads the header of one object as it is now in the bucket (a bucket event: `info` from a HEAD) and files
   * it: indexed, failed (not readable DICOM, recorded with the reason) or ignored (outside the layout); `gone`
   * when it disappeared meanwhile (then the catalog forgets it). Store failures reject.
   */
  index(aet: string, bucket: string, info: ObjectInfo): Promise<ReadOutcome> {
    return this.#read(aet, bucket, info);
  }

  /**
   * Reads the headers of the not-yet-indexed objects in `scope` (lazy instance rows for a QIDO instance search
   * or a metadata request). Resolves to the number of objects that could not be indexed.
   */
  async ensureIndexed(aet: string, scope: Scope): Promise<number> {
    const bucket = await this.#aets.bucket(aet);
    if (bucket === undefined) return 0;
    let failed = 0;
    let previous = "";
    for (;;) {
      const pending = await this.#catalog.pendingObjects(aet, scope, 1000);
      if (pending.length === 0) break;
      const signature = pending.map((p) => p.key).join("\n");
      if (signature === previous) break; // nothing changed: do not spin
      previous = signature;
      const outcomes = await pool(pending, this.#concurrency, (info) => this.#read(aet, bucket, info));
      failed += outcomes.filter((o) => o === "failed").length;
    }
    return failed;
  }

  #state(aet: string): AetState {
    let state = this.#states.get(aet);
    if (!state) {
      let markReady!: () => void;
      const ready = new Promise<void>((resolve) => markReady = resolve);
      state = {
        progress: { aet, phase: "idle", listed: 0, headersRead: 0, headerBytes: 0, failed: 0 },
        ready,
        markReady,
      };
      this.#states.set(aet, state);
    }
    return state;
  }

  /**
   * One crawl. `takeoverSince`: a takeover attempt (see {@linkcode Crawler.#watchLease}), given up when the
   * lease holder completed its crawl after that time after all (it did so between the look and the lease).
   */
  async #crawl(aet: string, state: AetState, takeoverSince?: number | null): Promise<CrawlReport> {
    const report: CrawlReport = {
      aet,
      outcome: "failed",
      listed: 0,
      added: 0,
      changed: 0,
      unchanged: 0,
      ignored: 0,
      deleted: 0,
      seriesHeaders: 0,
      failed: 0,
      headerBytes: 0,
      listingMs: 0,
      startedAt: Date.now(),
    };
    const progress = state.progress;
    const finish = (outcome: CrawlReport["outcome"], error?: string) => {
      report.outcome = outcome;
      report.error = error;
      report.finishedAt = Date.now();
      progress.last = report;
      if (progress.phase !== "instances") progress.phase = "idle";
      return report;
    };
    const bucket = await this.#aets.bucket(aet);
    if (bucket === undefined) return finish("failed", `Unknown AET ${aet}`);
    report.bucket = bucket;
    // read before asking for the lease: a crawl completed by the holder after this is one to wait for
    const completedBefore = this.#serving ? await this.#catalog.completedAt(aet) : undefined;
    const ticket = await this.#catalog.beginCrawl(aet, bucket, this.#owner, this.#leaseMs);
    if (!ticket) {
      this.#log(`catalog ${aet}: another process is crawling ${bucket}: skipped`);
      if (this.#serving) this.#watchLease(aet, state, completedBefore);
      return finish("skipped", "Another process holds the crawl lease");
    }
    if (takeoverSince !== undefined) {
      const completed = await this.#catalog.completedAt(aet).catch(() => undefined);
      if (completed !== undefined && completed !== takeoverSince) {
        await this.#catalog.endCrawl(ticket, { complete: false }).catch(() => {});
        state.complete = true;
        state.markReady();
        return finish("skipped", "Another process completed the crawl");
      }
    }
    const started = performance.now();
    const throttle = new Throttle(this.#every, this.#log);
    // The lease says "this process is alive and crawling": a timer renews it every third of a lease whatever
    // the crawl is waiting on (a slow listing page, a batch write, a header read under load), so only a process
    // that died or stalls its event loop for a lease loses it. The crawl checks at each step whether it did.
    let lost = false;
    let renewing: Promise<void> | undefined;
    const heartbeat = setInterval(() => {
      if (renewing || lost) return;
      renewing = this.#catalog.renewCrawl(ticket, this.#leaseMs).then(
        (held) => {
          if (!held) lost = true;
        },
        // the catalog is away: try again at the next tick (its other writes fail the crawl if it stays away)
        () => {},
      ).finally(() => renewing = undefined);
    }, Math.max(10, this.#leaseMs / 3));
    const checkLease = () => {
      if (lost) throw new Error("The crawl lease was lost");
    };
    try {
      progress.phase = "listing";
      progress.listed = 0;
      await this.#list({ ticket, report, progress, throttle, checkLease });
      if (this.#stopped) {
        await this.#catalog.endCrawl(ticket, { complete: false, error: "Stopped" });
        return finish("stopped");
      }

      progress.phase = "series";
      const before = { count: this.#headers.misses, bytes: this.#headers.bytesRead };
      await this.#seriesPass({ ticket, report, progress, throttle, checkLease });
      report.headerBytes = this.#headers.bytesRead - before.bytes;
      if (this.#stopped) {
        await this.#catalog.endCrawl(ticket, { complete: false, error: "Stopped" });
        return finish("stopped");
      }
      checkLease();
      await this.#catalog.endCrawl(ticket, { complete: true });
      state.markReady();
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const listing = `${report.listed} objects listed (${rate(report.listed, report.listingMs / 1000)}/s)`;
      const changes =
        `${report.added} new, ${report.changed} changed, ${report.deleted} deleted, ${report.ignored} ignored`;
      const reads = `${report.seriesHeaders} series headers read (${
        kib(report.headerBytes)
      }), ${report.failed} failed`;
      this.#log(`catalog ${aet}: crawl of ${bucket} done in ${seconds} s: ${listing}, ${changes}; ${reads}`);
      finish("complete");
      if (this.#eager && !this.#stopped) {
        state.fill ??= this.#fill(aet, bucket).finally(() => {
          state.fill = undefined;
        });
      }
      return report;
    } catch (error) {
      const why = message(error);
      this.#log(`catalog ${aet}: crawl of ${bucket} failed: ${why}`);
      await this.#catalog.endCrawl(ticket, { complete: false, error: why }).catch(() => {});
      return finish("failed", why);
    } finally {
      clearInterval(heartbeat);
      await renewing;
    }
  }

  /**
   * Another process holds `aet`'s lease: every quarter of a lease, look whether it completed the crawl (then
   * stop looking) or else try to take the crawl over (it succeeds once the holder's lease has run out).
   */
  #watchLease(aet: string, state: AetState, before: number | undefined): void {
    // each skip moves the baseline: only a crawl completed after it ends the watch
    state.takeoverSince = before ?? null;
    if (state.takeover !== undefined) return;
    const stop = () => {
      clearInterval(state.takeover);
      state.takeover = undefined;
    };
    state.takeover = setInterval(async () => {
      if (this.#stopped || state.crawl) return;
      try {
        const completed = await this.#catalog.completedAt(aet);
        if (completed !== undefined && completed !== state.takeoverSince) {
          stop();
          state.complete = true;
          state.markReady();
          return;
        }
        state.crawl ??= this.#crawl(aet, state, state.takeoverSince ?? null).finally(() => {
          state.crawl = undefined;
        });
        const report = await state.crawl;
        if (report.outcome !== "skipped") stop();
      } catch {
        // the catalog is away: try again at the next tick
      }
    }, Math.max(10, this.#leaseMs / 4));
  }

  async #list({ ticket, report, progress, throttle, checkLease }: CrawlRun): Promise<void> {
    const started = performance.now();
    let batch: ObjectInfo[] = [];
    const flush = async () => {
      checkLease();
      const counts = await this.#catalog.applyListing(ticket, batch);
      report.added += counts.added;
      report.changed += counts.changed;
      report.unchanged += counts.unchanged;
      report.ignored += counts.ignored;
      batch = [];
    };
    for await (const info of this.#store.list(ticket.bucket, "")) {
      if (this.#stopped) return;
      batch.push(info);
      report.listed++;
      progress.listed = report.listed;
      if (batch.length >= 1000) {
        await flush();
        const seconds = (performance.now() - started) / 1000;
        throttle.say(() =>
          `catalog ${ticket.aet}: listing ${ticket.bucket}: ${report.listed} objects (${
            rate(report.listed, seconds)
          }/s)`
        );
      }
    }
    if (batch.length > 0) await flush();
    checkLease();
    report.deleted = await this.#catalog.finishListing(ticket);
    report.listingMs = performance.now() - started;
  }

  async #seriesPass({ ticket, report, progress, throttle, checkLease }: CrawlRun): Promise<void> {
    const started = performance.now();
    let total = 0;
    let done = 0;
    let previous = "";
    for (;;) {
      const candidates = await this.#catalog.seriesToRead(ticket.aet, 100_000);
      if (candidates.length === 0 || this.#stopped) return;
      const signature = candidates.map((c) => c.info.key).join("\n");
      if (signature === previous) return;
      previous = signature;
      total = Math.max(total, done + candidates.length);
      await pool(candidates, this.#concurrency, async (candidate) => {
        if (this.#stopped) return;
        checkLease();
        const outcome = await this.#read(ticket.aet, ticket.bucket, candidate.info);
        report.seriesHeaders++;
        if (outcome === "failed") report.failed++;
        done++;
        const seconds = (performance.now() - started) / 1000;
        throttle.say(() =>
          `catalog ${ticket.aet}: series headers: ${done}/${total} (${rate(done, seconds)}/s, ETA ${
            eta(total - done, done / seconds)
          })`
        );
      });
      progress.phase = "series";
    }
  }

  /** The background instance pass: reads every pending header of the AET. */
  async #fill(aet: string, bucket: string | undefined): Promise<void> {
    if (bucket === undefined) return;
    const state = this.#state(aet);
    const progress = state.progress;
    // before the first await: a poller must not see "idle" while the pending count is still being asked for
    progress.phase = "instances";
    const throttle = new Throttle(this.#every, this.#log);
    const started = performance.now();
    const [status] = await this.#catalog.status(aet);
    let total = status?.pending ?? 0;
    let done = 0;
    let failed = 0;
    let previous = "";
    try {
      while (!this.#stopped) {
        const pending = await this.#catalog.pendingObjects(aet, {}, 500);
        if (pending.length === 0) break;
        const signature = pending.map((p) => p.key).join("\n");
        if (signature === previous) break;
        previous = signature;
        progress.phase = "instances";
        total = Math.max(total, done + pending.length);
        progress.instancesPending = total - done;
        await pool(pending, this.#concurrency, async (info) => {
          if (this.#stopped) return;
          if (await this.#read(aet, bucket, info) === "failed") failed++;
          done++;
          progress.instancesPending = Math.max(0, total - done);
          const seconds = (performance.now() - started) / 1000;
          throttle.say(() =>
            `catalog ${aet}: instance headers: ${done}/${total} (${rate(done, seconds)}/s, ETA ${
              eta(total - done, done / seconds)
            })`
          );
        });
      }
      if (done > 0) {
        const seconds = (performance.now() - started) / 1000;
        this.#log(
          `catalog ${aet}: ${done} instance headers read in ${seconds.toFixed(1)} s, ${failed} failed`,
        );
      }
    } catch (error) {
      this.#log(`catalog ${aet}: background instance pass stopped: ${message(error)}`);
    } finally {
      // "instances" is this pass's own phase (a crawl that runs meanwhile shows "listing" or "series"): the pass
      // may end before the crawl that started it has settled, so whether a crawl is set says nothing here
      if (progress.phase === "instances") progress.phase = "idle";
      progress.instancesPending = undefined;
    }
  }

  /** Reads one header into the catalog; concurrent reads of the same object share one GET. */
  #read(aet: string, bucket: string, info: ObjectInfo): Promise<ReadOutcome> {
    const id = `${aet}\0${info.key}\0${info.etag}`;
    let read = this.#inflight.get(id);
    if (!read) {
      read = this.#readNow(aet, bucket, info).finally(() => this.#inflight.delete(id));
      this.#inflight.set(id, read);
    }
    return read;
  }

  async #readNow(aet: string, bucket: string, info: ObjectInfo): Promise<ReadOutcome> {
    const progress = this.#state(aet).progress;
    const bytesBefore = this.#headers.bytesRead;
    try {
      const header = await loadHeader(this.#store, this.#headers, bucket, info, {
        bulkThreshold: this.#threshold,
      });
      return await this.#catalog.recordInstance(aet, bucket, info, header);
    } catch (error) {
      if (error instanceof StoreError) throw error;
      if (error instanceof NotFoundError) {
        await this.#catalog.removeInstance(aet, info.key);
        return "gone";
      }
      const why = reason(error, info.key);
      this.#log(`catalog ${aet}: cannot index ${info.key}: ${why}`);
      await this.#catalog.recordFailure(aet, info, why);
      progress.failed++;
      return "failed";
    } finally {
      progress.headersRead++;
      progress.headerBytes += this.#headers.bytesRead - bytesBefore;
    }
  }
}

/** Runs `fn` over `items` with at most `limit` in flight; rejects with the first error after all settle. */
async function pool<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  let failure: unknown;
  const worker = async () => {
    while (next < items.length && failure === undefined) {
      const i = next++;
      try {
        results[i] = await fn(items[i]);
      } catch (error) {
        failure ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
  return results;
}

/** Logs at most one line every `every` ms. */
class Throttle {
  #last = performance.now();
  constructor(readonly every: number, readonly log: (line: string) => void) {}
  say(line: () => string): void {
    const now = performance.now();
    if (now - this.#last < this.every) return;
    this.#last = now;
    this.log(line());
  }
}

/** Why an object cannot be indexed, without repeating its key (the failure is recorded with the key). */
function reason(error: unknown, key: string): string {
  const cause = error instanceof CorruptObjectError && error.cause instanceof SyntaxError
    ? error.cause
    : undefined;
  if (!cause) return message(error);
  return `Not readable DICOM: ${cause.message.replace(`Cannot parse ${JSON.stringify(key)}: `, "")}`;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function rate(count: number, seconds: number): string {
  return seconds > 0 ? Math.round(count / seconds).toString() : "-";
}

function eta(remaining: number, perSecond: number): string {
  if (!(perSecond > 0) || !Number.isFinite(perSecond)) return "unknown";
  const seconds = Math.ceil(remaining / perSecond);
  return seconds < 120 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
}

function kib(bytes: number): string {
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
