/**
 * The retrieve pipeline: open objects ahead of the writer with bounded concurrency, read each
 * one's File Meta as it streams, and hand them out in key order.
 *
 * @module
 */

import { type FileMeta, readFileMeta } from "../dicom/file_meta.ts";
import type { ObjectInfo, ObjectStore } from "../store/store.ts";
import { MalformedError, OutOfRangeError } from "../util/errors.ts";
import { concatBytes } from "../util/bytes.ts";
import { handOff } from "../util/handoff.ts";

/** An instance whose body is streaming in, with its File Meta already read. */
export interface OpenedInstance {
  /** The object key. */
  key: string;
  /** Its size and ETag. */
  info: ObjectInfo;
  /** Its File Meta. */
  meta: FileMeta;
  /** The whole object, from byte 0, read ahead into a bounded buffer. */
  body: ReadableStream<Uint8Array>;
  /**
   * Every chunk of `body` is a fresh buffer that nothing else holds (the store's body was read in place):
   * a consumer that passes them on whole may mark them with `handOff` (handoff.ts).
   */
  ownsChunks: boolean;
  /**
   * `body` for a consumer that passes its chunks on whole to the HTTP server and never reads them again:
   * when {@linkcode OpenedInstance.ownsChunks}, every chunk, those already read ahead included, is marked
   * with `handOff` (handoff.ts) so the server frees it once sent; otherwise `body` as it is. Call it before
   * reading `body`, and read the stream it returns instead.
   */
  handOffBody(): ReadableStream<Uint8Array>;
}

/** Options for {@linkcode openInstance}. */
export interface OpenOptions {
  /** Aborts the read. */
  signal?: AbortSignal;
  /** Bytes buffered ahead of the consumer per object, besides the chunk being filled (default 512 KiB). */
  readAhead?: number;
  /** Largest chunk the body delivers (default 512 KiB). */
  chunkSize?: number;
}

const KIB = 1024;

/** Bytes each opened object reads ahead of its consumer unless told otherwise. */
export const DEFAULT_READ_AHEAD = 512 * KIB;

/**
 * Starts reading an object and resolves once its File Meta is known, or `null` when the key does
 * not exist. The returned body replays the bytes read for the meta and keeps reading ahead of its
 * consumer, up to `readAhead` bytes.
 *
 * Bytes arrive in chunks of up to `chunkSize`, filled in place when the store's body is a byte
 * stream (a `fetch` body): one buffer per chunk instead of one per network read, and no copies.
 */
export async function openInstance(
  store: ObjectStore,
  bucket: string,
  key: string,
  options: OpenOptions = {},
): Promise<OpenedInstance | null> {
  const object = await store.get(bucket, key, { signal: options.signal });
  if (object === null) return null;
  const source = new ChunkReader(object.body, object.length, options.chunkSize ?? 512 * KIB);
  let meta: FileMeta | null = null;
  try {
    while (meta === null) {
      const more = await source.readSome();
      const head = source.head();
      meta = readFileMeta(head, key, !more || head.byteLength >= object.info.size);
      if (meta === null && !more) {
        throw new MalformedError(`Cannot read File Meta of "${key}": object is empty`);
      }
    }
  } catch (error) {
    await source.cancel(error);
    throw error;
  }
  // Chunks enqueued (read ahead) before handOffBody() is called: marked then. The queue holds at most
  // `readAhead` bytes, so only the last few can still be in it.
  let marking = false;
  let early: Uint8Array[] = [];
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = await source.next();
      if (chunk === null) controller.close();
      else if (marking) controller.enqueue(handOff(chunk));
      else {
        if (source.ownsChunks) {
          early.push(chunk);
          if (early.length > 8) early.shift();
        }
        controller.enqueue(chunk);
      }
    },
    cancel(reason) {
      return source.cancel(reason);
    },
  }, new ByteLengthQueuingStrategy({ highWaterMark: options.readAhead ?? DEFAULT_READ_AHEAD }));
  return {
    key,
    info: object.info,
    meta,
    body,
    ownsChunks: source.ownsChunks,
    handOffBody() {
      if (source.ownsChunks && !marking) {
        marking = true;
        for (const chunk of early) handOff(chunk);
        early = [];
      }
      return body;
    },
  };
}

