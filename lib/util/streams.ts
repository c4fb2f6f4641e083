/**
 * Watching a byte stream as it is consumed: each chunk, and one call when it has ended, failed or been
 * cancelled, so slots can be released, budgets given back, chunks freed and requests logged.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";

/** What {@linkcode watchStream} calls. */
export interface StreamWatch {
  /** Before each read from the original stream (the consumer has taken the previous chunk). */
  beforeRead?(): void;
  /** Each chunk as it is handed on. */
  onChunk?(chunk: Uint8Array): void;
  /** Once: the bytes handed on, and why it ended early (`aborted: …`, `client disconnected`), if it did. */
  done(bytes: number, outcome?: string): void;
}

/** The watches of each stream made by {@linkcode watchStream}, while none of its bytes has been read. */
const unread = new WeakMap<ReadableStream<Uint8Array>, StreamWatch[]>();

/** The watches of one stream, told of its chunks and, once, of its end. */
class Watches {
  readonly list: StreamWatch[];
  bytes = 0;
  #finished = false;

  constructor(list: StreamWatch[]) {
    this.list = list;
  }

  beforeRead(): void {
    for (const w of this.list) w.beforeRead?.();
  }

  chunk(chunk: Uint8Array): void {
    this.bytes += chunk.byteLength;
    for (const w of this.list) w.onChunk?.(chunk);
  }

  finish(outcome?: string): void {
    if (this.#finished) return;
    this.#finished = true;
    for (const w of this.list) w.done(this.bytes, outcome);
  }
}

/**
 * `stream` read through, reporting to `watch`; nothing is read ahead of the consumer. Watching a stream this
 * made, before anything of it is read, adds `watch` to it instead of another stream layer (a response watched
 * for its slot, its log line and its chunks costs one layer per chunk, not three).
 */
export function watchStream(
  stream: ReadableStream<Uint8Array>,
  watch: StreamWatch,
): ReadableStream<Uint8Array> {
  const joined = unread.get(stream);
  if (joined !== undefined) {
    joined.push(watch);
    return stream;
  }
  const watches = new Watches([watch]);
  const reader = stream.getReader();
  const watched = new ReadableStream<Uint8Array>({
    async pull(controller) {
      unread.delete(watched);
      try {
        watches.beforeRead();
        const { value, done } = await reader.read();
        if (done) {
          watches.finish();
          controller.close();
        } else {
          watches.chunk(value);
          controller.enqueue(value);
        }
      } catch (error) {
        watches.finish(`aborted: ${error instanceof Error ? error.message : String(error)}`);
        throw error;
      }
    },
    async cancel(reason) {
      unread.delete(watched);
      watches.beforeRead();
      watches.finish("client disconnected");
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  unread.set(watched, watches.list);
  return watched;
}

/**
 * `stream` read by a loop started in the caller's async context (a request's read budget), so each read of
 * it, and every store `get` such a read starts, runs in that context although the HTTP server pulls the body
 * from outside it: an `await` resumes in the context it was started in, so no per-chunk context switch is
 * needed. Nothing is read ahead of the consumer. Watching the stream this returns with
 * {@linkcode watchStream} before anything of it is read joins this loop instead of adding a stream layer.
 */
export function readInContext(stream: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = stream.getReader();
  // a cancel from outside runs in the caller's context too (once, not per chunk)
  const enter = AsyncLocalStorage.snapshot();
  const watches = new Watches([]);
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  /** The consumer's pending pull, answered by the loop. */
  let asked: { resolve: () => void; reject: (error: unknown) => void } | undefined;
  /** Wakes the loop when it waits for a pull. */
  let wake: (() => void) | undefined;
  let cancelled = false;
  const out: ReadableStream<Uint8Array> = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    pull() {
      unread.delete(out);
      return new Promise<void>((resolve, reject) => {
        asked = { resolve, reject };
        const w = wake;
        wake = undefined;
        w?.();
      });
    },
    cancel(reason) {
      unread.delete(out);
      cancelled = true;
      watches.beforeRead();
      watches.finish("client disconnected");
      const w = wake;
      wake = undefined;
      w?.();
      return enter(() => reader.cancel(reason));
    },
  }, { highWaterMark: 0 });
  const loop = async () => {
    for (;;) {
      if (asked === undefined) await new Promise<void>((resolve) => (wake = resolve));
      if (cancelled) return;
      const answer = asked!;
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        watches.beforeRead();
        result = await reader.read();
      } catch (error) {
        asked = undefined;
        watches.finish(`aborted: ${error instanceof Error ? error.message : String(error)}`);
        answer.reject(error);
        return;
      }
      asked = undefined;
      if (cancelled) return answer.resolve();
      if (result.done) {
        watches.finish();
        controller.close();
        return answer.resolve();
      }
      watches.chunk(result.value);
      controller.enqueue(result.value);
      answer.resolve();
    }
  };
  loop();
  unread.set(out, watches.list);
  return out;
}

/** Drops the first `count` bytes of a stream. */
export function skipBytes(stream: ReadableStream<Uint8Array>, count: number): ReadableStream<Uint8Array> {
  let left = count;
  return stream.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (left >= chunk.byteLength) {
          left -= chunk.byteLength;
          return;
        }
        controller.enqueue(left > 0 ? chunk.subarray(left) : chunk);
        left = 0;
      },
    }),
  );
}

/** `head`, then every chunk of `rest`. */
export function prepend(head: Uint8Array, rest: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = rest.getReader();
  let sentHead = false;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!sentHead) {
        sentHead = true;
        return controller.enqueue(head);
      }
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}
