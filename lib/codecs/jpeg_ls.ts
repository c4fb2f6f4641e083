/**
 * JPEG-LS (PS3.5 A.4.3, TS 1.2.840.10008.1.2.4.80 lossless and .81 near-lossless) decoding with CharLS
 * compiled to WASM (`@cornerstonejs/codec-charls`).
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { CodecSlot, decodeWith, sizeOf } from "./wasm.ts";

const decoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-charls/decodewasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-charls/decodewasm"),
);

/** Decodes one JPEG-LS frame. Interleave mode "none" comes out plane by plane (`planar`). */
export function decodeJpegLs(data: Uint8Array): Promise<RawImage> {
  return decodeWith(decoder, "JpegLSDecoder", "JPEG-LS data (CharLS)", data, (codec, info, bytes) => ({
    ...sizeOf(info, bytes),
    precision: info.bitsPerSample,
    signed: false,
    bytesPerSample: info.bitsPerSample <= 8 ? 1 : 2,
    planar: info.componentCount > 1 && codec.getInterleaveMode() === 0,
    lossy: codec.getNearLossless() > 0,
  }));
}
