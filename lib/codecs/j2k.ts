/**
 * JPEG 2000 (PS3.5 A.4.4, TS 1.2.840.10008.1.2.4.90/.91, and .92/.93 Part 2 codestreams OpenJPEG reads)
 * decoding with OpenJPEG compiled to WASM (`@cornerstonejs/codec-openjpeg`); also its encoder, used by tests
 * and the benchmark to make JPEG 2000 data. Multi-component transforms (YBR_RCT/YBR_ICT) are undone by the
 * decoder, so colour comes out as RGB.
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { CodecSlot, copyOut, decodeWith, type EmscriptenModule, sizeOf, wasmMessage } from "./wasm.ts";

const decoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-openjpeg/decodewasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-openjpeg/decodewasm"),
);
const encoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-openjpeg/wasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-openjpeg/wasm"),
);

/** Decodes one JPEG 2000 codestream (or JP2 file). */
export function decodeJ2k(data: Uint8Array): Promise<RawImage> {
  return decodeWavelet(decoder, "J2KDecoder", "JPEG 2000 data (OpenJPEG)", data);
}

/** Decodes with a decoder class of cornerstone's JPEG 2000 family (OpenJPEG's and OpenJPH's). */
export function decodeWavelet(
  slot: CodecSlot,
  className: string,
  what: string,
  data: Uint8Array,
): Promise<RawImage> {
  return decodeWith(slot, className, what, data, (codec, info, bytes) => {
    const bytesPerSample = info.bitsPerSample <= 8 ? 1 : 2;
    if (!info.width || bytes.length < info.width * info.height * info.componentCount * bytesPerSample) {
      throw new Error("no image decoded");
    }
    return {
      ...sizeOf(info, bytes),
      precision: info.bitsPerSample,
      signed: info.isSigned ?? false,
      bytesPerSample,
      lossy: !codec.getIsReversible(),
    };
  });
}

/** Options for {@linkcode encodeJ2k}. */
export interface J2kEncodeOptions extends WaveletImage {
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
export function encodeJ2k(samples: Uint8Array, options: J2kEncodeOptions): Promise<Uint8Array> {
  const lossless = options.lossless ?? true;
  return encodeWavelet(encoder, "J2KEncoder", "JPEG 2000 (OpenJPEG)", samples, options, (codec) => {
    codec.setQuality(lossless, 1);
    codec.setCompressionRatio(0, lossless ? 0 : options.ratio ?? 10);
  });
}

/** The image an encoder of the JPEG 2000 family is given. */
export interface WaveletImage {
  /** Columns. */
  width: number;
  /** Rows. */
  height: number;
  /** Samples per pixel (1 or 3). */
  components: number;
  /** Bits per sample. */
  bitsPerSample: number;
  /** Whether the samples are signed. */
  signed: boolean;
}

/** Encodes with an encoder class of the JPEG 2000 family; `configure` sets its quality and order. */
export async function encodeWavelet(
  slot: CodecSlot,
  className: string,
  what: string,
  samples: Uint8Array,
  image: WaveletImage,
  configure: (codec: EmscriptenModule) => void,
): Promise<Uint8Array> {
  const { module, printed } = await slot.get();
  const codec = new module[className]();
  try {
    codec.getDecodedBuffer({
      width: image.width,
      height: image.height,
      bitsPerSample: image.bitsPerSample,
      componentCount: image.components,
      isSigned: image.signed,
      isUsingColorTransform: image.components === 3,
    }).set(samples);
    codec.setDecompositions(decompositions(image.width, image.height));
    configure(codec);
    codec.encode();
    return copyOut(codec.getEncodedBuffer());
  } catch (error) {
    slot.reset();
    throw new Error(`Cannot encode ${what}: ${wasmMessage(error, printed)}`, { cause: error });
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
  }
}
