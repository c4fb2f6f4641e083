/**
 * Identifiers of C-FIND, C-MOVE and C-GET (PS3.4 C.4): small data sets read from and written to bytes in the
 * negotiated transfer syntax (Implicit VR Little Endian, Explicit VR Little Endian or Explicit VR Big Endian),
 * sequences included. Text is decoded with the identifier's Specific Character Set; responses are written from
 * the catalog's DICOM JSON, in UTF-8 (`ISO_IR 192`) when a value is not ASCII.
 *
 * @module
 */

import { decodeText } from "../dicom/charset.ts";
import type { DicomJson, DicomJsonAttribute } from "../dicom/dicom_json.ts";
import { vrOf } from "../dicom/dictionary.ts";
import {
  EXPLICIT_VR_BIG_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
} from "../dicom/transfer_syntax.ts";
import { MalformedError } from "../util/errors.ts";

/** The transfer syntaxes identifiers may use here. */
export const IDENTIFIER_SYNTAXES: readonly string[] = [
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
];

/** One element of an identifier. */
export interface IdElement {
  /** The tag. */
  tag: number;
  /** Its VR (from the dictionary in implicit VR). */
  vr: string;
  /** The value as text (strings, numbers joined by `\`); "" when empty. */
  value: string;
  /** Sequence items (SQ only). */
  items?: IdElement[][];
}

const LONG = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
const UNDEFINED = 0xffffffff;

/**
 * Reads an identifier in `transferSyntax`. Throws a `MalformedError` for elements that run past the end,
 * unknown syntaxes, and undefined lengths outside sequences.
 *
 * @example
 * ```ts
 * import { encodeIdentifier, parseIdentifier } from "./identifier.ts";
 * const bytes = encodeIdentifier([{ tag: 0x00100020, vr: "LO", value: "P1" }], "1.2.840.10008.1.2");
 * parseIdentifier(bytes, "1.2.840.10008.1.2")[0].value; // "P1"
 * ```
 */
export function parseIdentifier(bytes: Uint8Array, transferSyntax: string): IdElement[] {
  if (!IDENTIFIER_SYNTAXES.includes(transferSyntax)) {
    throw new MalformedError(`Cannot read an identifier in transfer syntax ${transferSyntax}`);
  }
  const explicit = transferSyntax !== IMPLICIT_VR_LITTLE_ENDIAN;
  const little = transferSyntax !== EXPLICIT_VR_BIG_ENDIAN;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const state = { at: 0, charsets: [] as string[] };
  const elements = readElements(bytes, view, state, bytes.length, { explicit, little }, 0);
  return elements;
}

interface Encoding {
  explicit: boolean;
  little: boolean;
}

function readElements(
  bytes: Uint8Array,
  view: DataView,
  state: { at: number; charsets: string[] },
  end: number,
  enc: Encoding,
  depth: number,
  untilDelimiter = false,
): IdElement[] {
  if (depth > 16) throw new MalformedError("Identifier sequences nested more than 16 deep");
  const out: IdElement[] = [];
  while (state.at < end) {
    if (state.at + 8 > end) throw new MalformedError(`Identifier element cut short at offset ${state.at}`);
    const group = view.getUint16(state.at, enc.little);
    const element = view.getUint16(state.at + 2, enc.little);
    const tag = (group << 16 | element) >>> 0;
    if (tag === 0xfffee00d) { // item delimitation
      state.at += 8;
      if (untilDelimiter) return out;
      throw new MalformedError("Item delimiter outside an item of undefined length");
    }
    let vr: string;
    let length: number;
    let header: number;
    if (enc.explicit && group !== 0xfffe) {
      vr = String.fromCharCode(bytes[state.at + 4], bytes[state.at + 5]);
      if (!/^[A-Z]{2}$/.test(vr)) throw new MalformedError(`Invalid VR at offset ${state.at + 4}`);
      if (LONG.has(vr)) {
        if (state.at + 12 > end) {
          throw new MalformedError(`Identifier element cut short at offset ${state.at}`);
        }
        length = view.getUint32(state.at + 8, enc.little);
        header = 12;
      } else {
        length = view.getUint16(state.at + 6, enc.little);
        header = 8;
      }
    } else {
      vr = group === 0xfffe ? "" : vrOf(tag);
      length = view.getUint32(state.at + 4, enc.little);
      header = 8;
    }
    state.at += header;
    if (vr === "SQ" || (length === UNDEFINED && (vr === "UN" || !enc.explicit))) {
      out.push({ tag, vr: "SQ", value: "", items: readItems(bytes, view, state, end, enc, depth, length) });
      continue;
    }
    if (length === UNDEFINED) throw new MalformedError(`Undefined length on ${vr} element at ${state.at}`);
    if (state.at + length > end) {
      throw new MalformedError(`Identifier element runs past the end at ${state.at}`);
    }
    const value = bytes.subarray(state.at, state.at + length);
    state.at += length;
    if (group === 0xfffe) {
      throw new MalformedError(`Unexpected item tag at offset ${state.at - length - header}`);
    }
    const text = valueText(value, vr, state.charsets, enc.little);
    if (tag === 0x00080005) state.charsets = text.split("\\");
    out.push({ tag, vr, value: text });
  }
  if (untilDelimiter) throw new MalformedError("Item of undefined length without its delimiter");
  return out;
}

