/**
 * JPEG 2000 (PS3.5 A.4.4, TS 1.2.840.10008.1.2.4.90/.91, and .92/.93 Part 2 codestreams OpenJPEG reads)
 * decoding with OpenJPEG compiled to WASM (`@cornerstonejs/codec-openjpeg`); also its encoder, used by tests
 * and the benchmark to make JPEG 2000 data. Multi-component transforms (YBR_RCT/YBR_ICT) are undone by the
 * decoder, so colour comes out as RGB.
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { CodecSlot, copyOut, wasmMessage } from "./wasm.ts";
import { MalformedError } from "../util/errors.ts";

const decoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-openjpeg/decodewasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-openjpeg/decodewasm"),
);
const encoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-openjpeg/wasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-openjpeg/wasm"),
);

/** Decodes one JPEG 2000 codestream (or JP2 file). */
export async function decodeJ2k(data: Uint8Array): Promise<RawImage> {
  const loaded = await decoder.get();
  const { module, printed } = loaded;
  printed.length = 0;
  const codec = new module.J2KDecoder();
  try {
    codec.getEncodedBuffer(data.length).set(data);
    codec.decode();
    const info = codec.getFrameInfo();
    const bytes = copyOut(codec.getDecodedBuffer());
    const bytesPerSample = info.bitsPerSample <= 8 ? 1 : 2;
    if (!info.width || bytes.length < info.width * info.height * info.componentCount * bytesPerSample) {
      throw new Error("no image decoded");
    }
    return {
      width: info.width,
      height: info.height,
      components: info.componentCount,
      precision: info.bitsPerSample,
      signed: info.isSigned,
      bytes,
      bytesPerSample,
      lossy: !codec.getIsReversible(),
    };
  } catch (error) {
    if (error instanceof WebAssembly.RuntimeError) decoder.reset();
    throw new MalformedError(`Cannot decode JPEG 2000 data (OpenJPEG): ${wasmMessage(error, printed)}`, {
      cause: error,
    });
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
    decoder.trim(loaded);
  }
}

/** Options for {@linkcode encodeJ2k}. */
export interface J2kEncodeOptions {
  width: number;
  height: number;
  components: number;
  bitsPerSample: number;
  signed: boolean;
  /** Reversible 5/3 wavelet (lossless) when true (default). */
  lossless?: boolean;
  /** Lossy only: compression ratio (default 10). */
  ratio?: number;
}

/** Wavelet levels for an image: 5, fewer for images smaller than 64 pixels on a side. */
export function decompositions(width: number, height: number): number {
  return Math.max(0, Math.min(5, Math.floor(Math.log2(Math.min(width, height))) - 1));
}

/** Encodes little endian samples (pixel-interleaved) as a JPEG 2000 codestream. */
export async function encodeJ2k(samples: Uint8Array, options: J2kEncodeOptions): Promise<Uint8Array> {
  const { module, printed } = await encoder.get();
  const codec = new module.J2KEncoder();
  try {
    codec.getDecodedBuffer({
      width: options.width,
      height: options.height,
      bitsPerSample: options.bitsPerSample,
      componentCount: options.components,
      isSigned: options.signed,
      isUsingColorTransform: options.components === 3,
    }).set(samples);
    const lossless = options.lossless ?? true;
    codec.setDecompositions(decompositions(options.width, options.height));
    codec.setQuality(lossless, 1);
    codec.setCompressionRatio(0, lossless ? 0 : options.ratio ?? 10);
    codec.encode();
    return copyOut(codec.getEncodedBuffer());
  } catch (error) {
    encoder.reset();
    throw new Error(`Cannot encode JPEG 2000 (OpenJPEG): ${wasmMessage(error, printed)}`, { cause: error });
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
  }
}
