/**
 * Part 10 structure checked as the bytes stream by: {@linkcode Part10Check} follows element headers,
 * sequences, items and encapsulated fragments of a data set pushed in chunks, holding no values, so STOW-RS
 * can validate a multi-gigabyte upload while it is written to the store.
 *
 * Why a second walker beside `part10.ts`: `readHeader` parses from ranged reads of a stored object, keeps the
 * header's values and stops at Pixel Data; a STOW body arrives once, in order, and must be checked to its
 * last byte without keeping it. Both apply the same rules (the same VR tables, encodings and limits from
 * `part10.ts` and `transfer_syntax.ts`), and the fuzzer (tests/e2e/_fuzz.ts) checks that every object
 * `parseBuffer` reads passes this check.
 *
 * @module
 */

import { formatTag, KNOWN_VRS, LONG_VRS, vrOf } from "./dictionary.ts";
import { type Encoding, IMPLICIT_LE } from "./transfer_syntax.ts";
import { MalformedError } from "../util/errors.ts";
import type { Part10Header } from "./dataset.ts";

const ITEM = 0xfffee000;
const ITEM_DELIMITER = 0xfffee00d;
const SEQUENCE_DELIMITER = 0xfffee0dd;
const UNDEFINED = 0xffffffff;
const PIXEL_TAGS = new Set([0x7fe00010, 0x7fe00008, 0x7fe00009]);
const MAX_DEPTH = 64;
const MAX_CAPTURE = 1024;

interface Frame {
  /** A data set (the top level or an item), the items of a sequence, or encapsulated fragments. */
  kind: "elements" | "items" | "fragments";
  /** Absolute end for defined lengths; -1 when a delimiter ends it (or the stream, at the top). */
  end: number;
  encoding: Encoding;
  /** Nesting depth of the data set (0 = top level). */
  depth: number;
  /** Fragments: items seen; whether this is the top-level Pixel Data (needs a Basic Offset Table item). */
  count: number;
  pixel: boolean;
}

/** Options for {@linkcode Part10Check}. */
export interface Part10CheckOptions {
  /** Absolute offset of the first byte pushed (default 0). */
  start?: number;
  /** Top-level tags whose values to keep (up to 1 KiB each) in {@linkcode Part10Check.values}. */
  want?: Iterable<number>;
  /** Keep the element and item headers at and after this offset in {@linkcode Part10Check.recorded}. */
  recordFrom?: number;
}

/**
 * Follows the structure of a data set pushed in chunks of any size: element headers, sequences and items
 * (defined or undefined length), encapsulated fragments, with the rules lib/dicom/part10.ts applies, so an object
 * this accepts is one `readHeader` reads. Values are skipped, never held. Throws a `SyntaxError` naming the
 * object and the offset at the first violation, or from {@linkcode Part10Check.finish} when it ends inside
 * an element, a sequence or an item.
 *
 * @example
 * ```ts
 * import { Part10Check } from "./part10_check.ts";
 * const check = new Part10Check({ explicit: false, little: true }, "x", { want: [0x00100020] });
 * check.push(new Uint8Array([0x10, 0, 0x20, 0, 4, 0, 0, 0, 0x49, 0x44]));
 * check.push(new Uint8Array([0x31, 0x20]));
 * check.finish();
 * check.values.get(0x00100020); // the bytes of "ID1 "
 * ```
 */
export class Part10Check {
  /** Kept top-level values by tag. */
  readonly values = new Map<number, Uint8Array>();
  /** Element and item headers by offset (see {@linkcode Part10CheckOptions.recordFrom}). */
  readonly recorded = new Map<number, Uint8Array>();
  /** The last top-level tag seen (-1 before the first). */
  lastTopTag: number = -1;
  #name: string;
  #pos: number;
  #skip = 0;
  #capture?: { tag: number; bytes: Uint8Array; at: number };
  #head = new Uint8Array(12);
  #headLen = 0;
  #stack: Frame[];
  #want: Set<number>;
  #recordFrom: number;

  /** `encoding` may be a {@linkcode Part10Header} (its `explicitVR` and `littleEndian`). */
  constructor(
    encoding: Encoding | Pick<Part10Header, "explicitVR" | "littleEndian" | "datasetOffset">,
    name: string,
    options: Part10CheckOptions = {},
  ) {
    const enc = "explicit" in encoding
      ? encoding
      : { explicit: encoding.explicitVR, little: encoding.littleEndian };
    this.#name = name;
    this.#pos = options.start ?? ("datasetOffset" in encoding ? encoding.datasetOffset : 0);
    this.#stack = [{ kind: "elements", end: -1, encoding: enc, depth: 0, count: 0, pixel: false }];
    this.#want = new Set(options.want ?? []);
    this.#recordFrom = options.recordFrom ?? Infinity;
  }

