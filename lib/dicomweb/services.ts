/**
 * What every handler needs: the configuration, the store, the AETs, and per-request helpers.
 *
 * @module
 */

import type { AetRegistry } from "../objects/aets.ts";
import type { Catalog } from "../catalog/catalog.ts";
import type { Config } from "../config/config.ts";
import type { HeaderCache } from "../objects/header_cache.ts";
import type { SharedReadAhead } from "../objects/open_instance.ts";
import { HttpError } from "../http/errors.ts";
import type { ObjectStore } from "../store/store.ts";
import { type SyntaxCapabilities } from "../imaging/syntax_choice.ts";

/** Shared, long-lived parts of the server. */
export interface Services {
  config: Config;
  store: ObjectStore;
  aets: AetRegistry;
  capabilities: SyntaxCapabilities;
  /** Parsed headers by object ETag; created by `createHandler` when not given. */
  headers?: HeaderCache;
  /** Objects open ahead of the writers, shared by all requests; created by `createHandler` when not given. */
  readAhead?: SharedReadAhead;
  /** The search catalog (QIDO-RS, metadata from stored JSON); search answers 503 without one. */
  catalog?: Catalog;
  /** Where handlers report problems that do not fail the request (set by `createHandler`). */
  log?: (line: string) => void;
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

/** The bucket of `aet`, or a 404 naming it. */
export async function bucketOf(services: Services, aet: string): Promise<string> {
  const bucket = await services.aets.bucket(aet);
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
