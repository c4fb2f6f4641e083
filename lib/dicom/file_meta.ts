/**
 * The File Meta Information (PS3.10 7.1) at the front of a Part 10 object, read by the one File Meta parser,
 * {@linkcode scanFileMeta}: where the group starts and ends, its elements, and the transfer syntax. Two readers
 * build on it with their own policies:
 * - {@linkcode readFileMeta} labels an object with its transfer syntax while it streams through (retrieve,
 *   STOW): it insists on explicit VR meta elements and on (0002,0010) after a preamble, and accepts a raw data
 *   set only when it starts with a group 0008 element;
 * - `readHeader`/`parseBuffer` (part10.ts) parse the header, accept meta elements written in implicit VR (seen
 *   in the wild) and infer the syntax of a data set whose (0002,0010) is missing.
 *
 * @module
 */

import { formatTag, KNOWN_VRS, LONG_VRS, vrOf } from "./dictionary.ts";
import {
  EXPLICIT_VR_BIG_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
} from "./transfer_syntax.ts";
import { MalformedError } from "../util/errors.ts";

/** The File Meta attributes the retrieve path needs. */
export interface FileMeta {
  /**
   * (0002,0010); when the object has no File Meta, or a File Meta without it, the syntax its data set is
   * written in, inferred from its first element as dcmtk and pydicom do (see {@linkcode inferSyntax}).
   */
  transferSyntaxUid: string;
  /** Whether `transferSyntaxUid` was inferred (no (0002,0010) in the object): a legacy object. */
  inferred: boolean;
  /** (0002,0002), empty when absent. */
  sopClassUid: string;
  /** (0002,0003), empty when absent. */
  sopInstanceUid: string;
  /** Offset of the first byte after the File Meta group (where the dataset starts). */
  end: number;
  /** Whether the object had the preamble and "DICM". */
  hasPreamble: boolean;
}

/** One File Meta element. */
export interface MetaElement {
  /** The tag (group 0002). */
  tag: number;
  /** Its VR (from the dictionary when the group is in implicit VR). */
  vr: string;
  /** Offset of the value. */
  offset: number;
  /** Its length. */
  length: number;
  /** Its value. */
  bytes: Uint8Array;
}

/** What {@linkcode scanFileMeta} found. */
export interface FileMetaScan {
  /** Where "DICM" was: after the 128-byte preamble, at offset 0 (no preamble), or nowhere. */
  dicm: "preamble" | "start" | "none";
  /** Offset of the first meta element (132, 4 or 0); equals `end` when there is no meta group. */
  start: number;
  /** Where the data set starts. */
  end: number;
  /** The group 0002 elements, in order. */
  elements: Map<number, MetaElement>;
  /** (0002,0010) without padding; undefined when absent. */
  transferSyntaxUid?: string;
}

/** Options for {@linkcode scanFileMeta}. */
export interface ScanOptions {
  /** `bytes` is the whole object (otherwise `null` asks for more when they end too soon). */
  complete?: boolean;
  /** Accept meta elements written in implicit VR (their VR from the dictionary); otherwise an invalid VR throws. */
  implicitVr?: boolean;
  /**
   * Strict about the group's end: stop where the group length (0002,0000) says, without looking at the next
   * element, and refuse an object that ends before the group does.
   */
  groupLength?: boolean;
  /** Throws for a malformed meta group (default: a `MalformedError` "Cannot read File Meta of NAME: ..."). */
  fail?: (detail: string) => never;
}

/** File Meta larger than this is treated as corrupt. */
const MAX_META = 64 * 1024;

function trimUid(bytes: Uint8Array): string {
  let end = bytes.length;
  while (end > 0 && (bytes[end - 1] === 0 || bytes[end - 1] === 0x20)) end--;
  return new TextDecoder("latin1").decode(bytes.subarray(0, end));
}

function isUpper(c: number): boolean {
  return c >= 0x41 && c <= 0x5a;
}

