/**
 * {@linkcode ObjectStore} in memory, for unit tests. Same semantics as the S3 and folder stores;
 * keeps copies of what it is given and hands out copies.
 *
 * @module
 */

import {
  checkRange,
  compareKeys,
  type GetOptions,
  type ListOptions,
  type ObjectBody,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
  type ReadOptions,
  StoreError,
} from "./store.ts";
import { OutOfRangeError } from "../util/errors.ts";
import { concatBytes } from "../util/bytes.ts";

/** Bytes per body chunk. */
const CHUNK = 1024 * 1024;

interface Entry {
  data: Uint8Array;
  etag: string;
  lastModified: Date;
  contentType?: string;
}

/**
 * Memory-backed object store.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * const store = new MemoryStore(["DICOM"]);
 * await store.put("DICOM", "1.2/1.3/1.4.dcm", new Uint8Array([1, 2, 3]));
 * assert.equal((await store.head("DICOM", "1.2/1.3/1.4.dcm"))?.size, 3);
 * ```
 */
export class MemoryStore implements ObjectStore {
  readonly kind = "memory";
  readonly location = "memory";
  #buckets = new Map<string, Map<string, Entry>>();
  #version = 0;

  /** A store with the (empty) `buckets` that exist from the start. */
  constructor(buckets: Iterable<string> = []) {
    for (const name of buckets) this.createBucket(name);
  }

  /** Adds an empty bucket (no-op if it exists). */
  createBucket(name: string): void {
    if (!this.#buckets.has(name)) this.#buckets.set(name, new Map());
  }

  listBuckets(options: ReadOptions = {}): Promise<string[]> {
    return settle(() => {
      options.signal?.throwIfAborted();
      return [...this.#buckets.keys()].sort(compareKeys);
    });
  }

  async *list(bucket: string, prefix: string, options: ListOptions = {}): AsyncIterable<ObjectInfo> {
    const objects = this.#bucket(bucket);
    const { startAfter, signal } = options;
    const keys = [...objects.keys()]
      .filter((key) =>
        key.startsWith(prefix) && (startAfter === undefined || compareKeys(key, startAfter) > 0)
      )
      .sort(compareKeys);
    for (const key of keys) {
      signal?.throwIfAborted();
      const entry = objects.get(key);
      if (entry) yield infoOf(key, entry);
      await Promise.resolve();
    }
  }

  head(bucket: string, key: string, options: ReadOptions = {}): Promise<ObjectInfo | null> {
    return settle(() => {
      options.signal?.throwIfAborted();
      const entry = this.#bucket(bucket).get(key);
      return entry ? infoOf(key, entry) : null;
    });
  }

  get(bucket: string, key: string, options: GetOptions = {}): Promise<ObjectBody | null> {
    return settle(() => {
      const { range, signal } = options;
      signal?.throwIfAborted();
      if (range) checkRange(range);
      const entry = this.#bucket(bucket).get(key);
      if (!entry) return null;
      const size = entry.data.byteLength;
      const start = range?.start ?? 0;
      if (range && start >= size) {
        throw new OutOfRangeError(`Range start ${start} is past the end of ${bucket}/${key} (${size} bytes)`);
      }
      const end = Math.min(range?.end ?? size - 1, size - 1);
      const data = entry.data;
      let offset = start;
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          // Like the S3 and folder stores: aborting the signal ends a body that is still open.
          signal?.addEventListener("abort", () => {
            try {
              controller.error(signal.reason);
            } catch { /* already closed */ }
          }, { once: true });
        },
        pull(controller) {
          signal?.throwIfAborted();
          const next = Math.min(offset + CHUNK, end + 1);
          if (next > offset) controller.enqueue(data.slice(offset, next));
          offset = next;
          if (offset > end) controller.close();
        },
      }, { highWaterMark: 0 });
      return { info: infoOf(key, entry), start, length: end + 1 - start, body };
    });
  }

  async put(
    bucket: string,
    key: string,
    body: ReadableStream<Uint8Array> | Uint8Array,
    options: PutOptions = {},
  ): Promise<ObjectInfo> {
    const { signal, size } = options;
    signal?.throwIfAborted();
    this.#bucket(bucket);
    if (key === "") throw new OutOfRangeError("Key must not be empty");
    const data = body instanceof Uint8Array ? body.slice() : await collect(body, signal);
    signal?.throwIfAborted();
    if (size !== undefined && size !== data.byteLength) {
      throw new OutOfRangeError(`Body of ${bucket}/${key} has ${data.byteLength} bytes, expected ${size}`);
    }
    const entry = {
      data,
      etag: `m${++this.#version}`,
      lastModified: new Date(),
      contentType: options.contentType,
    };
    this.#bucket(bucket).set(key, entry);
    return infoOf(key, entry);
  }

  delete(bucket: string, key: string, options: ReadOptions = {}): Promise<void> {
    return settle(() => {
      options.signal?.throwIfAborted();
      this.#bucket(bucket).delete(key);
    });
  }

  check(bucket: string, options: ReadOptions = {}): Promise<void> {
    return settle(() => {
      options.signal?.throwIfAborted();
      this.#bucket(bucket);
    });
  }

  #bucket(name: string): Map<string, Entry> {
    const objects = this.#buckets.get(name);
    if (!objects) {
      throw new StoreError(
        "no-bucket",
        `Bucket "${name}" does not exist in the memory store: create it first`,
      );
    }
    return objects;
  }
}

/** Runs `fn` now; its result or exception becomes the promise's. */
function settle<T>(fn: () => T): Promise<T> {
  return new Promise((resolve) => resolve(fn()));
}

function infoOf(key: string, entry: Entry): ObjectInfo {
  return { key, size: entry.data.byteLength, etag: entry.etag, lastModified: entry.lastModified };
}

async function collect(body: ReadableStream<Uint8Array>, signal?: AbortSignal): Promise<Uint8Array> {
  const reader = body.getReader();
  const onAbort = () => void reader.cancel(signal?.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  const chunks: Uint8Array[] = [];
  let length = 0;
  try {
    while (true) {
      const { done, value } = await reader.read();
      // a cancelled reader reads as "done": never mistake that for the end of the body
      signal?.throwIfAborted();
      if (done) break;
      chunks.push(value);
      length += value.byteLength;
    }
  } catch (error) {
    await reader.cancel(error).catch(() => {});
    throw error;
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  return concatBytes(chunks, length);
}
