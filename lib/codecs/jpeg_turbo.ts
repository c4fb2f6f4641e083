/**
 * JPEG Baseline (8-bit DCT, PS3.5 A.4.1, TS 1.2.840.10008.1.2.4.50 and 8-bit .51) decoding, and the JPEG
 * encoder of rendered images, with libjpeg-turbo compiled to WASM (`@cornerstonejs/codec-libjpeg-turbo-8bit`).
 * Three-component images come out as RGB: libjpeg-turbo converts YCbCr (JFIF/Adobe markers, component ids)
 * exactly as dcmdjpeg does by default.
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { CodecSlot, copyOut, decodeWith, sizeOf } from "./wasm.ts";

const decoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm"),
);
const encoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-libjpeg-turbo-8bit/wasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-libjpeg-turbo-8bit/wasm"),
);

/** Decodes one 8-bit JPEG (baseline or extended) frame. */
export function decodeJpegBaseline(data: Uint8Array): Promise<RawImage> {
  return decodeWith(decoder, "JPEGDecoder", "JPEG data (libjpeg-turbo)", data, (_codec, info, bytes) => ({
    ...sizeOf(info, bytes),
    precision: 8,
    signed: false,
    bytesPerSample: 1,
    rgb: info.componentCount === 3,
  }));
}

/**
 * Encodes 8-bit gray (1 component) or RGB (3 components, interleaved) pixels as a baseline JPEG. Returns
 * `undefined` when libjpeg-turbo cannot (its output buffer is sized to the input: tiny or noisy images at high
 * quality overflow it), so the caller can fall back to another encoder.
 */
export async function encodeJpegTurbo(
  pixels: Uint8Array,
  options: { width: number; height: number; components: 1 | 3; quality: number },
): Promise<Uint8Array | undefined> {
  const { module } = await encoder.get();
  const codec = new module.JPEGEncoder();
  try {
    codec.getDecodedBuffer({
      width: options.width,
      height: options.height,
      bitsPerSample: 8,
      componentCount: options.components,
      isSigned: false,
    }).set(pixels);
    codec.setQuality(options.quality);
    codec.setProgressive(0);
    if (options.components === 3) codec.setSubSampling(options.quality >= 90 ? 0 : 2); // TJSAMP_444 / TJSAMP_420
    codec.encode();
    return copyOut(codec.getEncodedBuffer());
  } catch {
    encoder.reset(); // a failed encode may have trapped: start from a fresh instance
    return undefined;
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
  }
}
