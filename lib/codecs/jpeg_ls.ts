/**
 * JPEG-LS (PS3.5 A.4.3, TS 1.2.840.10008.1.2.4.80 lossless and .81 near-lossless) decoding with CharLS
 * compiled to WASM (`@cornerstonejs/codec-charls`).
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { CodecSlot, copyOut, wasmMessage } from "./wasm.ts";
import { MalformedError } from "../util/errors.ts";

const decoder = new CodecSlot(
  async () => (await import("@cornerstonejs/codec-charls/decodewasmjs")).default,
  import.meta.resolve("@cornerstonejs/codec-charls/decodewasm"),
);

/** Decodes one JPEG-LS frame. Interleave mode "none" comes out plane by plane (`planar`). */
export async function decodeJpegLs(data: Uint8Array): Promise<RawImage> {
  const loaded = await decoder.get();
  const { module, printed } = loaded;
  const codec = new module.JpegLSDecoder();
  try {
    codec.getEncodedBuffer(data.length).set(data);
    codec.decode();
    const info = codec.getFrameInfo();
    const bytes = copyOut(codec.getDecodedBuffer());
    const interleave = codec.getInterleaveMode();
    return {
      width: info.width,
      height: info.height,
      components: info.componentCount,
      precision: info.bitsPerSample,
      signed: false,
      bytes,
      bytesPerSample: info.bitsPerSample <= 8 ? 1 : 2,
      planar: info.componentCount > 1 && interleave === 0,
      lossy: codec.getNearLossless() > 0,
    };
  } catch (error) {
    let detail = wasmMessage(error, printed);
    try {
      if (typeof error === "number" && module.getExceptionMessage) detail = module.getExceptionMessage(error);
    } catch { /* keep the generic text */ }
    if (error instanceof WebAssembly.RuntimeError) decoder.reset();
    throw new MalformedError(`Cannot decode JPEG-LS data (CharLS): ${detail}`, { cause: error });
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
    decoder.trim(loaded);
  }
}
