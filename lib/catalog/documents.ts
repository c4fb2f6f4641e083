/**
 * The documents the catalog keeps: the DICOM JSON of an instance as stored (binary values inline up to a
 * threshold, BulkDataURIs relative to the instance), its text form, the indexed columns taken from it, and
 * the checks that a key follows the layout. Shared by every catalog backend.
 *
 * @module
 */

import { type DicomJson, stringifyDicomJson, toDicomJson } from "../dicom/dicom_json.ts";
import { tagToHex } from "../dicom/dictionary.ts";
import { levelOf, TAGS } from "./qido_query.ts";
import type { InstanceUids } from "../dicom/uid.ts";
import type { Part10Header } from "../dicom/dataset.ts";
import { normalizeDate, normalizeTime, pnText } from "./matching.ts";

/** Top-level (Float/Double Float) Pixel Data: always a BulkDataURI. */
const PIXEL_DATA_PATHS = new Set(["7FE00008", "7FE00009", "7FE00010"]);

/**
 * The DICOM JSON of a header as the catalog stores it: binary values up to `bulkThreshold` bytes inline, larger
 * ones, Pixel Data and values not loaded as BulkDataURIs relative to the instance URL (`bulkdata/{path}`), the
 * same split the metadata route makes.
 */
export function headerJson(header: Part10Header, bulkThreshold: number): DicomJson {
  return toDicomJson(header, {
    bulkDataUri: (path, el) =>
      el.bytes && el.bytes.byteLength <= bulkThreshold && !PIXEL_DATA_PATHS.has(path)
        ? undefined
        : `bulkdata/${path}`,
  });
}

/**
 * The text of an instance's DICOM JSON as the catalog stores it: exactly what {@linkcode stringifyDicomJson}
 * writes (data set keys ascending), faster, as the catalog writes one per stored instance. Only data sets
 * need their keys sorted (JavaScript puts all-digit keys such as "30060020" first), so every attribute that
 * holds none goes through one `JSON.stringify`.
 *
 * @example
 * ```ts
 * import { documentText } from "./documents.ts";
 * documentText({ "30060020": { vr: "SQ" }, "00100020": { vr: "LO", Value: ["ID1"] } });
 * // '{"00100020":{"vr":"LO","Value":["ID1"]},"30060020":{"vr":"SQ"}}'
 * ```
 */
export function documentText(json: DicomJson): string {
  // JSON.stringify keeps the keys' own order: when that is ascending everywhere, it writes the same text
  if (inAscendingOrder(json)) return JSON.stringify(json);
  let text = "";
  for (const key of Object.keys(json).sort()) {
    const attribute = json[key];
    if (attribute === undefined) continue;
    const items = attribute.vr !== "PN" &&
      attribute.Value?.some((value) => typeof value === "object" && value !== null);
    text += `${text === "" ? "" : ","}"${key}":${
      items ? stringifyDicomJson(attribute) : JSON.stringify(attribute)
    }`;
  }
  return `{${text}}`;
}

/**
 * Whether the keys of `json` and of every data set in it come in ascending order (JavaScript's own order:
 * all-digit keys such as "30060020" first, then the others as they were added).
 */
function inAscendingOrder(json: DicomJson): boolean {
  let previous = "";
  for (const key of Object.keys(json)) {
    if (key <= previous) return false;
    previous = key;
    const attribute = json[key];
    if (attribute?.vr === "PN" || !attribute?.Value) continue;
    for (const value of attribute.Value) {
      if (typeof value === "object" && value !== null && !inAscendingOrder(value as DicomJson)) return false;
    }
  }
  return true;
}

const BULK_KEY = '"BulkDataURI":"';

/**
 * Makes the relative BulkDataURIs of stored JSON text absolute. `instanceUrl` is the instance's absolute URL
 * (no trailing slash); it must not contain `"` or `\` (URLs built from UIDs and an encoded AET never do).
 *
 * @example
 * ```ts
 * import { resolveBulkDataUris } from "./documents.ts";
 * resolveBulkDataUris('{"7FE00010":{"vr":"OW","BulkDataURI":"bulkdata/7FE00010"}}', "http://h/aets/A/studies/1/series/2/instances/3");
 * // '{"7FE00010":{"vr":"OW","BulkDataURI":"http://h/aets/A/studies/1/series/2/instances/3/bulkdata/7FE00010"}}'
 * ```
 */
export function resolveBulkDataUris(json: string, instanceUrl: string): string {
  return json.replaceAll(BULK_KEY, `${BULK_KEY}${instanceUrl}/`);
}

/** The UIDs and indexed instance columns of one instance's DICOM JSON (see {@linkcode instanceColumns}). */
export interface InstanceColumns {
  /** Study Instance UID. */
  study?: string;
  /** Series Instance UID. */
  series?: string;
  /** SOP Instance UID. */
  sop?: string;
  /** SOP Class UID. */
  sopClass?: string;
  /** Instance Number. */
  instanceNumber?: number;
}

/** The columns and documents the catalog derives from one instance's DICOM JSON. */
export interface InstanceRecord extends InstanceColumns {
  /** Study and patient attributes (study level, see `levelOf`). */
  studyJson: DicomJson;
  /** Series attributes. */
  seriesJson: DicomJson;
  /** The study columns taken from the same document. */
  studyColumns: StudyColumns;
  /** The series columns taken from the same document. */
  seriesColumns: SeriesColumns;
}

