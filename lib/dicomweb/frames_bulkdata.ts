/**
 * WADO-RS frames and bulkdata (PS3.18 10.4.1.1.3 and 10.4.1.1.4): each frame or bulk value is read
 * from the store with a ranged GET of exactly its bytes.
 *
 * @module
 */

import { DECODABLE_SYNTAXES } from "../codecs/mod.ts";
import { decodedFrame } from "../imaging/decode.ts";
import { VIEWER_DECODABLE } from "../imaging/syntax_choice.ts";
import { binaryValue, resolveBulkData } from "../dicom/dicom_json.ts";
import { frameCount, frameMediaType, type FramePlan, planFrame } from "../dicom/frames.ts";
import { loadHeader } from "../objects/header_cache.ts";
import { HttpError } from "../http/errors.ts";
import { multipartLength, multipartStream, type Part, randomBoundary } from "../http/multipart.ts";
import { type MediaRange, parseAccept, rankRanges } from "../http/negotiation.ts";
import { ahead } from "../objects/open_instance.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import { bucketOf, readAheadOf, type Services } from "./services.ts";
import type { ObjectInfo } from "../store/store.ts";
import { EXPLICIT_VR_LITTLE_ENDIAN } from "../dicom/transfer_syntax.ts";
import { instanceKey } from "../dicom/uid.ts";
import { describe, targetOf } from "./retrieve.ts";
import type { DicomElement, Part10Header } from "../dicom/dataset.ts";
import { concatBytes } from "../util/bytes.ts";

/** How frames will be sent. */
export interface FrameChoice {
  /** Whether the response is multipart/related. */
  multipart: boolean;
  /** The Content-Type of each frame (part). */
  contentType: string;
  /** Compressed frames are decoded to native little endian samples (lib/imaging/decode.ts). */
  decode?: boolean;
}

const OCTET = "application/octet-stream";

/** Pixel Data, Float Pixel Data, Double Float Pixel Data, at the top level or nested (icon images). */
const PIXEL_TAGS = new Set([0x7fe00010, 0x7fe00008, 0x7fe00009]);

/**
 * Negotiates frames of an instance stored as `storedTs` whose frames have media type `mediaType`
 * (`application/octet-stream` for native data). Stored bytes are sent unchanged (native data in little
 * endian); `application/octet-stream` with no transfer-syntax or with Explicit VR Little Endian asks for
 * compressed frames decoded, which `options.decodable` allows. `transfer-syntax=*` leaves the syntax to the
 * server: native frames go out little endian (Explicit VR Little Endian, big endian words swapped), compressed
 * ones as stored unless web viewers cannot decode them ({@linkcode VIEWER_DECODABLE}) and we can.
 */
export function negotiateFrames(
  accept: string | null,
  stored: { transferSyntax: string; mediaType: string },
  single: boolean,
  options: { decodable?: boolean } = {},
): FrameChoice {
  const native = stored.mediaType === OCTET;
  // Native frames are little endian pixels: Explicit VR Little Endian whatever the stored syntax.
  const sentTs = native ? EXPLICIT_VR_LITTLE_ENDIAN : stored.transferSyntax;
  const contentType = `${stored.mediaType}; transfer-syntax=${sentTs}`;
  const tsOk = (ts: string | undefined, type: string | undefined) => {
    if (ts === undefined) {
      // No parameter: the media type's default, ELE for octet-stream; a compressed type is its own default.
      return type === undefined || type === "*/*" || (type === OCTET ? native : type === stored.mediaType);
    }
    return ts === "*" || ts === sentTs || ts === stored.transferSyntax;
  };
  const typeOk = (type: string | undefined) =>
    type === undefined || type === "*/*" || type === stored.mediaType ||
    (type === OCTET && native) || (type === OCTET && !native); // octet-stream with ts=* or the stored ts
  // Decoded: octet-stream in its default syntax (ELE), from compressed frames we can decode.
  const decodedOk = (type: string | undefined, ts: string | undefined) =>
    !native && options.decodable === true && type === OCTET &&
    (ts === undefined || ts === EXPLICIT_VR_LITTLE_ENDIAN);
  // The syntax left to the server, for frames a viewer cannot decode: decoded when we can (VIEWER_DECODABLE).
  const serverChooses = (type: string | undefined, ts: string | undefined) =>
    ts === "*" && !native && options.decodable === true && !VIEWER_DECODABLE.has(stored.transferSyntax) &&
    (type === undefined || type === "*/*" || type === OCTET);
  const decoded = `${OCTET}; transfer-syntax=${EXPLICIT_VR_LITTLE_ENDIAN}`;
  for (const r of rankRanges(parseAccept(accept))) {
    const ts = r.params["transfer-syntax"];
    if (r.type === "*" || (r.type === "multipart" && (r.subtype === "*" || r.subtype === "related"))) {
      const inner = r.type === "multipart" && r.subtype === "related"
        ? r.params.type?.toLowerCase()
        : undefined;
      if (serverChooses(inner, ts)) return { multipart: true, contentType: decoded, decode: true };
      if (typeOk(inner) && tsOk(ts, inner)) return { multipart: true, contentType };
      if (decodedOk(inner, ts)) return { multipart: true, contentType: decoded, decode: true };
      continue;
    }
    if (!single) continue;
    const type = `${r.type}/${r.subtype}`;
    if (serverChooses(type, ts)) return { multipart: false, contentType: decoded, decode: true };
    if (
      (type === stored.mediaType || type === OCTET && native ||
        r.subtype === "*" && r.type === stored.mediaType.split("/")[0]) &&
      tsOk(ts, type === OCTET ? OCTET : stored.mediaType)
    ) {
      return { multipart: false, contentType };
    }
    if (decodedOk(type, ts)) return { multipart: false, contentType: decoded, decode: true };
  }
  const why = native
    ? `frames of this instance are ${contentType}`
    : `frames of this instance are stored as ${contentType}` +
      (options.decodable
        ? `; ask for transfer-syntax=* or type="${stored.mediaType}" to get them as stored, or type="${OCTET}" to get them decoded`
        : `; decoding them is not supported for this transfer syntax, ask for transfer-syntax=* or type="${stored.mediaType}"`);
  throw new HttpError(406, `None of the media types in Accept can be served: ${why}`);
}