function readItems(
  bytes: Uint8Array,
  view: DataView,
  state: { at: number; charsets: string[] },
  end: number,
  enc: Encoding,
  depth: number,
  length: number,
): IdElement[][] {
  const stop = length === UNDEFINED ? end : state.at + length;
  if (stop > end) throw new MalformedError(`Sequence runs past the end at offset ${state.at}`);
  const items: IdElement[][] = [];
  while (state.at < stop) {
    if (state.at + 8 > stop) throw new MalformedError(`Item header cut short at offset ${state.at}`);
    const tag = (view.getUint16(state.at, enc.little) << 16 | view.getUint16(state.at + 2, enc.little)) >>> 0;
    const itemLength = view.getUint32(state.at + 4, enc.little);
    state.at += 8;
    if (tag === 0xfffee0dd) {
      if (length !== UNDEFINED) {
        throw new MalformedError("Sequence delimiter in a sequence of defined length");
      }
      return items;
    }
    if (tag !== 0xfffee000) throw new MalformedError(`Expected an item at offset ${state.at - 8}`);
    if (itemLength === UNDEFINED) items.push(readElements(bytes, view, state, stop, enc, depth + 1, true));
    else {
      const itemEnd = state.at + itemLength;
      if (itemEnd > stop) throw new MalformedError(`Item runs past its sequence at offset ${state.at}`);
      items.push(readElements(bytes, view, state, itemEnd, enc, depth + 1));
      state.at = itemEnd;
    }
  }
  if (length === UNDEFINED) throw new MalformedError("Sequence of undefined length without its delimiter");
  return items;
}

const NUMBERS: Record<string, [number, (v: DataView, at: number, little: boolean) => number | bigint]> = {
  US: [2, (v, at, l) => v.getUint16(at, l)],
  SS: [2, (v, at, l) => v.getInt16(at, l)],
  UL: [4, (v, at, l) => v.getUint32(at, l)],
  SL: [4, (v, at, l) => v.getInt32(at, l)],
  FL: [4, (v, at, l) => v.getFloat32(at, l)],
  FD: [8, (v, at, l) => v.getFloat64(at, l)],
  AT: [4, (v, at, l) => (v.getUint16(at, l) << 16 | v.getUint16(at + 2, l)) >>> 0],
};

function valueText(value: Uint8Array, vr: string, charsets: string[], little: boolean): string {
  const number = NUMBERS[vr];
  if (number) {
    const [width, read] = number;
    const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
    const out: string[] = [];
    for (let at = 0; at + width <= value.length; at += width) out.push(String(read(view, at, little)));
    return out.join("\\");
  }
  if (["OB", "OD", "OF", "OL", "OV", "OW", "UN"].includes(vr)) return "";
  const text = decodeText(value, charsets, vr);
  return vr === "UI" ? text.replace(/[\0 ]+$/, "") : text.replace(/[\0 ]+$/, "").replace(/^ +/, "");
}

// ---------------------------------------------------------------------------------------------------
// Writing

const utf8 = new TextEncoder();

/** Whether writing `elements` needs UTF-8 (some text is not ASCII). */
export function needsUtf8(elements: readonly IdElement[]): boolean {
  return elements.some((e) =>
    /[^\u0020-\u007e]/.test(e.value.replace(/[\t\r\n\f]/g, "")) ||
    (e.items?.some((item) => needsUtf8(item)) ?? false)
  );
}

