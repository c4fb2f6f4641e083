/**
 * Rendering a decoded frame for display (PS3.18 8.3.5 rendered resources, PS3.3 C.11 LUTs): stored values →
 * Modality LUT (Rescale Slope/Intercept or a Modality LUT) → VOI LUT (a window with LINEAR, LINEAR_EXACT or
 * SIGMOID, or a VOI LUT) → MONOCHROME1 inversion → 8 bits; colour goes to 8-bit RGB (YBR_FULL, YBR_FULL_422,
 * YBR_PARTIAL_422 converted; PALETTE COLOR through its LUTs). Then the viewport's source region is cut, flipped
 * when its width or height is negative, scaled to fit the viewport (area averaging down, bilinear up) and
 * encoded as JPEG (libjpeg-turbo WASM; jpeg-js for tiny images) or PNG (written here, deflate by
 * `CompressionStream`).
 *
 * Everything but {@linkcode renderAttributes} works on plain data, so it runs in the codec workers.
 *
 * @module
 */

import type { DecodedFrame } from "../codecs/mod.ts";
import { MalformedError } from "../util/errors.ts";
import {
  type DicomDataset,
  type DicomElement,
  getElement,
  getNumbers,
  getString,
  type Part10Header,
  readNumbers,
} from "../dicom/dataset.ts";
import { applyViewport } from "./resample.ts";
import { encodeJpeg, encodePng } from "./encode.ts";

/** VOI LUT Function (0028,1056). */
export type VoiFunction = "LINEAR" | "LINEAR_EXACT" | "SIGMOID";

/** A lookup table: entries map `firstMapped`, `firstMapped + 1`, ... to `data` (PS3.3 C.11.1.1). */
export interface Lut {
  /** The first stored value the LUT maps. */
  firstMapped: number;
  /** Bits per LUT entry. */
  bits: number;
  /** The entries. */
  data: number[];
}

/** What rendering needs from the data set besides the Image Pixel attributes (plain data, for workers). */
export interface RenderAttributes {
  /** High Bit (0028,0102). */
  highBit?: number;
  /** Rescale Slope. */
  rescaleSlope: number;
  /** Rescale Intercept. */
  rescaleIntercept: number;
  /** Modality LUT Sequence, when present. */
  modalityLut?: Lut;
  /** Window Center/Width pairs (0028,1050/1051); the first is the default. */
  windows: { center: number; width: number }[];
  /** VOI LUT Function (0028,1056). */
  voiFunction: VoiFunction;
  /** VOI LUT Sequence, when present. */
  voiLut?: Lut;
  /** Palette Color LUTs (PALETTE COLOR). */
  palette?: { red: Lut; green: Lut; blue: Lut };
}

/** The viewport parameter (PS3.18 8.3.5.1.3): output size, optionally a source region. */
export interface Viewport {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** Source region's left edge. */
  sx?: number;
  /** Source region's top edge. */
  sy?: number;
  /** Negative: the region is flipped horizontally. */
  sw?: number;
  /** Negative: the region is flipped vertically. */
  sh?: number;
}

/** How to render (from the request's query parameters). */
export interface RenderOptions {
  /** The image format. */
  mediaType: "image/jpeg" | "image/png";
  /** JPEG quality 1–100 (default 90). */
  quality?: number;
  /** Window center and width (instead of the instance's). */
  window?: { center: number; width: number; function?: VoiFunction };
  /** Output size and region. */
  viewport?: Viewport;
}

/** An 8-bit image: gray (1 channel) or RGB (3 channels, interleaved). */
export interface Image8 {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** 1 gray, 3 RGB. */
  channels: 1 | 3;
  /** The pixels, row by row, channels interleaved. */
  pixels: Uint8Array;
}

/** An encoded rendered image. */
export interface RenderedImage {
  /** The encoded image. */
  bytes: Uint8Array;
  /** Its media type. */
  mediaType: string;
  /** Its width. */
  width: number;
  /** Its height. */
  height: number;
}

