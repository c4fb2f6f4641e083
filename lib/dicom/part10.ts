/**
 * A DICOM Part 10 reader built for object storage (PS3.10 7, PS3.5 7 and Annex A).
 *
 * {@linkcode readHeader} reads from the front of an object through ranged reads and stops at the top-level
 * Pixel Data: large binary values are recorded as offset + length, never fetched; for encapsulated pixel data
 * only the 8-byte item headers are read to list the fragments. {@linkcode parseBuffer} does the same over a
 * buffer already in memory.
 *
 * Handles: preamble + "DICM", a File Meta group without preamble, a raw data set without File Meta (read as
 * implicit or explicit VR little endian, `meta` left undefined), Explicit/Implicit VR Little Endian, Explicit
 * VR Big Endian, Deflated Explicit VR Little Endian, defined and undefined lengths, nested sequences, private
 * tags, UN with undefined length (read as an implicit VR little endian sequence, CP-246), encapsulated pixel
 * data with Basic and Extended Offset Tables.
 *
 * Malformed input raises a `SyntaxError` naming the object and a byte offset.
 *
 * @module
 */

import {
  DEFLATED_SYNTAXES,
  type Encoding,
  encodingOf,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_LE,
  IMPLICIT_VR_LITTLE_ENDIAN,
} from "./transfer_syntax.ts";
import { decodeText } from "./charset.ts";
import { formatTag, KNOWN_VRS, LONG_VRS, vrOf } from "./dictionary.ts";
import { MalformedError, OutOfRangeError } from "../util/errors.ts";
import { scanFileMeta } from "./file_meta.ts";

/** Random access to an object's bytes (an S3 object via ranged GETs, a file, a buffer). */
export interface RangeSource {
  /** Used in error messages, e.g. the object key. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Bytes `[start, end)`; must return exactly `end - start` bytes. */
  read(start: number, end: number): Promise<Uint8Array>;
}

/** One fragment of encapsulated pixel data: where its bytes are (after the 8-byte item header). */
export interface Fragment {
  offset: number;
  length: number;
}

/** A data set (the top level or a sequence item). */
export interface DicomDataset {
  /** Elements by tag in file order. */
  readonly elements: Map<number, DicomElement>;
  /** Specific Character Set (0008,0005) in effect: the item's own, else inherited (`[]` = default). */
  readonly characterSet: readonly string[];
  /** Byte order of this data set's binary values (items of UN sequences are always little endian). */
  readonly littleEndian: boolean;
}

/** One data element. */
export interface DicomElement {
  /** `group << 16 | element`, unsigned. */
  readonly tag: number;
  /** From the file (explicit VR) or the dictionary (implicit VR); UN sequences read as items become "SQ". */
  readonly vr: string;
  /** Absolute offset of the value (for deflated objects: in the inflated stream, see {@linkcode Part10Header}). */
  readonly offset: number;
  /** Value length in bytes; -1 for undefined length. */
  readonly length: number;
  /** The value when loaded (not for sequences, encapsulated or bulk values). */
  readonly bytes?: Uint8Array;
  /** Items of a sequence. */
  readonly items?: DicomDataset[];
  /** Fragments of encapsulated (undefined length OB/OW) data, the Basic Offset Table item included. */
  readonly fragments?: Fragment[];
}

/** The File Meta Information group (0002,eeee). */
export interface FileMeta {
  transferSyntaxUid?: string;
  mediaStorageSopClassUid?: string;
  mediaStorageSopInstanceUid?: string;
  implementationClassUid?: string;
  implementationVersionName?: string;
  /** Whether the 128-byte preamble and "DICM" were present (false: the group starts at offset 0). */
  preamble: boolean;
  /** Byte range of the group's elements: `[start, datasetOffset)`. */
  start: number;
  /** Where the main data set starts. */
  datasetOffset: number;
  /** The meta elements themselves (always explicit VR little endian). */
  elements: DicomDataset;
}

/** Top-level Pixel Data (7FE0,0010), Float (7FE0,0008) or Double Float (7FE0,0009) Pixel Data. */
export interface PixelDataInfo {
  tag: number;
  vr: string;
  /** Offset of the value (native) or of the first item header (encapsulated). */
  offset: number;
  /** Value length; -1 when encapsulated. */
  length: number;
  encapsulated: boolean;
  /** Encapsulated: the fragments after the Basic Offset Table item. */
  fragments?: Fragment[];
  /** Encapsulated: Basic Offset Table entries (relative to the first fragment's item header); `[]` if empty. */
  basicOffsetTable?: number[];
  /** Extended Offset Table (7FE0,0001), same base as the Basic Offset Table. */
  extendedOffsetTable?: number[];
  /** Extended Offset Table Lengths (7FE0,0002). */
  extendedOffsetTableLengths?: number[];
  /** Offset just past the element (past the sequence delimiter when encapsulated). */
  end: number;
}

/** What {@linkcode readHeader} and {@linkcode parseBuffer} return. */
export interface Part10Header {
  name: string;
  /** Size of the address space offsets refer to: the object size, or meta + inflated length if deflated. */
  size: number;
  /** File Meta Information; undefined for a raw data set. */
  meta?: FileMeta;
  /** The transfer syntax the data set was read with (detected when the meta or its (0002,0010) is missing). */
  transferSyntaxUid: string;
  /** Where the main data set starts. */
  datasetOffset: number;
  littleEndian: boolean;
  explicitVR: boolean;
  /** Deflated: offsets are into `inflated`, ranged reads of the object cannot serve values. */
  deflated: boolean;
  /** For deflated objects: the File Meta bytes followed by the inflated data set. */
  inflated?: Uint8Array;
  dataset: DicomDataset;
  pixelData?: PixelDataInfo;
}