function u16(bytes: Uint8Array, at: number): number {
  return bytes[at] | bytes[at + 1] << 8;
}

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 | bytes[at + 3] << 24) >>> 0;
}

function isDicm(bytes: Uint8Array, at: number): boolean {
  return bytes.length >= at + 4 && bytes[at] === 0x44 && bytes[at + 1] === 0x49 && bytes[at + 2] === 0x43 &&
    bytes[at + 3] === 0x4d;
}

/**
 * The one File Meta parser: finds the group (after "DICM" at 128, after "DICM" at 0, at offset 0, or none: a
 * raw data set) and reads its elements (explicit VR little endian; implicit VR too with `implicitVr`) up to
 * the first element of another group. Returns `null` when `bytes` ends too soon to tell (unless `complete`).
 * Throws (see {@linkcode ScanOptions.fail}) for "DICM" missing before a meta group at 132, an invalid VR, a
 * bad length, or a group running past the end of a complete object.
 *
 * @example
 * ```ts
 * import { scanFileMeta } from "./file_meta.ts";
 * scanFileMeta(new Uint8Array(10), "x.dcm"); // null: need more bytes
 * ```
 */
export function scanFileMeta(
  bytes: Uint8Array,
  name: string,
  options: ScanOptions = {},
): FileMetaScan | null {
  const complete = options.complete ?? false;
  const fail = options.fail ??
    ((detail: string): never => {
      throw new MalformedError(`Cannot read File Meta of "${name}": ${detail}`);
    });
  let start: number;
  let dicm: FileMetaScan["dicm"];
  if (isDicm(bytes, 128)) {
    start = 132;
    dicm = "preamble";
  } else if (bytes.length < 132 && !complete) {
    return null; // the preamble may still come, and "DICM" after it (a preamble may start with "DICM")
  } else if (isDicm(bytes, 0)) {
    start = 4;
    dicm = "start";
  } else if (bytes.length >= 8 && u16(bytes, 0) === 0x0002) {
    start = 0;
    dicm = "none";
  } else if (bytes.length >= 140 && u16(bytes, 132) === 0x0002 && isUpper(bytes[136])) {
    return fail(`"DICM" missing at offset 128`);
  } else {
    return { dicm: "none", start: 0, end: 0, elements: new Map() };
  }
  const elements = new Map<number, MetaElement>();
  let p = start;
  let groupEnd = -1;
  while (groupEnd < 0 || p < groupEnd) {
    if (p + 8 > bytes.length) {
      if (!complete) return null;
      // with the group length read strictly, the object must not end inside the group
      if (options.groupLength) return fail(`object ends at offset ${bytes.length}`);
      break;
    }
    if (u16(bytes, p) !== 0x0002) break;
    const tag = (0x0002 << 16 | u16(bytes, p + 2)) >>> 0;
    let vr = String.fromCharCode(bytes[p + 4], bytes[p + 5]);
    let length: number;
    let valueOffset: number;
    if (!isUpper(bytes[p + 4]) || !isUpper(bytes[p + 5])) {
      if (!options.implicitVr) return fail(`invalid VR at offset ${p + 4}`);
      vr = vrOf(tag); // a meta group written in implicit VR: seen in the wild
      length = u32(bytes, p + 4);
      valueOffset = p + 8;
    } else if (LONG_VRS.has(vr) || !KNOWN_VRS.has(vr)) {
      if (p + 12 > bytes.length) {
        if (complete) return fail(`element ${formatTag(tag)} runs past the end at offset ${p}`);
        return null;
      }
      length = u32(bytes, p + 8);
      valueOffset = p + 12;
    } else {
      length = u16(bytes, p + 6);
      valueOffset = p + 8;
    }
    if (length === 0xffffffff || valueOffset + length > MAX_META + 132) {
      return fail(`element ${formatTag(tag)} at offset ${p} has bad length ${length}`);
    }
    if (valueOffset + length > bytes.length) {
      if (complete) {
        return fail(`element ${formatTag(tag)} length ${length} runs past the end at offset ${valueOffset}`);
      }
      return null;
    }
    const value = bytes.subarray(valueOffset, valueOffset + length);
    elements.set(tag, { tag, vr, offset: valueOffset, length, bytes: value });
    if (tag === 0x00020000 && length === 4 && options.groupLength) groupEnd = valueOffset + 4 + u32(value, 0);
    p = valueOffset + length;
  }
  const ts = elements.get(0x00020010);
  return {
    dicm,
    start,
    end: p,
    elements,
    transferSyntaxUid: ts ? trimUid(ts.bytes) || undefined : undefined,
  };
}

