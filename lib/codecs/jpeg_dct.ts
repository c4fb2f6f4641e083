/**
 * A sequential DCT JPEG decoder (ISO 10918-1 Huffman, SOF0/SOF1, 8- or 12-bit precision) for JPEG Extended
 * 12-bit data (PS3.5 A.4.1, TS 1.2.840.10008.1.2.4.51), which the 8-bit libjpeg-turbo WASM build cannot decode
 * and for which no maintained WASM build exists. Float IDCT (results within ±1 of libjpeg's integer IDCT),
 * nearest-neighbour chroma upsampling, YCbCr → RGB as libjpeg decides it (JFIF, Adobe transform, component ids).
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { MalformedError } from "../util/errors.ts";

const ZIGZAG = new Int32Array([
  0,
  1,
  8,
  16,
  9,
  2,
  3,
  10,
  17,
  24,
  32,
  25,
  18,
  11,
  4,
  5,
  12,
  19,
  26,
  33,
  40,
  48,
  41,
  34,
  27,
  20,
  13,
  6,
  7,
  14,
  21,
  28,
  35,
  42,
  49,
  56,
  57,
  50,
  43,
  36,
  29,
  22,
  15,
  23,
  30,
  37,
  44,
  51,
  58,
  59,
  52,
  45,
  38,
  31,
  39,
  46,
  53,
  60,
  61,
  54,
  47,
  55,
  62,
  63,
]);

/** IDCT basis: COS[x * 8 + u] = C(u)/2 · cos((2x + 1)uπ/16). */
const COS = new Float64Array(64);
for (let x = 0; x < 8; x++) {
  for (let u = 0; u < 8; u++) {
    COS[x * 8 + u] = (u === 0 ? Math.SQRT1_2 : 1) / 2 * Math.cos((2 * x + 1) * u * Math.PI / 16);
  }
}

interface Huffman {
  maxcode: Int32Array;
  valptr: Int32Array;
  mincode: Int32Array;
  values: Uint8Array;
}

interface Component {
  id: number;
  h: number;
  v: number;
  tq: number;
  /** Blocks per line and column of the padded plane. */
  bw: number;
  bh: number;
  plane: Float32Array;
  pred: number;
  dc?: Huffman;
  ac?: Huffman;
}

function fail(message: string): never {
  throw new MalformedError(`Cannot decode JPEG data: ${message}`);
}

function buildHuffman(counts: Uint8Array, values: Uint8Array): Huffman {
  const maxcode = new Int32Array(18).fill(-1);
  const valptr = new Int32Array(17);
  const mincode = new Int32Array(17);
  let code = 0;
  let k = 0;
  for (let l = 1; l <= 16; l++) {
    valptr[l] = k;
    mincode[l] = code;
    code += counts[l - 1];
    k += counts[l - 1];
    maxcode[l] = counts[l - 1] ? code - 1 : -1;
    code <<= 1;
  }
  maxcode[17] = 0x7fffffff;
  return { maxcode, valptr, mincode, values };
}

