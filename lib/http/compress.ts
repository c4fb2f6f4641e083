/**
 * gzip for text answers (DICOM JSON and XML, JSON, text) when the client accepts it (RFC 9110 12.5.3,
 * `Accept-Encoding`). Browsers (OHIF) always do, and a 500-instance series' metadata is 1.7 MB of JSON that
 * gzip makes ~10× smaller: what a viewer across a WAN link waits for. Binary answers (instances, frames,
 * rendered images, multipart) go as they are.
 *
 * @module
 */

import { Duplex } from "node:stream";
import { promisify } from "node:util";
import zlib from "node:zlib";
import { concatBytes } from "../util/bytes.ts";
import { keptBytesResponse } from "./body.ts";

// node:zlib, not CompressionStream: 1.7 MB of series metadata took CompressionStream 14-16 ms, a node:zlib
// gzip stream 8-14 ms and one gzip call 2.5-3.5 ms (Deno 2.9), with a smaller result. The synchronous call
// costs least (100 KB: 0.12 ms against 0.29 ms for the asynchronous one, which goes through a thread), so
// it is used up to a few MB, where it holds the event loop for a few milliseconds at most.
// Answers made per request are gzipped at level 1 (as nginx does by default: 100 KB of DICOM JSON takes
// 0.04 ms instead of 0.12 ms, ~1.6× the size); kept answers, compressed once, at zlib's default level 6.
const gzipAsync = promisify(zlib.gzip);
const SYNC_GZIP_BYTES = 4 * 1024 * 1024;
const PER_REQUEST_LEVEL = 1;

/**
 * Answers made per request and shorter than this go as they are: a compressor's set-up on both sides costs a
 * small search answer more on a fast link (2 studies, ~2 KB: p50 0.7 -> 1.0 ms on loopback) than the bytes it
 * saves on a slow one. Kept answers, compressed once, from 1 KiB.
 */
const MIN_BYTES = 8 * 1024;
const MIN_KEPT_BYTES = 1024;

/**
 * Whether `Accept-Encoding` allows gzip: `gzip` (or `x-gzip`, or `*` when gzip is not named) with a quality
 * above zero.
 *
 * @example
 * ```ts
 * import { acceptsGzip } from "./compress.ts";
 * acceptsGzip("gzip, deflate, br"); // true
 * acceptsGzip("gzip;q=0, br"); // false
 * acceptsGzip(null); // false
 * ```
 */
export function acceptsGzip(header: string | null): boolean {
  if (header === null) return false;
  let gzip: number | undefined;
  let star: number | undefined;
  for (const item of header.split(",")) {
    const [coding, ...params] = item.split(";").map((s) => s.trim().toLowerCase());
    let q = 1;
    for (const param of params) {
      const match = /^q\s*=\s*([0-9.]+)$/.exec(param);
      if (match) q = Number(match[1]);
    }
    if (coding === "gzip" || coding === "x-gzip") gzip = Math.max(gzip ?? 0, q);
    else if (coding === "*") star = q;
  }
  return (gzip ?? star ?? 0) > 0;
}

/**
 * Whether a body of this `Content-Type` is text worth compressing: `application/json`, `application/xml`,
 * any `+json` or `+xml` type (`application/dicom+json`), `text/*`.
 *
 * @example
 * ```ts
 * import { compressible } from "./compress.ts";
 * compressible("application/dicom+json; charset=utf-8"); // true
 * compressible('multipart/related; type="application/dicom"'); // false
 * ```
 */
export function compressible(contentType: string | null): boolean {
  if (contentType === null) return false;
  const type = contentType.split(";")[0].trim().toLowerCase();
  return type === "application/json" || type === "application/xml" || type.endsWith("+json") ||
    type.endsWith("+xml") || (type.startsWith("text/") && type !== "text/event-stream");
}

/**
 * `response` gzipped when the request accepts gzip and the body is text of at least 8 KiB; otherwise
 * `response` itself. Text answers say `Vary: Accept-Encoding` either way, so caches keep the two apart; a
 * strong `ETag` becomes weak on the gzipped body. An answer that already has a `Content-Encoding` (gzipped
 * ahead, see {@linkcode keptResponse}) is left alone.
 *
 * The body's first chunks are read first: a body that is one chunk (a search result, an error) is gzipped
 * whole, or sent as it is when short; a longer one (metadata made as it is read) is gzipped as it streams.
 * The compressed stream fails when the body does, so a failed answer is cut off rather than ended as if
 * complete.
 */