  /** Offset of the next byte expected. */
  get position(): number {
    return this.#pos;
  }

  /** Follows the next bytes. */
  push(chunk: Uint8Array): void {
    const n = chunk.byteLength;
    let i = 0;
    while (i < n) {
      if (this.#skip > 0) {
        const k = Math.min(this.#skip, n - i);
        const capture = this.#capture;
        if (capture && capture.at < capture.bytes.byteLength) {
          const part = chunk.subarray(i, i + Math.min(k, capture.bytes.byteLength - capture.at));
          capture.bytes.set(part, capture.at);
          capture.at += part.byteLength;
        }
        this.#skip -= k;
        this.#pos += k;
        i += k;
        if (this.#skip === 0 && capture) {
          this.values.set(capture.tag, capture.bytes);
          this.#capture = undefined;
        }
        continue;
      }
      if (this.#headLen === 0) this.#popEnded();
      const need = this.#headerSize();
      const k = Math.min(need - this.#headLen, n - i);
      for (let j = 0; j < k; j++) this.#head[this.#headLen + j] = chunk[i + j]; // ≤ 12 bytes: no view
      this.#headLen += k;
      this.#pos += k;
      i += k;
      if (this.#headLen === need && this.#headerSize() === need) this.#header(need);
    }
  }

  /** Checks that the data set ended where it may. */
  finish(): void {
    if (this.#skip > 0 || this.#headLen > 0) {
      this.#fail(
        `it ends inside an element at offset ${this.#pos} (${this.#skip || this.#headLen} bytes short)`,
      );
    }
    this.#popEnded();
    const open = this.#stack.at(-1)!;
    if (this.#stack.length > 1) {
      const what = open.kind === "fragments"
        ? "encapsulated pixel data"
        : open.kind === "items"
        ? "a sequence"
        : "an item";
      this.#fail(`it ends inside ${what} (no delimiter before the end at offset ${this.#pos})`);
    }
  }

  #fail(message: string): never {
    throw new MalformedError(`Cannot parse "${this.#name}": ${message}`);
  }

  #popEnded(): void {
    while (this.#stack.length > 1) {
      const top = this.#stack.at(-1)!;
      if (top.end < 0 || this.#pos < top.end) return;
      if (this.#pos > top.end) this.#fail(`an element runs past the end of its item at offset ${top.end}`);
      this.#stack.pop();
    }
  }

  /** Bytes of the header being read: 12 for an explicit VR element with a long VR, else 8. */
  #headerSize(): number {
    const top = this.#stack.at(-1)!;
    if (top.kind !== "elements" || !top.encoding.explicit || this.#headLen < 6) return 8;
    const h = this.#head;
    const group = top.encoding.little ? h[0] | h[1] << 8 : h[0] << 8 | h[1];
    if (group === 0xfffe || !isUpper(h[4]) || !isUpper(h[5])) return 8;
    const vr = String.fromCharCode(h[4], h[5]);
    return LONG_VRS.has(vr) || !KNOWN_VRS.has(vr) ? 12 : 8;
  }

  #header(size: number): void {
    const at = this.#pos - size;
    const h = this.#head;
    const top = this.#stack.at(-1)!;
    const little = top.encoding.little;
    const tag = (u16(h, 0, little) << 16 | u16(h, 2, little)) >>> 0;
    this.#headLen = 0;
    if (at >= this.#recordFrom) this.recorded.set(at, h.slice(0, size));
    if (top.end >= 0 && at + size > top.end) {
      this.#fail(`a header at offset ${at} runs past the end of its item`);
    }
    if (top.kind === "fragments") {
      const length = u32(h, 4, little);
      if (tag === SEQUENCE_DELIMITER) {
        if (top.pixel && top.count === 0) {
          this.#fail(`encapsulated pixel data has no Basic Offset Table item at offset ${at}`);
        }
        this.#stack.pop();
      } else if (tag !== ITEM) {
        this.#fail(`item tag missing in encapsulated pixel data at offset ${at}: found ${formatTag(tag)}`);
      } else if (length === UNDEFINED) {
        this.#fail(`a fragment has an undefined length at offset ${at + 4}`);
      } else {
        if (top.pixel && top.count === 0 && length % 4) {
          this.#fail(`Basic Offset Table length ${length} is not a multiple of 4 at offset ${at + 8}`);
        }
        top.count++;
        this.#skip = length;
      }
      return;
    }
    if (top.kind === "items") {
      const length = u32(h, 4, little);
      if (tag === SEQUENCE_DELIMITER) {
        if (top.end < 0) this.#stack.pop();
      } else if (tag !== ITEM) {
        this.#fail(`item tag missing in a sequence at offset ${at}: found ${formatTag(tag)}`);
      } else if (length === UNDEFINED) {
        this.#push("elements", -1, top.encoding, top.depth + 1);
      } else {
        if (top.end >= 0 && at + 8 + length > top.end) {
          this.#fail(`an item of length ${length} runs past the end of its sequence at offset ${at + 8}`);
        }
        this.#push("elements", at + 8 + length, top.encoding, top.depth + 1);
      }
      return;
    }
    if (tag >>> 16 === 0xfffe) {
      if (tag === ITEM_DELIMITER && top.end < 0 && top.depth > 0) this.#stack.pop();
      else if (tag !== ITEM_DELIMITER && !(tag === SEQUENCE_DELIMITER && top.depth === 0)) {
        this.#fail(`unexpected ${formatTag(tag)} at offset ${at}`);
      }
      return; // a stray delimiter is skipped, as dcmtk and lib/dicom/part10.ts do
    }
    let vr: string;
    let length: number;
    if (top.encoding.explicit) {
      if (!isUpper(h[4]) || !isUpper(h[5])) {
        this.#fail(`element ${formatTag(tag)} has an invalid VR at offset ${at + 4}`);
      }
      vr = String.fromCharCode(h[4], h[5]);
      if (size === 12) {
        if (!KNOWN_VRS.has(vr)) vr = "UN";
        length = u32(h, 8, little);
      } else length = u16(h, 6, little);
    } else {
      vr = vrOf(tag);
      length = u32(h, 4, little);
    }
    if (top.depth === 0) this.lastTopTag = tag;
    const valueAt = at + size;
    if (length === UNDEFINED) {
      if (vr === "OB" || vr === "OW") {
        this.#push("fragments", -1, top.encoding, top.depth, top.depth === 0 && PIXEL_TAGS.has(tag));
      } else if (vr === "SQ" || vr === "UN" || !top.encoding.explicit) {
        this.#push("items", -1, vr === "SQ" ? top.encoding : IMPLICIT_LE, top.depth);
      } else {
        this.#fail(`element ${formatTag(tag)} (${vr}) has an undefined length at offset ${at + 4}`);
      }
      return;
    }
    if (top.end >= 0 && valueAt + length > top.end) {
      this.#fail(
        `element ${formatTag(tag)} length ${length} runs past the end of its item at offset ${valueAt}`,
      );
    }
    if (vr === "SQ") {
      this.#push("items", valueAt + length, top.encoding, top.depth);
      return;
    }
    this.#skip = length;
    if (top.depth === 0 && this.#want.has(tag)) {
      if (length === 0) this.values.set(tag, new Uint8Array(0));
      else this.#capture = { tag, bytes: new Uint8Array(Math.min(length, MAX_CAPTURE)), at: 0 };
    }
  }

  #push(kind: Frame["kind"], end: number, encoding: Encoding, depth: number, pixel = false): void {
    if (kind === "items" && depth >= MAX_DEPTH) {
      this.#fail(`sequences nested more than ${MAX_DEPTH} deep at offset ${this.#pos}`);
    }
    this.#stack.push({ kind, end, encoding, depth, count: 0, pixel });
  }
}

function u16(h: Uint8Array, at: number, little: boolean): number {
  return little ? h[at] | h[at + 1] << 8 : h[at] << 8 | h[at + 1];
}

function u32(h: Uint8Array, at: number, little: boolean): number {
  return (little
    ? h[at] | h[at + 1] << 8 | h[at + 2] << 16 | h[at + 3] << 24
    : h[at] << 24 | h[at + 1] << 16 | h[at + 2] << 8 | h[at + 3]) >>> 0;
}

function isUpper(c: number): boolean {
  return c >= 0x41 && c <= 0x5a;
}
