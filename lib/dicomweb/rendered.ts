/**
 * Rendered and thumbnail resources (PS3.18 10.4.1.1.5 Retrieve Rendered, 10.4.1.1.6 Retrieve Thumbnail,
 * 8.3.5 rendered media types and query parameters) at study, series, instance and frame level.
 *
 * - Media types: `image/jpeg` (default) and `image/png`; the `accept` query parameter wins over the Accept
 *   header (OHIF sends `Accept: multipart/related; type="application/octet-stream"` with `?accept=image/jpeg`).
 *   `multipart/related; type="image/jpeg"` gets the image as the one part of a multipart body.
 * - Parameters: `window=center,width[,LINEAR|LINEAR_EXACT|SIGMOID]`, `viewport=vw,vh[,sx,sy,sw,sh]`,
 *   `quality=1..100`; `annotation`, `charset` and `iccprofile` are accepted and ignored.
 * - Which frame: an instance renders its frame 1; a series its middle instance in key order (the next ones
 *   outwards when that one has no pixel data); a study the middle instance of its largest series.
 * - Thumbnails default to `viewport=256,256` and are cached by object ETag and parameters in a bounded LRU.
 * - Instances without pixel data (SR, waveforms) are a 404 saying so; undecodable pixel data a 422.
 *
 * @module
 */

import { type CodecPool, defaultPool } from "../imaging/pool.ts";
import { checkFrameSize, decodeFailure, DEFAULT_MAX_FRAME_BYTES, describeFrame } from "../imaging/decode.ts";
import { planFrame } from "../dicom/frames.ts";
import { loadHeader, objectSource } from "../objects/header_cache.ts";
import { HttpError } from "../http/errors.ts";
import { multipartStream, randomBoundary } from "../http/multipart.ts";
import { parseAccept, rankRanges } from "../http/negotiation.ts";
import { renderAttributes, type RenderOptions, type Viewport, type VoiFunction } from "../imaging/render.ts";
import type { RouteContext } from "../http/router.ts";
import { bucketOf, type Services } from "./services.ts";
import type { ObjectInfo } from "../store/store.ts";
import { instanceKey, parseInstanceKey, seriesPrefix, studyPrefix } from "../dicom/uid.ts";
import { describe, type Target, targetOf } from "./retrieve.ts";
import { getString, type Part10Header } from "../dicom/dataset.ts";
import { concatBytes } from "../util/bytes.ts";

/** Options for {@linkcode registerRendered}. */
export interface RenderedOptions {
  /** Where frames are decoded and rendered (default: the process-wide pool). */
  pool?: CodecPool;
  /** Memory for cached thumbnails (default 32 MiB). */
  thumbnailCacheBytes?: number;
  /** Refuse frames whose decoded size is larger (413). */
  maxFrameBytes?: number;
  /** Viewport of a thumbnail request without one (default 256×256). */
  thumbnailSize?: number;
}

/** A byte-bounded LRU of encoded thumbnails. */
export class ThumbnailCache {
  readonly #entries = new Map<string, { bytes: Uint8Array; mediaType: string }>();
  #bytes = 0;
  /** Lookups answered from the cache. */
  hits = 0;
  /** Lookups that were not. */
  misses = 0;
  /** A cache of up to `maxBytes` of images. */
  constructor(readonly maxBytes = 32 * 1024 * 1024) {}

  /** The image cached under `id`, if any. */
  get(id: string): { bytes: Uint8Array; mediaType: string } | undefined {
    const entry = this.#entries.get(id);
    if (!entry) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.#entries.delete(id);
    this.#entries.set(id, entry);
    return entry;
  }