/**
 * Reads the File Meta from the first bytes of an object, for labelling it while it streams. Returns `null` when
 * `bytes` is too short to tell (read more and call again; pass `complete` when `bytes` is the whole object).
 * Throws a `SyntaxError` naming `name` and the offset when the object is not DICOM.
 *
 * @example
 * ```ts
 * import { readFileMeta } from "./file_meta.ts";
 * readFileMeta(new Uint8Array(10), "x.dcm"); // null: need more bytes
 * ```
 */
export function readFileMeta(bytes: Uint8Array, name: string, complete = false): FileMeta | null {
  let scan: FileMetaScan | null;
  try {
    scan = scanFileMeta(bytes, name, { complete, groupLength: true });
  } catch (error) {
    // past the largest meta there is to read, more bytes cannot help
    if (!complete && /runs past the end/.test((error as Error).message)) return null;
    throw error;
  }
  if (scan === null) {
    if (bytes.length > MAX_META + 132) {
      throw new MalformedError(`Cannot read File Meta of "${name}": object ends at offset ${bytes.length}`);
    }
    return null;
  }
  const hasPreamble = scan.dicm !== "none";
  if (!hasPreamble && scan.elements.size === 0) {
    // No File Meta: a raw data set is only plausible when it starts with a group 0008 element.
    if (bytes.length < 8) {
      throw new MalformedError(`Cannot read "${name}": ${bytes.length} bytes is too short for DICOM`);
    }
    if (u16(bytes, 0) !== 0x0008 && (bytes[0] << 8 | bytes[1]) !== 0x0008) {
      throw new MalformedError(
        `Cannot read "${name}": not a DICOM Part 10 object ("DICM" missing at offset 128)`,
      );
    }
  }
  // Without (0002,0010) the syntax is inferred from the first element: wait for its first 6 bytes.
  if (scan.transferSyntaxUid === undefined && !complete && bytes.length < scan.end + 6) return null;
  const text = (tag: number) => {
    const el = scan.elements.get(tag);
    return el ? trimUid(el.bytes) : "";
  };
  return {
    transferSyntaxUid: scan.transferSyntaxUid ?? inferSyntax(bytes, scan.end),
    inferred: scan.transferSyntaxUid === undefined,
    sopClassUid: text(0x00020002),
    sopInstanceUid: text(0x00020003),
    end: scan.end,
    hasPreamble,
  };
}

/**
 * The transfer syntax of a data set that says none (no File Meta, or a File Meta without (0002,0010)), as
 * dcmtk and pydicom infer it from the first element at `offset`: big endian when its group reads sensibly
 * only that way, explicit VR when bytes 4–5 are a VR. Implicit VR Little Endian when nothing tells.
 *
 * @example
 * ```ts
 * import { inferSyntax } from "./file_meta.ts";
 * inferSyntax(new Uint8Array([8, 0, 5, 0, 0x43, 0x53, 10, 0]), 0); // "1.2.840.10008.1.2.1"
 * ```
 */
