/**
 * WADO-RS metadata (PS3.18 10.4.1.1.2, Annex F): study, series and instance `/metadata` as
 * `application/dicom+json`, built from headers read with ranged GETs and cached by ETag.
 *
 * No instance is dropped silently. An instance whose pixel data is cut short is listed like any other (its
 * header is whole). An object whose header cannot be read at all does not fail a study's or series' metadata:
 * the others are served, the object is logged and recorded in the catalog as failed (counted by
 * `GET /admin/index`), and a `Warning: 299` names what is left out. The response streams, so the warning can
 * name only what is known before its first byte: objects the catalog already records as unreadable, and
 * those found while the first instance was being read; one found later is logged and recorded, and named from
 * the next request on.
 *
 * @module
 */

import { loadHeader } from "../objects/header_cache.ts";
import { HttpError } from "../http/errors.ts";
import { ahead } from "../objects/open_instance.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import { bucketOf, readAheadOf, type Services, warningHeader } from "./services.ts";
import type { ObjectInfo } from "../store/store.ts";
import { instanceKey, parseInstanceKey, seriesPrefix, studyPrefix } from "../dicom/uid.ts";
import { publicBase } from "../http/urls.ts";
import { describe, instanceUrl, targetOf } from "./retrieve.ts";
import { CorruptObjectError } from "../util/errors.ts";
import { documentText, headerJson, resolveBulkDataUris } from "../catalog/documents.ts";
import { acceptJson } from "../http/negotiation.ts";
import { keptResponse } from "../http/compress.ts";

/**
 * The metadata of one object as DICOM JSON text with BulkDataURIs relative to the instance
 * (`bulkdata/{path}`; {@linkcode resolveBulkDataUris} makes them absolute), cached with its header.
 */
export async function instanceJsonText(
  services: Services,
  bucket: string,
  info: ObjectInfo,
): Promise<string> {
  const cached = services.headerCache.json(bucket, info);
  if (cached !== undefined) return cached;
  const threshold = services.config.bulkDataThreshold;
  const header = await loadHeader(services.store, services.headerCache, bucket, info, {
    bulkThreshold: threshold,
  });
  // Small loaded binary values go inline; large ones, Pixel Data and values not loaded become BulkDataURIs.
  // the catalog's writer: the same text as stringifyDicomJson, one JSON.stringify when keys are in order
  const json = documentText(headerJson(header, threshold));
  services.headerCache.setJson(bucket, info, json);
  return json;
}

/** Characters of cached JSON joined before the rest streams (a whole series' metadata is a few MB). */
const WARM_BATCH_CHARS = 8 * 1024 * 1024;

/**
 * Whole study and series metadata responses as sent, each with the listing it was made from (keys and ETags
 * in order). A request still lists the objects; when the listing is the same, the bytes are sent again
 * instead of joining, resolving and encoding every instance's JSON once more (measured: three quarters of a
 * warm series' CPU). A different listing (an object stored, replaced or deleted) makes a new response.
 * Byte-bounded LRU: a quarter of `HEADER_CACHE_MB`.
 */
class ResponseCache {
  readonly #entries = new Map<string, { keys: string[]; etags: string[]; bytes: Uint8Array<ArrayBuffer> }>();
  readonly #maxBytes: number;
  #bytes = 0;

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  get(id: string) {
    const entry = this.#entries.get(id);
    if (entry === undefined) return undefined;
    this.#entries.delete(id);
    this.#entries.set(id, entry);
    return entry;
  }