  /** Caches an image (the least recently used ones leave when full). */
  set(id: string, entry: { bytes: Uint8Array; mediaType: string }): void {
    if (entry.bytes.length > this.maxBytes / 8) return;
    const old = this.#entries.get(id);
    if (old) this.#bytes -= old.bytes.length;
    this.#entries.delete(id);
    this.#entries.set(id, entry);
    this.#bytes += entry.bytes.length;
    for (const [key, value] of this.#entries) {
      if (this.#bytes <= this.maxBytes) break;
      this.#entries.delete(key);
      this.#bytes -= value.bytes.length;
    }
  }

  /** Bytes held. */
  get size(): number {
    return this.#entries.size;
  }
}

/** What a rendered request asks for. */
export interface RenderRequest {
  /** How to render (window, viewport, media type). */
  options: RenderOptions;
  /** Send the image as the one part of `multipart/related`. */
  multipart: boolean;
}

const MEDIA_TYPES = ["image/jpeg", "image/png"] as const;
const MAX_VIEWPORT = 8192;

function badParameter(name: string, value: string, expected: string): HttpError {
  return new HttpError(400, `Invalid ${name} "${value.slice(0, 80)}": ${expected}`);
}

/** The media type a list of media ranges asks for, or undefined. */
function pickMediaType(
  ranges: string,
): { mediaType: RenderOptions["mediaType"]; multipart: boolean } | undefined {
  for (const r of rankRanges(parseAccept(ranges))) {
    const type = `${r.type}/${r.subtype}`;
    if (type === "multipart/related") {
      const inner = r.params.type?.toLowerCase();
      if (inner === undefined || inner === "*/*" || inner === "image/*") {
        return { mediaType: "image/jpeg", multipart: true };
      }
      if ((MEDIA_TYPES as readonly string[]).includes(inner)) {
        return { mediaType: inner as RenderOptions["mediaType"], multipart: true };
      }
      continue;
    }
    if ((MEDIA_TYPES as readonly string[]).includes(type)) {
      return { mediaType: type as RenderOptions["mediaType"], multipart: false };
    }
    if (type === "*/*" || type === "image/*") return { mediaType: "image/jpeg", multipart: false };
  }
  return undefined;
}

/**
 * Parses the query parameters and Accept header of a rendered or thumbnail request (PS3.18 8.3.5).
 * Throws 400 for malformed parameters and 406 when no acceptable media type can be produced.
 *
 * @example
 * ```ts
 * import { parseRenderRequest } from "./rendered.ts";
 * const url = new URL("http://x/rendered?accept=image%2Fpng&window=40,400&viewport=256,256");
 * parseRenderRequest(url, 'multipart/related; type="application/octet-stream"').options.mediaType; // "image/png"
 * ```
 */
export function parseRenderRequest(url: URL, acceptHeader: string | null): RenderRequest {
  const q = url.searchParams;
  let chosen: ReturnType<typeof pickMediaType>;
  const acceptParam = q.getAll("accept").join(",");
  try {
    chosen = acceptParam ? pickMediaType(acceptParam) : pickMediaType(acceptHeader ?? "*/*");
  } catch (error) {
    throw new HttpError(400, (error as Error).message, { cause: error });
  }
  if (!chosen) {
    const asked = acceptParam ? `accept=${acceptParam}` : `Accept: ${acceptHeader}`;
    throw new HttpError(
      406,
      `None of the media types asked for (${
        asked.slice(0, 120)
      }) can be rendered: use image/jpeg or image/png, e.g. ?accept=image/jpeg`,
    );
  }
  const options: RenderOptions = { mediaType: chosen.mediaType };
  const window = q.get("window");
  if (window !== null) {
    const parts = window.split(",").map((s) => s.trim());
    const center = Number(parts[0]);
    const width = Number(parts[1]);
    const fn = (parts[2] ?? "LINEAR").toUpperCase();
    if (
      parts.length < 2 || parts.length > 3 || parts[0] === "" || parts[1] === "" ||
      !Number.isFinite(center) ||
      !Number.isFinite(width) || width <= 0 || !["LINEAR", "LINEAR_EXACT", "SIGMOID"].includes(fn)
    ) {
      throw badParameter("window", window, "use center,width[,LINEAR|LINEAR_EXACT|SIGMOID] with width > 0");
    }
    if (fn === "LINEAR" && width < 1) {
      throw badParameter("window", window, "a LINEAR window needs width >= 1");
    }
    options.window = { center, width, function: fn as VoiFunction };
  }
  const viewport = q.get("viewport");
  if (viewport !== null) {
    const parts = viewport.split(",").map((s) => s.trim());
    const nums = parts.map(Number);
    const ok = (parts.length === 2 || parts.length === 6) && parts.every((s) => /^-?\d+$/.test(s)) &&
      nums[0] >= 1 && nums[1] >= 1 && nums[0] <= MAX_VIEWPORT && nums[1] <= MAX_VIEWPORT &&
      (parts.length === 2 || (nums[2] >= 0 && nums[3] >= 0 && nums[4] !== 0 && nums[5] !== 0));
    if (!ok) {
      throw badParameter(
        "viewport",
        viewport,
        `use vw,vh[,sx,sy,sw,sh]: vw and vh from 1 to ${MAX_VIEWPORT}, sx,sy >= 0, sw,sh non-zero (negative flips)`,
      );
    }
    const v: Viewport = { width: nums[0], height: nums[1] };
    if (parts.length === 6) Object.assign(v, { sx: nums[2], sy: nums[3], sw: nums[4], sh: nums[5] });
    options.viewport = v;
  }
  const quality = q.get("quality");
  if (quality !== null) {
    const n = Number(quality);
    if (!/^\d{1,3}$/.test(quality) || n < 1 || n > 100) {
      throw badParameter("quality", quality, "use an integer from 1 to 100");
    }
    options.quality = n;
  }
  return { options, multipart: chosen.multipart };
}

/** FNV-1a, for short opaque ETag suffixes. */
function hash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(36);
}

