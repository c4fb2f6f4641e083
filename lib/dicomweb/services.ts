/**
 * What every handler needs: the configuration, the store, the AETs, the caches shared by all requests, the
 * catalog and its crawler ({@linkcode Services}), and per-request helpers.
 *
 * @module
 */

import { AET_PATTERN } from "../http/urls.ts";
import type { AetRegistry } from "../objects/aets.ts";
import type { Catalog } from "../catalog/catalog.ts";
import { Crawler } from "../catalog/crawler.ts";
import type { Config } from "../config/config.ts";
import { HeaderCache } from "../objects/header_cache.ts";
import { SharedReadAhead } from "../objects/open_instance.ts";
import { HttpError } from "../http/errors.ts";
import type { ObjectStore } from "../store/store.ts";
import type { SyntaxCapabilities } from "../imaging/syntax_choice.ts";

/** Shared, long-lived parts of the server. */
export interface Services {
  /** The settings. */
  config: Config;
  /** The object store (each request's view of it is capped by the guard). */
  store: ObjectStore;
  /** The AETs and their buckets. */
  aets: AetRegistry;
  /** What the server may convert. */
  capabilities: SyntaxCapabilities;
  /** Parsed Part 10 headers by object ETag, shared by every request. */
  headerCache: HeaderCache;
  /** Objects open ahead of the writers, shared by all requests (without one, each request gets `S3_CONCURRENCY`). */
  readAhead?: SharedReadAhead;
  /** The search catalog (QIDO-RS, metadata from stored JSON); search answers 503 without one. */
  catalog?: Catalog;
  /** The crawler that fills `catalog` (the server's; `GET /admin/index` shows its progress). */
  crawler?: Crawler;
  /** Where handlers report problems that do not fail the request (set by `createHandler`). */
  log?: (line: string) => void;
}

/** The parts a caller provides; {@linkcode completeServices} makes the rest. */
export type ServicesInit = Omit<Services, "headerCache"> & { headerCache?: HeaderCache };

/**
 * `init` with what it leaves out made from the configuration: the header cache (`HEADER_CACHE_MB`), the shared
 * read-ahead (`S3_CONCURRENCY_TOTAL`) and, when there is a catalog without a crawler, a crawler over `store`.
 */
export function completeServices(init: ServicesInit, log: (line: string) => void): Services {
  const { config } = init;
  const services: Services = {
    ...init,
    headerCache: init.headerCache ?? new HeaderCache(config.headerCacheMb * 1024 * 1024),
    readAhead: init.readAhead ?? new SharedReadAhead(config.s3Concurrency, config.s3ConcurrencyTotal),
    log,
  };
  if (services.catalog && !services.crawler) {
    services.crawler = new Crawler({
      store: services.store,
      aets: services.aets,
      catalog: services.catalog,
      log,
      bulkDataThreshold: config.bulkDataThreshold,
    });
  }
  return services;
}

/**
 * Options for {@linkcode ahead} in one request: its share of `services.readAhead` (the whole of
 * `S3_CONCURRENCY` without one), given back when the request's read-ahead is done.
 */
export function readAheadOf(
  services: Services,
): { concurrency: number | (() => number); onFinish?: () => void } {
  if (services.readAhead === undefined) return { concurrency: services.config.s3Concurrency };
  const { concurrency, leave } = services.readAhead.join();
  return { concurrency, onFinish: leave };
}

/**
 * The bucket of `aet`, or a 404 naming it. With `create` (a store request), an AET that does not exist yet is
 * created where that is possible: the zero-config local mode, AETs discovered from the folders of `DATA_DIR`.
 */
export async function bucketOf(
  services: Services,
  aet: string,
  options: { create?: boolean } = {},
): Promise<string> {
  let bucket = await services.aets.bucket(aet);
  if (bucket === undefined && options.create && AET_PATTERN.test(aet)) {
    bucket = await services.aets.create(aet);
    if (bucket !== undefined) {
      services.log?.(`Created the AET ${aet} (bucket ${bucket} in ${services.store.location})`);
    }
  }
  if (bucket === undefined) {
    if (services.config.auth.methods.length > 0) {
      // With authentication on, never list AETs the caller may not be allowed to see.
      throw new HttpError(404, `Unknown AET "${aet}" (see GET /aets)`);
    }
    const known = (await services.aets.entries()).map(([name]) => name);
    const list = known.length > 0 ? `known AETs: ${known.join(", ")}` : "no AETs are configured";
    throw new HttpError(404, `Unknown AET "${aet}": ${list} (see GET /aets)`);
  }
  return bucket;
}

/** A `Warning` header value (RFC 7234 5.5, code 299 as PS3.18 uses it). */
export function warningHeader(host: string, text: string): string {
  return `299 ${host} "${text.replaceAll('"', "'")}"`;
}

/** The search catalog, or a 503 saying the server runs without one. */
export function catalogOf(services: Services): Catalog {
  if (!services.catalog) {
    throw new HttpError(503, "Search is not available: the server runs without a catalog (see CATALOG_PATH)");
  }
  return services.catalog;
}

/** The catalog's crawler (`completeServices` makes one when there is a catalog without). */
export function crawlerOf(services: Services): Crawler {
  if (!services.crawler) throw new Error("The catalog has no crawler: pass one in Services.crawler");
  return services.crawler;
}