/** Parses a frame list (`1,3,5`): 1-based numbers, 400 for anything else. */
export function parseFrameList(text: string): number[] {
  const items = text.split(",").map((s) => s.trim());
  if (items.length === 0 || items.length > 10_000 || items.some((s) => !/^\d{1,9}$/.test(s))) {
    throw new HttpError(
      400,
      `Invalid frame list "${text.slice(0, 80)}": use 1-based frame numbers separated by commas, e.g. 1,2,3`,
    );
  }
  return items.map(Number);
}

/** The object changed since its header was cached: read it again with a fresh header. */
class StaleHeader extends Error {}

/**
 * Reads `[offset, offset + length)` of the object (from the inflated copy for deflated objects); with
 * `etag`, from that version only ({@linkcode StaleHeader} otherwise).
 */
async function readSpan(
  services: Services,
  bucket: string,
  header: Part10Header,
  key: string,
  offset: number,
  length: number,
  etag?: string,
): Promise<Uint8Array> {
  if (length === 0) return new Uint8Array(0);
  if (header.inflated) return header.inflated.subarray(offset, offset + length);
  const body = await openSpan(services, bucket, key, offset, length, etag);
  return new Uint8Array(await new Response(body).arrayBuffer());
}

/**
 * `[offset, offset + length)` of the object as the store sends it, once the store has answered with that
 * version ({@linkcode StaleHeader} otherwise) and that many bytes (a 502 otherwise): nothing is sent before
 * either is known. The store's body fails rather than ends short.
 */
async function openSpan(
  services: Services,
  bucket: string,
  key: string,
  offset: number,
  length: number,
  etag?: string,
): Promise<ReadableStream<Uint8Array>> {
  const object = await services.store.get(bucket, key, {
    range: { start: offset, end: offset + length - 1 },
  });
  if (object !== null && etag !== undefined && object.info.etag !== etag) {
    await object.body.cancel().catch(() => {});
    throw new StaleHeader(
      `Object ${key} was replaced while being read (ETag ${etag} → ${object.info.etag}); ask again`,
    );
  }
  if (object === null) {
    if (etag !== undefined) throw new StaleHeader(`Object ${key} disappeared while being read`);
    throw new HttpError(404, `Not found: object ${key} disappeared while being read`);
  }
  if (object.length !== length) {
    await object.body.cancel().catch(() => {});
    throw new HttpError(
      502,
      `Short read of ${key}: asked for ${length} bytes at ${offset}, got ${object.length}; the object may be truncated`,
    );
  }
  return object.body;
}

/** Where an instance's pixels are read from: its object, the version its header is of, and the header. */
interface Source {
  bucket: string;
  key: string;
  /** The ETag the header is of; every read checks it when the header came from the cache unchecked. */
  etag?: string;
  header: Part10Header;
}

