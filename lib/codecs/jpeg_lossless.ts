/**
 * JPEG Lossless, Non-Hierarchical (Process 14; PS3.5 A.4.1, TS 1.2.840.10008.1.2.4.57 and .70) decoding with
 * `@cornerstonejs/jpeg-lossless-decoder-js`, the decoder Cornerstone3D and OHIF use (pure JavaScript).
 *
 * @module
 */

import { Decoder } from "@cornerstonejs/jpeg-lossless-decoder-js";
import type { RawImage } from "./mod.ts";
import { MalformedError } from "../util/errors.ts";

/** Decodes one lossless JPEG frame (2–16 bits, 1–4 components, pixel-interleaved output). */
export function decodeJpegLossless(data: Uint8Array): RawImage {
  const decoder = new Decoder();
  let out: Uint8Array | Uint16Array;
  try {
    const copy = data.slice();
    out = decoder.decode(copy.buffer, 0, copy.byteLength);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new MalformedError(`Cannot decode lossless JPEG data: ${message}`, { cause: error });
  }
  const bytesPerSample = out.BYTES_PER_ELEMENT as 1 | 2;
  return {
    width: decoder.xDim,
    height: decoder.yDim,
    components: decoder.numComp,
    precision: decoder.precision ?? bytesPerSample * 8,
    signed: false,
    bytes: new Uint8Array(out.buffer, out.byteOffset, out.byteLength),
    bytesPerSample,
  };
}