/** Default JPEG quality. */
export const DEFAULT_QUALITY = 90;
const LITTLE_ENDIAN_PLATFORM = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------------------
// Attributes

function lutFrom(
  item: DicomDataset | undefined,
  descriptorTag: number,
  dataTag: number,
  signed: boolean,
): Lut | undefined {
  if (!item) return undefined;
  const descriptor = getElement(item, descriptorTag);
  const data = getElement(item, dataTag);
  if (!descriptor?.bytes || !data?.bytes) return undefined; // LUT data not loaded (longer than the bulk threshold)
  const [entries0, first0, bits] = readNumbers(descriptor.bytes, "US", item.littleEndian).map(Number);
  const entries = entries0 === 0 ? 65536 : entries0;
  const firstMapped = signed && first0 > 32767 ? first0 - 65536 : first0;
  let values: number[];
  if (data.bytes.length === entries && bits <= 8) values = Array.from(data.bytes);
  else values = readNumbers(data.bytes, "US", item.littleEndian).map(Number).slice(0, entries);
  return { firstMapped, bits: bits || 16, data: values };
}

function firstItem(el: DicomElement | undefined): DicomDataset | undefined {
  return el?.items?.[0];
}

function numbers(ds: DicomDataset | undefined, tag: number): number[] {
  return (ds && getNumbers(ds, tag)?.filter((n) => Number.isFinite(n))) ?? [];
}

/**
 * The rendering attributes of frame `frame` (1-based) of an instance: the top level, overridden by the Shared
 * and then the Per-Frame Functional Groups of enhanced multi-frame objects (Pixel Value Transformation, Frame
 * VOI LUT). LUTs are used only when their data was loaded with the header.
 */
export function renderAttributes(header: Part10Header, frame = 1): RenderAttributes {
  const ds = header.dataset;
  const signed = (numbers(ds, 0x00280103)[0] ?? 0) === 1;
  const attributes: RenderAttributes = {
    highBit: numbers(ds, 0x00280102)[0],
    rescaleSlope: 1,
    rescaleIntercept: 0,
    windows: [],
    voiFunction: "LINEAR",
  };
  const apply = (level: DicomDataset | undefined) => {
    if (!level) return;
    const slope = numbers(level, 0x00281053)[0];
    const intercept = numbers(level, 0x00281052)[0];
    if (slope !== undefined && slope !== 0) attributes.rescaleSlope = slope;
    if (intercept !== undefined) attributes.rescaleIntercept = intercept;
    const centers = numbers(level, 0x00281050);
    const widths = numbers(level, 0x00281051);
    if (centers.length && widths.length) {
      attributes.windows = centers.slice(0, widths.length).map((center, i) => ({ center, width: widths[i] }));
    }
    const fn = getString(level, 0x00281056)?.toUpperCase();
    if (fn === "LINEAR" || fn === "LINEAR_EXACT" || fn === "SIGMOID") attributes.voiFunction = fn;
    const modality = lutFrom(firstItem(getElement(level, 0x00283000)), 0x00283002, 0x00283006, signed);
    if (modality) attributes.modalityLut = modality;
    const voi = lutFrom(firstItem(getElement(level, 0x00283010)), 0x00283002, 0x00283006, signed);
    if (voi) attributes.voiLut = voi;
  };
  apply(ds);
  const groups = [
    firstItem(getElement(ds, 0x52009229)),
    getElement(ds, 0x52009230)?.items?.[frame - 1],
  ];
  for (const group of groups) {
    if (!group) continue;
    apply(firstItem(getElement(group, 0x00289145))); // Pixel Value Transformation
    apply(firstItem(getElement(group, 0x00289132))); // Frame VOI LUT
  }
  const red = lutFrom(ds, 0x00281101, 0x00281201, false);
  const green = lutFrom(ds, 0x00281102, 0x00281202, false);
  const blue = lutFrom(ds, 0x00281103, 0x00281203, false);
  if (red && green && blue) attributes.palette = { red, green, blue };
  return attributes;
}