async function readFrame(services: Services, source: Source, plan: FramePlan) {
  const { bucket, header, key, etag } = source;
  const chunks = await Promise.all(
    plan.ranges.map((r) => readSpan(services, bucket, header, key, r.offset, r.length, etag)),
  );
  const bytes = chunks.length === 1 ? chunks[0] : concatBytes(chunks);
  return plan.extract ? plan.extract(bytes) : bytes;
}

/**
 * The instance's parsed header (404 when missing). `cached`: a header cached for the key is used without
 * asking the store first (one round trip less per frame); the reads then check its ETag.
 */
async function instanceHeader(services: Services, ctx: RouteContext, cached: boolean) {
  const target = targetOf(ctx.params);
  const bucket = await bucketOf(services, target.aet);
  const key = instanceKey(target.study, target.series!, target.instance!);
  const known = cached ? services.headerCache.latest(bucket, key) : undefined;
  if (known !== undefined && !known.header.inflated) {
    return { target, source: { bucket, key, etag: known.etag, header: known.header } };
  }
  const info: ObjectInfo | null = await services.store.head(bucket, key);
  if (info === null) throw new HttpError(404, `Not found: ${describe(target)}`);
  const header = await loadHeader(services.store, services.headerCache, bucket, info, {
    bulkThreshold: services.config.bulkDataThreshold,
  });
  return { target, source: { bucket, key, header } };
}

/** Runs `handler` with the cached header; again with a fresh one if the object proved to have changed. */
async function withFreshHeader(
  services: Services,
  ctx: RouteContext,
  handler: (cached: boolean) => Promise<Response>,
): Promise<Response> {
  try {
    return await handler(true);
  } catch (error) {
    if (!(error instanceof StaleHeader)) throw error;
    const target = targetOf(ctx.params);
    services.headerCache.forget(
      await bucketOf(services, target.aet),
      instanceKey(target.study, target.series!, target.instance!),
    );
    return await handler(false);
  }
}

/**
 * One part whose body is already open: a consumer that stops before taking it (the client went away before
 * the first byte) cancels the body, so the store's connection is released.
 */
function onePart(part: Part & { body: ReadableStream<Uint8Array> }): AsyncIterable<Part> {
  let taken = false;
  return {
    [Symbol.asyncIterator]: () => ({
      next(): Promise<IteratorResult<Part>> {
        if (taken) return Promise.resolve({ done: true, value: undefined });
        taken = true;
        return Promise.resolve({ done: false, value: part });
      },
      async return(): Promise<IteratorResult<Part>> {
        if (!taken) {
          taken = true;
          await part.body.cancel().catch(() => {});
        }
        return { done: true, value: undefined };
      },
    }),
  };
}

/**
 * `multipart/related` of `parts`, each of `contentType`; with `sized` (each part's headers and byte count,
 * known up front), its `Content-Length` too.
 */
function multipartResponse(
  parts: AsyncIterable<Part>,
  contentType: string,
  sized?: { headers: Record<string, string>; size: number }[],
): Response {
  const boundary = randomBoundary();
  const type = contentType.split(";")[0];
  const headers: Record<string, string> = {
    "content-type": `multipart/related; type="${type}"; boundary=${boundary}`,
  };
  if (sized !== undefined) headers["content-length"] = String(multipartLength(boundary, sized));
  return new Response(multipartStream(parts, boundary), { headers });
}

/** The frames and bulk data handlers. */
export interface PixelHandlers {
  /** `.../instances/{instance}/frames/{frames}` */
  frames: Handler;
  /** `.../instances/{instance}/bulkdata/{path}` */
  bulkdata: Handler;
}

