/**
 * High-Throughput JPEG 2000 (PS3.5 A.4.6, TS 1.2.840.10008.1.2.4.201–.203) decoding with OpenJPH compiled to
 * WASM (`@cornerstonejs/codec-openjph`); also its encoder, which makes the HTJ2K test samples.
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { decompositions } from "./j2k.ts";
import { CodecSlot, copyOut, wasmMessage } from "./wasm.ts";
import { MalformedError } from "../util/errors.ts";

const codecs = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-openjph/wasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-openjph/wasm"),
);

/** Decodes one HTJ2K codestream. */
export async function decodeHtj2k(data: Uint8Array): Promise<RawImage> {
  const loaded = await codecs.get();
  const { module, printed } = loaded;
  const codec = new module.HTJ2KDecoder();
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
    let detail = wasmMessage(error, printed);
    try {
      const last = codec.getLastErrorMessage?.();
      if (last) detail = last;
    } catch { /* keep the generic text */ }
    if (error instanceof WebAssembly.RuntimeError) codecs.reset();
    throw new MalformedError(`Cannot decode HTJ2K data (OpenJPH): ${detail}`, { cause: error });
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
    codecs.trim(loaded);
  }
}

/** Options for {@linkcode encodeHtj2k}. */
export interface Htj2kEncodeOptions {
  width: number;
  height: number;
  components: number;
  bitsPerSample: number;
  signed: boolean;
  /** Reversible (default) or irreversible with this quantization step. */
  lossless?: boolean;
  quantizationStep?: number;
  /** Progression order: 0 LRCP, 1 RLCP, 2 RPCL (default, what TS .202 requires), 3 PCRL, 4 CPRL. */
  progressionOrder?: number;
}

/** Encodes little endian samples (pixel-interleaved) as an HTJ2K codestream. */
export async function encodeHtj2k(samples: Uint8Array, options: Htj2kEncodeOptions): Promise<Uint8Array> {
  const { module, printed } = await codecs.get();
  const codec = new module.HTJ2KEncoder();
  try {
    codec.getDecodedBuffer({
      width: options.width,
      height: options.height,
      bitsPerSample: options.bitsPerSample,
      componentCount: options.components,
      isSigned: options.signed,
      isUsingColorTransform: options.components === 3,
    }).set(samples);
    codec.setDecompositions(decompositions(options.width, options.height));
    codec.setQuality(options.lossless ?? true, options.quantizationStep ?? 0);
    if (options.progressionOrder !== undefined) codec.setProgressionOrder(options.progressionOrder);
    codec.encode();
    return copyOut(codec.getEncodedBuffer());
  } catch (error) {
    codecs.reset();
    throw new Error(`Cannot encode HTJ2K (OpenJPH): ${wasmMessage(error, printed)}`, { cause: error });
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
  }
}
