/**
 * The DICOM JSON Model (PS3.18 Annex F) from a parsed data set.
 *
 * Bulk data paths: every value that may be served as bulk data is named by a URL-safe path of 8-digit
 * uppercase hex tags and decimal item indexes (0-based) joined by `/`: `7FE00010` for top-level Pixel Data,
 * `00540016/0/00181072` for an attribute inside the first item of a sequence. {@linkcode resolveBulkDataPath}
 * turns a path back into its element (whose `offset`/`length` give the bytes to read).
 *
 * Differences from dcm2json are listed in `tests/testdata/DCM2JSON-DIFFERENCES.md`.
 *
 * @module
 */

import { decodeText } from "./charset.ts";
import { tagToHex } from "./dictionary.ts";
import {
  type DicomDataset,
  type DicomElement,
  elementStrings,
  type Part10Header,
  readNumbers,
  trimValue,
} from "./dataset.ts";

/** One attribute of the DICOM JSON Model. */
export interface DicomJsonAttribute {
  /** The VR. */
  vr: string;
  /** The values. */
  Value?: unknown[];
  /** Where to fetch a large binary value. */
  BulkDataURI?: string;
  /** A small binary value, base64. */
  InlineBinary?: string;
}

/** A data set in the DICOM JSON Model: keys are 8-digit uppercase hex tags. */
export type DicomJson = Record<string, DicomJsonAttribute>;

/** Options for {@linkcode toDicomJson}. */
export interface DicomJsonOptions {
  /**
   * Called for each binary value (OB, OD, OF, OL, OV, OW, UN), for encapsulated pixel data and for every value
   * the parser did not load (bulk). Return a URI to emit `BulkDataURI`; return undefined to inline a loaded
   * value as `InlineBinary`. Values that are neither loaded nor given a URI are emitted with their VR only.
   */
  bulkDataUri?: (path: string, element: DicomElement) => string | undefined;
}

const BINARY_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "UN"]);
const SWAP_WIDTH: Record<string, number> = { OW: 2, OF: 4, OL: 4, OD: 8, OV: 8 };
const NUMERIC_BINARY_VRS = new Set(["US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"]);

/**
 * Converts a data set (or a whole header's data set) to the DICOM JSON Model. File Meta (group 0002) and
 * group length (gggg,0000) elements are left out. Serialise with {@linkcode stringifyDicomJson} to keep keys
 * in ascending order: JavaScript objects put all-digit keys such as "30060020" first.
 *
 * @example
 * ```ts
 * import { parseBuffer } from "./part10.ts";
 * import { toDicomJson } from "./dicom_json.ts";
 * const bytes = new Uint8Array([0x10, 0, 0x20, 0, 4, 0, 0, 0, 0x49, 0x44, 0x31, 0x20]);
 * toDicomJson(parseBuffer(bytes, "a.dcm")); // { "00100020": { vr: "LO", Value: ["ID1"] } }
 * ```
 */
export function toDicomJson(source: Part10Header | DicomDataset, options: DicomJsonOptions = {}): DicomJson {
  const dataset = "dataset" in source ? source.dataset : source;
  return datasetToJson(dataset, "", options);
}

function datasetToJson(dataset: DicomDataset, prefix: string, options: DicomJsonOptions): DicomJson {
  const out: DicomJson = {};
  const elements = [...dataset.elements.values()].sort((a, b) => a.tag - b.tag);
  for (const el of elements) {
    const group = el.tag >>> 16;
    if (group === 0x0002 || (el.tag & 0xffff) === 0) continue;
    const key = tagToHex(el.tag);
    out[key] = attribute(el, dataset, prefix + key, options);
  }
  return out;
}

function attribute(
  el: DicomElement,
  dataset: DicomDataset,
  path: string,
  options: DicomJsonOptions,
): DicomJsonAttribute {
  const vr = el.vr;
  if (el.items) {
    if (el.items.length === 0) return { vr };
    return { vr, Value: el.items.map((item, i) => datasetToJson(item, `${path}/${i}/`, options)) };
  }
  if (el.length === 0) return { vr };
  if (BINARY_VRS.has(vr) || !el.bytes) {
    const uri = options.bulkDataUri?.(path, el);
    if (uri !== undefined) return { vr, BulkDataURI: uri };
    if (!el.bytes) return { vr };
    return { vr, InlineBinary: toBase64(binaryValue(el.bytes, vr, dataset.littleEndian)) };
  }
  const values = attributeValues(el, dataset);
  return values.length ? { vr, Value: values } : { vr };
}

/** The JSON `Value` array of a loaded, non-binary element (empty when it has no values). */
export function attributeValues(el: DicomElement, dataset: DicomDataset): unknown[] {
  const vr = el.vr;
  const bytes = el.bytes;
  if (!bytes || bytes.length === 0) return [];
  if (NUMERIC_BINARY_VRS.has(vr)) {
    return readNumbers(bytes, vr, dataset.littleEndian).map((n) => jsonNumber(n, vr));
  }
  if (vr === "AT") return readNumbers(bytes, vr, dataset.littleEndian).map((n) => tagToHex(Number(n)));
  if (vr === "PN") return personNames(decodeText(bytes, dataset.characterSet, vr));
  const strings = elementStrings(el, dataset);
  if (strings.every((s) => s === "")) return [];
  if (vr === "IS" || vr === "DS") return strings.map((s) => s === "" ? null : decimal(s));
  return strings.map((s) => s === "" ? null : s);
}