export function inferSyntax(bytes: Uint8Array, offset: number): string {
  if (offset + 6 > bytes.length) return IMPLICIT_VR_LITTLE_ENDIAN;
  const little = u16(bytes, offset);
  const big = (bytes[offset] << 8) | bytes[offset + 1];
  const bigEndian = big < little && big !== 0 && big <= 0x0008 * 0x10;
  const explicit = isUpper(bytes[offset + 4]) && isUpper(bytes[offset + 5]);
  if (bigEndian) return explicit ? EXPLICIT_VR_BIG_ENDIAN : IMPLICIT_VR_LITTLE_ENDIAN;
  return explicit ? EXPLICIT_VR_LITTLE_ENDIAN : IMPLICIT_VR_LITTLE_ENDIAN;
}

/** This server's Implementation Class UID (0002,0012), written in every File Meta it makes. */
export const IMPLEMENTATION_CLASS_UID = "2.25.295698714438566554600410723299326298637";

/** This server's Implementation Version Name (0002,0013). */
export const IMPLEMENTATION_VERSION = "DICOMWEB_S3_1";

/** What {@linkcode writeFileMeta} writes. */
export interface FileMetaFields {
  /** Media Storage SOP Class UID (0002,0002). */
  sopClassUid: string;
  /** Media Storage SOP Instance UID (0002,0003). */
  sopInstanceUid: string;
  /** Transfer Syntax UID (0002,0010). */
  transferSyntaxUid: string;
  /** Source Application Entity Title (0002,0016), when known (DIMSE's calling AE title). */
  sourceAet?: string;
}

/**
 * A preamble, "DICM" and a File Meta group (PS3.10 7.1) in Explicit VR Little Endian: the start of a Part 10
 * file for a data set written in `transferSyntaxUid`.
 *
 * @example
 * ```ts
 * import { readFileMeta, writeFileMeta } from "./file_meta.ts";
 * const head = writeFileMeta({ sopClassUid: "1.2.840.10008.5.1.4.1.1.7", sopInstanceUid: "1.2.3",
 *   transferSyntaxUid: "1.2.840.10008.1.2" });
 * readFileMeta(head, "x.dcm", true)?.sopInstanceUid; // "1.2.3"
 * ```
 */
export function writeFileMeta(fields: FileMetaFields): Uint8Array {
  const ascii = (text: string, pad: number) => {
    const bytes = new TextEncoder().encode(text.length % 2 === 0 ? text : text + String.fromCharCode(pad));
    return bytes;
  };
  const elements: [number, string, Uint8Array][] = [
    [0x0001, "OB", new Uint8Array([0, 1])],
    [0x0002, "UI", ascii(fields.sopClassUid, 0)],
    [0x0003, "UI", ascii(fields.sopInstanceUid, 0)],
    [0x0010, "UI", ascii(fields.transferSyntaxUid, 0)],
    [0x0012, "UI", ascii(IMPLEMENTATION_CLASS_UID, 0)],
    [0x0013, "SH", ascii(IMPLEMENTATION_VERSION, 0x20)],
  ];
  if (fields.sourceAet) elements.push([0x0016, "AE", ascii(fields.sourceAet, 0x20)]);
  const size = (vr: string, length: number) => (vr === "OB" ? 12 : 8) + length;
  const groupLength = elements.reduce((n, [, vr, v]) => n + size(vr, v.length), 0);
  const out = new Uint8Array(128 + 4 + 12 + groupLength);
  const view = new DataView(out.buffer);
  out.set([0x44, 0x49, 0x43, 0x4d], 128);
  out.set([0x02, 0x00, 0x00, 0x00, 0x55, 0x4c, 0x04, 0x00], 132);
  view.setUint32(140, groupLength, true);
  let at = 144;
  for (const [element, vr, value] of elements) {
    view.setUint16(at, 0x0002, true);
    view.setUint16(at + 2, element, true);
    out[at + 4] = vr.charCodeAt(0);
    out[at + 5] = vr.charCodeAt(1);
    if (vr === "OB") {
      view.setUint32(at + 8, value.length, true);
      at += 12;
    } else {
      view.setUint16(at + 6, value.length, true);
      at += 8;
    }
    out.set(value, at);
    at += value.length;
  }
  return out;
}