/** Indexed study columns (folded / normalized for matching and ordering). */
export interface StudyColumns {
  /** Study Date, normalized. */
  date?: string;
  /** Study Time, normalized (start of a range). */
  time?: string;
  /** Study Time, end of its range. */
  timeHigh?: string;
  /** Accession Number. */
  accession?: string;
  /** Referring Physician's Name, folded. */
  referring?: string;
  /** Patient's Name, folded. */
  patientName?: string;
  /** Patient ID. */
  patientId?: string;
  /** Study ID. */
  studyId?: string;
}

/** Indexed series columns. */
export interface SeriesColumns {
  /** Modality. */
  modality?: string;
  /** Series Number. */
  number?: number;
  /** Performed Procedure Step Start Date, normalized. */
  ppsDate?: string;
  /** Performed Procedure Step Start Time (start of a range). */
  ppsTime?: string;
  /** Performed Procedure Step Start Time, end of its range. */
  ppsTimeHigh?: string;
}

/** The first value of a top-level attribute as text, or undefined. */
export function firstValue(json: DicomJson, tag: number): string | undefined {
  const value = json[tagToHex(tag)]?.Value?.[0];
  if (value === null || value === undefined) return undefined;
  if (typeof value === "object") return undefined;
  const text = String(value);
  return text === "" ? undefined : text;
}

function integer(json: DicomJson, tag: number): number | undefined {
  const text = firstValue(json, tag);
  const n = text === undefined ? NaN : Number(text);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** All PN values of an attribute folded (see `normalizePn`) and joined by `\`. */
function names(json: DicomJson, tag: number): string | undefined {
  const values = json[tagToHex(tag)]?.Value ?? [];
  const text = values.map(pnText).filter((v) => v !== "").join("\\");
  return text === "" ? undefined : text;
}

/**
 * The UIDs and indexed instance columns of an instance's DICOM JSON: the part of {@linkcode instanceRecord}
 * every instance needs (the study and series parts only matter for a series' representative).
 */
export function instanceColumns(json: DicomJson): InstanceColumns {
  return {
    study: firstValue(json, TAGS.StudyInstanceUID),
    series: firstValue(json, TAGS.SeriesInstanceUID),
    sop: firstValue(json, TAGS.SOPInstanceUID),
    sopClass: firstValue(json, TAGS.SOPClassUID),
    instanceNumber: integer(json, TAGS.InstanceNumber),
  };
}

/** Splits an instance's DICOM JSON into study, series and instance parts and the indexed columns. */
export function instanceRecord(json: DicomJson): InstanceRecord {
  const studyJson: DicomJson = {};
  const seriesJson: DicomJson = {};
  for (const [key, attribute] of Object.entries(json)) {
    const level = levelOf(parseInt(key, 16) >>> 0);
    if (level === "study") studyJson[key] = attribute;
    else if (level === "series") seriesJson[key] = attribute;
  }
  return {
    ...instanceColumns(json),
    studyJson,
    seriesJson,
    studyColumns: studyColumns(studyJson),
    seriesColumns: seriesColumns(seriesJson),
  };
}

/** The indexed study columns of study-level JSON. */
export function studyColumns(json: DicomJson): StudyColumns {
  const time = firstValue(json, TAGS.StudyTime);
  return {
    date: normalizeDate(firstValue(json, TAGS.StudyDate) ?? ""),
    time: time === undefined ? undefined : normalizeTime(time),
    timeHigh: time === undefined ? undefined : normalizeTime(time, true),
    accession: firstValue(json, TAGS.AccessionNumber),
    referring: names(json, TAGS.ReferringPhysicianName),
    patientName: names(json, TAGS.PatientName),
    patientId: firstValue(json, TAGS.PatientID),
    studyId: firstValue(json, TAGS.StudyID),
  };
}

/** The indexed series columns of series-level JSON. */
export function seriesColumns(json: DicomJson): SeriesColumns {
  const time = firstValue(json, TAGS.PerformedProcedureStepStartTime);
  return {
    modality: firstValue(json, TAGS.Modality),
    number: integer(json, TAGS.SeriesNumber),
    ppsDate: normalizeDate(firstValue(json, TAGS.PerformedProcedureStepStartDate) ?? ""),
    ppsTime: time === undefined ? undefined : normalizeTime(time),
    ppsTimeHigh: time === undefined ? undefined : normalizeTime(time, true),
  };
}

/** Why a file's UIDs do not fit its key, or undefined when they do. */
export function keyMismatch(
  uids: InstanceUids,
  record: Pick<InstanceRecord, "study" | "series" | "sop">,
): string | undefined {
  const checks: [string, string | undefined, string][] = [
    ["StudyInstanceUID", record.study, uids.study],
    ["SeriesInstanceUID", record.series, uids.series],
    ["SOPInstanceUID", record.sop, uids.instance],
  ];
  for (const [name, found, expected] of checks) {
    if (found === undefined) return `The file has no ${name}: the key says ${expected}`;
    if (found !== expected) return `The file's ${name} ${found} does not match the key (${expected})`;
  }
  return undefined;
}

/** The reason recorded for keys outside the layout. */
export const LAYOUT_REASON =
  "Key is not {StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm with valid UIDs";