function personNames(text: string): unknown[] {
  const values = text.split("\\").map((value) => {
    const groups = trimValue(value, "PN").split("=");
    const name: Record<string, string> = {};
    ["Alphabetic", "Ideographic", "Phonetic"].forEach((key, i) => {
      // Trailing empty components ("A^B^^") are insignificant: PS3.5 6.2.1.1.
      const group = (groups[i] ?? "").replace(/[\^ \0]+$/, "").replace(/^ +/, "");
      if (group !== "") name[key] = group;
    });
    return Object.keys(name).length ? name : null;
  });
  return values.every((v) => v === null) ? [] : values;
}

function jsonNumber(n: number | bigint, vr: string): number | string {
  if (typeof n === "bigint") {
    return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)
      ? Number(n)
      : n.toString();
  }
  if (!Number.isFinite(n)) return String(n);
  if (vr === "FL" || vr === "OF") return shortestFloat32(n);
  return n;
}

/** The shortest decimal that reads back as the same float32 (0.1f gives 0.1, not 0.10000000149011612). */
function shortestFloat32(n: number): number {
  for (let digits = 1; digits <= 9; digits++) {
    const candidate = Number(n.toPrecision(digits));
    if (Math.fround(candidate) === n) return candidate;
  }
  return n;
}

/** IS/DS text → a JSON number when it is a valid number that a double holds exactly, else the text. */
function decimal(text: string): number | string {
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text)) return text;
  const n = Number(text);
  if (!Number.isFinite(n)) return text;
  if (String(n) === text) return n; // the common case, without comparing digits
  return sameDecimal(text, n) ? n : text;
}

/** Whether `text` and `n` denote the same decimal value (digits and exponent compared). */
function sameDecimal(text: string, n: number): boolean {
  return canonical(text) === canonical(n.toExponential()) ||
    canonical(text) === canonical(String(n));
}

function canonical(text: string): string {
  const m = /^([+-]?)(\d*)\.?(\d*)(?:[eE]([+-]?\d+))?$/.exec(text.replace(/^\+/, ""));
  if (!m) return text;
  let digits = m[2] + m[3];
  let exponent = Number(m[4] ?? 0) + m[2].length;
  const lead = digits.length - digits.replace(/^0+/, "").length;
  digits = digits.slice(lead);
  exponent -= lead;
  digits = digits.replace(/0+$/, "");
  if (digits === "") return "0";
  return `${m[1]}${digits}e${exponent}`;
}

/** A copy in little-endian byte order for OW/OF/OL/OD/OV values of big-endian data sets. */
export function toLittleEndian(bytes: Uint8Array, vr: string, littleEndian: boolean): Uint8Array {
  const width = SWAP_WIDTH[vr];
  if (littleEndian || !width) return bytes;
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i + width <= bytes.length; i += width) {
    for (let k = 0; k < width; k++) out[i + k] = bytes[i + width - 1 - k];
  }
  return out;
}

/**
 * A binary value as DICOM JSON and bulk data carry it: little endian ({@linkcode toLittleEndian}) and of even
 * length. A value stored with an odd length (which PS3.5 7.1.1 forbids) gets the trailing zero byte its writer
 * owed, as dcm2json writes it (PS3.5 6.2: OB and UN are padded with 00H).
 */
export function binaryValue(bytes: Uint8Array, vr: string, littleEndian: boolean): Uint8Array {
  const value = toLittleEndian(bytes, vr, littleEndian);
  if (value.length % 2 === 0) return value;
  const padded = new Uint8Array(value.length + 1);
  padded.set(value);
  return padded;
}

/** Base64 of bytes (chunked to stay clear of argument-count limits). */
export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/**
 * Finds the element a bulk data path names (see the module docs); undefined when the path is malformed or
 * names nothing.
 */
export function resolveBulkDataPath(dataset: DicomDataset, path: string): DicomElement | undefined {
  return resolveBulkData(dataset, path)?.element;
}

/**
 * Like {@linkcode resolveBulkDataPath}, with the data set (item) that holds the element: its byte order is the
 * value's (an item of a UN sequence is little endian in a big endian object).
 */
export function resolveBulkData(
  dataset: DicomDataset,
  path: string,
): { element: DicomElement; dataset: DicomDataset } | undefined {
  const parts = path.split("/");
  let current: DicomDataset | undefined = dataset;
  for (let i = 0; i < parts.length; i += 2) {
    if (!current || !/^[0-9A-F]{8}$/.test(parts[i])) return undefined;
    const el: DicomElement | undefined = current.elements.get(parseInt(parts[i], 16));
    if (!el) return undefined;
    if (i + 1 === parts.length) return { element: el, dataset: current };
    if (!/^\d+$/.test(parts[i + 1])) return undefined;
    current = el.items?.[Number(parts[i + 1])];
  }
  return undefined;
}

/**
 * JSON text of a DICOM JSON value (a data set or an array of them) with data set keys in ascending tag order
 * (other objects keep their key order).
 */
export function stringifyDicomJson(value: unknown): string {
  if (Array.isArray(value)) {
    return `[${value.map((v) => v === undefined ? "null" : stringifyDicomJson(v)).join(",")}]`;
  }
  if (value !== null && typeof value === "object") {
    const record = value as Record<string, unknown>;
    let keys = Object.keys(record).filter((k) => record[k] !== undefined);
    if (keys.every((k) => /^[0-9A-F]{8}$/.test(k))) keys = keys.sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${stringifyDicomJson(record[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}