  set(id: string, infos: readonly ObjectInfo[], bytes: Uint8Array<ArrayBuffer>): void {
    if (bytes.byteLength > this.#maxBytes / 4) return;
    const old = this.#entries.get(id);
    if (old !== undefined) {
      this.#entries.delete(id);
      this.#bytes -= old.bytes.byteLength;
    }
    this.#entries.set(id, { keys: infos.map((i) => i.key), etags: infos.map((i) => i.etag), bytes });
    this.#bytes += bytes.byteLength;
    for (const [oldest, entry] of this.#entries) {
      if (this.#bytes <= this.#maxBytes) break;
      this.#entries.delete(oldest);
      this.#bytes -= entry.bytes.byteLength;
    }
  }
}

/** The metadata handlers of each resource. */
export interface MetadataHandlers {
  /** `/studies/{study}/metadata` */
  study: Handler;
  /** `/studies/{study}/series/{series}/metadata` */
  series: Handler;
  /** `/studies/{study}/series/{series}/instances/{instance}/metadata` */
  instance: Handler;
}

/** The three metadata handlers (study, series, instance). */
export function metadataHandlers(services: Services): MetadataHandlers {
  const { store, config } = services;
  const responses = new ResponseCache(config.headerCacheMb * 1024 * 1024 / 4);
  const encoder = new TextEncoder();

  async function respond(
    ctx: RouteContext,
    infos: AsyncIterable<ObjectInfo>,
    notFound: string,
  ): Promise<Response> {
    acceptJson(ctx.request.headers.get("accept"), "metadata is application/dicom+json");
    const target = targetOf(ctx.params);
    const bucket = await bucketOf(services, target.aet);
    const base = publicBase(ctx.request, config);
    const abort = new AbortController();
    const single = target.instance !== undefined;
    let skipped: CorruptObjectError | undefined;
    /** Objects left out, by key: the catalog's known unreadable ones in the scope, then those found now. */
    const leftOut = new Map<string, string>();
    // The listing's first page is asked for now, so it is on its way while the catalog answers.
    let iterator = infos[Symbol.asyncIterator]();
    let firstInfo = iterator.next();
    firstInfo.catch(() => {}); // awaited below, unless the catalog fails first
    const prefix = single
      ? undefined
      : target.series === undefined
      ? studyPrefix(target.study)
      : seriesPrefix(target.study, target.series);
    if (prefix !== undefined) {
      for (const problem of await services.catalog?.failures(target.aet).catch(() => []) ?? []) {
        if (problem.key.startsWith(prefix)) leftOut.set(problem.key, problem.error);
      }
    }
    const headers = new Headers({ "content-type": "application/dicom+json; charset=utf-8" });
    // A response made before from the same listing is sent again (see ResponseCache).
    const responseId = prefix === undefined || leftOut.size > 0
      ? undefined
      : `${bucket}\u0000${prefix}\u0000${base}\u0000${target.aet}`;
    const cached = responseId === undefined ? undefined : responses.get(responseId);
    if (cached !== undefined) {
      const seen: ObjectInfo[] = [];
      let next: IteratorResult<ObjectInfo>;
      try {
        for (next = await firstInfo; !next.done; next = await iterator.next()) {
          const i = seen.length;
          if (
            i >= cached.keys.length || next.value.key !== cached.keys[i] ||
            next.value.etag !== cached.etags[i]
          ) {
            break;
          }
          seen.push(next.value);
        }
      } catch (error) {
        await iterator.return?.();
        throw error;
      }
      if (next.done && seen.length === cached.keys.length) {
        return await keptResponse(ctx.request, cached.bytes, headers);
      }
      // The listing changed: made anew, from the objects listed so far and the rest of the listing.
      const rest = iterator;
      const last = next;
      iterator = (async function* () {
        try {
          yield* seen;
          for (let n = last; !n.done; n = await rest.next()) yield n.value;
        } finally {
          await rest.return?.();
        }
      })();
      firstInfo = iterator.next();
    }
    // The catalog's cached instance JSON (same ETag) makes series metadata one query instead of N reads; it
    // is asked for at the first object whose JSON the header cache does not hold.
    let stored: Map<string, { etag: string; json: string }> | undefined;
    const askCatalog = async () => {
      stored ??= new Map(
        (await services.catalog?.instanceMetadata(target.aet, target.study, target.series).catch(() => []) ??
          [])
          .map((s) => [s.key, s]),
      );
    };
    const urlOf = (info: ObjectInfo) => {
      const uids = parseInstanceKey(info.key)!;
      return instanceUrl(base, target.aet, uids.study, uids.series, uids.instance);
    };
    /** The instance's JSON text when it is at hand: the header cache's, or the catalog's for this ETag. */
    const known = (info: ObjectInfo): string | undefined => {
      const cached = services.headerCache.json(bucket, info);
      if (cached !== undefined) return cached;
      const hit = stored?.get(info.key);
      return hit !== undefined && hit.etag === info.etag ? hit.json : undefined;
    };
    // Warm: as long as every listed instance's JSON is at hand, it is joined without a promise per instance;
    // a series whose JSON is all cached is answered as one chunk. Bounded, so a huge study still streams.
    const ready: string[] = [];
    const readyInfos: ObjectInfo[] = [];
    let readyChars = 0;
    let pending: IteratorResult<ObjectInfo>;
    try {
      for (pending = await firstInfo; !pending.done; pending = await iterator.next()) {
        let text = known(pending.value);
        if (text === undefined && stored === undefined && services.catalog) {
          await askCatalog();
          text = known(pending.value);
        }
        if (text === undefined || readyChars > WARM_BATCH_CHARS) break;
        const resolved = resolveBulkDataUris(text, urlOf(pending.value));
        ready.push(resolved);
        readyInfos.push(pending.value);
        readyChars += resolved.length;
      }
    } catch (error) {
      await iterator.return?.();
      throw error;
    }
    const rest: AsyncIterable<ObjectInfo> = {
      async *[Symbol.asyncIterator]() {
        try {
          for (let next = pending; !next.done; next = await iterator.next()) yield next.value;
        } finally {
          await iterator.return?.();
        }
      },
    };
    const jsons = ahead(
      pending.done ? [] : rest,
      async (info): Promise<string | null> => {
        const url = urlOf(info);
        const text = known(info);
        if (text !== undefined) return resolveBulkDataUris(text, url);
        try {
          return resolveBulkDataUris(await instanceJsonText(services, bucket, info), url);
        } catch (error) {
          // In study/series metadata an unreadable object is left out (and logged) rather than failing all.
          if (single || !(error instanceof CorruptObjectError)) throw error;
          services.log?.(`metadata: skipping ${bucket}/${info.key}: ${error.message}`);
          skipped = error;
          leftOut.set(info.key, error.message);
          services.catalog?.recordFailure(target.aet, info, error.message).catch(() => {});
          return null;
        }
      },
      readAheadOf(services),
    );
    const nextJson = async () => {
      for (;;) {
        const next = await jsons.next();
        if (next.done || next.value !== null) return next;
      }
    };
    let first: IteratorResult<string | null>;
    try {
      first = ready.length > 0 ? { done: false, value: ready.join(",") } : await nextJson();
    } catch (error) {
      abort.abort();
      throw error;
    }
    if (first.done) throw skipped ?? new HttpError(404, notFound);
    if (leftOut.size > 0) {
      const host = new URL(ctx.request.url).host;
      const listed = [...leftOut.keys()].slice(0, 5).join(", ");
      const more = leftOut.size > 5 ? ` and ${leftOut.size - 5} more` : "";
      headers.append(
        "warning",
        warningHeader(
          host,
          `${leftOut.size} object(s) left out: their headers cannot be read (${listed}${more}); ` +
            "see GET /admin/index for the reasons",
        ),
      );
    }
    if (pending.done) {
      // all at hand: one chunk
      const bytes = encoder.encode(`[${first.value}]\n`);
      if (responseId !== undefined && leftOut.size === 0) responses.set(responseId, readyInfos, bytes);
      return await keptResponse(ctx.request, bytes, headers);
    }
    let started = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (!started) {
          started = true;
          controller.enqueue(encoder.encode("[" + first.value));
          return;
        }
        const next = await nextJson();
        if (next.done) {
          controller.enqueue(encoder.encode("]\n"));
          controller.close();
        } else {
          controller.enqueue(encoder.encode("," + next.value));
        }
      },
      async cancel() {
        abort.abort();
        await jsons.return(undefined);
      },
    }, { highWaterMark: 0 });
    return new Response(body, { headers });
  }

  async function* listed(
    bucket: string,
    prefix: string,
    study: string,
    series?: string,
  ): AsyncGenerator<ObjectInfo> {
    for await (const info of store.list(bucket, prefix)) {
      const uids = parseInstanceKey(info.key);
      if (uids === null || uids.study !== study || (series !== undefined && uids.series !== series)) continue;
      yield info;
    }
  }

  return {
    async study(ctx: RouteContext): Promise<Response> {
      const target = targetOf(ctx.params);
      const bucket = await bucketOf(services, target.aet);
      return respond(
        ctx,
        listed(bucket, studyPrefix(target.study), target.study),
        `Not found: ${describe(target)} has no instances`,
      );
    },
    async series(ctx: RouteContext): Promise<Response> {
      const target = targetOf(ctx.params);
      const bucket = await bucketOf(services, target.aet);
      return respond(
        ctx,
        listed(bucket, seriesPrefix(target.study, target.series!), target.study, target.series),
        `Not found: ${describe(target)} has no instances`,
      );
    },
    async instance(ctx: RouteContext): Promise<Response> {
      const target = targetOf(ctx.params);
      const bucket = await bucketOf(services, target.aet);
      const key = instanceKey(target.study, target.series!, target.instance!);
      const info = await store.head(bucket, key);
      if (info === null) throw new HttpError(404, `Not found: ${describe(target)}`);
      return respond(
        ctx,
        (async function* () {
          yield info;
        })(),
        `Not found: ${describe(target)}`,
      );
    },
  };
}
