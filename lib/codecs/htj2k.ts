/**
 * High-Throughput JPEG 2000 (PS3.5 A.4.6, TS 1.2.840.10008.1.2.4.201–.203) decoding with OpenJPH compiled to
 * WASM (`@cornerstonejs/codec-openjph`); also its encoder, which makes the HTJ2K test samples.
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { decodeWavelet, encodeWavelet, type WaveletImage } from "./j2k.ts";
import { CodecSlot } from "./wasm.ts";

const codecs = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-openjph/wasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-openjph/wasm"),
);

/** Decodes one HTJ2K codestream. */
export function decodeHtj2k(data: Uint8Array): Promise<RawImage> {
  return decodeWavelet(codecs, "HTJ2KDecoder", "HTJ2K data (OpenJPH)", data);
}

/** Options for {@linkcode encodeHtj2k}. */
export interface Htj2kEncodeOptions extends WaveletImage {
  /** Reversible (default) or irreversible with this quantization step. */
  lossless?: boolean;
  /** Irreversible coding's quantization step. */
  quantizationStep?: number;
  /** Progression order: 0 LRCP, 1 RLCP, 2 RPCL (default, what TS .202 requires), 3 PCRL, 4 CPRL. */
  progressionOrder?: number;
}

/** Encodes little endian samples (pixel-interleaved) as an HTJ2K codestream. */
export function encodeHtj2k(samples: Uint8Array, options: Htj2kEncodeOptions): Promise<Uint8Array> {
  return encodeWavelet(codecs, "HTJ2KEncoder", "HTJ2K (OpenJPH)", samples, options, (codec) => {
    codec.setQuality(options.lossless ?? true, options.quantizationStep ?? 0);
    if (options.progressionOrder !== undefined) codec.setProgressionOrder(options.progressionOrder);
  });
}
