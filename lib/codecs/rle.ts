/**
 * RLE Lossless (PS3.5 Annex G, TS 1.2.840.10008.1.2.5): a 64-byte header of segment offsets, then one PackBits
 * segment per byte plane — sample by sample, most significant byte first.
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { MalformedError } from "../util/errors.ts";

/** The frame layout RLE data does not carry itself. */
export interface RleLayout {
  /** Rows. */
  rows: number;
  /** Columns. */
  columns: number;
  /** Samples per pixel. */
  samplesPerPixel: number;
  /** Bits allocated (8, 16 or 32). */
  bitsAllocated: number;
}

/**
 * Decodes one RLE frame to little endian, pixel-interleaved samples.
 *
 * @example
 * ```ts
 * import { decodeRle } from "./rle.ts";
 * // One segment: a run of four 7s (header: 1 segment at offset 64).
 * const data = new Uint8Array(66);
 * new DataView(data.buffer).setUint32(0, 1, true);
 * new DataView(data.buffer).setUint32(4, 64, true);
 * data.set([0xfd, 7], 64);
 * decodeRle(data, { rows: 2, columns: 2, samplesPerPixel: 1, bitsAllocated: 8 }).bytes; // [7, 7, 7, 7]
 * ```
 */
export function decodeRle(data: Uint8Array, layout: RleLayout): RawImage {
  const { rows, columns, samplesPerPixel, bitsAllocated } = layout;
  const fail = (message: string): never => {
    throw new MalformedError(`Cannot decode RLE data: ${message}`);
  };
  if (bitsAllocated % 8 !== 0) fail(`Bits Allocated ${bitsAllocated} is not a whole number of bytes`);
  if (data.length < 64) fail(`the ${data.length}-byte frame is shorter than the 64-byte RLE header`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const count = view.getUint32(0, true);
  const bytesPerSample = bitsAllocated / 8;
  const expected = samplesPerPixel * bytesPerSample;
  if (count !== expected) {
    fail(
      `${count} segments for ${samplesPerPixel} sample(s) of ${bitsAllocated} bits (expected ${expected})`,
    );
  }
  const offsets: number[] = [];
  for (let i = 0; i < count; i++) offsets.push(view.getUint32(4 + 4 * i, true));
  const pixels = rows * columns;
  const out = new Uint8Array(pixels * expected);
  const stride = expected;
  for (let segment = 0; segment < count; segment++) {
    const start = offsets[segment];
    const end = segment + 1 < count ? offsets[segment + 1] : data.length;
    if (start < 64 || start > data.length || end < start || end > data.length) {
      fail(`segment ${segment + 1} has offset ${start} outside the ${data.length}-byte frame`);
    }
    const sample = Math.floor(segment / bytesPerSample);
    const byte = bytesPerSample - 1 - segment % bytesPerSample; // MSB first in the segments, LE in the output
    let at = sample * bytesPerSample + byte;
    let written = 0;
    let p = start;
    while (written < pixels && p < end) {
      const n = data[p++];
      if (n < 128) {
        const length = Math.min(n + 1, pixels - written, end - p);
        for (let k = 0; k < length; k++, at += stride) out[at] = data[p + k];
        p += n + 1;
        written += length;
      } else if (n > 128) {
        const value = data[p++];
        const length = Math.min(257 - n, pixels - written);
        for (let k = 0; k < length; k++, at += stride) out[at] = value;
        written += length;
      }
    }
    if (written < pixels) fail(`segment ${segment + 1} decodes to ${written} of ${pixels} bytes`);
  }
  return {
    width: columns,
    height: rows,
    components: samplesPerPixel,
    precision: bitsAllocated,
    signed: false,
    bytes: out,
    bytesPerSample: bytesPerSample as 1 | 2 | 4,
  };
}
