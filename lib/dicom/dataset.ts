/**
 * A parsed DICOM data set as the Part 10 reader returns it: elements by tag with their VR, offset, length and
 * (when loaded) bytes, nested items and encapsulated fragments, the File Meta, the Pixel Data's position; and
 * the accessors that read values from it (strings, numbers, trimmed per VR).
 *
 * @module
 */

import { decodeText } from "./charset.ts";
import { SWAP_WIDTH } from "./dictionary.ts";

/** One fragment of encapsulated pixel data: where its bytes are (after the 8-byte item header). */
export interface Fragment {
  /** Offset of the fragment's value in the object. */
  offset: number;
  /** Its length. */
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
  /** (0002,0010) Transfer Syntax UID. */
  transferSyntaxUid?: string;
  /** (0002,0002) Media Storage SOP Class UID. */
  mediaStorageSopClassUid?: string;
  /** (0002,0003) Media Storage SOP Instance UID. */
  mediaStorageSopInstanceUid?: string;
  /** (0002,0012) Implementation Class UID. */
  implementationClassUid?: string;
  /** (0002,0013) Implementation Version Name. */
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
  /** The tag (group << 16 | element). */
  tag: number;
  /** Its VR. */
  vr: string;
  /** Offset of the value (native) or of the first item header (encapsulated). */
  offset: number;
  /** Value length; -1 when encapsulated. */
  length: number;
  /** Whether the pixel data is encapsulated (fragments). */
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
  /** The object's name (its key), for messages. */
  name: string;
  /** Size of the address space offsets refer to: the object size, or meta + inflated length if deflated. */
  size: number;
  /** File Meta Information; undefined for a raw data set. */
  meta?: FileMeta;
  /** The transfer syntax the data set was read with (detected when the meta or its (0002,0010) is missing). */
  transferSyntaxUid: string;
  /** Where the main data set starts. */
  datasetOffset: number;
  /** The data set's byte order. */
  littleEndian: boolean;
  /** Whether the data set has explicit VRs. */
  explicitVR: boolean;
  /** Deflated: offsets are into `inflated`, ranged reads of the object cannot serve values. */
  deflated: boolean;
  /** For deflated objects: the File Meta bytes followed by the inflated data set. */
  inflated?: Uint8Array;
  /** The main data set (values past the bulk thresholds not loaded). */
  dataset: DicomDataset;
  /** Where the Pixel Data is, if there is any. */
  pixelData?: PixelDataInfo;
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

/** The DataView getter of each numeric VR (each value is `SWAP_WIDTH[vr]` bytes). */
const GETTER: Readonly<
  Record<
    string,
    | "getUint16"
    | "getInt16"
    | "getUint32"
    | "getInt32"
    | "getFloat32"
    | "getFloat64"
    | "getBigInt64"
    | "getBigUint64"
  >
> = {
  US: "getUint16",
  OW: "getUint16",
  SS: "getInt16",
  UL: "getUint32",
  OL: "getUint32",
  SL: "getInt32",
  FL: "getFloat32",
  OF: "getFloat32",
  FD: "getFloat64",
  OD: "getFloat64",
  SV: "getBigInt64",
  UV: "getBigUint64",
  OV: "getBigUint64",
};

/** Decodes a binary numeric value: US, SS, UL, SL, FL, FD, OF, OD, OL, OW (as uint16), AT (as uint32), SV, UV. */
export function readNumbers(bytes: Uint8Array, vr: string, littleEndian: boolean): (number | bigint)[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (vr === "AT") {
    const out: number[] = [];
    for (let at = 0; at + 4 <= bytes.length; at += 4) {
      out.push((view.getUint16(at, littleEndian) << 16 | view.getUint16(at + 2, littleEndian)) >>> 0);
    }
    return out;
  }
  const getter = GETTER[vr];
  if (!getter) throw new TypeError(`Cannot read numbers of VR ${vr}`);
  const width = SWAP_WIDTH[vr];
  const out: (number | bigint)[] = [];
  for (let at = 0; at + width <= bytes.length; at += width) out.push(view[getter](at, littleEndian));
  return out;
}