/** Bit reader over entropy-coded data: removes stuffed zeros, stops at markers. */
class Bits {
  #data: Uint8Array;
  pos: number;
  #acc = 0;
  #count = 0;
  marker = -1;
  constructor(data: Uint8Array, pos: number) {
    this.#data = data;
    this.pos = pos;
  }
  bit(): number {
    if (this.#count === 0) {
      let byte = 0;
      if (this.marker < 0 && this.pos < this.#data.length) {
        byte = this.#data[this.pos++];
        if (byte === 0xff) {
          const next = this.#data[this.pos];
          if (next === 0) this.pos++;
          else {
            this.marker = next;
            this.pos--;
            byte = 0;
          }
        }
      }
      this.#acc = byte;
      this.#count = 8;
    }
    this.#count--;
    return (this.#acc >> this.#count) & 1;
  }
  receive(n: number): number {
    let v = 0;
    for (let i = 0; i < n; i++) v = (v << 1) | this.bit();
    return v;
  }
  decode(h: Huffman): number {
    let code = this.bit();
    let l = 1;
    while (code > h.maxcode[l]) {
      code = (code << 1) | this.bit();
      if (++l > 16) fail("bad Huffman code");
    }
    return h.values[h.valptr[l] + code - h.mincode[l]];
  }
  /** Byte-aligns and consumes a restart marker. */
  restart(): void {
    this.#count = 0;
    if (this.marker < 0) {
      while (
        this.pos + 1 < this.#data.length &&
        !(this.#data[this.pos] === 0xff && this.#data[this.pos + 1] >= 0xd0 &&
          this.#data[this.pos + 1] <= 0xd7)
      ) this.pos++;
    }
    if (
      this.#data[this.pos] === 0xff && this.#data[this.pos + 1] >= 0xd0 && this.#data[this.pos + 1] <= 0xd7
    ) this.pos += 2;
    this.marker = -1;
  }
}

function extend(v: number, t: number): number {
  return v < 1 << (t - 1) ? v - (1 << t) + 1 : v;
}

/**
 * Decodes a sequential Huffman DCT JPEG (baseline or extended, 8 or 12 bits).
 *
 * @example
 * ```ts ignore
 * const image = decodeJpegDct(frameBytes); // { width, height, components, precision: 12, bytes, ... }
 * ```
 */
export function decodeJpegDct(data: Uint8Array): RawImage {
  if (data[0] !== 0xff || data[1] !== 0xd8) fail("no SOI marker at the start");
  const quant: Int32Array[] = [];
  const dcTables: Huffman[] = [];
  const acTables: Huffman[] = [];
  let components: Component[] = [];
  let precision = 8;
  let width = 0;
  let height = 0;
  let hmax = 1;
  let vmax = 1;
  let restartInterval = 0;
  let jfif = false;
  let adobe = -1;
  let p = 2;
  const u16 = (at: number) => data[at] << 8 | data[at + 1];
  while (p + 4 <= data.length) {
    if (data[p] !== 0xff) {
      p++;
      continue;
    }
    const marker = data[p + 1];
    if (marker === 0xd9) break;
    if (marker === 0xff || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      p += marker === 0xff ? 1 : 2;
      continue;
    }
    const length = u16(p + 2);
    const seg = p + 4;
    const end = p + 2 + length;
    if (end > data.length) fail(`marker FF${marker.toString(16)} runs past the end`);
    switch (marker) {
      case 0xdb: { // DQT
        let q = seg;
        while (q < end) {
          const pq = data[q] >> 4;
          const tq = data[q] & 15;
          q++;
          const table = new Int32Array(64);
          for (let k = 0; k < 64; k++) {
            table[k] = pq ? u16(q + 2 * k) : data[q + k];
          }
          q += pq ? 128 : 64;
          quant[tq] = table;
        }
        break;
      }
      case 0xc4: { // DHT
        let q = seg;
        while (q < end) {
          const tc = data[q] >> 4;
          const th = data[q] & 15;
          const counts = data.subarray(q + 1, q + 17);
          const total = counts.reduce((a, b) => a + b, 0);
          const table = buildHuffman(counts, data.slice(q + 17, q + 17 + total));
          (tc ? acTables : dcTables)[th] = table;
          q += 17 + total;
        }
        break;
      }
      case 0xc0:
      case 0xc1: { // SOF0, SOF1
        precision = data[seg];
        height = u16(seg + 1);
        width = u16(seg + 3);
        const n = data[seg + 5];
        components = [];
        for (let i = 0; i < n; i++) {
          const at = seg + 6 + 3 * i;
          components.push({
            id: data[at],
            h: data[at + 1] >> 4 || 1,
            v: data[at + 1] & 15 || 1,
            tq: data[at + 2],
            bw: 0,
            bh: 0,
            plane: new Float32Array(0),
            pred: 0,
          });
        }
        if (precision !== 8 && precision !== 12) fail(`sample precision ${precision} is not 8 or 12`);
        if (!width || !height) fail("the frame has no width or height (DNL is not supported)");
        hmax = Math.max(...components.map((c) => c.h));
        vmax = Math.max(...components.map((c) => c.v));
        const mcusX = Math.ceil(width / (8 * hmax));
        const mcusY = Math.ceil(height / (8 * vmax));
        for (const c of components) {
          c.bw = mcusX * c.h;
          c.bh = mcusY * c.v;
          c.plane = new Float32Array(c.bw * c.bh * 64);
        }
        break;
      }
      case 0xc2:
      case 0xc3:
      case 0xc5:
      case 0xc6:
      case 0xc7:
      case 0xc9:
      case 0xca:
      case 0xcb:
      case 0xcd:
      case 0xce:
      case 0xcf:
        fail(
          `SOF${
            marker - 0xc0
          } (progressive, lossless, hierarchical or arithmetic) is not a sequential DCT process`,
        );
        break;
      case 0xdd:
        restartInterval = u16(seg);
        break;
      case 0xe0:
        if (
          data[seg] === 0x4a && data[seg + 1] === 0x46 && data[seg + 2] === 0x49 && data[seg + 3] === 0x46
        ) jfif = true;
        break;
      case 0xee:
        if (
          data[seg] === 0x41 && data[seg + 1] === 0x64 && data[seg + 2] === 0x6f && data[seg + 3] === 0x62
        ) {
          adobe = data[seg + 11];
        }
        break;
      case 0xda: { // SOS
        if (!components.length) fail("SOS before SOF");
        const ns = data[seg];
        const scan: Component[] = [];
        for (let i = 0; i < ns; i++) {
          const id = data[seg + 1 + 2 * i];
          const c = components.find((x) => x.id === id) ?? fail(`scan names unknown component ${id}`);
          c.dc = dcTables[data[seg + 2 + 2 * i] >> 4];
          c.ac = acTables[data[seg + 2 + 2 * i] & 15];
          if (!c.dc || !c.ac) fail(`component ${id} uses an undefined Huffman table`);
          scan.push(c);
        }
        p = decodeScan(data, end, scan, { width, height, hmax, vmax, restartInterval, quant });
        continue;
      }
    }
    p = end;
  }
  if (!components.length) fail("no frame header (SOF0/SOF1)");
  return toImage(components, { width, height, hmax, vmax, precision, jfif, adobe });
}

interface ScanContext {
  width: number;
  height: number;
  hmax: number;
  vmax: number;
  restartInterval: number;
  quant: Int32Array[];
}

/** Decodes one scan; returns the offset of the marker that ends it. */
function decodeScan(data: Uint8Array, start: number, scan: Component[], ctx: ScanContext): number {
  const bits = new Bits(data, start);
  const coef = new Float64Array(64);
  const tmp = new Float64Array(64);
  for (const c of scan) c.pred = 0;
  const block = (c: Component, bx: number, by: number) => {
    const q = ctx.quant[c.tq] ?? fail(`quantization table ${c.tq} is not defined`);
    coef.fill(0);
    const t = bits.decode(c.dc!);
    c.pred += t ? extend(bits.receive(t), t) : 0;
    coef[0] = c.pred * q[0];
    for (let k = 1; k < 64;) {
      const rs = bits.decode(c.ac!);
      const r = rs >> 4;
      const s = rs & 15;
      if (s === 0) {
        if (r !== 15) break;
        k += 16;
        continue;
      }
      k += r;
      if (k > 63) break;
      coef[ZIGZAG[k]] = extend(bits.receive(s), s) * q[k];
      k++;
    }
    idct(coef, tmp, c.plane, (by * c.bw + bx) * 64);
  };
  let mcus: number;
  let perLine: number;
  if (scan.length === 1) {
    const c = scan[0];
    perLine = Math.ceil(Math.ceil(ctx.width * c.h / ctx.hmax) / 8);
    mcus = perLine * Math.ceil(Math.ceil(ctx.height * c.v / ctx.vmax) / 8);
  } else {
    perLine = Math.ceil(ctx.width / (8 * ctx.hmax));
    mcus = perLine * Math.ceil(ctx.height / (8 * ctx.vmax));
  }
  for (let m = 0; m < mcus; m++) {
    if (ctx.restartInterval && m > 0 && m % ctx.restartInterval === 0) {
      bits.restart();
      for (const c of scan) c.pred = 0;
    }
    const mx = m % perLine;
    const my = Math.floor(m / perLine);
    if (scan.length === 1) block(scan[0], mx, my);
    else {
      for (const c of scan) {
        for (let v = 0; v < c.v; v++) for (let h = 0; h < c.h; h++) block(c, mx * c.h + h, my * c.v + v);
      }
    }
  }
  // Find the next marker (skipping stuffed bytes and restart markers).
  let p = bits.pos;
  while (
    p + 1 < data.length &&
    !(data[p] === 0xff && data[p + 1] !== 0 && !(data[p + 1] >= 0xd0 && data[p + 1] <= 0xd7))
  ) p++;
  return p;
}

/** 2-D float IDCT of `coef` (natural order) into `out` at `at` (an 8×8 block, level shift not applied). */
function idct(coef: Float64Array, tmp: Float64Array, out: Float32Array, at: number): void {
  for (let y = 0; y < 8; y++) {
    for (let x = 0; x < 8; x++) {
      let s = 0;
      for (let u = 0; u < 8; u++) s += COS[x * 8 + u] * coef[y * 8 + u];
      tmp[y * 8 + x] = s;
    }
  }
  for (let x = 0; x < 8; x++) {
    for (let y = 0; y < 8; y++) {
      let s = 0;
      for (let v = 0; v < 8; v++) s += COS[y * 8 + v] * tmp[v * 8 + x];
      out[at + y * 8 + x] = s;
    }
  }
}

function toImage(
  components: Component[],
  f: {
    width: number;
    height: number;
    hmax: number;
    vmax: number;
    precision: number;
    jfif: boolean;
    adobe: number;
  },
): RawImage {
  const { width, height, precision } = f;
  const n = components.length;
  const center = 1 << (precision - 1);
  const max = (1 << precision) - 1;
  const planes = components.map((c) => {
    const sx = c.h / f.hmax;
    const sy = c.v / f.vmax;
    const out = new Float32Array(width * height);
    for (let y = 0; y < height; y++) {
      const cy = Math.floor(y * sy);
      const by = cy >> 3;
      for (let x = 0; x < width; x++) {
        const cx = Math.floor(x * sx);
        out[y * width + x] = c.plane[((by * c.bw + (cx >> 3)) * 64) + (cy & 7) * 8 + (cx & 7)] + center;
      }
    }
    return out;
  });
  const ids = components.map((c) => c.id).join(",");
  const ycc = n === 3 && (f.jfif || f.adobe === 1 || (f.adobe < 0 && ids !== "82,71,66"));
  const bytesPerSample = precision > 8 ? 2 : 1;
  const samples = bytesPerSample === 2
    ? new Uint16Array(width * height * n)
    : new Uint8Array(width * height * n);
  const clamp = (v: number) => v < 0 ? 0 : v > max ? max : Math.round(v);
  for (let i = 0; i < width * height; i++) {
    if (ycc) {
      const y = planes[0][i];
      const cb = planes[1][i] - center;
      const cr = planes[2][i] - center;
      samples[i * 3] = clamp(y + 1.402 * cr);
      samples[i * 3 + 1] = clamp(y - 0.344136 * cb - 0.714136 * cr);
      samples[i * 3 + 2] = clamp(y + 1.772 * cb);
    } else {
      for (let k = 0; k < n; k++) samples[i * n + k] = clamp(planes[k][i]);
    }
  }
  return {
    width,
    height,
    components: n,
    precision,
    signed: false,
    bytes: new Uint8Array(samples.buffer),
    bytesPerSample,
    rgb: ycc,
    lossy: true,
  };
}
