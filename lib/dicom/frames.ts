/**
 * Where each frame of an instance lives (PS3.5 8.2 and A.4), so that WADO-RS can serve frames with ranged reads.
 *
 * Native pixel data: one byte range per frame, plus byte swapping for big endian OW/OF/OD and bit re-packing
 * for 1-bit frames that do not start on a byte boundary. Encapsulated pixel data: the fragments of the frame,
 * found through the Extended Offset Table, else the Basic Offset Table, else one fragment per frame, else (a
 * single frame) all fragments.
 *
 * @module
 */

import { NATIVE_SYNTAXES, RLE_LOSSLESS } from "./transfer_syntax.ts";
import { MalformedError, OutOfRangeError } from "../util/errors.ts";
import { getNumber, getString, type Part10Header } from "./dataset.ts";

/** A byte range of the object (or of the inflated stream for deflated objects). */
export interface ByteSpan {
  /** Offset in the object. */
  offset: number;
  /** Length. */
  length: number;
}

/** How to get one frame. */
export interface FramePlan {
  /** 1-based frame number. */
  frame: number;
  /** Ranges to read; their bytes concatenated (then {@linkcode FramePlan.extract}ed) are the frame. */
  ranges: ByteSpan[];
  /** Length of the frame once extracted. */
  length: number;
  /** Native big endian data: the word size to byte-swap to little endian (2 for OW, 4 for OF, 8 for OD). */
  byteSwap?: number;
  /** 1-bit data: bit position of the frame's first pixel in the first byte read. */
  bitOffset?: number;
  /** Post-processing (byte swap, bit re-packing) when needed; the concatenated range bytes go in. */
  extract?: (bytes: Uint8Array) => Uint8Array;
  /** The media type of a frame (see {@linkcode frameMediaType}). */
  mediaType: string;
}

/**
 * The media type of frames in a transfer syntax: `application/octet-stream` for native (uncompressed) ones.
 *
 * @example
 * ```ts
 * import { frameMediaType } from "./frames.ts";
 * frameMediaType("1.2.840.10008.1.2.4.50"); // "image/jpeg"
 * ```
 */
export function frameMediaType(transferSyntaxUid: string): string {
  const uid = transferSyntaxUid;
  if (NATIVE_SYNTAXES.has(uid)) return "application/octet-stream";
  if (uid === RLE_LOSSLESS) return "image/dicom-rle";
  const last = uid.startsWith("1.2.840.10008.1.2.4.") ? Number(uid.slice(20)) : NaN;
  if (last >= 50 && last <= 70) return "image/jpeg";
  if (last === 80 || last === 81) return "image/jls";
  if (last === 90 || last === 91) return "image/jp2";
  if (last === 92 || last === 93) return "image/jpx";
  if (last >= 110 && last <= 112) return "image/jxl";
  if (last >= 201 && last <= 204) return "image/jphc";
  if (last === 100 || last === 101) return "video/mpeg2";
  if (last >= 102 && last <= 106) return "video/mp4";
  if (last === 107 || last === 108) return "video/H265";
  return "application/octet-stream";
}

/** Whether the transfer syntax carries a video bitstream (all frames in one stream). */
export function isVideo(transferSyntaxUid: string): boolean {
  return frameMediaType(transferSyntaxUid).startsWith("video/");
}

interface NativeLayout {
  frames: number;
  frameBits: number;
}

function nativeLayout(header: Part10Header): NativeLayout {
  const ds = header.dataset;
  const rows = getNumber(ds, 0x00280010) ?? 0;
  const columns = getNumber(ds, 0x00280011) ?? 0;
  const samples = getNumber(ds, 0x00280002) ?? 1;
  const bits = getNumber(ds, 0x00280100) ?? 0;
  const photometric = getString(ds, 0x00280004) ?? "";
  const pixel = header.pixelData!;
  if (!rows || !columns || !bits) {
    throw new MalformedError(
      `Cannot locate frames of "${header.name}": Rows, Columns or Bits Allocated is missing`,
    );
  }
  const perPixel = photometric === "YBR_FULL_422" || photometric === "YBR_PARTIAL_422" ? 2 : samples;
  const frameBits = rows * columns * perPixel * bits;
  return {
    frames: declaredFrames(header) ?? Math.max(1, Math.floor(pixel.length * 8 / frameBits)),
    frameBits,
  };
}

/** NumberOfFrames when it is a valid positive integer. */
function declaredFrames(header: Part10Header): number | undefined {
  const n = getNumber(header.dataset, 0x00280008);
  return n !== undefined && Number.isInteger(n) && n > 0 ? n : undefined;
}

/**
 * The number of frames: NumberOfFrames (default 1). When it is not a valid number (e.g. "1A"), native data
 * infers it from the pixel data length and encapsulated data from the offset tables or fragment count.
 */
export function frameCount(header: Part10Header): number {
  const pixel = header.pixelData;
  if (!pixel) return 0;
  if (!pixel.encapsulated) return nativeLayout(header).frames;
  if (isVideo(header.transferSyntaxUid)) return declaredFrames(header) ?? 1;
  const raw = getString(header.dataset, 0x00280008);
  if (raw === undefined || raw === "") return 1;
  return declaredFrames(header) ?? pixel.extendedOffsetTable?.length ??
    (pixel.basicOffsetTable?.length || pixel.fragments!.length);
}