function etagMatches(header: string | null, etag: string): boolean {
  if (header === null) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((t) => t.trim().replace(/^W\//, "") === etag);
}

/** One candidate instance to render. */
interface Chosen {
  key: string;
  info: ObjectInfo;
  header: Part10Header;
}

/** A rendered or thumbnail handler; `kind` says which resource the route is. */
export type RenderHandler = (ctx: RouteContext, kind: "rendered" | "thumbnail") => Promise<Response>;

/** The rendered and thumbnail handlers of each level, and their cache. */
export interface RenderedHandlers {
  /** `/studies/{study}/rendered|thumbnail` */
  study: RenderHandler;
  /** `/studies/{study}/series/{series}/rendered|thumbnail` */
  series: RenderHandler;
  /** `.../instances/{instance}[/frames/{frames}]/rendered|thumbnail` */
  instance: RenderHandler;
  /** The thumbnail cache. */
  cache: ThumbnailCache;
}

/**
 * The rendered and thumbnail handlers (PS3.18 10.4.1.1.5, 10.4.1.1.6) at the study, series, instance and frame
 * levels; `kind` says which of the two a route serves.
 */
export function renderedHandlers(services: Services, options: RenderedOptions = {}): RenderedHandlers {
  const cache = new ThumbnailCache(options.thumbnailCacheBytes);
  const pool = () => options.pool ?? defaultPool();
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const thumbnailSize = options.thumbnailSize ?? 256;

  async function headerOf(bucket: string, info: ObjectInfo): Promise<Part10Header> {
    return await loadHeader(services.store, services.headerCache, bucket, info, {
      bulkThreshold: services.config.bulkDataThreshold,
    });
  }

  async function readFrame(
    bucket: string,
    info: ObjectInfo,
    header: Part10Header,
    frame: number,
  ): Promise<Uint8Array> {
    const plan = planFrame(header, frame);
    const source = objectSource(services.store, bucket, info);
    const chunks = await Promise.all(
      plan.ranges.map((r) =>
        header.inflated
          ? header.inflated.subarray(r.offset, r.offset + r.length)
          : source.read(r.offset, r.offset + r.length)
      ),
    );
    const bytes = chunks.length === 1 ? chunks[0] : concatBytes(chunks);
    return plan.extract ? plan.extract(bytes) : bytes;
  }

  /** Renders frame `frame` of a chosen instance into a response. */
  async function respond(
    ctx: RouteContext,
    kind: "rendered" | "thumbnail",
    bucket: string,
    chosen: Chosen,
    frame: number,
    what: string,
  ): Promise<Response> {
    const request = parseRenderRequest(ctx.url, ctx.request.headers.get("accept"));
    const renderOptions = request.options;
    if (kind === "thumbnail" && !renderOptions.viewport) {
      renderOptions.viewport = { width: thumbnailSize, height: thumbnailSize };
    }
    const { header, info } = chosen;
    if (!header.pixelData) {
      const sopClass = getString(header.dataset, 0x00080016) ?? "unknown";
      throw new HttpError(
        404,
        `Not found: ${what} has no pixel data (SOP Class ${sopClass}), so it has no ${kind} image`,
      );
    }
    const description = describeFrame(header);
    planFrame(header, frame); // RangeError (400) for a frame past the end, before any read
    const v = renderOptions.viewport;
    if (v?.sx !== undefined && (v.sx >= description.columns || v.sy! >= description.rows)) {
      throw badParameter(
        "viewport",
        ctx.url.searchParams.get("viewport")!,
        `the region starts outside the ${description.columns}×${description.rows} image`,
      );
    }
    const variant = JSON.stringify([kind, frame, renderOptions, request.multipart]);
    const etag = `"${info.etag.replace(/[^A-Za-z0-9_\-.]/g, "")}-${hash(variant)}"`;
    const headers = new Headers({ etag, "cache-control": services.config.cacheControl, vary: "Accept" });
    if (etagMatches(ctx.request.headers.get("if-none-match"), etag)) {
      return new Response(null, { status: 304, headers });
    }
    const id = `${bucket}\u0000${chosen.key}\u0000${info.etag}\u0000${variant}`;
    let image = kind === "thumbnail" ? cache.get(id) : undefined;
    if (!image) {
      checkFrameSize(description, maxFrameBytes, what);
      const data = await readFrame(bucket, info, header, frame);
      try {
        const rendered = await pool().render(
          header.transferSyntaxUid,
          data,
          description,
          renderAttributes(header, frame),
          renderOptions,
        );
        image = { bytes: rendered.bytes, mediaType: rendered.mediaType };
      } catch (error) {
        throw decodeFailure(error, `frame ${frame} of ${what}`);
      }
      if (kind === "thumbnail") cache.set(id, image);
    }
    if (!request.multipart) {
      headers.set("content-type", image.mediaType);
      headers.set("content-length", String(image.bytes.length));
      return new Response(image.bytes as Uint8Array<ArrayBuffer>, { headers });
    }
    const boundary = randomBoundary();
    headers.set("content-type", `multipart/related; type="${image.mediaType}"; boundary=${boundary}`);
    const body = image.bytes;
    const parts = (async function* () {
      yield { headers: { "Content-Type": image.mediaType }, body };
    })();
    return new Response(multipartStream(parts, boundary), { headers });
  }

  async function open(bucket: string, key: string): Promise<Chosen | undefined> {
    const info = await services.store.head(bucket, key);
    if (info === null) return undefined;
    return { key, info, header: await headerOf(bucket, info) };
  }

  /** The instance keys under `prefix` belonging to `target`, in key order. */
  async function keysOf(bucket: string, target: Target): Promise<string[]> {
    const prefix = target.series ? seriesPrefix(target.study, target.series) : studyPrefix(target.study);
    const keys: string[] = [];
    for await (const info of services.store.list(bucket, prefix)) {
      const uids = parseInstanceKey(info.key);
      if (!uids || uids.study !== target.study || (target.series && uids.series !== target.series)) continue;
      keys.push(info.key);
    }
    return keys;
  }

  /** The middle key with pixel data, trying outwards from the middle (at most 16 headers). */
  async function middleWithPixels(bucket: string, keys: string[]): Promise<Chosen | undefined> {
    const middle = Math.floor((keys.length - 1) / 2);
    const order: number[] = [middle];
    for (let d = 1; order.length < Math.min(16, keys.length); d++) {
      if (middle + d < keys.length) order.push(middle + d);
      if (middle - d >= 0 && order.length < 16) order.push(middle - d);
    }
    for (const i of order) {
      const chosen = await open(bucket, keys[i]);
      if (chosen?.header.pixelData) return chosen;
    }
    return undefined;
  }

  async function instance(ctx: RouteContext, kind: "rendered" | "thumbnail"): Promise<Response> {
    const target = targetOf(ctx.params);
    parseRenderRequest(ctx.url, ctx.request.headers.get("accept")); // 400/406 before any store access
    let frame = 1;
    if (ctx.params.frames !== undefined) {
      const list = ctx.params.frames.split(",");
      if (list.length !== 1 || !/^\d{1,9}$/.test(list[0].trim())) {
        throw new HttpError(
          400,
          `Invalid frame "${
            ctx.params.frames.slice(0, 80)
          }": render one frame at a time, e.g. frames/1/${kind}`,
        );
      }
      frame = Number(list[0]);
    }
    const bucket = await bucketOf(services, target.aet);
    const key = instanceKey(target.study, target.series!, target.instance!);
    const chosen = await open(bucket, key);
    if (!chosen) throw new HttpError(404, `Not found: ${describe(target)}`);
    return respond(ctx, kind, bucket, chosen, frame, describe(target));
  }

  /** The target of a study or series request, its bucket and its instance keys (404 without any). */
  async function listed(ctx: RouteContext) {
    const target = targetOf(ctx.params);
    parseRenderRequest(ctx.url, ctx.request.headers.get("accept"));
    const bucket = await bucketOf(services, target.aet);
    const keys = await keysOf(bucket, target);
    if (keys.length === 0) throw new HttpError(404, `Not found: ${describe(target)} has no instances`);
    return { target, bucket, keys };
  }

  async function series(ctx: RouteContext, kind: "rendered" | "thumbnail"): Promise<Response> {
    const { target, bucket, keys } = await listed(ctx);
    const chosen = await middleWithPixels(bucket, keys);
    if (!chosen) {
      throw new HttpError(404, `Not found: no instance of ${describe(target)} has pixel data to render`);
    }
    return respond(ctx, kind, bucket, chosen, 1, `${chosen.key} (representative of ${describe(target)})`);
  }

  async function study(ctx: RouteContext, kind: "rendered" | "thumbnail"): Promise<Response> {
    const { target, bucket, keys } = await listed(ctx);
    const bySeries = new Map<string, string[]>();
    for (const key of keys) {
      const seriesUid = parseInstanceKey(key)!.series;
      bySeries.set(seriesUid, [...bySeries.get(seriesUid) ?? [], key]);
    }
    // Largest series first (ties: key order).
    const ordered = [...bySeries.values()].sort((a, b) => b.length - a.length);
    for (const seriesKeys of ordered.slice(0, 8)) {
      const chosen = await middleWithPixels(bucket, seriesKeys);
      if (chosen) {
        return respond(ctx, kind, bucket, chosen, 1, `${chosen.key} (representative of ${describe(target)})`);
      }
    }
    throw new HttpError(404, `Not found: no instance of ${describe(target)} has pixel data to render`);
  }

  return { instance, series, study, cache };
}