// ---------------------------------------------------------------------------------------------------------
// Stored values

/** The stored values of a one-sample-per-pixel frame, bits outside Bits Stored removed, sign extended. */
export function storedValues(frame: DecodedFrame, highBit?: number): Int32Array | Float64Array {
  const n = frame.rows * frame.columns * frame.samplesPerPixel;
  const { bitsAllocated, bitsStored, pixelRepresentation } = frame;
  const bytes = frame.bytes;
  if (bitsAllocated === 1) {
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = (bytes[i >> 3] >> (i & 7)) & 1;
    return out;
  }
  const stored = Math.min(bitsStored || bitsAllocated, bitsAllocated);
  const shift = Math.max(0, (highBit ?? stored - 1) + 1 - stored);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const width = bitsAllocated / 8;
  if (bytes.length < n * width) {
    throw new MalformedError(`Pixel data holds ${bytes.length} bytes, ${n * width} expected for one frame`);
  }
  if (bitsAllocated === 32) {
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const raw = view.getUint32(4 * i, true);
      const v = stored === 32 ? raw : Math.floor(raw / 2 ** shift) % 2 ** stored;
      out[i] = pixelRepresentation === 1 && v >= 2 ** (stored - 1) ? v - 2 ** stored : v;
    }
    return out;
  }
  const out = new Int32Array(n);
  const mask = (1 << stored) - 1;
  const sign = 1 << (stored - 1);
  const signed = pixelRepresentation === 1;
  if (bitsAllocated === 8) {
    for (let i = 0; i < n; i++) {
      const v = (bytes[i] >> shift) & mask;
      out[i] = signed && v & sign ? v - (mask + 1) : v;
    }
  } else if (LITTLE_ENDIAN_PLATFORM && bytes.byteOffset % 2 === 0) {
    const words = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
    if (shift === 0 && stored === 16) {
      if (signed) out.set(new Int16Array(bytes.buffer, bytes.byteOffset, n));
      else out.set(words);
    } else {
      for (let i = 0; i < n; i++) {
        const v = (words[i] >> shift) & mask;
        out[i] = signed && v & sign ? v - (mask + 1) : v;
      }
    }
  } else {
    for (let i = 0; i < n; i++) {
      const v = (view.getUint16(2 * i, true) >> shift) & mask;
      out[i] = signed && v & sign ? v - (mask + 1) : v;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Grayscale

function lookup(lut: Lut, x: number): number {
  const i = Math.round(x) - lut.firstMapped;
  return lut.data[i < 0 ? 0 : i >= lut.data.length ? lut.data.length - 1 : i];
}

/**
 * The VOI window function (PS3.3 C.11.2.1.2) from `x` to 0..255.
 *
 * @example
 * ```ts
 * import { windowValue } from "./render.ts";
 * windowValue(40, 40, 400, "LINEAR"); // ≈ 128
 * ```
 */
export function windowValue(x: number, center: number, width: number, fn: VoiFunction): number {
  if (fn === "SIGMOID") return 255 / (1 + Math.exp(-4 * (x - center) / width));
  if (fn === "LINEAR_EXACT") {
    if (x <= center - width / 2) return 0;
    if (x > center + width / 2) return 255;
    return ((x - center) / width + 0.5) * 255;
  }
  const w = Math.max(width, 1);
  if (x <= center - 0.5 - (w - 1) / 2) return 0;
  if (x > center - 0.5 + (w - 1) / 2) return 255;
  return ((x - (center - 0.5)) / (w - 1) + 0.5) * 255;
}

/** Grayscale frame → 8-bit gray image through the Modality LUT, a VOI transform and MONOCHROME1 inversion. */
function renderGray(frame: DecodedFrame, attrs: RenderAttributes, options: RenderOptions): Image8 {
  const values = storedValues(frame, attrs.highBit);
  const n = values.length;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  if (n === 0) min = max = 0;
  const modality = attrs.modalityLut
    ? (v: number) => lookup(attrs.modalityLut!, v)
    : (v: number) => v * attrs.rescaleSlope + attrs.rescaleIntercept;
  let voi: (m: number) => number;
  const chosen = options.window ??
    (attrs.windows[0] && attrs.windows[0].width > 0
      ? { ...attrs.windows[0], function: attrs.voiFunction }
      : undefined);
  if (chosen) {
    const fn = chosen.function ?? "LINEAR";
    voi = (m) => windowValue(m, chosen.center, chosen.width, fn);
  } else if (attrs.voiLut) {
    const lut = attrs.voiLut;
    const top = 2 ** lut.bits - 1;
    voi = (m) => lookup(lut, m) * 255 / top;
  } else {
    // No window in the data set: the frame's own range (after the Modality LUT).
    const a = modality(min);
    const b = modality(max);
    const lo = Math.min(a, b);
    const hi = Math.max(a, b);
    voi = hi > lo ? (m) => (m - lo) / (hi - lo) * 255 : () => (frame.bitsAllocated === 1 && lo > 0 ? 255 : 0);
  }
  const invert = frame.photometricInterpretation === "MONOCHROME1";
  // Truncated like dcmtk (inversion first), so lossless data renders exactly as dcm2pnm does.
  const toByte = (v: number) => {
    let y = voi(modality(v));
    if (invert) y = 255 - y;
    y = Math.floor(y);
    return y < 0 ? 0 : y > 255 ? 255 : y;
  };
  const pixels = new Uint8Array(n);
  const range = max - min;
  if (range <= 1 << 20 && values instanceof Int32Array) {
    const table = new Uint8Array(range + 1);
    for (let v = 0; v <= range; v++) table[v] = toByte(v + min);
    for (let i = 0; i < n; i++) pixels[i] = table[values[i] - min];
  } else {
    for (let i = 0; i < n; i++) pixels[i] = toByte(values[i]);
  }
  return { width: frame.columns, height: frame.rows, channels: 1, pixels };
}

// ---------------------------------------------------------------------------------------------------------
// Colour

function clamp8(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : Math.round(v);
}

/** Colour frame → 8-bit RGB. */
function renderColor(frame: DecodedFrame, attrs: RenderAttributes): Image8 {
  const { rows, columns } = frame;
  const n = rows * columns;
  const out = new Uint8Array(n * 3);
  const photometric = frame.photometricInterpretation;
  if (photometric === "PALETTE COLOR") {
    if (!attrs.palette) {
      throw new MalformedError("PALETTE COLOR without loaded Palette Color Lookup Tables cannot be rendered");
    }
    const values = storedValues(frame, attrs.highBit);
    const { red, green, blue } = attrs.palette;
    const scale = (lut: Lut) => lut.bits > 8 ? 1 / 257 : 1;
    for (let i = 0; i < n; i++) {
      out[i * 3] = clamp8(lookup(red, values[i]) * scale(red));
      out[i * 3 + 1] = clamp8(lookup(green, values[i]) * scale(green));
      out[i * 3 + 2] = clamp8(lookup(blue, values[i]) * scale(blue));
    }
    return { width: columns, height: rows, channels: 3, pixels: out };
  }
  if (frame.samplesPerPixel !== 3) {
    throw new MalformedError(
      `Photometric Interpretation ${photometric} with ${frame.samplesPerPixel} samples per pixel cannot be rendered`,
    );
  }
  const bytes = frame.bytes;
  const wide = frame.bitsAllocated === 16;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const down = Math.max(0, (frame.bitsStored || frame.bitsAllocated) - 8);
  const sample = wide ? (i: number) => view.getUint16(2 * i, true) >> down : (i: number) => bytes[i];
  if (photometric === "YBR_FULL_422" || photometric === "YBR_PARTIAL_422") {
    if (frame.bitsAllocated !== 8) {
      throw new MalformedError(`${photometric} with ${frame.bitsAllocated} bits is not supported`);
    }
    // Native 4:2:2: Y0 Y1 Cb Cr for each pair of pixels on a row.
    const partial = photometric === "YBR_PARTIAL_422";
    let at = 0;
    for (let y = 0; y < rows; y++) {
      for (let x = 0; x < columns; x += 2) {
        const y0 = bytes[at];
        const y1 = bytes[at + 1];
        const cb = bytes[at + 2];
        const cr = bytes[at + 3];
        at += 4;
        ybrToRgb(out, (y * columns + x) * 3, y0, cb, cr, partial);
        if (x + 1 < columns) ybrToRgb(out, (y * columns + x + 1) * 3, y1, cb, cr, partial);
      }
    }
    return { width: columns, height: rows, channels: 3, pixels: out };
  }
  const planar = frame.planarConfiguration === 1;
  const at = (i: number, c: number) => planar ? c * n + i : i * 3 + c;
  const ybr = photometric === "YBR_FULL" || photometric === "YBR_PARTIAL_420" || photometric === "YBR_ICT" ||
    photometric === "YBR_RCT";
  for (let i = 0; i < n; i++) {
    const a = sample(at(i, 0));
    const b = sample(at(i, 1));
    const c = sample(at(i, 2));
    if (ybr) ybrToRgb(out, i * 3, a, b, c, photometric === "YBR_PARTIAL_420");
    else {
      out[i * 3] = a;
      out[i * 3 + 1] = b;
      out[i * 3 + 2] = c;
    }
  }
  return { width: columns, height: rows, channels: 3, pixels: out };
}

/** YCbCr → RGB (PS3.3 C.7.6.3.1.2, offsets 2^(n-1)), rounded. */
function ybrToRgb(out: Uint8Array, at: number, y: number, cb: number, cr: number, partial: boolean): void {
  if (partial) {
    const l = 1.1644 * (y - 16);
    out[at] = clamp8(l + 1.596 * (cr - 128));
    out[at + 1] = clamp8(l - 0.392 * (cb - 128) - 0.813 * (cr - 128));
    out[at + 2] = clamp8(l + 2.017 * (cb - 128));
    return;
  }
  out[at] = clamp8(y + 1.402 * (cr - 128));
  out[at + 1] = clamp8(y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128));
  out[at + 2] = clamp8(y + 1.772 * (cb - 128));
}

/** The frame as an 8-bit display image at full resolution. */
export function toDisplay(frame: DecodedFrame, attrs: RenderAttributes, options: RenderOptions): Image8 {
  const p = frame.photometricInterpretation;
  if (frame.samplesPerPixel === 1 && p !== "PALETTE COLOR") return renderGray(frame, attrs, options);
  return renderColor(frame, attrs);
}

// ---------------------------------------------------------------------------------------------------------
// Viewport and resampling

/**
 * Renders a decoded frame: display transform, viewport, then encoding.
 *
 * @example
 * ```ts ignore
 * const image = await renderFrame(frame, renderAttributes(header, 1), { mediaType: "image/png", viewport: { width: 256, height: 256 } });
 * ```
 */
export async function renderFrame(
  frame: DecodedFrame,
  attrs: RenderAttributes,
  options: RenderOptions,
): Promise<RenderedImage> {
  const image = applyViewport(toDisplay(frame, attrs, options), options.viewport);
  const bytes = options.mediaType === "image/png"
    ? await encodePng(image)
    : await encodeJpeg(image, options.quality);
  return { bytes, mediaType: options.mediaType, width: image.width, height: image.height };
}
