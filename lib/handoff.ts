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
  try {
    (buffer as ArrayBuffer).transfer(0);
    freed++;
    return true;
  } catch {
    return false; // not detachable (WebAssembly memory, a shared buffer): left to the collector
  }
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