export async function gzipResponse(request: Request, response: Response): Promise<Response> {
  if (
    response.body === null || response.status === 206 || !compressible(response.headers.get("content-type"))
  ) {
    return response;
  }
  const varies = /(^|,)\s*accept-encoding\s*(,|$)/i.test(response.headers.get("vary") ?? "");
  const length = response.headers.get("content-length");
  const asIs = response.headers.has("content-encoding") ||
    !acceptsGzip(request.headers.get("accept-encoding")) ||
    (length !== null && Number(length) < MIN_BYTES);
  if (asIs && varies) return response;
  const headers = new Headers(response.headers);
  if (!varies) headers.append("vary", "Accept-Encoding");
  const init = { status: response.status, statusText: response.statusText, headers };
  if (asIs) return new Response(response.body, init);
  const reader = response.body.getReader();
  const read: Uint8Array[] = [];
  let ended = false;
  try {
    while (read.length < 2) {
      const { value, done } = await reader.read();
      if (done) {
        ended = true;
        break;
      }
      read.push(value);
    }
  } catch (error) {
    // failed before anything was sent: the answer fails as it would have
    return new Response(failed(error), init);
  }
  if (ended) {
    // bytes, not a stream: Deno.serve writes a bytes body at once, a stream through its streaming path
    // (a search answer of 101 studies: p50 2.2 ms as bytes, 4-7 ms as a stream)
    const whole = read.length === 1 ? read[0] : concatBytes(read);
    if (whole.byteLength < MIN_BYTES) return new Response(whole as Uint8Array<ArrayBuffer>, init);
    headers.set("content-encoding", "gzip");
    markEncoded(headers);
    return new Response(await gzipBytes(whole, PER_REQUEST_LEVEL), init);
  }
  headers.set("content-encoding", "gzip");
  headers.delete("content-length");
  markEncoded(headers);
  const rest = new ReadableStream<Uint8Array>({
    pull: async (controller) => {
      const next = read.shift();
      if (next !== undefined) return controller.enqueue(next);
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
  const gzip = Duplex.toWeb(zlib.createGzip({ level: PER_REQUEST_LEVEL })) as unknown as ReadableWritablePair<
    Uint8Array,
    Uint8Array
  >;
  return new Response(rest.pipeThrough(gzip), init);
}

/**
 * A strong `ETag` becomes weak (`W/"..."`) on the gzipped body, as nginx does: the bytes differ, the
 * representation's data does not, and `If-None-Match` compares weakly (RFC 9110 13.1.2), so a browser's
 * revalidation of the gzipped copy still gets its 304.
 */
function markEncoded(headers: Headers): void {
  const etag = headers.get("etag");
  if (etag !== null && etag.startsWith('"')) headers.set("etag", `W/${etag}`);
}

function failed(error: unknown): ReadableStream<Uint8Array> {
  return new ReadableStream({ start: (controller) => controller.error(error) });
}

/** `bytes` gzipped (`level` 1-9, default 6). */
export async function gzipBytes(bytes: Uint8Array, level = 6): Promise<Uint8Array<ArrayBuffer>> {
  const zipped = bytes.byteLength <= SYNC_GZIP_BYTES
    ? zlib.gzipSync(bytes, { level })
    : await gzipAsync(bytes, { level });
  return new Uint8Array(zipped.buffer as ArrayBuffer, zipped.byteOffset, zipped.byteLength);
}

/** Kept bytes and their gzip, made once and gone with them. */
const gzipped = new WeakMap<Uint8Array, Promise<Uint8Array<ArrayBuffer>>>();

/**
 * {@linkcode keptBytesResponse} of `bytes` (kept and sent again), or of their gzip when the request accepts
 * it: compressed at the first such request and kept as long as `bytes` are, so a kept answer costs no
 * compression after the first.
 */
export async function keptResponse(
  request: Request,
  bytes: Uint8Array<ArrayBuffer>,
  headers: Headers,
): Promise<Response> {
  headers.append("vary", "Accept-Encoding");
  if (bytes.byteLength < MIN_KEPT_BYTES || !acceptsGzip(request.headers.get("accept-encoding"))) {
    return keptBytesResponse(bytes, headers);
  }
  let zipped = gzipped.get(bytes);
  if (zipped === undefined) {
    zipped = gzipBytes(bytes);
    gzipped.set(bytes, zipped);
  }
  headers.set("content-encoding", "gzip");
  return keptBytesResponse(await zipped, headers);
}
