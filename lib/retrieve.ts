/**
 * The retrieve pipeline: open objects ahead of the writer with bounded concurrency, read each
 * one's File Meta as it streams, and hand them out in key order.
 *
 * @module
 */

import { type FileMeta, readFileMeta } from "./file_meta.ts";
import type { ObjectInfo, ObjectStore } from "./store.ts";

/** An instance whose body is streaming in, with its File Meta already read. */
export interface OpenedInstance {
  key: string;
  info: ObjectInfo;
  meta: FileMeta;
  /** The whole object, from byte 0, read ahead into a bounded buffer. */
  body: ReadableStream<Uint8Array>;
}

/** Options for {@linkcode openInstance}. */
export interface OpenOptions {
  signal?: AbortSignal;
  /** Bytes buffered ahead of the consumer per object (default 1 MiB). */
  readAhead?: number;
}

/**
 * Starts reading an object and resolves once its File Meta is known, or `null` when the key does
 * not exist. The returned body replays the bytes consumed to read the meta.
 */
export async function openInstance(
  store: ObjectStore,
  bucket: string,
  key: string,
  options: OpenOptions = {},
): Promise<OpenedInstance | null> {
  const object = await store.get(bucket, key, { signal: options.signal });
  if (object === null) return null;
  const readAhead = options.readAhead ?? 1024 * 1024;
  const buffered = object.body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>(
      undefined,
      new ByteLengthQueuingStrategy({ highWaterMark: readAhead }),
    ),
  );
  const reader = buffered.getReader();
  const head: Uint8Array[] = [];
  let headBytes = 0;
  let meta: FileMeta | null = null;
  let ended = false;
  try {
    while (meta === null) {
      const { value, done } = await reader.read();
      if (done) ended = true;
      else {
        head.push(value);
        headBytes += value.byteLength;
      }
      const bytes = head.length === 1 ? head[0] : concat(head, headBytes);
      if (head.length > 1) head.splice(0, head.length, bytes);
      meta = readFileMeta(bytes, key, ended || headBytes >= object.info.size);
      if (meta === null && ended) throw new SyntaxError(`Cannot read File Meta of "${key}": object is empty`);
    }
  } catch (error) {
    await reader.cancel(error).catch(() => {});
    throw error;
  }
  let replayed = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!replayed) {
        replayed = true;
        for (const chunk of head) controller.enqueue(chunk);
        if (ended) controller.close();
        return;
      }
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return { key, info: object.info, meta, body };
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/**
 * Maps `keys` through `open` with up to `concurrency` calls in flight, yielding results in the
 * order of `keys`. When the consumer stops early (`return()`), results already opened are handed
 * to `dispose` so their streams can be cancelled.
 */
export async function* ahead<K, T>(
  keys: AsyncIterable<K> | Iterable<K>,
  open: (key: K) => Promise<T>,
  options: { concurrency: number; dispose?: (value: T) => void },
): AsyncGenerator<T> {
  const iterator = (Symbol.asyncIterator in keys)
    ? (keys as AsyncIterable<K>)[Symbol.asyncIterator]()
    : (keys as Iterable<K>)[Symbol.iterator]();
  const queue: Promise<T>[] = [];
  let exhausted = false;
  const fill = async () => {
    while (!exhausted && queue.length < options.concurrency) {
      const next = await iterator.next();
      if (next.done) {
        exhausted = true;
        break;
      }
      const promise = open(next.value);
      promise.catch(() => {}); // awaited below; this only keeps an early rejection from being "unhandled"
      queue.push(promise);
    }
  };
  try {
    await fill();
    while (queue.length > 0) {
      const value = await queue.shift()!;
      await fill();
      yield value;
    }
  } finally {
    for (const pending of queue.splice(0)) {
      pending.then((value) => options.dispose?.(value), () => {});
    }
    if (!exhausted) await iterator.return?.();
  }
}
