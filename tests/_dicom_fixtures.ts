/**
 * A tiny DICOM Part 10 writer for test fixtures: Explicit/Implicit VR Little Endian and Explicit VR Big
 * Endian, nested sequences with defined or undefined lengths, private tags, encapsulated pixel data.
 */

import { scanFileMeta } from "../lib/dicom/file_meta.ts";
import { concatBytes } from "../lib/util/bytes.ts";

export const ELE = "1.2.840.10008.1.2.1";
export const ILE = "1.2.840.10008.1.2";
export const EBE = "1.2.840.10008.1.2.2";

/** One element to write. */
export interface Fx {
  tag: number;
  vr: string;
  /** Text (padded to even length), numbers (binary VRs and OW words), raw bytes, or sequence items. */
  value?: string | number[] | Uint8Array | Fx[][];
  /** Write a sequence (and its items) with undefined length. */
  undefinedLength?: boolean;
  /** Encapsulated data: fragments after the Basic Offset Table item. */
  fragments?: Uint8Array[];
  /** Basic Offset Table entries (default empty). */
  bot?: number[];
  /** Write this declared length instead of the real one (to build malformed files). */
  lengthOverride?: number;
}

/** Options for {@linkcode buildPart10}. */
export interface FixtureOptions {
  transferSyntax?: string;
  /** Write the 128-byte preamble and "DICM" (default true). */
  preamble?: boolean;
  /** Write a File Meta group (default true). */
  meta?: boolean;
  sopClassUid?: string;
  sopInstanceUid?: string;
}

const LONG = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const WIDTH: Record<string, number> = {
  US: 2,
  SS: 2,
  OW: 2,
  AT: 4,
  UL: 4,
  SL: 4,
  FL: 4,
  OF: 4,
  FD: 8,
  OD: 8,
};

