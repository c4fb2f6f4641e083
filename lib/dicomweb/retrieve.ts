/**
 * WADO-RS instance retrieval (PS3.18 10.4.1): study, series and instance resources as
 * `multipart/related; type="application/dicom"`, streamed from the store in key order.
 *
 * @module
 */

import { HttpError } from "../http/errors.ts";
import { multipartLength, multipartStream, type Part, randomBoundary } from "../http/multipart.ts";
import { type DicomChoice, negotiateDicom } from "../http/negotiation.ts";
import { ahead, type OpenedInstance, openInstance } from "../objects/open_instance.ts";
import { withFileMeta } from "../objects/explicit_le_body.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import { bucketOf, readAheadOf, type Services, warningHeader } from "./services.ts";
import { checkUid, instanceKey, parseInstanceKey, seriesPrefix, studyPrefix } from "../dicom/uid.ts";
import { publicBase } from "../http/urls.ts";
import { readFileMeta } from "../dicom/file_meta.ts";
import { chooseSyntax, type SyntaxChoice } from "../imaging/syntax_choice.ts";
import type { ListOptions } from "../store/store.ts";

/** {@linkcode openInstance}, with a stored object that is not DICOM reported as the server's 500. */
async function openStored(
  store: Services["store"],
  bucket: string,
  key: string,
  options?: { signal?: AbortSignal },
): Promise<OpenedInstance | null> {
  try {
    return await openInstance(store, bucket, key, options);
  } catch (error) {
    if (error instanceof SyntaxError) {
      throw new HttpError(500, `Stored object ${key} is not readable DICOM: ${error.message}`, {
        cause: error,
      });
    }
    throw error;
  }
}

/** Which level a retrieve request addresses. */
export interface Target {
  /** The AET. */
  aet: string;
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID (series and instance resources). */
  series?: string;
  /** SOP Instance UID (instance resources). */
  instance?: string;
}

/** Validates the UIDs of a route's params (400 on any bad one, before the store is touched). */
export function targetOf(params: Record<string, string>): Target {
  const target: Target = { aet: params.aet, study: checkUid(params.study, "StudyInstanceUID") };
  if (params.series !== undefined) target.series = checkUid(params.series, "SeriesInstanceUID");
  if (params.instance !== undefined) target.instance = checkUid(params.instance, "SOPInstanceUID");
  return target;
}

/** A human description of the target for messages. */
export function describe(target: Target): string {
  if (target.instance) {
    return `instance ${target.instance} in series ${target.series} of study ${target.study} (AET ${target.aet})`;
  }
  if (target.series) return `series ${target.series} of study ${target.study} (AET ${target.aet})`;
  return `study ${target.study} (AET ${target.aet})`;
}

/** The URL of one instance under `base`. */
export function instanceUrl(
  base: string,
  aet: string,
  study: string,
  series: string,
  instance: string,
): string {
  return `${base}/aets/${encodeURIComponent(aet)}/studies/${study}/series/${series}/instances/${instance}`;
}

function contentType(choice: SyntaxChoice): string {
  return `application/dicom; transfer-syntax=${choice.transferSyntax}`;
}

/**
 * The ETag of an instance representation: the object's ETag plus what the client negotiated. The
 * representation depends only on the stored object and the Accept header, so a 304 needs no body read.
 */
function strongEtag(objectEtag: string, choice: DicomChoice): string {
  const variant = `${choice.multipart ? "m" : "s"}:${choice.transferSyntaxes.map((t) => t ?? "").join(",")}`;
  let hash = 0x811c9dc5; // FNV-1a of the variant keeps the tag short and opaque
  for (let i = 0; i < variant.length; i++) hash = Math.imul(hash ^ variant.charCodeAt(i), 0x01000193) >>> 0;
  return `"${objectEtag.replace(/[^A-Za-z0-9_\-.]/g, "")}-${hash.toString(36)}"`;
}

