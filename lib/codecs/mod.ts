/**
 * Pixel codecs by transfer syntax: which compressed syntaxes can be decoded, and {@linkcode decodeFrame},
 * which turns one frame's bytes (as planned by `frames.ts`) into native little endian, pixel-interleaved
 * samples laid out as the data set's Image Pixel attributes say.
 *
 * | transfer syntax | codec |
 * |---|---|
 * | 1.2.840.10008.1.2.4.50, 8-bit .51 | libjpeg-turbo (WASM) |
 * | 12-bit .51 | `jpeg_dct.ts` (JavaScript) |
 * | .57, .70 | jpeg-lossless-decoder-js |
 * | .80, .81 | CharLS (WASM) |
 * | .90, .91, .92, .93 | OpenJPEG (WASM) |
 * | .201, .202, .203 | OpenJPH (WASM) |
 * | 1.2.840.10008.1.2.5 | `rle.ts` |
 *
 * Everything here is plain data in, plain data out, so it runs the same in a worker (see `pool.ts`).
 *
 * @module
 */

import { LOSSY_SYNTAXES, NATIVE_SYNTAXES, RLE_LOSSLESS } from "../dicom/transfer_syntax.ts";
import { decodeHtj2k } from "./htj2k.ts";
import { decodeJ2k } from "./j2k.ts";
import { decodeJpegDct } from "./jpeg_dct.ts";
import { decodeJpegLossless } from "./jpeg_lossless.ts";
import { decodeJpegLs } from "./jpeg_ls.ts";
import { decodeJpegBaseline } from "./jpeg_turbo.ts";
import { decodeRle } from "./rle.ts";
import { MalformedError, OutOfRangeError } from "../util/errors.ts";

/** What a codec returns: the image as coded, before it is fitted to the data set's description. */
export interface RawImage {
  /** Columns. */
  width: number;
  /** Rows. */
  height: number;
  /** Samples per pixel. */
  components: number;
  /** Sample precision as coded (bits). */
  precision: number;
  /** The codestream says the samples are signed (JPEG 2000). */
  signed: boolean;
  /** Samples, little endian, `bytesPerSample` each; pixel-interleaved unless `planar`. */
  bytes: Uint8Array;
  /** Bytes each sample takes in `bytes`. */
  bytesPerSample: 1 | 2 | 4;
  /** Samples come plane by plane rather than interleaved. */
  planar?: boolean;
  /** The codec converted YCbCr to RGB (or undid a JPEG 2000 colour transform). */
  rgb?: boolean;
  /** The codestream is lossy (irreversible wavelet, DCT, NEAR > 0). */
  lossy?: boolean;
}

/** The Image Pixel attributes of the frame being decoded (PS3.3 C.7.6.3). */
export interface FrameDescription {
  /** Rows (0028,0010). */
  rows: number;
  /** Columns (0028,0011). */
  columns: number;
  /** Samples per Pixel (0028,0002). */
  samplesPerPixel: number;
  /** Bits Allocated (0028,0100). */
  bitsAllocated: number;
  /** Bits Stored (0028,0101). */
  bitsStored: number;
  /** Pixel Representation (0028,0103): 0 unsigned, 1 signed. */
  pixelRepresentation: number;
  /** Photometric Interpretation (0028,0004). */
  photometricInterpretation: string;
  /** 0: pixel-interleaved, 1: plane by plane. */
  planarConfiguration: number;
}

/** One frame as native little endian samples. */
export interface DecodedFrame extends FrameDescription {
  /** Exactly what an Explicit VR Little Endian Pixel Data value holds for this frame. */
  bytes: Uint8Array;
  /** The pixel values went through lossy compression (in this transfer syntax). */
  lossy: boolean;
}

const JPEG = "1.2.840.10008.1.2.4.";

/** Compressed transfer syntaxes {@linkcode decodeFrame} can decode. */
export const DECODABLE_SYNTAXES: ReadonlySet<string> = new Set([
  RLE_LOSSLESS,
  ...["50", "51", "57", "70", "80", "81", "90", "91", "92", "93", "201", "202", "203"].map((s) => JPEG + s),
]);

/** Whether frames in this syntax can be decoded (native ones need no decoding). */
export function canDecode(transferSyntax: string): boolean {
  return NATIVE_SYNTAXES.has(transferSyntax) || DECODABLE_SYNTAXES.has(transferSyntax);
}

/** Bytes one decoded frame takes (for memory limits, before decoding). */
export function decodedSize(
  d: Pick<FrameDescription, "rows" | "columns" | "samplesPerPixel" | "bitsAllocated">,
): number {
  return Math.ceil(d.rows * d.columns * d.samplesPerPixel * d.bitsAllocated / 8);
}

/** The SOF marker and precision of a JPEG stream (`undefined` when none is found). */
export function jpegFrameType(data: Uint8Array): { sof: number; precision: number } | undefined {
  let p = 2;
  while (p + 4 < data.length) {
    if (data[p] !== 0xff) return undefined;
    const marker = data[p + 1];
    if (marker === 0xff) {
      p++;
      continue;
    }
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return { sof: marker - 0xc0, precision: data[p + 4] };
    }
    if (marker === 0xda) return undefined;
    p += 2 + (data[p + 2] << 8 | data[p + 3]);
  }
  return undefined;
}