/** Options for {@linkcode readHeader} and {@linkcode parseBuffer}. */
export interface ParseOptions {
  /** OB, OD, OF, OL, OV, OW and UN values longer than this are not loaded (default 1024). */
  bulkThreshold?: number;
  /** UT, LT and UC values longer than this are not loaded (default 65536). */
  textBulkThreshold?: number;
  /** First range to read (default 64 KiB); doubled while the header is longer. */
  initialBytes?: number;
  /** Cap on the inflated size of a deflated data set (default 512 MiB). */
  maxInflatedBytes?: number;
}

/** Options for {@linkcode parseBuffer}. */
export interface ParseBufferOptions extends ParseOptions {
  /** The bytes are the output of {@linkcode inflateObject} (a deflated object's meta + inflated data set). */
  inflated?: boolean;
}

const ITEM = 0xfffee000;
const ITEM_DELIMITER = 0xfffee00d;
const SEQUENCE_DELIMITER = 0xfffee0dd;
const PIXEL_TAGS = new Set([0x7fe00010, 0x7fe00008, 0x7fe00009]);
const OFFSET_TABLE_TAGS = new Set([0x7fe00001, 0x7fe00002]);
const UNDEFINED = 0xffffffff;
const MAX_DEPTH = 64;

const BINARY_BULK_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "UN"]);
const TEXT_BULK_VRS = new Set(["UT", "LT", "UC"]);

/** Thrown inside the synchronous parser when bytes `[start, end)` are not loaded yet. */
class NeedMore {
  constructor(readonly start: number, readonly end: number) {}
}
/** Thrown when the data set is deflated and must be inflated first. */
class NeedInflate {}

/**
 * Loaded byte ranges of an object, sorted and found by binary search. Overlapping reads are merged; touching
 * ones are not (that would copy ever larger buffers), so a read across a boundary is assembled on demand.
 */
class SparseBytes {
  #segments: { start: number; data: Uint8Array }[] = [];
  #hit = 0;

  /** Index of the last segment starting at or before `offset`, or -1. */
  #find(offset: number): number {
    let lo = 0;
    let hi = this.#segments.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#segments[mid].start <= offset) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }

  #end(i: number): number {
    return this.#segments[i].start + this.#segments[i].data.length;
  }

  add(start: number, data: Uint8Array): void {
    const end = start + data.length;
    let first = this.#find(start);
    if (first < 0 || this.#end(first) <= start) first++;
    let last = first;
    while (last < this.#segments.length && this.#segments[last].start < end) last++;
    const overlapping = this.#segments.slice(first, last);
    if (overlapping.length === 0) {
      this.#segments.splice(first, 0, { start, data });
      return;
    }
    const lo = Math.min(start, overlapping[0].start);
    const tail = overlapping[overlapping.length - 1];
    const merged = new Uint8Array(Math.max(end, tail.start + tail.data.length) - lo);
    for (const s of overlapping) merged.set(s.data, s.start - lo);
    merged.set(data, start - lo);
    this.#segments.splice(first, overlapping.length, { start: lo, data: merged });
  }

  /** The segment holding all of `[start, end)` (parsing reads along one segment: the last one found is tried first). */
  segment(start: number, end: number): { start: number; data: Uint8Array } | undefined {
    let s = this.#segments[this.#hit];
    if (s === undefined || s.start > start || s.start + s.data.length < end) {
      const i = this.#find(start);
      if (i < 0 || this.#end(i) < end) return undefined;
      this.#hit = i;
      s = this.#segments[i];
    }
    return s;
  }

  get(start: number, end: number): Uint8Array | undefined {
    let i = this.#find(start);
    if (i < 0 || this.#end(i) <= start && end > start) return undefined;
    const s = this.#segments[i];
    if (end <= this.#end(i)) return s.data.subarray(start - s.start, end - s.start);
    const out = new Uint8Array(end - start);
    let at = 0;
    for (; i < this.#segments.length && at < out.length; i++) {
      const seg = this.#segments[i];
      if (at > 0 && seg.start !== start + at) return undefined;
      const piece = seg.data.subarray(start + at - seg.start, Math.min(seg.data.length, end - seg.start));
      out.set(piece, at);
      at += piece.length;
    }
    return at === out.length ? out : undefined;
  }

  /** The run of touching segments containing or ending at `offset`. */
  around(offset: number): { start: number; end: number } | undefined {
    let i = this.#find(offset);
    if (i < 0 || offset > this.#end(i)) return undefined;
    let j = i;
    while (j + 1 < this.#segments.length && this.#segments[j + 1].start === this.#end(j)) j++;
    while (i > 0 && this.#end(i - 1) === this.#segments[i].start) i--;
    return { start: this.#segments[i].start, end: this.#end(j) };
  }
}

/** Bounds-checked reads over loaded bytes, with errors naming the object. */
class Reader {
  note = "";
  constructor(readonly name: string, readonly size: number, readonly store: SparseBytes) {}

  fail(message: string): never {
    throw new MalformedError(`Cannot parse "${this.name}"${this.note}: ${message}`);
  }

  bytes(offset: number, length: number, what: () => string): Uint8Array {
    if (offset + length > this.size) this.fail(what());
    const b = this.store.get(offset, offset + length);
    if (!b) throw new NeedMore(offset, offset + length);
    return b;
  }

  u16(offset: number, little: boolean, what: () => string): number {
    // straight from the segment: a 2-byte view per read was most of the parser's garbage
    const s = offset + 2 <= this.size ? this.store.segment(offset, offset + 2) : undefined;
    const b = s ? s.data : this.bytes(offset, 2, what);
    const i = s ? offset - s.start : 0;
    return little ? b[i] | b[i + 1] << 8 : b[i] << 8 | b[i + 1];
  }

  u32(offset: number, little: boolean, what: () => string): number {
    const s = offset + 4 <= this.size ? this.store.segment(offset, offset + 4) : undefined;
    const b = s ? s.data : this.bytes(offset, 4, what);
    const i = s ? offset - s.start : 0;
    return (little
      ? b[i] | b[i + 1] << 8 | b[i + 2] << 16 | b[i + 3] << 24
      : b[i] << 24 | b[i + 1] << 16 | b[i + 2] << 8 | b[i + 3]) >>> 0;
  }

  tag(offset: number, little: boolean, what: () => string): number {
    return (this.u16(offset, little, what) << 16 | this.u16(offset + 2, little, what)) >>> 0;
  }
}

interface Inherited {
  characterSet: readonly string[];
  pixelRepresentation?: number;
}

interface Thresholds {
  bulk: number;
  text: number;
}

/** Pixel Data found at the top level (`fragments` and `end` when it was parsed in place). */
interface PixelStop {
  tag: number;
  vr: string;
  offset: number;
  length: number;
  fragments?: Fragment[];
  end?: number;
}

/** The synchronous element parser; the caller restarts it when it throws {@linkcode NeedMore}. */
class DatasetParser {
  pixel?: PixelStop;
  constructor(readonly r: Reader, readonly limits: Thresholds, readonly stopAtPixelData: boolean) {}

  /**
   * Parses elements from `start` until `end` (-1: until an item delimiter). At the top level, stops after
   * recording Pixel Data when `stopAtPixelData` is set.
   */
  dataset(
    start: number,
    end: number,
    syntax: Encoding,
    depth: number,
    inherited: Inherited,
  ): { dataset: DicomDataset; end: number } {
    const r: Reader = this.r;
    const elements = new Map<number, DicomElement>();
    const state = { ...inherited };
    const result = () => ({ elements, characterSet: state.characterSet, littleEndian: syntax.little });
    const limit = end >= 0 ? end : r.size;
    let p = start;
    while (end < 0 || p < end) {
      if (p + 8 > limit) {
        r.fail(
          end < 0 && p >= r.size
            ? `item starting at offset ${start} has no item delimiter before the end`
            : `element header at offset ${p} runs past the end${depth > 0 ? " of its item" : ""}`,
        );
      }
      const at = p;
      const tag = r.tag(p, syntax.little, () => `element header at offset ${at} runs past the end`);
      if (tag >>> 16 === 0xfffe) {
        if (tag === ITEM_DELIMITER && end < 0) return { dataset: result(), end: p + 8 };
        if (tag === ITEM_DELIMITER || (tag === SEQUENCE_DELIMITER && depth === 0)) {
          p += 8; // stray delimiter: dcmtk skips it too
          continue;
        }
        r.fail(`unexpected ${formatTag(tag)} at offset ${p}`);
      }
      let vr: string;
      let length: number;
      let valueOffset: number;
      if (syntax.explicit) {
        const v = r.bytes(
          p + 4,
          2,
          () => `element ${formatTag(tag)} header runs past the end at offset ${at}`,
        );
        if (!isUpper(v[0]) || !isUpper(v[1])) {
          r.fail(`element ${formatTag(tag)} has an invalid VR (bytes ${hex(v)}) at offset ${p + 4}`);
        }
        vr = String.fromCharCode(v[0], v[1]);
        if (LONG_VRS.has(vr) || !KNOWN_VRS.has(vr)) {
          if (!KNOWN_VRS.has(vr)) vr = "UN";
          length = r.u32(
            p + 8,
            syntax.little,
            () => `element ${formatTag(tag)} header runs past the end at offset ${at}`,
          );
          valueOffset = p + 12;
        } else {
          length = r.u16(p + 6, syntax.little, () => `element header at offset ${at} runs past the end`);
          valueOffset = p + 8;
        }
      } else {
        length = r.u32(p + 4, true, () => `element header at offset ${at} runs past the end`);
        valueOffset = p + 8;
        vr = vrOf(tag, { pixelRepresentation: state.pixelRepresentation });
      }
      const isTopPixel = depth === 0 && PIXEL_TAGS.has(tag);
      let element: DicomElement;
      if (length === UNDEFINED) {
        if (isTopPixel && this.stopAtPixelData) {
          this.pixel = { tag, vr, offset: valueOffset, length: -1 };
          elements.set(tag, { tag, vr, offset: valueOffset, length: -1 });
          return { dataset: result(), end: valueOffset };
        }
        if (vr === "OB" || vr === "OW") {
          const { fragments, end: fragmentsEnd } = this.fragments(tag, valueOffset, syntax.little);
          if (isTopPixel) {
            this.pixel = { tag, vr, offset: valueOffset, length: -1, fragments, end: fragmentsEnd };
          }
          element = { tag, vr, offset: valueOffset, length: -1, fragments };
          p = fragmentsEnd;
        } else if (vr === "SQ" || vr === "UN" || !syntax.explicit) {
          const inner = vr === "SQ" ? syntax : IMPLICIT_LE;
          const seq = this.sequence(tag, valueOffset, -1, inner, depth, state);
          element = { tag, vr: "SQ", offset: valueOffset, length: -1, items: seq.items };
          p = seq.end;
        } else {
          r.fail(`element ${formatTag(tag)} (${vr}) has an undefined length at offset ${p + 4}`);
        }
      } else {
        if (valueOffset + length > limit) {
          r.fail(`element ${formatTag(tag)} length ${length} runs past the end at offset ${valueOffset}`);
        }
        p = valueOffset + length;
        if (vr === "SQ") {
          const seq = this.sequence(tag, valueOffset, length, syntax, depth, state);
          element = { tag, vr, offset: valueOffset, length, items: seq.items };
        } else if (isTopPixel) {
          this.pixel = { tag, vr, offset: valueOffset, length };
          const bytes = this.stopAtPixelData || this.isBulk(tag, vr, length)
            ? undefined
            : r.bytes(valueOffset, length, () => "");
          elements.set(tag, { tag, vr, offset: valueOffset, length, bytes });
          if (this.stopAtPixelData) return { dataset: result(), end: p };
          continue;
        } else if (this.isBulk(tag, vr, length)) {
          element = { tag, vr, offset: valueOffset, length };
        } else {
          const bytes = r.bytes(valueOffset, length, () => "");
          element = { tag, vr, offset: valueOffset, length, bytes };
          if (tag === 0x00080005) state.characterSet = latin1(bytes).split("\\").map((s) => s.trim());
          if (tag === 0x00280103 && length >= 2) {
            state.pixelRepresentation = syntax.little ? bytes[0] : bytes[1];
          }
        }
      }
      elements.set(tag, element);
    }
    return { dataset: result(), end: p };
  }

  isBulk(tag: number, vr: string, length: number): boolean {
    if (OFFSET_TABLE_TAGS.has(tag)) return false;
    return (BINARY_BULK_VRS.has(vr) && length > this.limits.bulk) ||
      (TEXT_BULK_VRS.has(vr) && length > this.limits.text);
  }

  sequence(
    tag: number,
    start: number,
    length: number,
    syntax: Encoding,
    depth: number,
    inherited: Inherited,
  ): { items: DicomDataset[]; end: number } {
    const r: Reader = this.r;
    if (depth >= MAX_DEPTH) r.fail(`sequences nested more than ${MAX_DEPTH} deep at offset ${start}`);
    const limit = length >= 0 ? start + length : r.size;
    const items: DicomDataset[] = [];
    let p = start;
    while (length < 0 || p < limit) {
      if (p + 8 > limit) {
        r.fail(
          length < 0
            ? `sequence ${formatTag(tag)} has no sequence delimiter before the end at offset ${p}`
            : `item header at offset ${p} runs past the end of sequence ${formatTag(tag)}`,
        );
      }
      const at = p;
      const itemTag = r.tag(p, syntax.little, () => `item header at offset ${at} runs past the end`);
      const itemLength = r.u32(p + 4, syntax.little, () => `item header at offset ${at} runs past the end`);
      if (itemTag === SEQUENCE_DELIMITER) {
        p += 8;
        if (length < 0) return { items, end: p };
        continue;
      }
      if (itemTag !== ITEM) {
        r.fail(`item tag missing in sequence ${formatTag(tag)} at offset ${p}: found ${formatTag(itemTag)}`);
      }
      if (itemLength === UNDEFINED) {
        const item = this.dataset(p + 8, -1, syntax, depth + 1, inherited);
        items.push(item.dataset);
        p = item.end;
      } else {
        if (p + 8 + itemLength > limit) {
          r.fail(`item of ${formatTag(tag)} length ${itemLength} runs past the end at offset ${p + 8}`);
        }
        items.push(this.dataset(p + 8, p + 8 + itemLength, syntax, depth + 1, inherited).dataset);
        p += 8 + itemLength;
      }
    }
    return { items, end: p };
  }

  /** All items of encapsulated data (Basic Offset Table item first) up to the sequence delimiter. */
  fragments(tag: number, start: number, little: boolean): { fragments: Fragment[]; end: number } {
    const scan = new FragmentScan(start);
    scan.run(this.r, tag, little);
    return { fragments: scan.fragments, end: scan.p };
  }
}

/** A resumable scan of encapsulated item headers (resumes where {@linkcode NeedMore} interrupted it). */
class FragmentScan {
  fragments: Fragment[] = [];
  done = false;
  constructor(public p: number) {}

  run(r: Reader, tag: number, little: boolean): void {
    while (!this.done) {
      const at = this.p;
      const what = () =>
        `encapsulated ${formatTag(tag)} has no sequence delimiter before the end at offset ${at}`;
      const itemTag = r.tag(at, little, what);
      const length = r.u32(at + 4, little, what);
      if (itemTag === SEQUENCE_DELIMITER) {
        this.p += 8;
        this.done = true;
      } else if (itemTag !== ITEM) {
        r.fail(
          `item tag missing in encapsulated ${formatTag(tag)} at offset ${at}: found ${formatTag(itemTag)}`,
        );
      } else if (length === UNDEFINED) {
        r.fail(`fragment of ${formatTag(tag)} has an undefined length at offset ${at + 4}`);
      } else if (at + 8 + length > r.size) {
        r.fail(`fragment of ${formatTag(tag)} length ${length} runs past the end at offset ${at + 8}`);
      } else {
        this.fragments.push({ offset: at + 8, length });
        this.p = at + 8 + length;
      }
    }
  }
}

function isUpper(c: number): boolean {
  return c >= 0x41 && c <= 0x5a;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

function uidText(el: DicomElement | undefined): string | undefined {
  return el?.bytes ? latin1(el.bytes).replace(/[\0 ]+$/, "") : undefined;
}

/** Guesses the encoding of a data set starting at `offset` from its first element header. */
function detectSyntax(r: Reader, offset: number): Encoding {
  if (offset + 6 > r.size) return IMPLICIT_LE;
  const v = r.bytes(offset + 4, 2, () => "");
  return KNOWN_VRS.has(String.fromCharCode(v[0], v[1])) ? { explicit: true, little: true } : IMPLICIT_LE;
}

interface MetaResult {
  meta?: FileMeta;
  datasetOffset: number;
  transferSyntaxUid: string;
  syntax: Encoding;
}

function parseMeta(r: Reader): MetaResult {
  // the meta group is read from the bytes loaded from offset 0 (see file_meta.ts, the one File Meta parser)
  const run = r.store.around(0);
  const loaded = run && run.start === 0 ? Math.min(run.end, r.size) : 0;
  const complete = loaded >= r.size;
  const scan = loaded === 0 && !complete ? null : scanFileMeta(r.bytes(0, loaded, () => ""), r.name, {
    complete,
    implicitVr: true,
    fail: (detail) => r.fail(detail),
  });
  if (scan === null) throw new NeedMore(loaded, Math.min(r.size, Math.max(2 * loaded, loaded + 1024)));
  if (scan.dicm === "none" && scan.elements.size === 0) {
    r.note = " (no File Meta Information: read as a raw data set)";
    const syntax = detectSyntax(r, 0);
    const transferSyntaxUid = syntax.explicit ? EXPLICIT_VR_LITTLE_ENDIAN : IMPLICIT_VR_LITTLE_ENDIAN;
    return { datasetOffset: 0, transferSyntaxUid, syntax };
  }
  const elements = new Map<number, DicomElement>();
  for (const { tag, vr, offset, length, bytes } of scan.elements.values()) {
    elements.set(tag, { tag, vr, offset, length, bytes });
  }
  const p = scan.end;
  const meta: FileMeta = {
    transferSyntaxUid: scan.transferSyntaxUid,
    mediaStorageSopClassUid: uidText(elements.get(0x00020002)) || undefined,
    mediaStorageSopInstanceUid: uidText(elements.get(0x00020003)) || undefined,
    implementationClassUid: uidText(elements.get(0x00020012)) || undefined,
    implementationVersionName: uidText(elements.get(0x00020013)) || undefined,
    preamble: scan.dicm === "preamble",
    start: scan.start,
    datasetOffset: p,
    elements: { elements, characterSet: [], littleEndian: true },
  };
  if (meta.transferSyntaxUid) {
    return {
      meta,
      datasetOffset: p,
      transferSyntaxUid: meta.transferSyntaxUid,
      syntax: encodingOf(meta.transferSyntaxUid),
    };
  }
  const syntax = detectSyntax(r, p);
  const transferSyntaxUid = syntax.explicit ? EXPLICIT_VR_LITTLE_ENDIAN : IMPLICIT_VR_LITTLE_ENDIAN;
  return { meta, datasetOffset: p, transferSyntaxUid, syntax };
}

/** Reads a header in phases; each phase is synchronous and may throw NeedMore (then call `run` again). */
class HeaderJob {
  #metaResult?: MetaResult;
  #main?: { dataset: DicomDataset; end: number; pixel?: PixelStop };
  #scan?: FragmentScan;
  #header?: Part10Header;

  constructor(
    readonly r: Reader,
    readonly limits: Thresholds,
    readonly stopAtPixelData: boolean,
    readonly inflated?: Uint8Array,
  ) {}

  /** Absolute item header offsets the Basic/Extended Offset Table predicts, for prefetching. */
  predictedHeaders(): number[] {
    const scan = this.#scan;
    if (!scan || scan.fragments.length < 2) return [];
    const base = scan.fragments[1].offset - 8;
    const table = this.#offsets(scan.fragments[0]);
    return table.map((o) => base + o).filter((o) => o > scan.p);
  }

  /** The last complete fragment's length (to size reads during the scan). */
  /** Item header reads made one at a time (no offset table to predict the next ones). */
  loneHeaderReads = 0;

  lastFragmentLength(): number {
    return this.#scan?.fragments.at(-1)?.length ?? 0;
  }

  scanning(): boolean {
    return this.#scan !== undefined && !this.#scan.done;
  }

  #offsets(bot: Fragment): number[] {
    const eot = this.#main?.dataset.elements.get(0x7fe00001);
    if (eot?.bytes) return readUint64s(eot.bytes);
    const b = this.r.store.get(bot.offset, bot.offset + bot.length);
    return b ? readUint32s(b) : [];
  }

  run(): Part10Header {
    if (this.#header) return this.#header;
    const r: Reader = this.r;
    if (r.size === 0) r.fail("the object is empty");
    const m = this.#metaResult ??= parseMeta(r);
    if (DEFLATED_SYNTAXES.has(m.transferSyntaxUid) && !this.inflated) throw new NeedInflate();
    if (!this.#main) {
      const parser = new DatasetParser(r, this.limits, this.stopAtPixelData);
      const main = parser.dataset(m.datasetOffset, r.size, m.syntax, 0, { characterSet: [] });
      this.#main = { ...main, pixel: parser.pixel };
    }
    const main = this.#main;
    const stop = main.pixel;
    let pixelData: PixelDataInfo | undefined;
    let trailingStart = main.end;
    if (stop) {
      if (stop.length >= 0) {
        const end = stop.offset + stop.length;
        pixelData = {
          tag: stop.tag,
          vr: stop.vr,
          offset: stop.offset,
          length: stop.length,
          encapsulated: false,
          end,
        };
      } else {
        let fragments = stop.fragments;
        let end = stop.end ?? 0;
        if (!fragments) {
          const scan = this.#scan ??= new FragmentScan(stop.offset);
          scan.run(r, stop.tag, m.syntax.little);
          fragments = scan.fragments;
          end = scan.p;
          const pixelElement = main.dataset.elements.get(stop.tag)!;
          main.dataset.elements.set(stop.tag, { ...pixelElement, fragments });
        }
        if (fragments.length === 0) {
          r.fail(
            `encapsulated ${formatTag(stop.tag)} has no Basic Offset Table item at offset ${stop.offset}`,
          );
        }
        const bot = fragments[0];
        if (bot.length % 4) {
          r.fail(`Basic Offset Table length ${bot.length} is not a multiple of 4 at offset ${bot.offset}`);
        }
        pixelData = {
          tag: stop.tag,
          vr: stop.vr,
          offset: stop.offset,
          length: -1,
          encapsulated: true,
          fragments: fragments.slice(1),
          basicOffsetTable: readUint32s(r.bytes(bot.offset, bot.length, () => "")),
          end,
        };
        const eot = main.dataset.elements.get(0x7fe00001);
        const eotLengths = main.dataset.elements.get(0x7fe00002);
        if (eot?.bytes && eotLengths?.bytes) {
          pixelData.extendedOffsetTable = readUint64s(eot.bytes);
          pixelData.extendedOffsetTableLengths = readUint64s(eotLengths.bytes);
        }
      }
      trailingStart = pixelData.end;
    }
    let dataset = main.dataset;
    if (stop && this.stopAtPixelData && trailingStart < r.size) {
      const parser = new DatasetParser(r, this.limits, false);
      const inherited = { characterSet: dataset.characterSet };
      const trailing = parser.dataset(trailingStart, r.size, m.syntax, 0, inherited).dataset;
      const elements = new Map(dataset.elements);
      for (const [tag, el] of trailing.elements) elements.set(tag, el);
      dataset = { ...dataset, elements };
    }
    this.#header = {
      name: r.name,
      size: r.size,
      meta: m.meta,
      transferSyntaxUid: m.transferSyntaxUid,
      datasetOffset: m.datasetOffset,
      littleEndian: m.syntax.little,
      explicitVR: m.syntax.explicit,
      deflated: DEFLATED_SYNTAXES.has(m.transferSyntaxUid),
      inflated: this.inflated,
      dataset,
      pixelData,
    };
    return this.#header;
  }
}

function readUint32s(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  for (let i = 0; i + 4 <= bytes.length; i += 4) out.push(view.getUint32(i, true));
  return out;
}

function readUint64s(bytes: Uint8Array): number[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  for (let i = 0; i + 8 <= bytes.length; i += 8) out.push(Number(view.getBigUint64(i, true)));
  return out;
}

function limitsOf(options: ParseOptions): Thresholds {
  return { bulk: options.bulkThreshold ?? 1024, text: options.textBulkThreshold ?? 65536 };
}

/**
 * Parses a whole Part 10 object (or raw data set) held in memory. Deflated data sets must be inflated
 * first: pass the result of {@linkcode inflateObject} (or use {@linkcode parseObject}).
 *
 * @example
 * ```ts
 * import { parseBuffer } from "./part10.ts";
 * // A raw implicit VR data set holding only PatientID (0010,0020) = "ID1 ".
 * const bytes = new Uint8Array([0x10, 0, 0x20, 0, 4, 0, 0, 0, 0x49, 0x44, 0x31, 0x20]);
 * const header = parseBuffer(bytes, "example.dcm");
 * header.meta; // undefined: the caller decides whether to accept that
 * ```
 */
export function parseBuffer(bytes: Uint8Array, name: string, options: ParseBufferOptions = {}): Part10Header {
  const store = new SparseBytes();
  store.add(0, bytes);
  const job = new HeaderJob(
    new Reader(name, bytes.length, store),
    limitsOf(options),
    false,
    options.inflated ? bytes : undefined,
  );
  try {
    return job.run();
  } catch (e) {
    if (e instanceof NeedInflate) {
      throw new MalformedError(
        `Cannot parse "${name}": the data set is deflated: inflate it first (inflateObject)`,
      );
    }
    throw e;
  }
}

/** Like {@linkcode parseBuffer}, inflating a deflated data set first. */
export async function parseObject(
  bytes: Uint8Array,
  name: string,
  options: ParseOptions = {},
): Promise<Part10Header> {
  const store = new SparseBytes();
  store.add(0, bytes);
  const job = new HeaderJob(new Reader(name, bytes.length, store), limitsOf(options), false);
  try {
    return job.run();
  } catch (e) {
    if (!(e instanceof NeedInflate)) throw e;
  }
  const inflated = await inflateObject(bytes, name, options);
  return parseBuffer(inflated, name, { ...options, inflated: true });
}

/**
 * Returns the File Meta bytes of a deflated object followed by its inflated data set: the address space
 * the offsets of a deflated object's header refer to.
 */
export async function inflateObject(
  bytes: Uint8Array,
  name: string,
  options: ParseOptions = {},
): Promise<Uint8Array> {
  const store = new SparseBytes();
  store.add(0, bytes);
  const { datasetOffset } = parseMeta(new Reader(name, bytes.length, store));
  const max = options.maxInflatedBytes ?? 512 * 1024 * 1024;
  const deflated = bytes.subarray(datasetOffset);
  let result = await inflateRaw(deflated, max, name);
  if (!result) {
    // Some writers leave bytes after the end of the deflate stream, which DecompressionStream rejects: find the
    // longest prefix (within the last 64 KiB) that inflates cleanly.
    let lo = Math.max(0, deflated.length - 65536);
    let hi = deflated.length - 1;
    if (!await inflateRaw(deflated.subarray(0, lo), max, name)) hi = -1;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (await inflateRaw(deflated.subarray(0, mid), max, name)) lo = mid;
      else hi = mid - 1;
    }
    if (hi < 0) {
      throw new MalformedError(
        `Cannot parse "${name}": the deflated data set at offset ${datasetOffset} is corrupt`,
      );
    }
    result = (await inflateRaw(deflated.subarray(0, lo), max, name))!;
  }
  const out = new Uint8Array(datasetOffset + result.length);
  out.set(bytes.subarray(0, datasetOffset));
  out.set(result, datasetOffset);
  return out;
}

/** Inflates raw deflate data; undefined when the stream is corrupt (or followed by other bytes). */
async function inflateRaw(input: Uint8Array, max: number, name: string): Promise<Uint8Array | undefined> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    const stream = new Blob([input.slice()]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
    for await (const chunk of stream) {
      total += chunk.length;
      if (total > max) throw new OutOfRangeError(`the deflated data set inflates to more than ${max} bytes`);
      chunks.push(chunk);
    }
  } catch (e) {
    if (e instanceof RangeError) throw new MalformedError(`Cannot parse "${name}": ${e.message}`);
    return undefined;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * Reads the header of a Part 10 object through ranged reads: everything up to the top-level Pixel Data, the
 * fragment list of encapsulated pixel data (item headers only) and any elements after the pixel data.
 * Deflated objects are read whole and inflated (see {@linkcode Part10Header.inflated}).
 *
 * @example
 * ```ts
 * import { readHeader } from "./part10.ts";
 * const bytes = new Uint8Array([0x10, 0, 0x20, 0, 4, 0, 0, 0, 0x49, 0x44, 0x31, 0x20]);
 * const source = { name: "a.dcm", size: bytes.length, read: (s: number, e: number) => Promise.resolve(bytes.slice(s, e)) };
 * const header = await readHeader(source);
 * header.dataset.elements.has(0x00100020); // true
 * ```
 */
export async function readHeader(source: RangeSource, options: ParseOptions = {}): Promise<Part10Header> {
  const size = source.size;
  const initial = Math.max(options.initialBytes ?? 65536, 256);
  const store = new SparseBytes();
  const load = async (ranges: [number, number][]) => {
    const datas = await Promise.all(ranges.map(([s, e]) => source.read(s, e)));
    ranges.forEach(([s, e], i) => {
      if (datas[i].length !== e - s) {
        throw new Error(
          `Short read of "${source.name}": asked for bytes ${s}-${e - 1}, got ${datas[i].length}`,
        );
      }
      store.add(s, datas[i]);
    });
  };
  if (size > 0) await load([[0, Math.min(initial, size)]]);
  const job = new HeaderJob(new Reader(source.name, size, store), limitsOf(options), true);
  for (;;) {
    try {
      const header = job.run();
      const copy = copiesOf([header.dataset, ...(header.meta ? [header.meta.elements] : [])]);
      return {
        ...header,
        dataset: detach(header.dataset, copy),
        meta: header.meta && { ...header.meta, elements: detach(header.meta.elements, copy) },
      };
    } catch (e) {
      if (e instanceof NeedInflate) {
        const whole = await source.read(0, size);
        const inflated = await inflateObject(whole, source.name, options);
        return parseBuffer(inflated, source.name, { ...options, inflated: true });
      }
      if (!(e instanceof NeedMore)) throw e;
      const ranges = planReads(job, store, e, initial, size).filter(([s, end]) => end > s);
      // Cannot happen unless planReads and SparseBytes disagree; never spin on a read that adds nothing.
      if (ranges.length === 0) {
        throw new Error(`Cannot read "${source.name}": no progress at offset ${e.start}`);
      }
      await load(ranges);
    }
  }
}

/** Which ranges to fetch for a NeedMore: grow the current run by doubling, or jump; batch fragment headers. */
/**
 * Which ranges to fetch for a NeedMore: grow the current run by doubling, or jump to a new place. While
 * scanning large fragments, read just the next item header plus (in parallel) those the offset tables
 * predict; without offset tables, after 16 lone headers switch to windows spanning ~32 fragments.
 */
function planReads(
  job: HeaderJob,
  store: SparseBytes,
  need: NeedMore,
  initial: number,
  size: number,
): [number, number][] {
  const clamp = (s: number, e: number): [number, number] => [s, Math.min(size, Math.max(e, s + 1))];
  const fragmentLength = job.lastFragmentLength();
  if (job.scanning() && fragmentLength > 16384) {
    const ranges: [number, number][] = [];
    for (const p of job.predictedHeaders()) {
      if (ranges.length >= 64) break;
      if (!store.get(p, p + 8)) ranges.push(clamp(p, p + 8));
    }
    if (ranges.length === 0 && ++job.loneHeaderReads > 16) {
      return [clamp(need.start, need.start + Math.min(8 * 1024 * 1024, 32 * (fragmentLength + 8)))];
    }
    return [clamp(need.start, need.start + 8), ...ranges.filter(([s]) => s !== need.start)];
  }
  const run = store.around(need.start);
  if (run) return [clamp(run.end, Math.max(need.end, run.end + (run.end - run.start)))];
  return [clamp(need.start, Math.max(need.end, need.start + initial))];
}

/** Loaded values closer than this in one read buffer share one copy (see {@linkcode copiesOf}). */
const COPY_GAP = 4096;

/**
 * Copies of the loaded values of `datasets` (and their items) that no longer share the (possibly large)
 * read buffers: values near each other in a buffer are copied together, so a header's hundred values
 * cost a copy or two, not a hundred small buffers.
 */
function copiesOf(datasets: DicomDataset[]): Map<Uint8Array, Uint8Array> {
  const views: Uint8Array[] = [];
  const collect = (dataset: DicomDataset) => {
    for (const el of dataset.elements.values()) {
      if (el.bytes) views.push(el.bytes);
      el.items?.forEach(collect);
    }
  };
  datasets.forEach(collect);
  const copies = new Map<Uint8Array, Uint8Array>();
  const byBuffer = new Map<ArrayBufferLike, Uint8Array[]>();
  for (const view of views) {
    const list = byBuffer.get(view.buffer);
    if (list) list.push(view);
    else byBuffer.set(view.buffer, [view]);
  }
  for (const [buffer, list] of byBuffer) {
    list.sort((a, b) => a.byteOffset - b.byteOffset);
    for (let i = 0; i < list.length;) {
      const start = list[i].byteOffset;
      let end = start + list[i].byteLength;
      let j = i + 1;
      while (j < list.length && list[j].byteOffset - end <= COPY_GAP) {
        end = Math.max(end, list[j].byteOffset + list[j].byteLength);
        j++;
      }
      const copy = new Uint8Array(buffer, start, end - start).slice();
      for (; i < j; i++) {
        const at = list[i].byteOffset - start;
        copies.set(list[i], copy.subarray(at, at + list[i].byteLength));
      }
    }
  }
  return copies;
}

/** `dataset` with its loaded values replaced by their `copies`. */
function detach(dataset: DicomDataset, copies: Map<Uint8Array, Uint8Array>): DicomDataset {
  const elements = new Map<number, DicomElement>();
  for (const [tag, el] of dataset.elements) {
    elements.set(tag, {
      ...el,
      ...(el.bytes ? { bytes: copies.get(el.bytes) ?? el.bytes.slice() } : {}),
      ...(el.items ? { items: el.items.map((item) => detach(item, copies)) } : {}),
    });
  }
  return { ...dataset, elements };
}

/** The element with this tag, if present. */
export function getElement(dataset: DicomDataset, tag: number): DicomElement | undefined {
  return dataset.elements.get(tag >>> 0);
}

/**
 * The text of a loaded element, decoded with the data set's character set, padding removed per VR (trailing
 * spaces and NULs; leading spaces too for AE, CS, DS, IS, LO, PN, SH). Multi-valued text keeps its backslashes.
 */
export function getString(dataset: DicomDataset, tag: number): string | undefined {
  const el = getElement(dataset, tag);
  if (!el?.bytes) return undefined;
  return trimValue(decodeText(el.bytes, dataset.characterSet, el.vr), el.vr);
}

/** The values of a loaded text element (split on `\` except for LT, ST, UT, UR), each trimmed per VR. */
export function getStrings(dataset: DicomDataset, tag: number): string[] | undefined {
  const el = getElement(dataset, tag);
  return el?.bytes ? elementStrings(el, dataset) : undefined;
}

/** The first number of a loaded numeric element (US, SS, UL, SL, FL, FD, SV, UV, IS, DS); undefined for other VRs. */
export function getNumber(dataset: DicomDataset, tag: number): number | undefined {
  return getNumbers(dataset, tag)?.[0];
}

/** All numbers of a loaded numeric element; IS/DS text that is not a number gives `NaN`. */
export function getNumbers(dataset: DicomDataset, tag: number): number[] | undefined {
  const el = getElement(dataset, tag);
  if (!el?.bytes) return undefined;
  if (el.vr === "IS" || el.vr === "DS") {
    return elementStrings(el, dataset).map((s) => s === "" ? NaN : Number(s));
  }
  if (!NUMERIC_VRS.has(el.vr)) return undefined;
  return readNumbers(el.bytes, el.vr, dataset.littleEndian).map(Number);
}

/** Splits and trims the decoded text of an element (see {@linkcode getStrings}). */
export function elementStrings(el: DicomElement, dataset: DicomDataset): string[] {
  if (!el.bytes || el.bytes.length === 0) return [];
  const text = decodeText(el.bytes, dataset.characterSet, el.vr);
  if (SINGLE_VALUED_TEXT.has(el.vr)) return [trimValue(text, el.vr)];
  return text.split("\\").map((s) => trimValue(s, el.vr));
}

const NUMERIC_VRS = new Set(["US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"]);
const SINGLE_VALUED_TEXT = new Set(["LT", "ST", "UT", "UR"]);
const BOTH_ENDS = new Set(["AE", "CS", "DS", "IS", "LO", "PN", "SH"]);

/** Removes insignificant padding from one value. */
export function trimValue(value: string, vr: string): string {
  const trailing = value.replace(/[ \0]+$/, "");
  return BOTH_ENDS.has(vr) ? trailing.replace(/^ +/, "") : trailing;
}

/** Decodes a binary numeric value: US, SS, UL, SL, FL, FD, OF, OD, OL, OW (as uint16), AT (as uint32), SV, UV. */
export function readNumbers(bytes: Uint8Array, vr: string, littleEndian: boolean): (number | bigint)[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const spec: Record<string, [number, (at: number) => number | bigint]> = {
    US: [2, (at) => view.getUint16(at, littleEndian)],
    OW: [2, (at) => view.getUint16(at, littleEndian)],
    SS: [2, (at) => view.getInt16(at, littleEndian)],
    UL: [4, (at) => view.getUint32(at, littleEndian)],
    OL: [4, (at) => view.getUint32(at, littleEndian)],
    SL: [4, (at) => view.getInt32(at, littleEndian)],
    FL: [4, (at) => view.getFloat32(at, littleEndian)],
    OF: [4, (at) => view.getFloat32(at, littleEndian)],
    FD: [8, (at) => view.getFloat64(at, littleEndian)],
    OD: [8, (at) => view.getFloat64(at, littleEndian)],
    SV: [8, (at) => view.getBigInt64(at, littleEndian)],
    UV: [8, (at) => view.getBigUint64(at, littleEndian)],
    OV: [8, (at) => view.getBigUint64(at, littleEndian)],
  };
  if (vr === "AT") {
    const out: number[] = [];
    for (let at = 0; at + 4 <= bytes.length; at += 4) {
      out.push((view.getUint16(at, littleEndian) << 16 | view.getUint16(at + 2, littleEndian)) >>> 0);
    }
    return out;
  }
  const entry = spec[vr];
  if (!entry) throw new TypeError(`Cannot read numbers of VR ${vr}`);
  const [width, get] = entry;
  const out: (number | bigint)[] = [];
  for (let at = 0; at + width <= bytes.length; at += width) out.push(get(at));
  return out;
}
