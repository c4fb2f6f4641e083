/**
 * Part 10 headers of stored instances, read with ranged GETs of the object's front (never the
 * pixel data) and cached by object ETag, so metadata, frames and bulkdata cost no re-reads.
 *
 * @module
 */

import { type RangeSource, readHeader } from "../dicom/part10.ts";
import type { ObjectInfo, ObjectStore } from "../store/store.ts";
import { CorruptObjectError, NotFoundError } from "../util/errors.ts";
import type { Part10Header } from "../dicom/dataset.ts";

/**
 * A byte-bounded LRU of parsed headers keyed by bucket, key and ETag, each with the instance's DICOM JSON
 * text once metadata has made it (so warm series metadata costs no re-encoding).
 */
export class HeaderCache {
  readonly #entries = new Map<string, { header: Part10Header; bytes: number; json?: string }>();
  /** The ETag last cached for each bucket and key. */
  readonly #latest = new Map<string, string>();
  /** Bytes up to the pixel data of the header read last in each bucket and folder (a series). */
  readonly #headerBytes = new Map<string, number>();
  readonly #maxBytes: number;
  #bytes = 0;
  /** Bytes read from the store to parse headers (for benchmarks and tests). */
  bytesRead = 0;
  /** Headers parsed from the store (cache misses). */
  misses = 0;

  /** A cache holding up to `maxBytes` of parsed headers. */
  constructor(maxBytes = 64 * 1024 * 1024) {
    this.#maxBytes = maxBytes;
  }

  /** The cached header of this object version, refreshed as most recently used. */
  get(bucket: string, info: Pick<ObjectInfo, "key" | "etag">): Part10Header | undefined {
    const id = `${bucket}\u0000${info.key}\u0000${info.etag}`;
    const entry = this.#entries.get(id);
    if (!entry) return undefined;
    this.#entries.delete(id);
    this.#entries.set(id, entry);
    return entry.header;
  }

  /**
   * The header cached last for `key`, with its ETag, whatever the object's current version: a reader that
   * uses it must check that the bytes it then reads come from that ETag.
   */
  latest(bucket: string, key: string): { etag: string; header: Part10Header } | undefined {
    const etag = this.#latest.get(`${bucket}\u0000${key}`);
    if (etag === undefined) return undefined;
    const header = this.get(bucket, { key, etag });
    return header && { etag, header };
  }

  /**
   * How many bytes the first read of `key`'s header should ask for: those the last header read in the same
   * folder (its series; a modality writes the headers of a series alike) took, so one GET is enough.
   */
  headerHint(bucket: string, key: string): number | undefined {
    return this.#headerBytes.get(`${bucket}\u0000${key.slice(0, key.lastIndexOf("/") + 1)}`);
  }