/**
 * What to read for frame `frame` (1-based). Throws `RangeError` for a frame out of range, `TypeError` when
 * the instance has no pixel data and `SyntaxError` when the pixel data cannot be split into frames.
 *
 * @example
 * ```ts ignore
 * const plan = planFrame(header, 1);
 * const parts = await Promise.all(plan.ranges.map((r) => read(r.offset, r.offset + r.length)));
 * ```
 */
export function planFrame(header: Part10Header, frame: number): FramePlan {
  const pixel = header.pixelData;
  if (!pixel) throw new TypeError(`"${header.name}" has no pixel data`);
  const count = frameCount(header);
  if (!Number.isInteger(frame) || frame < 1 || frame > count) {
    throw new OutOfRangeError(
      `Frame ${frame} is out of range: this instance has ${count === 1 ? "frame 1" : `frames 1-${count}`}`,
    );
  }
  const mediaType = frameMediaType(header.transferSyntaxUid);
  if (!pixel.encapsulated) return planNative(header, frame, mediaType);
  const fragments = pixel.fragments!;
  const base = fragments.length ? fragments[0].offset - 8 : pixel.offset;
  const plan = (ranges: ByteSpan[]): FramePlan => ({
    frame,
    ranges,
    length: ranges.reduce((sum, r) => sum + r.length, 0),
    mediaType,
  });
  if (isVideo(header.transferSyntaxUid)) return plan(fragments);
  const eot = pixel.extendedOffsetTable;
  const eotLengths = pixel.extendedOffsetTableLengths;
  if (eot && eotLengths && eot.length >= count && eotLengths.length >= count) {
    const itemHeader = base + eot[frame - 1];
    const fragment = fragments.find((f) => f.offset === itemHeader + 8);
    if (!fragment) fail(header, `the Extended Offset Table entry of frame ${frame} points to no fragment`);
    return plan([{ offset: fragment.offset, length: Math.min(eotLengths[frame - 1], fragment.length) }]);
  }
  const bot = pixel.basicOffsetTable ?? [];
  if (bot.length > 0) {
    if (bot.length < count) {
      fail(header, `the Basic Offset Table has ${bot.length} entries for ${count} frames`);
    }
    const start = base + bot[frame - 1];
    const end = frame < bot.length ? base + bot[frame] : Infinity;
    const ranges = fragments.filter((f) => f.offset - 8 >= start && f.offset - 8 < end);
    if (!ranges.length || ranges[0].offset - 8 !== start) {
      fail(header, `the Basic Offset Table entry of frame ${frame} points to no fragment`);
    }
    return plan(ranges);
  }
  if (fragments.length === count) return plan([fragments[frame - 1]]);
  if (count === 1) return plan(fragments);
  return fail(header, `${fragments.length} fragments for ${count} frames and no offset table`);
}

function fail(header: Part10Header, message: string): never {
  throw new MalformedError(`Cannot locate frames of "${header.name}": ${message}`);
}

function planNative(header: Part10Header, frame: number, mediaType: string): FramePlan {
  const pixel = header.pixelData!;
  const { frameBits } = nativeLayout(header);
  const swap = header.littleEndian ? 0 : ({ OW: 2, OF: 4, OD: 8 } as Record<string, number>)[pixel.vr] ?? 0;
  const startBit = (frame - 1) * frameBits;
  const frameLength = Math.ceil(frameBits / 8);
  let start = Math.floor(startBit / 8);
  let end = Math.ceil((startBit + frameBits) / 8);
  const bitOffset = startBit % 8;
  const skip = swap ? start % swap : 0;
  if (swap) {
    start -= skip;
    end = Math.ceil(end / swap) * swap;
  }
  if (end > pixel.length) {
    if (swap && start + skip + frameLength <= pixel.length) end = pixel.length;
    else fail(header, `frame ${frame} needs bytes ${start}-${end - 1} of pixel data holding ${pixel.length}`);
  }
  const result: FramePlan = {
    frame,
    ranges: [{ offset: pixel.offset + start, length: end - start }],
    length: frameLength,
    mediaType,
  };
  const partialByte = frameBits % 8 !== 0;
  if (!swap && !bitOffset && !partialByte) return result;
  if (swap) result.byteSwap = swap;
  if (bitOffset) result.bitOffset = bitOffset;
  result.extract = (bytes) => {
    const swapped = swap ? swapBytes(bytes, swap) : bytes;
    const first = swapped.subarray(skip);
    return bitOffset || partialByte ? shiftBits(first, bitOffset, frameBits) : first.slice(0, frameLength);
  };
  return result;
}

/** A copy with every `width`-byte word reversed (a trailing partial word is left as is). */
export function swapBytes(bytes: Uint8Array, width: number): Uint8Array {
  const out = bytes.slice();
  for (let i = 0; i + width <= bytes.length; i += width) {
    for (let k = 0; k < width; k++) out[i + k] = bytes[i + width - 1 - k];
  }
  return out;
}

/** Re-packs `bits` bits starting at bit `offset` (LSB first, as DICOM packs 1-bit data) to start at bit 0. */
function shiftBits(bytes: Uint8Array, offset: number, bits: number): Uint8Array {
  const out = new Uint8Array(Math.ceil(bits / 8));
  for (let i = 0; i < out.length; i++) {
    out[i] = (bytes[i] >> offset | (bytes[i + 1] ?? 0) << (8 - offset)) & 0xff;
  }
  const tail = bits % 8;
  if (tail) out[out.length - 1] &= (1 << tail) - 1;
  return out;
}
