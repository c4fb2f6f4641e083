/**
 * Construction in one place: the store, the catalog and its crawler, and the services a handler serves from,
 * all from a {@linkcode Config}. `main.ts`, the CLIs and the tests' server fixture build through these, so a new
 * store or catalog backend is chosen here and nowhere else.
 *
 * @module
 */

import type { Catalog } from "../catalog/catalog.ts";
import { Crawler } from "../catalog/crawler.ts";
import { openSqliteCatalog } from "../catalog/sqlite_catalog.ts";
import { openPostgresCatalog } from "../catalog/postgres_catalog.ts";
import { HeaderCache } from "../objects/header_cache.ts";
import { instrumentStore, METRICS } from "./metrics.ts";
import { WebhookDispatcher } from "../events/webhooks.ts";
import { type Config, ConfigError } from "../config/config.ts";
import type { ServicesInit } from "../dicomweb/services.ts";
import type { SyntaxCapabilities } from "../imaging/syntax_choice.ts";
import { AetRegistry } from "../objects/aets.ts";
import { FileStore } from "../store/file_store.ts";
import { S3Store } from "../store/s3/s3_store.ts";
import type { ObjectStore } from "../store/store.ts";

/** What this server can convert: re-encode to Explicit VR Little Endian, and decode compressed pixel data. */
const SERVER_CAPABILITIES: SyntaxCapabilities = { reEncode: true, decode: true };

/**
 * The store the configuration names: S3 when `config.s3` is set (one client for the process), else the local
 * folder `DATA_DIR`, created when missing. Throws a `ConfigError` naming the fix when the folder cannot be
 * used for lack of permission.
 */
export async function openStore(config: Config): Promise<ObjectStore> {
  if (config.s3) {
    // counted and timed for /metrics, traced when OpenTelemetry is on (app/metrics.ts)
    return instrumentStore(
      new S3Store({ ...config.s3, maxConcurrency: Math.max(50, config.s3Concurrency * 4) }),
    );
  }
  try {
    await Deno.mkdir(config.dataDir, { recursive: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw new ConfigError(
        `Cannot use DATA_DIR=${config.dataDir}: no read/write permission. ` +
          `Run with --allow-read=${config.dataDir} --allow-write=${config.dataDir} ` +
          `(deno task start grants ./data only), or use S3_ENDPOINT`,
      );
    }
    throw error;
  }
  return new FileStore(config.dataDir);
}

/** Options for {@linkcode openCatalog}. */
export interface OpenCatalogOptions {
  /** Where the catalog reports that it fell back to memory or rebuilt a foreign file. */
  log?: (line: string) => void;
}

/**
 * The search catalog: PostgreSQL at `CATALOG_URL` (shared by every replica; a database that does not answer
 * yet is not an error), else SQLite at `CATALOG_PATH` (its folder is created), or undefined when that is `off`.
 * The catalog is derived from the buckets, so deleting it is always safe. Rejects with a
 * `CatalogMismatchError` when the PostgreSQL database does not fit this server (a newer schema).
 */
export async function openCatalog(
  config: Config,
  options: OpenCatalogOptions = {},
): Promise<Catalog | undefined> {
  if (config.catalogUrl !== undefined) {
    return await openPostgresCatalog(config.catalogUrl, {
      bulkDataThreshold: config.bulkDataThreshold,
      poolSize: config.catalogPoolSize,
      timeoutMs: config.catalogTimeoutMs,
      log: options.log,
    });
  }
  const path = config.catalogPath;
  if (path === undefined) return undefined;
  if (path !== ":memory:") {
    const slash = path.lastIndexOf("/");
    const dir = slash > 0 ? path.slice(0, slash) : slash === 0 ? "/" : ".";
    await Deno.mkdir(dir, { recursive: true }).catch(() => {});
  }
  return await openSqliteCatalog(path, { bulkDataThreshold: config.bulkDataThreshold, log: options.log });
}

/** Options for {@linkcode openCrawler}. */
export interface OpenCrawlerOptions {
  /** The store to crawl (the raw store, not a request's guarded view of it). */
  store: ObjectStore;
  /** The AETs and their buckets. */
  aets: AetRegistry;
  /** The catalog to fill. */
  catalog: Catalog;
  /** Where progress and problems go. */
  log?: (line: string) => void;
  /** Read every instance header in the background after the series pass (default true). */
  eagerInstances?: boolean;
}

/** The crawler of `catalog` with the configuration's settings (header reads at `max(8, S3_CONCURRENCY)`). */
export function openCrawler(config: Config, options: OpenCrawlerOptions): Crawler {
  return new Crawler({
    ...options,
    bulkDataThreshold: config.bulkDataThreshold,
    concurrency: Math.max(8, config.s3Concurrency),
  });
}

/** The services a handler is built from, with the catalog and crawler when there is one. */
export interface ServerParts extends ServicesInit {
  /** The AETs of `store`. */
  aets: AetRegistry;
  /** The webhooks' sender when `WEBHOOKS` names any and there is a catalog (close it at shutdown). */
  webhooks?: WebhookDispatcher;
}

/** Options for {@linkcode assembleServices}. */
export interface AssembleOptions {
  /** Default: a registry of `config.aets` over `store`. */
  aets?: AetRegistry;
  /** The search catalog; without one, search answers 503. */
  catalog?: Catalog;
  /** Default: a crawler from {@linkcode openCrawler} when there is a catalog. */
  crawler?: Crawler;
  /** Default: {@linkcode SERVER_CAPABILITIES}. */
  capabilities?: SyntaxCapabilities;
  /** Where the crawler reports. */
  log?: (line: string) => void;
  /** Default: a new cache of `HEADER_CACHE_MB`. */
  headerCache?: HeaderCache;
}

/**
 * The services over `store` for `config`: its AET registry, capabilities, catalog, crawler and header cache.
 * When other replicas share the catalog, the headers they change are dropped from the cache as they announce
 * them. With `WEBHOOKS` and a catalog, every change feed entry this process writes goes to the webhooks
 * (`ServerParts.webhooks`; close it at shutdown).
 */
export function assembleServices(
  config: Config,
  store: ObjectStore,
  options: AssembleOptions = {},
): ServerParts {
  const aets = options.aets ?? new AetRegistry(store, { configured: config.aets });
  const { catalog } = options;
  const crawler = options.crawler ??
    (catalog ? openCrawler(config, { store, aets, catalog, log: options.log }) : undefined);
  const headerCache = options.headerCache ?? new HeaderCache(config.headerCacheMb * 1024 * 1024);
  catalog?.onChange?.((change) => {
    for (const key of change.keys) headerCache.forget(change.bucket, key);
  });
  let webhooks: WebhookDispatcher | undefined;
  if (catalog && config.webhooks.length > 0) {
    const log = options.log ?? ((line: string) => console.log(line));
    webhooks = new WebhookDispatcher({
      webhooks: config.webhooks,
      base: config.publicUrl ?? `http://${config.hostname}:${config.port}${config.basePath}`,
      log,
      count: (outcome) =>
        METRICS.count(
          "dicomweb_webhook_events_total",
          "Webhook events by outcome: delivered, retried (a failed attempt), failed (retries exhausted or refused), " +
            "dropped (the queue was full)",
          { outcome },
        ),
    });
    const dispatcher = webhooks;
    catalog.onFeed((entries) => dispatcher.publish(entries));
  }
  return {
    webhooks,
    config,
    store,
    aets,
    capabilities: options.capabilities ?? SERVER_CAPABILITIES,
    catalog,
    crawler,
    headerCache,
  };
}