  /** Records that the header of `key` ended (its pixel data began) at `bytes`. */
  noteHeaderBytes(bucket: string, key: string, bytes: number): void {
    const id = `${bucket}\u0000${key.slice(0, key.lastIndexOf("/") + 1)}`;
    this.#headerBytes.delete(id);
    if (this.#headerBytes.size >= 10_000) this.#headerBytes.delete(this.#headerBytes.keys().next().value!);
    this.#headerBytes.set(id, bytes);
  }

  /** Forgets `key`'s latest version (it proved stale). */
  forget(bucket: string, key: string): void {
    this.#latest.delete(`${bucket}\u0000${key}`);
  }

  /** The cached DICOM JSON text of this object version (see {@linkcode HeaderCache.setJson}). */
  json(bucket: string, info: Pick<ObjectInfo, "key" | "etag">): string | undefined {
    return this.#entries.get(`${bucket}\u0000${info.key}\u0000${info.etag}`)?.json;
  }

  /** Keeps `json` (relative BulkDataURIs) with the cached header of this object version, if it is cached. */
  setJson(bucket: string, info: Pick<ObjectInfo, "key" | "etag">, json: string): void {
    const entry = this.#entries.get(`${bucket}\u0000${info.key}\u0000${info.etag}`);
    if (entry === undefined || entry.json !== undefined) return;
    entry.json = json;
    const bytes = json.length * 2;
    entry.bytes += bytes;
    this.#bytes += bytes;
    this.#evict();
  }

  /** Caches `header` for this object version, evicting the least recently used beyond the bound. */
  set(bucket: string, info: Pick<ObjectInfo, "key" | "etag">, header: Part10Header): void {
    const id = `${bucket}\u0000${info.key}\u0000${info.etag}`;
    const bytes = estimateBytes(header);
    if (bytes > this.#maxBytes / 4) return;
    const old = this.#entries.get(id);
    if (old) {
      this.#bytes -= old.bytes;
      this.#entries.delete(id);
    }
    this.#entries.set(id, { header, bytes });
    this.#latest.set(`${bucket}\u0000${info.key}`, info.etag);
    this.#bytes += bytes;
    this.#evict();
  }

  #evict(): void {
    for (const [oldest, entry] of this.#entries) {
      if (this.#bytes <= this.#maxBytes) break;
      this.#entries.delete(oldest);
      this.#bytes -= entry.bytes;
      const cut = oldest.lastIndexOf("\u0000");
      const object = oldest.slice(0, cut);
      if (this.#latest.get(object) === oldest.slice(cut + 1)) this.#latest.delete(object);
    }
  }

  /** Number of cached headers. */
  get size(): number {
    return this.#entries.size;
  }
}

function estimateBytes(header: Part10Header): number {
  let bytes = 512 + (header.inflated?.byteLength ?? 0);
  const walk = (
    elements: Iterable<
      { bytes?: Uint8Array; items?: { elements: Map<number, unknown> }[]; fragments?: unknown[] }
    >,
  ) => {
    for (const el of elements) {
      bytes += 96 + (el.bytes?.byteLength ?? 0) + (el.fragments?.length ?? 0) * 32;
      if (el.items) { for (const item of el.items) walk(item.elements.values() as never); }
    }
  };
  walk(header.dataset.elements.values());
  bytes += (header.pixelData?.fragments?.length ?? 0) * 32;
  return bytes;
}

/** A {@linkcode RangeSource} over one stored object, counting the bytes it reads. */
export function objectSource(
  store: ObjectStore,
  bucket: string,
  info: Pick<ObjectInfo, "key" | "size">,
  counter?: { bytesRead: number },
): RangeSource {
  return {
    name: info.key,
    size: info.size,
    async read(start: number, end: number): Promise<Uint8Array> {
      if (end <= start) return new Uint8Array(0);
      const object = await store.get(bucket, info.key, { range: { start, end: end - 1 } });
      if (object === null) {
        throw new NotFoundError(`Not found: object ${info.key} disappeared while being read`);
      }
      const bytes = new Uint8Array(await new Response(object.body).arrayBuffer());
      if (counter) counter.bytesRead += bytes.byteLength;
      return bytes;
    },
  };
}

/** Reads (or takes from the cache) the header of one object version. */
export async function loadHeader(
  store: ObjectStore,
  cache: HeaderCache,
  bucket: string,
  info: ObjectInfo,
  options: { bulkThreshold?: number } = {},
): Promise<Part10Header> {
  const cached = cache.get(bucket, info);
  if (cached) return cached;
  cache.misses++;
  let header: Part10Header;
  // 8 KiB covers most headers. After the first of a series, its last header says how much to ask for (a
  // modality writes a series' headers alike): a quarter and 1 KiB more than it took, so a 1.7 KiB CT header
  // costs a 3 KiB read instead of 8, and an enhanced multi-frame's 100 KiB one a single GET instead of a
  // doubling series. The tag and length of the pixel data must be in that read too.
  const hint = cache.headerHint(bucket, info.key);
  const initialBytes = hint === undefined ? 8 * 1024 : Math.min(Math.ceil(hint * 1.25) + 1024, 256 * 1024);
  try {
    header = await readHeader(objectSource(store, bucket, info, cache), {
      bulkThreshold: options.bulkThreshold,
      initialBytes,
    });
  } catch (error) {
    // A stored object that is not valid DICOM is the server's problem, not the client's.
    if (error instanceof SyntaxError) {
      throw new CorruptObjectError(
        info.key,
        `Stored object ${info.key} is not readable DICOM: ${error.message}`,
        {
          cause: error,
        },
      );
    }
    throw error;
  }
  cache.set(bucket, info, header);
  if (header.pixelData !== undefined && !header.deflated) {
    cache.noteHeaderBytes(bucket, info.key, header.pixelData.offset);
  }
  return header;
}
