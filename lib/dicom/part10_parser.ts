/**
 * The synchronous Part 10 parser over loaded bytes: the File Meta (through file_meta.ts), the data set's
 * elements, sequences and items ({@linkcode DatasetParser}), encapsulated fragments ({@linkcode FragmentScan}),
 * in phases that resume after {@linkcode NeedMore} ({@linkcode HeaderJob}). part10.ts drives it.
 *
 * @module
 */

import {
  DEFLATED_SYNTAXES,
  type Encoding,
  encodingOf,
  IMPLICIT_LE,
  IMPLICIT_VR_LITTLE_ENDIAN,
} from "./transfer_syntax.ts";
import { formatTag, KNOWN_VRS, LONG_VRS, vrOf } from "./dictionary.ts";
import { inferSyntax, scanFileMeta } from "./file_meta.ts";
import type {
  DicomDataset,
  DicomElement,
  FileMeta,
  Fragment,
  Part10Header,
  PixelDataInfo,
} from "./dataset.ts";
import { NeedInflate, NeedMore, Reader } from "./part10_bytes.ts";
import type { ParseOptions } from "./part10.ts";

const ITEM = 0xfffee000;

const ITEM_DELIMITER = 0xfffee00d;

const SEQUENCE_DELIMITER = 0xfffee0dd;

const PIXEL_TAGS = new Set([0x7fe00010, 0x7fe00008, 0x7fe00009]);

const OFFSET_TABLE_TAGS = new Set([0x7fe00001, 0x7fe00002]);

const UNDEFINED = 0xffffffff;

const MAX_DEPTH = 64;

const BINARY_BULK_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "UN"]);

const TEXT_BULK_VRS = new Set(["UT", "LT", "UC"]);

export interface Inherited {
  characterSet: readonly string[];
  pixelRepresentation?: number;
}

export interface Thresholds {
  bulk: number;
  text: number;
}

/** Pixel Data found at the top level (`fragments` and `end` when it was parsed in place). */
export interface PixelStop {
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
          if (isTopPixel && limit === r.size) {
            // Pixel Data declared longer than the object (a file cut short, or a wrong length): everything
            // before it is whole, so the header stands; reading the pixels fails, naming the object.
            this.pixel = { tag, vr, offset: valueOffset, length };
            elements.set(tag, { tag, vr, offset: valueOffset, length });
            return { dataset: result(), end: limit };
          }
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

/** The transfer syntax of a data set that names none, from its first element (file_meta.ts's inference). */
function detectSyntax(r: Reader, offset: number): string {
  if (offset + 6 > r.size) return IMPLICIT_VR_LITTLE_ENDIAN;
  return inferSyntax(r.bytes(offset, 6, () => ""), 0);
}

export interface MetaResult {
  meta?: FileMeta;
  datasetOffset: number;
  transferSyntaxUid: string;
  syntax: Encoding;
}

export function parseMeta(r: Reader): MetaResult {
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
    const transferSyntaxUid = detectSyntax(r, 0);
    return { datasetOffset: 0, transferSyntaxUid, syntax: encodingOf(transferSyntaxUid) };
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
  r.note = " (File Meta without Transfer Syntax UID: syntax inferred from the data set)";
  const transferSyntaxUid = detectSyntax(r, p);
  return { meta, datasetOffset: p, transferSyntaxUid, syntax: encodingOf(transferSyntaxUid) };
}

/** Reads a header in phases; each phase is synchronous and may throw NeedMore (then call `run` again). */
export class HeaderJob {
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

export function limitsOf(options: ParseOptions): Thresholds {
  return { bulk: options.bulkThreshold ?? 1024, text: options.textBulkThreshold ?? 65536 };
}