/** The frames and bulkdata handlers. */
export function pixelHandlers(services: Services): PixelHandlers {
  function frames(ctx: RouteContext): Promise<Response> {
    return withFreshHeader(services, ctx, (cached) => framesOf(ctx, cached));
  }

  async function framesOf(ctx: RouteContext, cached: boolean): Promise<Response> {
    const list = parseFrameList(ctx.params.frames);
    const { target, source } = await instanceHeader(services, ctx, cached);
    const { header } = source;
    if (!header.pixelData) {
      throw new HttpError(404, `Not found: ${describe(target)} has no pixel data, so it has no frames`);
    }
    const plans = list.map((n) => planFrame(header, n)); // RangeError → 400 naming the valid range
    const choice = negotiateFrames(
      ctx.request.headers.get("accept"),
      { transferSyntax: header.transferSyntaxUid, mediaType: plans[0].mediaType },
      list.length === 1,
      {
        decodable: services.capabilities.decode === true && DECODABLE_SYNTAXES.has(header.transferSyntaxUid),
      },
    );
    // Decoded frames: native little endian samples from the codec pool (413/422 from decodedFrame).
    const frameOf = choice.decode
      ? async (plan: FramePlan) => (await decodedFrame(header, await readFrame(services, source, plan))).bytes
      : (plan: FramePlan) => readFrame(services, source, plan);
    // One frame stored as one span, sent as stored: streamed through as the store sends it (the viewer's
    // usual request; its first bytes go out while the rest arrives).
    const span = plans[0].ranges[0];
    if (
      list.length === 1 && !choice.decode && plans[0].ranges.length === 1 && !plans[0].extract &&
      !header.inflated && span.length > 0
    ) {
      const body = await openSpan(services, source.bucket, source.key, span.offset, span.length, source.etag);
      if (!choice.multipart) {
        return new Response(body, {
          headers: { "content-type": choice.contentType, "content-length": String(span.length) },
        });
      }
      // its length is known (openSpan checked it): sent with Content-Length, not chunked
      const part = { headers: { "Content-Type": choice.contentType }, body };
      return multipartResponse(onePart(part), choice.contentType, [{
        headers: part.headers,
        size: span.length,
      }]);
    }
    if (!choice.multipart) {
      const bytes = await frameOf(plans[0]);
      return new Response(bytes as Uint8Array<ArrayBuffer>, {
        headers: { "content-type": choice.contentType, "content-length": String(bytes.byteLength) },
      });
    }
    const frameBytes = ahead(plans, frameOf, readAheadOf(services));
    const first = await frameBytes.next(); // a store failure is a 5xx before anything is sent
    const parts = (async function* (): AsyncGenerator<Part> {
      if (!first.done) yield { headers: { "Content-Type": choice.contentType }, body: first.value };
      for await (const bytes of frameBytes) {
        yield { headers: { "Content-Type": choice.contentType }, body: bytes };
      }
    })();
    return multipartResponse(parts, choice.contentType);
  }

  function bulkdata(ctx: RouteContext): Promise<Response> {
    return withFreshHeader(services, ctx, (cached) => bulkdataOf(ctx, cached));
  }

  async function bulkdataOf(ctx: RouteContext, cached: boolean): Promise<Response> {
    const path = ctx.params.path ?? "";
    const { target, source } = await instanceHeader(services, ctx, cached);
    const { bucket, key, header, etag } = source;
    const resolved = resolveBulkData(header.dataset, path);
    const element = resolved?.element;
    const pixel = header.pixelData;
    const isPixel = pixel !== undefined && path === pixel.tag.toString(16).toUpperCase().padStart(8, "0");
    if (!element && !isPixel) {
      throw new HttpError(
        404,
        `Not found: ${
          describe(target)
        } has no bulk data at "${path}" (paths come from BulkDataURIs in its metadata)`,
      );
    }
    if (isPixel && pixel!.encapsulated) {
      // Encapsulated Pixel Data: one part per frame in its compressed media type.
      const count = frameCount(header);
      const url = new URL(ctx.url);
      url.pathname = url.pathname.replace(
        /\/bulkdata\/.*$/,
        `/frames/${Array.from({ length: count }, (_, i) => i + 1).join(",")}`,
      );
      const accept = ctx.request.headers.get("accept");
      const request = new Request(url, {
        headers: {
          accept: accept && !/octet-stream/.test(accept)
            ? accept
            : 'multipart/related; type="*/*"; transfer-syntax=*',
        },
      });
      return framesOf(
        { request, url, params: { ...ctx.params, frames: url.pathname.split("/").pop()! } },
        cached,
      );
    }
    if (!isPixel && element!.length < 0) {
      // Encapsulated pixel data nested in an item (an Icon Image Sequence's): its one frame, in its media type.
      return nestedEncapsulated(services, source, element!);
    }
    const vr = isPixel ? pixel!.vr : element!.vr;
    const offset = isPixel ? pixel!.offset : element!.offset;
    const stored = isPixel ? pixel!.length : element!.length;
    // An odd-length value (which PS3.5 7.1.1 forbids) is served with the zero byte its writer owed, as in
    // the metadata's InlineBinary (binaryValue).
    const length = stored + (stored % 2);
    const single = wantsSingle(ctx.request.headers.get("accept"));
    const range = parseRange(ctx.request.headers.get("range"), length);
    const start = range?.start ?? 0;
    const end = range?.end ?? length - 1;
    // The byte order of the data set holding the value (an item of a UN sequence is little endian).
    const littleEndian = isPixel ? header.littleEndian : resolved!.dataset.littleEndian;
    const swap = !littleEndian && ["OW", "OF", "OL", "OD", "OV"].includes(vr);
    const whole = swap || stored !== length;
    let bytes: Uint8Array;
    if (element?.bytes) bytes = element.bytes;
    else if (whole) bytes = await readSpan(services, bucket, header, key, offset, stored, etag);
    else bytes = await readSpan(services, bucket, header, key, offset + start, end - start + 1, etag);
    if (element?.bytes || whole) bytes = binaryValue(bytes, vr, littleEndian).subarray(start, end + 1);
    // Native pixel data goes out little endian whatever the stored syntax: say so, as frames do.
    const type = PIXEL_TAGS.has(isPixel ? pixel!.tag : element!.tag)
      ? `${OCTET}; transfer-syntax=${EXPLICIT_VR_LITTLE_ENDIAN}`
      : OCTET;
    const headers = new Headers();
    if (single) {
      headers.set("content-type", type);
      headers.set("accept-ranges", "bytes");
      if (range) headers.set("content-range", `bytes ${start}-${end}/${length}`);
      headers.set("content-length", String(bytes.byteLength));
      return new Response(bytes as Uint8Array<ArrayBuffer>, { status: range ? 206 : 200, headers });
    }
    const boundary = randomBoundary();
    const partHeaders: Record<string, string> = { "Content-Type": type };
    if (range) partHeaders["Content-Range"] = `bytes ${start}-${end}/${length}`;
    const parts = (async function* () {
      yield { headers: partHeaders, body: bytes };
    })();
    headers.set("content-type", `multipart/related; type="${OCTET}"; boundary=${boundary}`);
    return new Response(multipartStream(parts, boundary), { status: range ? 206 : 200, headers });
  }

  return { frames, bulkdata };
}

