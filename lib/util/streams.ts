/**
 * Watching a byte stream as it is consumed: each chunk, and one call when it has ended, failed or been
 * cancelled, so slots can be released, budgets given back, chunks freed and requests logged.
 *
 * @module
 */

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
  const watches = [watch];
  const reader = stream.getReader();
  let bytes = 0;
  let finished = false;
  const finish = (outcome?: string) => {
    if (finished) return;
    finished = true;
    for (const w of watches) w.done(bytes, outcome);
  };
  const beforeRead = () => {
    for (const w of watches) w.beforeRead?.();
  };
  const watched = new ReadableStream<Uint8Array>({
    async pull(controller) {
      unread.delete(watched);
      try {
        beforeRead();
        const { value, done } = await reader.read();
        if (done) {
          finish();
          controller.close();
        } else {
          bytes += value.byteLength;
          for (const w of watches) w.onChunk?.(value);
          controller.enqueue(value);
        }
      } catch (error) {
        finish(`aborted: ${error instanceof Error ? error.message : String(error)}`);
        throw error;
      }
    },
    async cancel(reason) {
      unread.delete(watched);
      beforeRead();
      finish("client disconnected");
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  unread.set(watched, watches);
  return watched;
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
