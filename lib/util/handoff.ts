/**
 * Frees streamed bytes as soon as the HTTP server has taken them.
 *
 * A chunk read from the store into a fresh `ArrayBuffer` lives on after `Deno.serve` has sent it: V8 frees
 * its memory only when a full garbage collection finds the buffer unreachable, and V8 runs one only after
 * some 64 MB of such buffers have piled up. With several clients streaming studies, that garbage is most of
 * the server's memory. Detaching the buffer once the server holds its own reference frees it as soon as the
 * bytes are written.
 *
 * Two halves, kept apart on purpose: the producer that allocated a chunk and never reads it again marks it
 * with {@linkcode handOff}; the last consumer, which knows the bytes have left JavaScript, calls
 * {@linkcode freeHandedOff}. A chunk nobody marked (a cached header, a view into a stored object) is never
 * touched.
 *
 * @module
 */

/**
 * Frees the memory of `buffer` now: it is detached, so every view of it reads as empty from then on.
 * `false` when it cannot be (WebAssembly memory, a shared or already detached buffer): left to the collector.
 */
export function freeBuffer(buffer: ArrayBufferLike): boolean {
  try {
    (buffer as ArrayBuffer).transfer(0);
    return true;
  } catch {
    return false;
  }
}

/** Each handed-off buffer and the one view of it that may free it. */
const handedOff = new WeakMap<ArrayBufferLike, Uint8Array>();
let freed = 0;

/** How many chunks {@linkcode freeHandedOff} has freed in this process (for tests and diagnostics). */
export function freedChunks(): number {
  return freed;
}

/**
 * Marks `chunk` as the only view of a buffer its producer allocated and will not read again: once the
 * HTTP server has taken it, {@linkcode freeHandedOff} may free its memory. Returns `chunk`.
 */
export function handOff(chunk: Uint8Array): Uint8Array {
  handedOff.set(chunk.buffer, chunk);
  return chunk;
}

/**
 * Frees the memory of `chunk` when it is the very view marked by {@linkcode handOff} (not a copy, not a
 * slice): its buffer is detached, so this and every other view of it read as empty from now on. Call it
 * only when nothing in JavaScript will read the chunk again; `Deno.serve` keeps its own reference to the
 * bytes until they are written. Returns whether the chunk was freed.
 */
export function freeHandedOff(chunk: Uint8Array): boolean {
  const buffer = chunk.buffer;
  if (handedOff.get(buffer) !== chunk) return false;
  handedOff.delete(buffer);
  if (!freeBuffer(buffer)) return false;
  freed++;
  return true;
}

/** `body` with every chunk marked by {@linkcode handOff}: only for a stream whose chunks are fresh buffers. */
export function handOffChunks(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(handOff(value));
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** Buffers a reader allocated for chunks of a byte stream it will not read again (see {@linkcode ChunkLedger}). */
const owned = new WeakSet<ArrayBufferLike>();
let ledgersFreed = 0;

/** How many buffers every {@linkcode ChunkLedger} together has freed in this process (for tests and diagnostics). */
export function freedByLedgers(): number {
  return ledgersFreed;
}

/** Marks the buffer of `chunk` as its reader's own, to be freed by a {@linkcode ChunkLedger}. Returns `chunk`. */
export function markOwned(chunk: Uint8Array): Uint8Array {
  owned.add(chunk.buffer);
  return chunk;
}

/**
 * Frees the buffers behind the views a parser cuts from a byte stream, as soon as nothing reads them: a
 * STOW-RS request arrives in 256 KiB buffers, each shared by the tails and heads of parts, and left to the
 * collector they are most of the garbage that sets off V8's full collections.
 *
 * The consumer reports every view it receives, in stream order, with {@linkcode ChunkLedger.see}: a view
 * of a later buffer means the parser has left the earlier ones. It holds the views it keeps with
 * {@linkcode ChunkLedger.hold} until it has copied or written them ({@linkcode ChunkLedger.release}), and
 * pins those it hands to code it does not follow ({@linkcode ChunkLedger.pin}). A buffer is freed once the
 * parser has left it and no view of it is held; only buffers marked with {@linkcode markOwned} are, never
 * a pinned one.
 */
export class ChunkLedger {
  /** Buffers seen and not freed: views held of each. */
  #held = new Map<ArrayBufferLike, number>();
  #left = new Set<ArrayBufferLike>();
  #pinned = new WeakSet<ArrayBufferLike>();
  #current?: ArrayBufferLike;

  /** Reports a view received from the stream (views must be reported in the order they come). */
  see(view: Uint8Array): void {
    const buffer = view.buffer;
    if (buffer === this.#current) return;
    if (this.#current !== undefined && this.#held.has(this.#current)) {
      this.#left.add(this.#current);
      this.#maybeFree(this.#current);
    }
    this.#current = buffer;
    if (!this.#held.has(buffer) && owned.has(buffer)) this.#held.set(buffer, 0);
  }

  /** Keeps the buffer of `view` from being freed until {@linkcode ChunkLedger.release}. */
  hold(view: Uint8Array): void {
    const count = this.#held.get(view.buffer);
    if (count !== undefined) this.#held.set(view.buffer, count + 1);
  }

  /** Gives back a hold; frees the buffer when the parser has left it and it was the last. */
  release(view: Uint8Array): void {
    const buffer = view.buffer;
    const count = this.#held.get(buffer);
    if (count === undefined) return;
    this.#held.set(buffer, count - 1);
    this.#maybeFree(buffer);
  }

  /** Never frees the buffer of `view`: its views went where the ledger cannot follow them. */
  pin(view: Uint8Array): void {
    this.#pinned.add(view.buffer);
    this.#held.delete(view.buffer);
    this.#left.delete(view.buffer);
  }

  #maybeFree(buffer: ArrayBufferLike): void {
    if (this.#held.get(buffer) !== 0 || !this.#left.has(buffer) || this.#pinned.has(buffer)) return;
    this.#held.delete(buffer);
    this.#left.delete(buffer);
    if (freeBuffer(buffer)) ledgersFreed++;
  }
}
