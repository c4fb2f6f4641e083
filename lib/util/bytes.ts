/**
 * Joining byte chunks: the one place a run of `Uint8Array`s becomes one.
 *
 * @module
 */

/**
 * A new array holding `chunks` one after another (always a copy, so the chunks may be freed or reused after).
 * `total` is their summed length, when the caller already knows it.
 *
 * @example
 * ```ts
 * import { concatBytes } from "./bytes.ts";
 * concatBytes([new Uint8Array([1, 2]), new Uint8Array([3])]); // Uint8Array [1, 2, 3]
 * ```
 */
export function concatBytes(chunks: readonly Uint8Array[], total?: number): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(total ?? chunks.reduce((n, c) => n + c.byteLength, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}