async function decodeRaw(transferSyntax: string, data: Uint8Array, d: FrameDescription): Promise<RawImage> {
  if (transferSyntax === RLE_LOSSLESS) return decodeRle(data, d);
  const last = transferSyntax.startsWith(JPEG) ? Number(transferSyntax.slice(JPEG.length)) : NaN;
  if (last >= 50 && last <= 70) {
    const type = jpegFrameType(data);
    if (!type) throw new MalformedError("Cannot decode JPEG data: no frame header (SOF marker) found");
    if (type.sof === 3) return decodeJpegLossless(data);
    if (type.precision === 8) return await decodeJpegBaseline(data);
    if ((type.sof === 0 || type.sof === 1) && type.precision === 12) return decodeJpegDct(data);
    throw new MalformedError(
      `Cannot decode JPEG data: SOF${type.sof} with ${type.precision}-bit samples is not supported`,
    );
  }
  if (last === 80 || last === 81) return await decodeJpegLs(data);
  if (last >= 90 && last <= 93) return await decodeJ2k(data);
  if (last >= 201 && last <= 203) return await decodeHtj2k(data);
  throw new OutOfRangeError(`Cannot decode pixel data in transfer syntax ${transferSyntax}: no codec for it`);
}

/**
 * Decodes one frame (`data`: the frame's bytes as `planFrame` + `extract` give them) to native little endian,
 * pixel-interleaved samples of `d.bitsAllocated` bits. Native syntaxes pass through unchanged. Throws
 * `SyntaxError` for data the codec rejects or that does not match the description, `RangeError` for a syntax
 * without a codec.
 *
 * @example
 * ```ts ignore
 * const frame = await decodeFrame("1.2.840.10008.1.2.4.90", j2kBytes, description);
 * frame.bytes; // rows × columns × samples × 2 bytes for 16-bit data
 * ```
 */
export async function decodeFrame(
  transferSyntax: string,
  data: Uint8Array,
  d: FrameDescription,
): Promise<DecodedFrame> {
  if (NATIVE_SYNTAXES.has(transferSyntax)) return { ...d, bytes: data, lossy: false };
  const raw = await decodeRaw(transferSyntax, data, d);
  return fit(raw, d, transferSyntax);
}

/** Fits a codec's output to the data set's description (size checks, interleaving, widening, signedness). */
export function fit(raw: RawImage, d: FrameDescription, transferSyntax: string): DecodedFrame {
  const what = `decoded ${raw.width}×${raw.height}×${raw.components}`;
  if (raw.width !== d.columns || raw.height !== d.rows) {
    throw new MalformedError(
      `Pixel data does not match the data set: ${what}, but Rows × Columns is ${d.rows}×${d.columns}`,
    );
  }
  if (raw.components !== d.samplesPerPixel) {
    throw new MalformedError(
      `Pixel data does not match the data set: ${what}, but Samples per Pixel is ${d.samplesPerPixel}`,
    );
  }
  const outBytes = Math.max(1, d.bitsAllocated / 8);
  if (raw.bytesPerSample > outBytes) {
    throw new MalformedError(
      `Pixel data does not match the data set: ${raw.precision}-bit samples, but Bits Allocated is ${d.bitsAllocated}`,
    );
  }
  const n = raw.width * raw.height * raw.components;
  const inView = new DataView(raw.bytes.buffer, raw.bytes.byteOffset, raw.bytes.byteLength);
  const read = raw.bytesPerSample === 1
    ? (i: number) => raw.bytes[i]
    : raw.bytesPerSample === 2
    ? (i: number) => inView.getUint16(2 * i, true)
    : (i: number) => inView.getUint32(4 * i, true);
  const isRle = transferSyntax === RLE_LOSSLESS;
  // Signed data: JPEG 2000 says so itself; other codecs give the stored bit patterns, which are sign-extended
  // from their precision (what pydicom does for JPEG 2000 whose codestream says unsigned).
  const signedIn = raw.signed;
  const extendFrom = d.pixelRepresentation === 1 && !isRle
    ? Math.min(raw.precision, d.bitsStored || raw.precision)
    : 0;
  const inBits = raw.bytesPerSample * 8;
  const out = new Uint8Array(n * outBytes);
  const outView = new DataView(out.buffer);
  const planeSize = raw.width * raw.height;
  const simple = !raw.planar && outBytes === raw.bytesPerSample && !extendFrom && !signedIn;
  if (simple) out.set(raw.bytes.subarray(0, out.length));
  else {
    for (let i = 0; i < n; i++) {
      const source = raw.planar ? (i % raw.components) * planeSize + Math.floor(i / raw.components) : i;
      let v = read(source);
      if (signedIn) v = inBits < 32 && v >= 2 ** (inBits - 1) ? v - 2 ** inBits : v;
      else if (extendFrom && v >= 2 ** (extendFrom - 1) && v < 2 ** extendFrom) v -= 2 ** extendFrom;
      if (outBytes === 1) out[i] = v & 0xff;
      else if (outBytes === 2) outView.setUint16(2 * i, v & 0xffff, true);
      else outView.setUint32(4 * i, v >>> 0, true);
    }
  }
  let photometric = d.photometricInterpretation;
  if (raw.rgb || (raw.components === 3 && /^YBR_(ICT|RCT)$/.test(photometric))) photometric = "RGB";
  return {
    ...d,
    photometricInterpretation: photometric,
    planarConfiguration: 0,
    bytes: out,
    lossy: raw.lossy ?? LOSSY_SYNTAXES.has(transferSyntax),
  };
}
