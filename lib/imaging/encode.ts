/**
 * Encoding 8-bit images for the web: PNG (zlib through `CompressionStream`, CRC-32) and JPEG (libjpeg-turbo's
 * WASM encoder).
 *
 * @module
 */

import { encodeJpegTurbo } from "../codecs/jpeg_turbo.ts";
import jpegJs from "jpeg-js";
import { DEFAULT_QUALITY, type Image8 } from "./render.ts";
import { concatBytes } from "../util/bytes.ts";

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 as PNG uses it (ISO 3309). */
export function crc32(bytes: Uint8Array, crc = 0xffffffff): number {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return crc;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, (crc32(out.subarray(4, 8 + data.length)) ^ 0xffffffff) >>> 0);
  return out;
}

async function deflate(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("deflate"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * Encodes an 8-bit gray or RGB image as PNG (filter chosen per row by the minimum sum of absolute
 * differences).
 *
 * @example
 * ```ts
 * import { encodePng } from "./encode.ts";
 * const png = await encodePng({ width: 2, height: 1, channels: 1, pixels: new Uint8Array([0, 255]) });
 * png[1] === 0x50; // "P"
 * ```
 */
export async function encodePng(image: Image8): Promise<Uint8Array> {
  const { width, height, channels, pixels } = image;
  const stride = width * channels;
  const filtered = new Uint8Array((stride + 1) * height);
  const candidates = [0, 1, 2, 4].map(() => new Uint8Array(stride));
  for (let y = 0; y < height; y++) {
    const row = pixels.subarray(y * stride, (y + 1) * stride);
    const up = y > 0 ? pixels.subarray((y - 1) * stride, y * stride) : undefined;
    let best = 0;
    let bestSum = Infinity;
    [0, 1, 2, 4].forEach((type, t) => {
      const out = candidates[t];
      let sum = 0;
      for (let x = 0; x < stride; x++) {
        const a = x >= channels ? row[x - channels] : 0;
        const b = up ? up[x] : 0;
        const c = up && x >= channels ? up[x - channels] : 0;
        let predictor = 0;
        if (type === 1) predictor = a;
        else if (type === 2) predictor = b;
        else if (type === 4) {
          const p = a + b - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - b);
          const pc = Math.abs(p - c);
          predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
        }
        const v = (row[x] - predictor) & 0xff;
        out[x] = v;
        sum += v < 128 ? v : 256 - v;
      }
      if (sum < bestSum) {
        bestSum = sum;
        best = t;
      }
    });
    filtered[y * (stride + 1)] = [0, 1, 2, 4][best];
    filtered.set(candidates[best], y * (stride + 1) + 1);
  }
  const ihdr = new Uint8Array(13);
  const view = new DataView(ihdr.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  ihdr.set([8, channels === 1 ? 0 : 2, 0, 0, 0], 8);
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", await deflate(filtered)),
    chunk("IEND", new Uint8Array(0)),
  ];
  return concatBytes(parts);
}

/** Encodes an 8-bit gray or RGB image as baseline JPEG (libjpeg-turbo; jpeg-js when that cannot). */
export async function encodeJpeg(image: Image8, quality = DEFAULT_QUALITY): Promise<Uint8Array> {
  const q = Math.min(100, Math.max(1, Math.round(quality)));
  if (image.pixels.length >= 16384) {
    const out = await encodeJpegTurbo(image.pixels, {
      width: image.width,
      height: image.height,
      components: image.channels,
      quality: q,
    });
    if (out) return out;
  }
  const rgba = new Uint8Array(image.width * image.height * 4);
  for (let i = 0, n = image.width * image.height; i < n; i++) {
    if (image.channels === 1) rgba[i * 4] = rgba[i * 4 + 1] = rgba[i * 4 + 2] = image.pixels[i];
    else rgba.set(image.pixels.subarray(i * 3, i * 3 + 3), i * 4);
    rgba[i * 4 + 3] = 255;
  }
  const encoded = jpegJs.encode({ data: rgba, width: image.width, height: image.height }, q);
  return new Uint8Array(encoded.data);
}