/**
 * Cuts a body into chunks of up to `chunkSize` bytes. A byte stream is read with a BYOB reader
 * straight into each chunk's buffer; any other stream's chunks pass through as they come.
 */
class ChunkReader {
  #byob?: ReadableStreamBYOBReader;
  #reader?: ReadableStreamDefaultReader<Uint8Array>;
  #chunkSize: number;
  /** The store's length and the bytes still expected: they only size the buffers. */
  #announced: number;
  #left: number;
  #buffer: Uint8Array | null = null;
  #filled = 0;
  /** Chunks read by a default reader and not yet handed out. */
  #pending: Uint8Array[] = [];
  #done = false;

  constructor(body: ReadableStream<Uint8Array>, length: number, chunkSize: number) {
    this.#chunkSize = chunkSize;
    this.#announced = length;
    this.#left = length;
    try {
      this.#byob = body.getReader({ mode: "byob" });
    } catch {
      this.#reader = body.getReader();
    }
  }

  /** Whether each chunk is a buffer allocated here (a byte stream read in place). */
  get ownsChunks(): boolean {
    return this.#byob !== undefined;
  }

  /** Reads once more; `false` at the end of the body. */
  async readSome(): Promise<boolean> {
    if (this.#done) return false;
    if (this.#reader) {
      const { value, done } = await this.#reader.read();
      if (done) this.#done = true;
      else this.#pending.push(value);
      return !done;
    }
    if (this.#buffer === null || this.#filled === this.#buffer.byteLength) {
      // the announced length is all read: a small read finds the end (only a wrong length leaves more)
      const size = this.#left > 0
        ? Math.min(this.#left, this.#chunkSize)
        : this.#left === 0 && this.#announced > 0
        ? 64
        : this.#chunkSize;
      const buffer = new Uint8Array(this.#filled + size);
      // a full buffer is only read further while looking for the File Meta
      if (this.#buffer !== null) buffer.set(this.#buffer);
      this.#buffer = buffer;
    }
    const size = this.#buffer.byteLength;
    // the read transfers the buffer: what comes back is the only usable view of it
    const { value, done } = await this.#byob!.read(this.#buffer.subarray(this.#filled));
    this.#buffer = value ? new Uint8Array(value.buffer, 0, size) : null;
    if (done) {
      this.#done = true;
      return false;
    }
    this.#filled += value!.byteLength;
    this.#left -= value!.byteLength;
    return true;
  }

  /** Every byte read so far (only before the first {@linkcode next}). */
  head(): Uint8Array {
    if (this.#reader) {
      if (this.#pending.length > 1) this.#pending = [concatBytes(this.#pending)];
      return this.#pending[0] ?? new Uint8Array(0);
    }
    return this.#buffer === null ? new Uint8Array(0) : this.#buffer.subarray(0, this.#filled);
  }

  /** The next chunk, or `null` at the end. */
  async next(): Promise<Uint8Array | null> {
    if (this.#reader) {
      if (this.#pending.length === 0 && !(await this.readSome())) return null;
      return this.#pending.shift()!;
    }
    while (this.#buffer === null || this.#filled < this.#buffer.byteLength) {
      if (!(await this.readSome())) break;
    }
    const chunk = this.#buffer?.subarray(0, this.#filled);
    this.#buffer = null;
    this.#filled = 0;
    if (chunk === undefined || chunk.byteLength === 0) return this.#done ? null : await this.next();
    return chunk;
  }

  async cancel(reason?: unknown): Promise<void> {
    this.#done = true;
    this.#buffer = null;
    this.#pending = [];
    await (this.#byob ?? this.#reader)!.cancel(reason).catch(() => {});
  }
}

/**
 * Read-ahead shared by the requests that run at once. Each request may keep up to `perRequest` objects open
 * ahead of its writer; while `n` requests stream, each gets `total / n` of them (at least one). Every open
 * S3 response costs about a megabyte inside Deno's HTTP client besides the bytes read ahead, so this keeps
 * the server's memory near flat whatever the number of clients, while one client alone still gets the full
 * `perRequest`.
 */
export class SharedReadAhead {
  /** Objects one request may keep open ahead of its writer. */
  readonly perRequest: number;
  /** Objects all requests together keep open ahead. */
  readonly total: number;
  #active = 0;
  /** Gives back the share of a request whose `concurrency` was collected before it left. */
  readonly #dropped = new FinalizationRegistry<() => void>((leave) => leave());

  /** Shares `total` objects between the requests running at once, at most `perRequest` each. */
  constructor(perRequest: number, total: number) {
    if (!(perRequest >= 1) || !(total >= 1)) {
      throw new OutOfRangeError(
        `Read-ahead must be at least 1 (got ${perRequest} per request, ${total} in all)`,
      );
    }
    this.perRequest = perRequest;
    this.total = total;
  }

  /** Requests sharing the read-ahead now. */
  get active(): number {
    return this.#active;
  }

  /** One request's share, as of now. */
  share(): number {
    return Math.max(1, Math.min(this.perRequest, Math.floor(this.total / Math.max(1, this.#active))));
  }

  /**
   * Joins for one request: pass `concurrency` to {@linkcode ahead}, and call `leave` (once is enough) when
   * done. A request whose read-ahead is dropped without finishing leaves when `concurrency` is collected.
   */
  join(): { concurrency: () => number; leave: () => void } {
    this.#active++;
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      this.#active--;
      this.#dropped.unregister(leave);
    };
    const concurrency = () => this.share();
    this.#dropped.register(concurrency, leave, leave);
    return { concurrency, leave };
  }
}

/**
 * Maps `keys` through `open` with up to `concurrency` calls in flight, yielding results in the
 * order of `keys`. Keys are pulled in the background: a slow key source (the next listing page)
 * never holds back a result that is already open. When the consumer stops early (`return()`),
 * results already opened are handed to `dispose` so their streams can be cancelled. `concurrency` may be a
 * function (a {@linkcode SharedReadAhead} share), asked again before each open; `onFinish` runs once the
 * generator is done, however it ends.
 */
export async function* ahead<K, T>(
  keys: AsyncIterable<K> | Iterable<K>,
  open: (key: K) => Promise<T>,
  options: { concurrency: number | (() => number); dispose?: (value: T) => void; onFinish?: () => void },
): AsyncGenerator<T> {
  const concurrency = options.concurrency;
  const limit = typeof concurrency === "number" ? () => concurrency : concurrency;
  const iterator = (Symbol.asyncIterator in keys)
    ? (keys as AsyncIterable<K>)[Symbol.asyncIterator]()
    : (keys as Iterable<K>)[Symbol.iterator]();
  const queue: Promise<T>[] = [];
  let exhausted = false;
  let stopped = false;
  let filling: Promise<void> | undefined;
  // One pull of keys at a time; `filling` is cleared once it settles (asynchronously, so also after a pull
  // that had nothing to do).
  const pull = async () => {
    try {
      while (!exhausted && !stopped && queue.length < limit()) {
        const next = await iterator.next();
        if (next.done) exhausted = true;
        else if (!stopped) {
          const promise = open(next.value);
          promise.catch(() => {}); // awaited below; this only keeps an early rejection from being "unhandled"
          queue.push(promise);
        }
      }
    } catch (error) {
      // the key source failed: the consumer gets the error after the results before it
      exhausted = true;
      const failed = Promise.reject(error);
      failed.catch(() => {});
      queue.push(failed);
    }
  };
  const fill = (): Promise<void> => filling ??= pull().finally(() => filling = undefined);
  try {
    while (true) {
      if (queue.length === 0) {
        if (exhausted) break;
        await fill();
        continue;
      }
      const value = await queue.shift()!;
      void fill();
      yield value;
    }
  } finally {
    stopped = true;
    for (const pending of queue.splice(0)) {
      pending.then((value) => options.dispose?.(value), () => {});
    }
    try {
      await filling;
      if (!exhausted) await iterator.return?.();
    } finally {
      options.onFinish?.();
    }
  }
}