class Writer {
  #chunks: Uint8Array[] = [];
  #small: number[] = [];
  constructor(readonly little: boolean, readonly explicit: boolean) {}
  get length(): number {
    return this.#chunks.reduce((n, c) => n + c.length, 0) + this.#small.length;
  }
  u16(v: number) {
    this.#small.push(...(this.little ? [v & 0xff, v >> 8 & 0xff] : [v >> 8 & 0xff, v & 0xff]));
  }
  u32(v: number) {
    const b = [v & 0xff, v >>> 8 & 0xff, v >>> 16 & 0xff, v >>> 24 & 0xff];
    this.#small.push(...(this.little ? b : b.reverse()));
  }
  tag(tag: number) {
    this.u16(tag >>> 16);
    this.u16(tag & 0xffff);
  }
  bytes(b: ArrayLike<number>) {
    this.#chunks.push(Uint8Array.from(this.#small), Uint8Array.from(b));
    this.#small = [];
  }
  result(): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of [...this.#chunks, Uint8Array.from(this.#small)]) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
  header(tag: number, vr: string, length: number) {
    this.tag(tag);
    if (!this.explicit) return this.u32(length);
    this.bytes([vr.charCodeAt(0), vr.charCodeAt(1)]);
    if (LONG.has(vr)) {
      this.u16(0);
      this.u32(length);
    } else {
      this.u16(length);
    }
  }
}

function valueBytes(el: Fx, little: boolean): Uint8Array {
  const v = el.value;
  if (v === undefined) return new Uint8Array();
  if (v instanceof Uint8Array) return v;
  if (typeof v === "string") {
    const b = Array.from(v, (c) => c.charCodeAt(0) & 0xff);
    if (b.length % 2) b.push(el.vr === "UI" ? 0 : 0x20);
    return Uint8Array.from(b);
  }
  if (Array.isArray(v) && typeof v[0] === "number") {
    const width = WIDTH[el.vr];
    const out = new Uint8Array(v.length * width);
    const view = new DataView(out.buffer);
    (v as number[]).forEach((n, i) => {
      const at = i * width;
      if (el.vr === "AT") {
        view.setUint16(at, n >>> 16, little);
        view.setUint16(at + 2, n & 0xffff, little);
      } else if (el.vr === "US" || el.vr === "OW") view.setUint16(at, n, little);
      else if (el.vr === "SS") view.setInt16(at, n, little);
      else if (el.vr === "UL") view.setUint32(at, n, little);
      else if (el.vr === "SL") view.setInt32(at, n, little);
      else if (el.vr === "FL" || el.vr === "OF") view.setFloat32(at, n, little);
      else view.setFloat64(at, n, little);
    });
    return out;
  }
  return new Uint8Array();
}

function writeElements(w: Writer, elements: Fx[]): void {
  for (const el of elements) {
    if (el.fragments) {
      w.header(el.tag, el.vr, 0xffffffff);
      w.tag(0xfffee000);
      w.u32((el.bot ?? []).length * 4);
      for (const o of el.bot ?? []) w.u32(o);
      for (const f of el.fragments) {
        w.tag(0xfffee000);
        w.u32(f.length);
        w.bytes(f);
      }
      w.tag(0xfffee0dd);
      w.u32(0);
    } else if (el.vr === "SQ" || (Array.isArray(el.value) && Array.isArray(el.value[0]))) {
      const items = (el.value ?? []) as Fx[][];
      const body = new Writer(w.little, w.explicit);
      for (const item of items) {
        const inner = new Writer(w.little, w.explicit);
        writeElements(inner, item);
        body.tag(0xfffee000);
        body.u32(el.undefinedLength ? 0xffffffff : inner.length);
        body.bytes(inner.result());
        if (el.undefinedLength) {
          body.tag(0xfffee00d);
          body.u32(0);
        }
      }
      w.header(el.tag, el.vr, el.undefinedLength ? 0xffffffff : el.lengthOverride ?? body.length);
      w.bytes(body.result());
      if (el.undefinedLength) {
        w.tag(0xfffee0dd);
        w.u32(0);
      }
    } else {
      const bytes = valueBytes(el, w.little);
      w.header(el.tag, el.vr, el.lengthOverride ?? bytes.length);
      w.bytes(bytes);
    }
  }
}

/** Builds a Part 10 object (or a raw data set with `meta: false`). */
export function buildPart10(elements: Fx[], options: FixtureOptions = {}): Uint8Array<ArrayBuffer> {
  const ts = options.transferSyntax ?? ELE;
  const out = new Writer(true, true);
  if (options.meta !== false) {
    if (options.preamble !== false) out.bytes([...new Array(128).fill(0), 0x44, 0x49, 0x43, 0x4d]);
    const meta = new Writer(true, true);
    writeElements(meta, [
      { tag: 0x00020001, vr: "OB", value: new Uint8Array([0, 1]) },
      { tag: 0x00020002, vr: "UI", value: options.sopClassUid ?? "1.2.840.10008.5.1.4.1.1.7" },
      { tag: 0x00020003, vr: "UI", value: options.sopInstanceUid ?? "1.2.3.4.5" },
      { tag: 0x00020010, vr: "UI", value: ts },
      { tag: 0x00020012, vr: "UI", value: "1.2.3.999" },
    ]);
    writeElements(out, [{ tag: 0x00020000, vr: "UL", value: [meta.length] }]);
    out.bytes(meta.result());
  }
  const body = new Writer(ts !== EBE, ts !== ILE);
  writeElements(body, elements);
  out.bytes(body.result());
  return out.result();
}

/** A RangeSource over bytes that records the reads made. */
export function memorySource(bytes: Uint8Array, name = "fixture.dcm") {
  const reads: [number, number][] = [];
  return {
    name,
    size: bytes.length,
    reads,
    read(start: number, end: number): Promise<Uint8Array> {
      reads.push([start, end]);
      return Promise.resolve(bytes.slice(start, end));
    },
  };
}

/** The pydicom corpus folder of the repository (tests/testdata/pydicom/files). */
export function corpusDir(): string {
  return new URL("./testdata/pydicom/files/", import.meta.url).pathname;
}

/** Whether an executable is on PATH. */
export function hasCommand(name: string): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${name}`], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** The File Meta `head` without its (0002,0010) element, with the group length fixed. */
export function dropTransferSyntax(head: Uint8Array): Uint8Array {
  const scan = scanFileMeta(head, "h.dcm", { complete: true, groupLength: true })!;
  const ts = scan.elements.get(0x00020010)!;
  const start = ts.offset - 8;
  const out = concatBytes([head.subarray(0, start), head.subarray(ts.offset + ts.length)]);
  const view = new DataView(out.buffer, out.byteOffset);
  view.setUint32(140, view.getUint32(140, true) - (8 + ts.length), true);
  return out;
}