/**
 * The bulk data of encapsulated pixel data nested in an item (PS3.5 A.4 lets an Icon Image Sequence item hold
 * its pixels compressed in the instance's syntax): one part, the item's one frame (its fragments after the
 * Basic Offset Table), in the syntax's media type.
 */
async function nestedEncapsulated(
  services: Services,
  source: Source,
  element: DicomElement,
): Promise<Response> {
  const { bucket, key, header, etag } = source;
  const fragments = (element.fragments ?? []).slice(1);
  const chunks = await Promise.all(
    fragments.map((f) => readSpan(services, bucket, header, key, f.offset, f.length, etag)),
  );
  const ts = header.transferSyntaxUid;
  const contentType = `${frameMediaType(ts)}; transfer-syntax=${ts}`;
  const parts = (async function* (): AsyncGenerator<Part> {
    yield { headers: { "Content-Type": contentType }, body: concatBytes(chunks) };
  })();
  return multipartResponse(parts, contentType);
}

function wantsSingle(accept: string | null): boolean {
  const ranked: MediaRange[] = rankRanges(parseAccept(accept));
  for (const r of ranked) {
    if (r.type === "application" && r.subtype === "octet-stream") return true;
    if (r.type === "*" || r.type === "multipart") {
      const inner = r.params.type?.toLowerCase();
      if (r.type === "multipart" && inner !== undefined && inner !== "*/*" && inner !== OCTET) continue;
      return false;
    }
  }
  throw new HttpError(
    406,
    `None of the media types in Accept can be served: bulk data is ${OCTET} or multipart/related; type="${OCTET}"`,
  );
}

/** A single `bytes=a-b` / `bytes=a-` / `bytes=-n` range, or undefined; 416 when unsatisfiable. */
export function parseRange(
  header: string | null,
  length: number,
): { start: number; end: number } | undefined {
  if (header === null) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === "" && m[2] === "")) {
    throw new HttpError(416, `Unsupported Range "${header}": use one range like bytes=0-1023`, {
      headers: { "content-range": `bytes */${length}` },
    });
  }
  let start: number;
  let end: number;
  if (m[1] === "") {
    start = Math.max(0, length - Number(m[2]));
    end = length - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? length - 1 : Math.min(Number(m[2]), length - 1);
  }
  if (start >= length || end < start) {
    throw new HttpError(416, `Range "${header}" is outside the ${length} bytes of this value`, {
      headers: { "content-range": `bytes */${length}` },
    });
  }
  return { start, end };
}
