/**
 * The object store interface: one implementation each for S3, a local folder and memory.
 *
 * A "bucket" is where one AET's objects live; keys are `{study}/{series}/{sop}.dcm`.
 * Every implementation passes the same contract suite (`tests/store/_store_contract.ts`).
 *
 * @module
 */

import { OutOfRangeError } from "../util/errors.ts";

/** What a listing or a HEAD says about one object. */
export interface ObjectInfo {
  /** The full key inside the bucket. */
  key: string;
  /** Size in bytes. */
  size: number;
  /** An opaque version tag that changes whenever the content changes (S3 ETag, quotes stripped). */
  etag: string;
  /** Last modification time, when the store knows it. */
  lastModified?: Date;
}

/** An inclusive byte range; `end` omitted means "to the end of the object". */
export interface ByteRange {
  /** First byte (inclusive). */
  start: number;
  /** Last byte (inclusive); the end of the object when unset. */
  end?: number;
}

/** Options for reads. */
export interface ReadOptions {
  /** Aborts the request and the body stream. */
  signal?: AbortSignal;
}

/** Options for {@linkcode ObjectStore.get}. */
export interface GetOptions extends ReadOptions {
  /** Fetch only these bytes. A start past the end raises a `RangeError`. */
  range?: ByteRange;
}

/** An object being read. */
export interface ObjectBody {
  /** The object's key, size (of the whole object) and ETag. */
  info: ObjectInfo;
  /** First byte position of `body` within the object (0 without a range). */
  start: number;
  /** Number of bytes `body` will deliver. */
  length: number;
  /** The bytes; cancel it to release the connection. */
  body: ReadableStream<Uint8Array>;
}

/** Options for {@linkcode ObjectStore.put}. */
export interface PutOptions {
  /** The exact length when known (required by some S3 servers for a single PUT). */
  size?: number;
  /** The object's Content-Type. */
  contentType?: string;
  /** Aborts the write (nothing is left half-written). */
  signal?: AbortSignal;
}

/** Options for {@linkcode ObjectStore.list}. */
export interface ListOptions extends ReadOptions {
  /** Start listing after this key (exclusive). */
  startAfter?: string;
  /**
   * Keys wanted in the first page (a hint): a caller that wants the first keys soonest (a retrieve: its first
   * GETs wait for them) says how many, whatever the prefix's last listing held. Stores without pages ignore it.
   */
  firstPage?: number;
}

/**
 * Storage backend. All methods reject with {@linkcode StoreError} for store failures
 * (unreachable, access denied, missing bucket) so the HTTP layer can answer 502/503.
 */
export interface ObjectStore {
  /** "s3", "local" or "memory": used in logs and the start-up banner. */
  readonly kind: string;
  /** Human-readable location, e.g. the endpoint URL or the folder path. */
  readonly location: string;
  /** The buckets this store can see (the default AETs when none are configured). */
  listBuckets(options?: ReadOptions): Promise<string[]>;
  /**
   * Every object whose key starts with `prefix`, in ascending key order, following pagination
   * to the end. Flat: no delimiter, so nested keys are included.
   */
  list(bucket: string, prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo>;
  /** The object's info, or `null` when there is no such key. */
  head(bucket: string, key: string, options?: ReadOptions): Promise<ObjectInfo | null>;
  /** Opens the object for reading, or `null` when there is no such key. */
  get(bucket: string, key: string, options?: GetOptions): Promise<ObjectBody | null>;
  /**
   * Writes the object atomically: readers see the old object or the whole new one, never a part.
   * If `body` errors or `signal` aborts, nothing is written.
   */
  put(
    bucket: string,
    key: string,
    body: ReadableStream<Uint8Array> | Uint8Array,
    options?: PutOptions,
  ): Promise<ObjectInfo>;
  /** Deletes the object; deleting a missing key is not an error. */
  delete(bucket: string, key: string, options?: ReadOptions): Promise<void>;
  /**
   * Creates an empty bucket (no-op when it exists). Only stores where a bucket is cheap and local have it
   * (a folder, memory): the server never creates S3 buckets.
   */
  createBucket?(bucket: string): void | Promise<void>;
  /** Resolves when the bucket answers; rejects with a {@linkcode StoreError} saying why not. */
  check(bucket: string, options?: ReadOptions): Promise<void>;
  /** Releases sockets and handles. */
  close?(): void | Promise<void>;
}

/** Why a store operation failed. */
export type StoreErrorKind = "unavailable" | "denied" | "no-bucket" | "failed";

/** A failure of the storage backend (not of the request). */
export class StoreError extends Error {
  /** What kind of failure. */
  readonly kind: StoreErrorKind;
  /** A failure of kind `kind`, with a message naming the store and the fix. */
  constructor(kind: StoreErrorKind, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StoreError";
    this.kind = kind;
  }
}

/**
 * Orders keys the way S3 lists them: by their UTF-8 bytes, which is code point order
 * (plain `<` on JavaScript strings compares UTF-16 code units and differs for characters past U+FFFF).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * assert.deepEqual(["1.2.34/a", "1.2.3/b", "1.2.3.4"].sort(compareKeys), ["1.2.3.4", "1.2.3/b", "1.2.34/a"]);
 * ```
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return codePointRank(x) - codePointRank(y);
  }
  return a.length - b.length;
}

/** Moves surrogates (U+D800–DFFF) above U+E000–FFFF so code units compare in code point order. */
function codePointRank(unit: number): number {
  if (unit < 0xd800) return unit;
  return unit < 0xe000 ? unit + 0x2000 : unit - 0x800;
}

/**
 * Throws a `RangeError` for a range no object can satisfy (negative or fractional start, end before start).
 * Whether the start lies past the end of an object is for the store to say.
 */
export function checkRange(range: ByteRange): void {
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || start < 0) throw new OutOfRangeError(`Invalid range start: ${start}`);
  if (end !== undefined && (!Number.isSafeInteger(end) || end < start)) {
    throw new OutOfRangeError(`Invalid range end: ${end} (start ${start})`);
  }
}