function etagMatches(header: string | null, etag: string): boolean {
  if (header === null) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((t) => t.trim().replace(/^W\//, "") === etag);
}

/** The body of one instance in the chosen syntax (conversion plugs in here). */
export type BodyEncoder = (
  opened: OpenedInstance,
  choice: SyntaxChoice,
  bucket: string,
) => ReadableStream<Uint8Array>;

const asStored: BodyEncoder = (opened) => opened.body;

/** The stored bytes as read; buffers read in place are handed off, to be freed once the server sent them. */
function storedBody(opened: OpenedInstance): ReadableStream<Uint8Array> {
  return opened.handOffBody();
}

/** Options for {@linkcode retrieveHandlers}. */
export interface RetrieveOptions {
  /** Re-encodes instances whose choice says `convert` (from the transcoding module). */
  encode?: BodyEncoder;
}

/** The WADO-RS retrieve handlers of each resource. */
export interface RetrieveHandlers {
  /** `/studies/{study}` */
  study: Handler;
  /** `/studies/{study}/series/{series}` */
  series: Handler;
  /** `/studies/{study}/series/{series}/instances/{instance}` */
  instance: Handler;
}

/** The three retrieve handlers (study, series, instance). */
export function retrieveHandlers(services: Services, options: RetrieveOptions = {}): RetrieveHandlers {
  const encode = options.encode ?? asStored;
  const { store, config } = services;

  /**
   * The instance in the chosen syntax: converted, or as stored — a legacy object (its syntax inferred)
   * behind the File Meta written for it, so what the client saves is a Part 10 file.
   */
  function bodyOf(opened: OpenedInstance, syntax: SyntaxChoice, bucket: string): ReadableStream<Uint8Array> {
    if (syntax.convert) return encode(opened, syntax, bucket);
    if (!opened.meta.inferred) return storedBody(opened);
    return withFileMeta(opened, {
      store,
      headers: services.headerCache,
      bucket,
      bulkThreshold: config.bulkDataThreshold,
    });
  }

  async function instance(ctx: RouteContext): Promise<Response> {
    const target = targetOf(ctx.params);
    const choice = negotiateDicom(ctx.request.headers.get("accept"), { single: true });
    const bucket = await bucketOf(services, target.aet);
    const key = instanceKey(target.study, target.series!, target.instance!);
    const notFound = () => new HttpError(404, `Not found: ${describe(target)}`);

    const ifNoneMatch = ctx.request.headers.get("if-none-match");
    if (ifNoneMatch !== null) {
      // Answered from a HEAD: the ETag depends on the object version and the Accept header only.
      const info = await store.head(bucket, key);
      if (info === null) throw notFound();
      const etag = strongEtag(info.etag, choice);
      if (etagMatches(ifNoneMatch, etag)) {
        return new Response(null, { status: 304, headers: { etag, "cache-control": config.cacheControl } });
      }
    }

    const opened = await openStored(store, bucket, key);
    if (opened === null) throw notFound();
    const syntax = chooseSyntax(
      opened.meta.transferSyntaxUid,
      choice.transferSyntaxes,
      services.capabilities,
    );
    if (syntax === null) {
      await opened.body.cancel();
      throw new HttpError(
        406,
        `Cannot send ${describe(target)} in transfer syntax ${choice.transferSyntaxes.join(" or ")}: ` +
          `it is stored as ${opened.meta.transferSyntaxUid}; ask for transfer-syntax=* to get it as stored`,
      );
    }
    const headers = new Headers({
      etag: strongEtag(opened.info.etag, choice),
      "cache-control": config.cacheControl,
    });
    const base = publicBase(ctx.request, config);
    if (syntax.warning) headers.set("warning", warningHeader(new URL(base).host, syntax.warning));
    const body = bodyOf(opened, syntax, bucket);
    const encoded = syntax.convert || opened.meta.inferred;
    if (!choice.multipart) {
      headers.set("content-type", contentType(syntax));
      if (!encoded) headers.set("content-length", String(opened.info.size));
      return new Response(body, { headers });
    }
    const boundary = randomBoundary();
    const partHeaders: Record<string, string> = {
      "Content-Type": contentType(syntax),
      "Content-Location": instanceUrl(base, target.aet, target.study, target.series!, target.instance!),
    };
    if (!encoded) {
      partHeaders["Content-Length"] = String(opened.info.size);
      headers.set(
        "content-length",
        String(multipartLength(boundary, [{ headers: partHeaders, size: opened.info.size }])),
      );
    }
    headers.set("content-type", `multipart/related; type="application/dicom"; boundary=${boundary}`);
    const parts = (async function* () {
      yield { headers: partHeaders, body };
    })();
    // A cancel before the first pull never starts `parts`, so release the body here too.
    return new Response(
      multipartStream(parts, boundary, { onCancel: () => void body.cancel().catch(() => {}) }),
      {
        headers,
      },
    );
  }

  async function collection(ctx: RouteContext): Promise<Response> {
    const target = targetOf(ctx.params);
    const choice = negotiateDicom(ctx.request.headers.get("accept"), { single: false });
    const bucket = await bucketOf(services, target.aet);
    const prefix = target.series ? seriesPrefix(target.study, target.series) : studyPrefix(target.study);
    const abort = new AbortController();
    const base = publicBase(ctx.request, config);

    let keys: string[] = [];
    let partial = false;
    const asStoredOk = choice.transferSyntaxes.some((t) => t === "*" || t === undefined);
    if (!asStoredOk) {
      // Specific syntaxes only: find out up front which instances can be produced (PS3.18 8.7.3.5: 206/406).
      const all = await listKeys(services, bucket, prefix, target);
      keys = await filterProducible(services, bucket, all, choice);
      if (all.length === 0) throw new HttpError(404, `Not found: ${describe(target)} has no instances`);
      if (keys.length === 0) {
        throw new HttpError(
          406,
          `Cannot send any instance of ${describe(target)} in transfer syntax ${
            choice.transferSyntaxes.join(" or ")
          }; ` +
            `ask for transfer-syntax=* to get them as stored`,
        );
      }
      partial = keys.length < all.length;
    }
    const share = readAheadOf(services);
    // The first objects of a series retrieved before are asked for at once, while the listing is on its way
    // (a listing on Ceph RGW takes 8–15 ms before the first GET could start); the listing still decides what
    // is sent, and a guess it does not list is cancelled.
    const early = new Map<string, Promise<OpenedInstance | null>>();
    if (asStoredOk) {
      const limit = typeof share.concurrency === "number" ? share.concurrency : share.concurrency();
      for (const key of firstKeys.get(services, bucket, prefix)?.slice(0, limit) ?? []) {
        const promise = openStored(store, bucket, key, { signal: abort.signal });
        promise.catch(() => {});
        early.set(key, promise);
      }
    }
    const dropEarly = () => {
      for (const promise of early.values()) promise.then((o) => o?.body.cancel().catch(() => {}), () => {});
      early.clear();
    };
    const keySource = asStoredOk
      ? firstKeys.record(
        services,
        bucket,
        prefix,
        listInstanceKeys(services, bucket, prefix, target, abort.signal),
      )
      : keys;

    const opened = ahead(
      keySource,
      (key) => {
        const guessed = early.get(key);
        if (guessed === undefined) return openStored(store, bucket, key, { signal: abort.signal });
        early.delete(key);
        return guessed;
      },
      {
        ...share,
        dispose: (o) => void o?.body.cancel().catch(() => {}),
        onFinish: () => {
          dropEarly();
          share.onFinish?.();
        },
      },
    );
    // Wait for the first instance so a missing target or a store failure is a proper error status.
    let first: IteratorResult<OpenedInstance | null>;
    try {
      do first = await opened.next(); while (!first.done && first.value === null);
    } catch (error) {
      abort.abort();
      dropEarly();
      throw error;
    }
    if (first.done) {
      dropEarly();
      throw new HttpError(404, `Not found: ${describe(target)} has no instances`);
    }

    const parts = (async function* (): AsyncGenerator<Part> {
      const one = (o: OpenedInstance): Part | null => {
        const syntax = chooseSyntax(o.meta.transferSyntaxUid, choice.transferSyntaxes, services.capabilities);
        if (syntax === null) {
          // Only reachable when an object changed between the scan and now.
          throw new Error(
            `Instance ${o.key} changed during the request: cannot send it in the negotiated syntax`,
          );
        }
        const uids = parseInstanceKey(o.key)!;
        const headers: Record<string, string> = {
          "Content-Type": contentType(syntax),
          "Content-Location": instanceUrl(base, target.aet, uids.study, uids.series, uids.instance),
        };
        if (!syntax.convert && !o.meta.inferred) headers["Content-Length"] = String(o.info.size);
        if (syntax.warning) headers["Warning"] = warningHeader(new URL(base).host, syntax.warning);
        return { headers, body: bodyOf(o, syntax, bucket) };
      };
      yield one(first.value!)!;
      for await (const o of opened) {
        if (o === null) continue; // deleted since the listing
        yield one(o)!;
      }
    })();
    const boundary = randomBoundary();
    const headers = new Headers({
      "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
    });
    if (partial) {
      headers.set(
        "warning",
        warningHeader(
          new URL(base).host,
          "some instances were left out: they cannot be sent in the requested transfer syntax",
        ),
      );
    }
    const body = multipartStream(parts, boundary, {
      onCancel: () => {
        abort.abort();
        // `parts` may never have started (cancel before the first pull): close the read-ahead directly.
        void opened.return(undefined).catch(() => {});
        void first.value?.body.cancel().catch(() => {});
      },
    });
    return new Response(body, { status: partial ? 206 : 200, headers });
  }

  return { instance, series: collection, study: collection };
}

/**
 * The first keys each series or study listing yielded last, per services (an LRU of
 * {@linkcode FirstKeys.MAX} prefixes): what a retrieve of the same resource asks for before its listing
 * comes back.
 */
class FirstKeys {
  static readonly MAX = 256;
  /** Keys remembered per listing. */
  static readonly KEYS = 32;
  #byServices = new WeakMap<Services, Map<string, string[]>>();

  get(services: Services, bucket: string, prefix: string): string[] | undefined {
    return this.#byServices.get(services)?.get(`${bucket}\u0000${prefix}`);
  }

  /** `keys` as they come, the first {@linkcode FirstKeys.KEYS} of them remembered. */
  async *record(
    services: Services,
    bucket: string,
    prefix: string,
    keys: AsyncIterable<string>,
  ): AsyncGenerator<string> {
    const seen: string[] = [];
    const save = () => {
      let map = this.#byServices.get(services);
      if (!map) this.#byServices.set(services, map = new Map());
      const id = `${bucket}\u0000${prefix}`;
      map.delete(id);
      if (map.size >= FirstKeys.MAX) map.delete(map.keys().next().value!);
      map.set(id, seen);
    };
    for await (const key of keys) {
      if (seen.length < FirstKeys.KEYS) {
        seen.push(key);
        if (seen.length === FirstKeys.KEYS) save();
      }
      yield key;
    }
    if (seen.length < FirstKeys.KEYS) save(); // a listing shorter than KEYS, read to its end
  }
}

const firstKeys = new FirstKeys();

/** Keys in the first page of a retrieve's listing. */
const FIRST_PAGE = 8;

async function* listInstanceKeys(
  services: Services,
  bucket: string,
  prefix: string,
  target: Target,
  signal?: AbortSignal,
): AsyncGenerator<string> {
  // the first keys soonest: the first GETs wait for them (a listing's time is mostly fixed cost, so a small
  // first page comes sooner); stores without pages ignore `firstPage`
  const options: ListOptions = { signal, firstPage: FIRST_PAGE };
  for await (const info of services.store.list(bucket, prefix, options)) {
    const uids = parseInstanceKey(info.key);
    if (uids === null || uids.study !== target.study) continue;
    if (target.series !== undefined && uids.series !== target.series) continue;
    yield info.key;
  }
}

async function listKeys(
  services: Services,
  bucket: string,
  prefix: string,
  target: Target,
): Promise<string[]> {
  const keys: string[] = [];
  for await (const key of listInstanceKeys(services, bucket, prefix, target)) keys.push(key);
  return keys;
}

async function filterProducible(
  services: Services,
  bucket: string,
  keys: string[],
  choice: DicomChoice,
): Promise<string[]> {
  const ok = ahead(keys, async (key) => {
    const object = await services.store.get(bucket, key, { range: { start: 0, end: 16383 } });
    if (object === null) return null;
    const bytes = new Uint8Array(await new Response(object.body).arrayBuffer());
    const meta = readFileMeta(bytes, key, true);
    return meta && chooseSyntax(meta.transferSyntaxUid, choice.transferSyntaxes, services.capabilities)
      ? key
      : null;
  }, { concurrency: services.config.s3Concurrency });
  const out: string[] = [];
  for await (const key of ok) if (key !== null) out.push(key);
  return out;
}