/** Writes `elements` (sorted by tag here) in `transferSyntax` (one of {@linkcode IDENTIFIER_SYNTAXES}). */
export function encodeIdentifier(elements: readonly IdElement[], transferSyntax: string): Uint8Array {
  const enc = {
    explicit: transferSyntax !== IMPLICIT_VR_LITTLE_ENDIAN,
    little: transferSyntax !== EXPLICIT_VR_BIG_ENDIAN,
  };
  const parts: Uint8Array[] = [];
  writeElements(elements, enc, parts);
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function writeElements(elements: readonly IdElement[], enc: Encoding, parts: Uint8Array[]): void {
  for (const e of [...elements].sort((a, b) => a.tag - b.tag)) {
    if (e.vr === "SQ") {
      const inner: Uint8Array[] = [];
      for (const item of e.items ?? []) {
        const body: Uint8Array[] = [];
        writeElements(item, enc, body);
        const size = body.reduce((n, p) => n + p.length, 0);
        inner.push(elementHeader(0xfffee000, "", size, enc), ...body);
      }
      const size = inner.reduce((n, p) => n + p.length, 0);
      parts.push(elementHeader(e.tag, "SQ", size, enc), ...inner);
      continue;
    }
    let value = valueBytes(e, enc.little);
    if (enc.explicit && !LONG.has(e.vr) && value.length > 0xffff) value = fitShortLength(value, e.vr);
    parts.push(elementHeader(e.tag, e.vr, value.length, enc), value);
  }
}

/**
 * A value cut to fit the 16-bit length of an explicit VR element: whole numbers for binary VRs, whole values
 * of a multi-valued text (else whole UTF-8 characters), padded to even length. A stored value can be longer
 * than its VR allows, Latin-1 text grows when written in UTF-8, and a C-MOVE's Failed SOP Instance UID List
 * can name thousands of UIDs: the response sends what fits rather than failing.
 */
function fitShortLength(value: Uint8Array, vr: string): Uint8Array {
  const width = NUMBERS[vr]?.[0];
  if (width) return value.subarray(0, Math.floor(0xffff / width) * width);
  let end = 0xfffe;
  while (end > 0 && (value[end] & 0xc0) === 0x80) end--; // not inside a UTF-8 sequence
  const separator = value.lastIndexOf(0x5c, end); // whole values of a multi-valued one (a UID list)
  if (separator > 0) end = separator;
  if (end % 2 === 0) return value.subarray(0, end);
  const out = new Uint8Array(end + 1);
  out.set(value.subarray(0, end));
  out[end] = vr === "UI" ? 0 : 0x20;
  return out;
}

function elementHeader(tag: number, vr: string, length: number, enc: Encoding): Uint8Array {
  const item = tag >>> 16 === 0xfffe;
  const long = !enc.explicit || item || LONG.has(vr);
  const out = new Uint8Array(enc.explicit && !item && LONG.has(vr) ? 12 : 8);
  const view = new DataView(out.buffer);
  view.setUint16(0, tag >>> 16, enc.little);
  view.setUint16(2, tag & 0xffff, enc.little);
  if (!enc.explicit || item) view.setUint32(4, length, enc.little);
  else {
    out[4] = vr.charCodeAt(0);
    out[5] = vr.charCodeAt(1);
    if (long) view.setUint32(8, length, enc.little);
    else {
      if (length > 0xffff) {
        throw new RangeError(`Value of ${tag.toString(16)} too long for ${vr}: ${length} bytes`);
      }
      view.setUint16(6, length, enc.little);
    }
  }
  return out;
}

function valueBytes(e: IdElement, little: boolean): Uint8Array {
  const number = NUMBERS[e.vr];
  if (number) {
    const values = e.value === "" ? [] : e.value.split("\\").map(Number);
    const [width] = number;
    const out = new Uint8Array(values.length * width);
    const view = new DataView(out.buffer);
    values.forEach((v, i) => {
      const at = i * width;
      if (e.vr === "US") view.setUint16(at, v, little);
      else if (e.vr === "SS") view.setInt16(at, v, little);
      else if (e.vr === "UL") view.setUint32(at, v, little);
      else if (e.vr === "SL") view.setInt32(at, v, little);
      else if (e.vr === "FL") view.setFloat32(at, v, little);
      else if (e.vr === "FD") view.setFloat64(at, v, little);
      else {
        view.setUint16(at, v >>> 16, little);
        view.setUint16(at + 2, v & 0xffff, little);
      }
    });
    return out;
  }
  if (["OB", "OD", "OF", "OL", "OV", "OW", "UN"].includes(e.vr)) return new Uint8Array(0);
  const text = utf8.encode(e.value);
  if (text.length % 2 === 0) return text;
  const out = new Uint8Array(text.length + 1);
  out.set(text);
  out[text.length] = e.vr === "UI" ? 0 : 0x20;
  return out;
}

// ---------------------------------------------------------------------------------------------------
// From DICOM JSON

/**
 * The identifier element for `tag` from a DICOM JSON attribute (absent: empty with `vr`). PN values join their
 * component groups with `=`; binary values and BulkDataURIs are left empty.
 */
export function elementFromJson(
  tag: number,
  vr: string,
  attribute: DicomJsonAttribute | undefined,
): IdElement {
  if (attribute === undefined) return { tag, vr, value: "", ...(vr === "SQ" ? { items: [] } : {}) };
  const actual = attribute.vr ?? vr;
  if (actual === "SQ") {
    const items = (attribute.Value ?? []) as DicomJson[];
    return { tag, vr: "SQ", value: "", items: items.map((item) => elementsFromJson(item)) };
  }
  const values = (attribute.Value ?? []).map((v) => {
    if (v === null || v === undefined) return "";
    if (actual === "PN" && typeof v === "object") {
      const pn = v as { Alphabetic?: string; Ideographic?: string; Phonetic?: string };
      return [pn.Alphabetic ?? "", pn.Ideographic ?? "", pn.Phonetic ?? ""].join("=").replace(/=+$/, "");
    }
    if (actual === "AT" && typeof v === "string") return String(parseInt(v, 16));
    return String(v);
  });
  return { tag, vr: actual, value: values.join("\\") };
}

/** Every attribute of a DICOM JSON data set as identifier elements. */
export function elementsFromJson(json: DicomJson): IdElement[] {
  return Object.entries(json).map(([key, attribute]) =>
    elementFromJson(parseInt(key, 16) >>> 0, attribute.vr, attribute)
  );
}
