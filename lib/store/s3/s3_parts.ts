/**
 * Helpers of the S3 multipart upload: a stream cut into parts of a fixed size ({@linkcode PartReader}), a
 * slice of a stream, and slots that bound the parts in flight.
 *
 * @module
 */

/** Bytes `[from, to)` of `body`. */
export function slice(
  body: ReadableStream<Uint8Array>,
  from: number,
  to: number,
): ReadableStream<Uint8Array> {
  let offset = 0;
  return body.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        const a = Math.max(from - offset, 0);
        const b = Math.min(to - offset, chunk.byteLength);
        offset += chunk.byteLength;
        if (a < b) controller.enqueue(chunk.subarray(a, b));
        if (offset >= to) controller.terminate();
      },
    }),
  );
}

/** Cuts a stream into parts of exactly `size` bytes (the last may be shorter), holding at most one part plus a chunk. */
export class PartReader {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #size: number;
  #signal?: AbortSignal;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #cancelled = false;
  #onAbort = () => void this.cancel(this.#signal?.reason);

  constructor(reader: ReadableStreamDefaultReader<Uint8Array>, size: number, signal?: AbortSignal) {
    this.#reader = reader;
    this.#size = size;
    this.#signal = signal;
    // unblocks a pending read when the caller gives up
    signal?.addEventListener("abort", this.#onAbort, { once: true });
  }

  /** The next part, or `null` at the end. Throws if the stream errors or the signal aborts. */
  async next(): Promise<Uint8Array | null> {
    while (!this.#ended && this.#buffered < this.#size) await this.#readChunk();
    if (this.#buffered === 0) return null;
    const part = new Uint8Array(Math.min(this.#size, this.#buffered));
    let filled = 0;
    while (filled < part.byteLength) {
      const chunk = this.#chunks[0];
      const n = Math.min(chunk.byteLength, part.byteLength - filled);
      part.set(n === chunk.byteLength ? chunk : chunk.subarray(0, n), filled);
      filled += n;
      if (n === chunk.byteLength) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(n);
    }
    this.#buffered -= filled;
    return part;
  }

  async #readChunk(): Promise<void> {
    this.#signal?.throwIfAborted();
    const { done, value } = await this.#reader.read();
    // a cancelled reader reads as "done": never mistake that for the end of the body
    this.#signal?.throwIfAborted();
    if (this.#cancelled) throw new Error("Upload cancelled");
    if (done) {
      this.#ended = true;
      this.#signal?.removeEventListener("abort", this.#onAbort);
    } else if (value.byteLength > 0) {
      this.#chunks.push(value);
      this.#buffered += value.byteLength;
    }
  }

  /** Whether another part follows; reads at most one more chunk to find out. */
  async hasMore(): Promise<boolean> {
    while (!this.#ended && this.#buffered === 0) await this.#readChunk();
    return this.#buffered > 0;
  }

  async cancel(reason: unknown): Promise<void> {
    if (this.#cancelled || this.#ended) return;
    this.#cancelled = true;
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#chunks = [];
    await this.#reader.cancel(reason).catch(() => {});
  }
}

/** A FIFO counting semaphore whose waiters leave the queue when their signal aborts. */
export class Slots {
  #free: number;
  #waiters: (() => void)[] = [];

  constructor(count: number) {
    this.#free = count;
  }

  acquire(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const grant = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        const i = this.#waiters.indexOf(grant);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(grant);
    });
  }

  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#free++;
  }
}
