/**
 * QIDO-RS query parameters (PS3.18 8.3.4) and the matching rules they follow (PS3.4 C.2.2.2; the matching
 * itself is in matching.ts), independent of any database.
 *
 * {@linkcode parseSearch} turns a query string into a {@linkcode SearchQuery}: filters with parsed matchers,
 * the return keys, `fuzzymatching`, `limit` and `offset`. Catalog backends translate the filters on their
 * indexed columns into their own query language and evaluate the rest with {@linkcode matchDataset} on stored
 * DICOM JSON, so every backend matches exactly the same way.
 *
 * Matching rules implemented here:
 * - empty value: universal matching (matches everything; the attribute is returned);
 * - `""` (two double quotes): matches entities whose attribute is missing or has no value;
 * - single value: exact and case-sensitive, except PN (below), DA/TM/DT (a single date or time is the range of
 *   everything it denotes: `1230` is 12:30:00–12:30:59.999999) and numbers (numeric equality);
 * - `*` and `?` wildcards (not on UI, DA, TM, DT or numbers: 400);
 * - lists `a,b` or `a\b` on UI and CS;
 * - ranges `a-b`, `a-`, `-b` on DA, TM and DT;
 * - sequences: dotted paths (`00081032.00080100`, `ProcedureCodeSequence.CodeValue`) match when any item matches;
 * - multi-valued attributes match when any value matches.
 *
 * Person names always match case- and accent-insensitively (PS3.4 C.2.2.2.1 leaves PN matching to the
 * implementation), against each component group (alphabetic, ideographic, phonetic) or, when the query has `=`,
 * the whole name. `fuzzymatching=true` also matches per name component with an implicit trailing `*`:
 * `joh` finds `Doe^John`, `doe^jo` finds `DOE^JOHN^M`, and `*BRA*` finds any name containing "bra".
 *
 * @module
 */

import { lookupKeyword, lookupTag, tagToHex } from "../dicom/dictionary.ts";
import { isValidUid } from "../dicom/uid.ts";
import { OutOfRangeError } from "../util/errors.ts";
import { normalizeDate, normalizeDateTime, normalizePn, normalizeTime } from "./matching.ts";

/** A QIDO-RS query level. */
export type Level = "study" | "series" | "instance";

/** How one attribute is matched. Bounds of ranges are normalized (see {@linkcode normalizeDate} and friends). */
export type Matcher =
  | { kind: "universal" }
  | { kind: "empty" }
  | { kind: "single"; value: string }
  | { kind: "wildcard"; pattern: string }
  | { kind: "list"; values: string[] }
  | { kind: "range"; from?: string; to?: string }
  | { kind: "number"; value: number };

/** One matching key of a query. */
export interface Filter {
  /** The query parameter name as the client wrote it (for messages). */
  param: string;
  /** Tags from the top-level attribute down into sequence items. */
  path: number[];
  /** `path` as 8-hex tags joined by `.`, e.g. `"00100010"` or `"00081032.00080100"`. */
  key: string;
  /** VR of the last attribute of the path. */
  vr: string;
  /** The level the top-level attribute belongs to. */
  level: Level;
  /** How the value matches. */
  matcher: Matcher;
  /** Fuzzy person name matching (only meaningful for PN). */
  fuzzy: boolean;
}

/** A parsed QIDO-RS query. */
export interface SearchQuery {
  /** The level searched. */
  level: Level;
  /** The attribute filters. */
  filters: Filter[];
  /** Top-level tags asked for with `includefield` (and the matching keys), beyond the defaults. */
  include: number[];
  /** `includefield=all`. */
  includeAll: boolean;
  /** `fuzzymatching=true`: person names match fuzzily. */
  fuzzy: boolean;
  /** The page size asked for (cut to the maximum). */
  limit: number;
  /** Results skipped first. */
  offset: number;
  /** Whether `limit` came from the server (the client gave none, or asked for more than the maximum). */
  serverLimit: boolean;
  /** Warnings for the `Warning` header: parameters ignored or changed. */
  warnings: string[];
}

/** Options for {@linkcode parseSearch}. */
export interface SearchOptions {
  /** The level searched (the resource's last path segment). */
  level: Level;
  /** Levels whose attributes may be matched (e.g. study and series attributes for `/series`). */
  matchable: Level[];
  /** Page size without `limit`. */
  defaultLimit: number;
  /** The largest `limit` honoured (`Warning: 299` above). */
  maxLimit: number;
}

/** The standard's tags used by name below. */
export const TAGS = {
  SpecificCharacterSet: 0x00080005,
  SOPClassUID: 0x00080016,
  SOPInstanceUID: 0x00080018,
  StudyDate: 0x00080020,
  SeriesDate: 0x00080021,
  StudyTime: 0x00080030,
  SeriesTime: 0x00080031,
  AccessionNumber: 0x00080050,
  InstanceAvailability: 0x00080056,
  Modality: 0x00080060,
  ModalitiesInStudy: 0x00080061,
  SOPClassesInStudy: 0x00080062,
  ReferringPhysicianName: 0x00080090,
  TimezoneOffsetFromUTC: 0x00080201,
  StudyDescription: 0x00081030,
  SeriesDescription: 0x0008103e,
  RetrieveURL: 0x00081190,
  PatientName: 0x00100010,
  PatientID: 0x00100020,
  PatientBirthDate: 0x00100030,
  PatientSex: 0x00100040,
  StudyInstanceUID: 0x0020000d,
  SeriesInstanceUID: 0x0020000e,
  StudyID: 0x00200010,
  SeriesNumber: 0x00200011,
  InstanceNumber: 0x00200013,
  NumberOfStudyRelatedSeries: 0x00201206,
  NumberOfStudyRelatedInstances: 0x00201208,
  NumberOfSeriesRelatedInstances: 0x00201209,
  Rows: 0x00280010,
  Columns: 0x00280011,
  NumberOfFrames: 0x00280008,
  BitsAllocated: 0x00280100,
  PerformedProcedureStepStartDate: 0x00400244,
  PerformedProcedureStepStartTime: 0x00400245,
} as const;

/** Default return keys per level (PS3.18 Tables 10.6.3-3 to -5), without the computed ones. */
export const DEFAULT_RETURN: Record<Level, number[]> = {
  study: [
    TAGS.StudyDate,
    TAGS.StudyTime,
    TAGS.AccessionNumber,
    TAGS.ReferringPhysicianName,
    TAGS.TimezoneOffsetFromUTC,
    TAGS.StudyDescription,
    TAGS.PatientName,
    TAGS.PatientID,
    TAGS.PatientBirthDate,
    TAGS.PatientSex,
    TAGS.StudyInstanceUID,
    TAGS.StudyID,
  ],
  series: [
    TAGS.Modality,
    TAGS.SeriesDescription,
    TAGS.SeriesInstanceUID,
    TAGS.SeriesNumber,
    TAGS.PerformedProcedureStepStartDate,
    TAGS.PerformedProcedureStepStartTime,
  ],
  instance: [
    TAGS.SOPClassUID,
    TAGS.SOPInstanceUID,
    TAGS.InstanceNumber,
    TAGS.Rows,
    TAGS.Columns,
    TAGS.BitsAllocated,
    TAGS.NumberOfFrames,
  ],
};

/** Attributes the server computes (returned, never matched except ModalitiesInStudy). */
export const COMPUTED_TAGS: ReadonlySet<number> = new Set([
  TAGS.InstanceAvailability,
  TAGS.SOPClassesInStudy,
  TAGS.RetrieveURL,
  0x00201200,
  0x00201202,
  0x00201204,
  TAGS.NumberOfStudyRelatedSeries,
  TAGS.NumberOfStudyRelatedInstances,
  TAGS.NumberOfSeriesRelatedInstances,
]);

// deno-fmt-ignore
const STUDY_TAGS = new Set([
  0x00080020, 0x00080030, 0x00080050, 0x00080051, 0x00080056, 0x00080061, 0x00080062, 0x00080063, 0x00080090,
  0x00080092, 0x00080094, 0x00080096, 0x0008009c, 0x0008009d, 0x00080201, 0x00081030, 0x00081032, 0x00081048,
  0x00081049, 0x00081060, 0x00081062, 0x00081080, 0x00081084, 0x00081110, 0x0020000d, 0x00200010, 0x00201200,
  0x00201202, 0x00201204, 0x00201206, 0x00201208, 0x00321032, 0x00321033, 0x00321034, 0x00321060, 0x00321064,
  0x00380010, 0x00380014, 0x00380060, 0x00380062, 0x00401012,
]);

// deno-fmt-ignore
const SERIES_TAGS = new Set([
  0x00080021, 0x00080031, 0x00080060, 0x00080064, 0x00080070, 0x00080080, 0x00080081, 0x00081010, 0x0008103e,
  0x0008103f, 0x00081040, 0x00081050, 0x00081052, 0x00081070, 0x00081072, 0x00081090, 0x00081111, 0x00081250,
  0x00120071, 0x00120072, 0x00180015, 0x00181000, 0x00181020, 0x00181030, 0x00185100, 0x0020000e, 0x00200011,
  0x00200052, 0x00200060, 0x00201040, 0x00201209, 0x00280108, 0x00280109, 0x00400244, 0x00400245, 0x00400250,
  0x00400251, 0x00400253, 0x00400254, 0x00400260, 0x00400275, 0x00400280,
]);

/**
 * The level an attribute belongs to: patient and study attributes are "study", series and equipment
 * attributes "series", everything else "instance".
 *
 * @example
 * ```ts
 * import { levelOf } from "./qido_query.ts";
 * levelOf(0x00100010); // "study" (PatientName)
 * levelOf(0x00080060); // "series" (Modality)
 * levelOf(0x00200013); // "instance" (InstanceNumber)
 * ```
 */
export function levelOf(tag: number): Level {
  if (STUDY_TAGS.has(tag)) return "study";
  if (SERIES_TAGS.has(tag)) return "series";
  const group = tag >>> 16;
  if (group === 0x0010 || group === 0x0012) return "study";
  return "instance";
}

/** A query parameter the client got wrong: answered with 400 naming it. */
export class QueryError extends OutOfRangeError {
  /** A query parameter problem, named in `message`. */
  constructor(message: string) {
    super(message);
    this.name = "QueryError";
  }
}

const RESERVED = new Set(["includefield", "fuzzymatching", "limit", "offset"]);
/** Parameters some clients add that do not change the result. */
const IGNORED = new Set(["accept", "charset", "_"]);
const NO_WILDCARD_VRS = new Set(["UI", "DA", "TM", "DT"]);
const NUMBER_VRS = new Set(["IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"]);
const LIST_VRS = new Set(["UI", "CS"]);
const LEVEL_NAMES: Record<Level, string> = { study: "study", series: "series", instance: "instance" };

/**
 * Parses the query string of a QIDO-RS request. Throws a {@linkcode QueryError} (→ 400) naming the bad
 * parameter; parameters that are valid but cannot be used at this level are ignored with a warning.
 *
 * @example
 * ```ts
 * import { parseSearch } from "./qido_query.ts";
 * const query = parseSearch(new URLSearchParams("PatientName=*BRA*&fuzzymatching=true&limit=101"), {
 *   level: "study", matchable: ["study"], defaultLimit: 100, maxLimit: 1000,
 * });
 * query.filters[0].matcher; // { kind: "wildcard", pattern: "*BRA*" }
 * query.limit; // 101
 * ```
 */
export function parseSearch(params: URLSearchParams, options: SearchOptions): SearchQuery {
  const warnings: string[] = [];
  const fuzzyValues = params.getAll("fuzzymatching");
  let fuzzy = false;
  for (const value of fuzzyValues) {
    if (value !== "true" && value !== "false") {
      throw new QueryError(`Invalid fuzzymatching=${JSON.stringify(value)}: use true or false`);
    }
    fuzzy = value === "true";
  }
  const { limit, serverLimit } = parseLimit(params, options, warnings);
  const offset = integerParam(params, "offset", 0);

  const include = new Set<number>();
  let includeAll = false;
  for (const raw of params.getAll("includefield")) {
    for (const part of raw.split(",").map((p) => p.trim()).filter((p) => p !== "")) {
      if (part === "all") {
        includeAll = true;
        continue;
      }
      const path = parsePath(part, "includefield");
      const tag = path[0].tag;
      const level = levelOf(tag);
      if (!allowed(options, level, tag)) {
        warnings.push(
          `includefield ${part} is a ${
            LEVEL_NAMES[level]
          } attribute, not returned by a ${options.level} search: ignored`,
        );
        continue;
      }
      include.add(tag);
    }
  }

  const filters: Filter[] = [];
  for (const [name, value] of params) {
    if (RESERVED.has(name)) continue;
    if (IGNORED.has(name)) {
      warnings.push(`Parameter ${name} does not change search results: ignored`);
      continue;
    }
    const path = parsePath(name, "");
    const top = path[0];
    const level = levelOf(top.tag);
    if ((top.tag >>> 16) % 2 === 1) {
      warnings.push(`${name} is a private attribute: matching on it is not supported, ignored`);
      continue;
    }
    if (!allowed(options, level, top.tag)) {
      warnings.push(
        `${name} is a ${LEVEL_NAMES[level]} attribute, not a key of a ${options.level} search: ignored`,
      );
      continue;
    }
    if (COMPUTED_TAGS.has(top.tag)) {
      warnings.push(`${name} is computed by the server: matching on it is not supported, ignored`);
      include.add(top.tag);
      continue;
    }
    const last = path[path.length - 1];
    if (last.vr === "SQ" && value !== "") {
      throw new QueryError(
        `Invalid ${name}=${
          JSON.stringify(value)
        }: a sequence takes an empty value or a dotted path to an attribute inside it`,
      );
    }
    filters.push({
      param: name,
      path: path.map((p) => p.tag),
      key: path.map((p) => tagToHex(p.tag)).join("."),
      vr: last.vr,
      level,
      matcher: parseMatcher(name, value, last.vr),
      fuzzy,
    });
    include.add(top.tag);
  }
  return {
    level: options.level,
    filters,
    include: [...include],
    includeAll,
    fuzzy,
    limit,
    offset,
    serverLimit,
    warnings,
  };
}

function allowed(options: SearchOptions, level: Level, tag: number): boolean {
  if (tag === TAGS.ModalitiesInStudy && options.level !== "study") return false;
  return options.matchable.includes(level);
}

function parseLimit(params: URLSearchParams, options: SearchOptions, warnings: string[]) {
  if (!params.has("limit")) return { limit: options.defaultLimit, serverLimit: true };
  const limit = integerParam(params, "limit", options.defaultLimit);
  if (limit === 0) throw new QueryError("Invalid limit=0: use a whole number from 1");
  if (limit > options.maxLimit) {
    warnings.push(`limit=${limit} is above the maximum of ${options.maxLimit}: using ${options.maxLimit}`);
    return { limit: options.maxLimit, serverLimit: true };
  }
  return { limit, serverLimit: false };
}

function integerParam(params: URLSearchParams, name: string, fallback: number): number {
  const values = params.getAll(name);
  if (values.length === 0) return fallback;
  if (values.length > 1) throw new QueryError(`Invalid ${name}: given ${values.length} times, give it once`);
  const raw = values[0].trim();
  if (!/^\d{1,15}$/.test(raw)) {
    throw new QueryError(`Invalid ${name}=${JSON.stringify(values[0])}: use a whole number from 0`);
  }
  return Number(raw);
}

interface PathStep {
  tag: number;
  vr: string;
}

/** Parses `PatientName`, `00100010` or a dotted path of either; throws a QueryError for unknown names. */
function parsePath(text: string, context: string): PathStep[] {
  const steps = text.split(".").map((part) => {
    let tag: number | undefined;
    if (/^[0-9A-Fa-f]{8}$/.test(part)) tag = parseInt(part, 16) >>> 0;
    else tag = lookupKeyword(part)?.tag;
    if (tag === undefined) {
      const where = context ? `${context} ` : "";
      throw new QueryError(
        `Unknown attribute ${JSON.stringify(part)} in ${where}${
          JSON.stringify(text)
        }: use a DICOM keyword or an 8-hex-digit tag`,
      );
    }
    const vr = lookupTag(tag)?.vr ?? "UN";
    return { tag, vr: vr.includes(" or ") ? vr.slice(0, 2) : vr };
  });
  for (const step of steps.slice(0, -1)) {
    if (step.vr !== "SQ") {
      throw new QueryError(
        `Invalid attribute path ${JSON.stringify(text)}: ${tagToHex(step.tag)} is not a sequence`,
      );
    }
  }
  return steps;
}

/** Parses one value for an attribute of this VR (the name is for messages). */
export function parseMatcher(name: string, value: string, vr: string): Matcher {
  const bad = (why: string): never => {
    throw new QueryError(`Invalid ${name}=${JSON.stringify(value)}: ${why}`);
  };
  if (value === "") return { kind: "universal" };
  if (value === '""') return { kind: "empty" };
  const wild = /[*?]/.test(value);
  if (wild && (NO_WILDCARD_VRS.has(vr) || NUMBER_VRS.has(vr))) {
    bad(`wildcards are not allowed on ${vr} values`);
  }
  if (vr === "DA" || vr === "TM" || vr === "DT") return parseRange(value, vr, bad);
  if (NUMBER_VRS.has(vr)) {
    const n = Number(value.trim());
    if (value.trim() === "" || !Number.isFinite(n)) bad("use a number");
    return { kind: "number", value: n };
  }
  if (LIST_VRS.has(vr)) {
    const values = value.split(/[,\\]/).map((v) => v.trim());
    if (vr === "UI") {
      for (const v of values) if (!isValidUid(v)) bad(`${JSON.stringify(v)} is not a valid UID`);
    }
    if (values.length > 1) {
      if (wild) bad("a list cannot contain wildcards");
      return { kind: "list", values };
    }
  }
  if (vr === "PN") {
    if (/^\*+$/.test(value.trim())) return { kind: "universal" };
    const normalized = normalizePn(value);
    return wild ? { kind: "wildcard", pattern: normalized } : { kind: "single", value: normalized };
  }
  const trimmed = value.trim();
  if (wild) return /^\*+$/.test(trimmed) ? { kind: "universal" } : { kind: "wildcard", pattern: trimmed };
  return { kind: "single", value: trimmed };
}

function parseRange(value: string, vr: "DA" | "TM" | "DT", bad: (why: string) => never): Matcher {
  const normalize = vr === "DA" ? normalizeDate : vr === "TM" ? normalizeTime : normalizeDateTime;
  const format = vr === "DA" ? "YYYYMMDD" : vr === "TM" ? "HHMMSS.FFFFFF" : "YYYYMMDDHHMMSS.FFFFFF";
  const parts = vr === "DT" ? splitDateTimeRange(value) : value.split("-");
  if (parts === undefined || parts.length > 2) bad(`use a ${vr} value or range like ${format}-${format}`);
  const [a, b] = parts!.map((p) => p.trim());
  if (parts!.length === 1) {
    const from = normalize(a, false);
    const to = normalize(a, true);
    if (from === undefined || to === undefined) bad(`${JSON.stringify(a)} is not a ${vr} value (${format})`);
    return { kind: "range", from, to };
  }
  if (a === "" && b === "") bad(`a range needs at least one end`);
  const from = a === "" ? undefined : normalize(a, false);
  const to = b === "" ? undefined : normalize(b, true);
  if (a !== "" && from === undefined) bad(`${JSON.stringify(a)} is not a ${vr} value (${format})`);
  if (b !== "" && to === undefined) bad(`${JSON.stringify(b)} is not a ${vr} value (${format})`);
  if (from !== undefined && to !== undefined && from > to) bad("the range ends before it starts");
  return { kind: "range", from, to };
}

/** Splits a DT range on its `-`: a whole value with a `-ZZXX` offset is not a range. */
function splitDateTimeRange(value: string): string[] | undefined {
  if (normalizeDateTime(value) !== undefined) return [value];
  const match = /^(\d[\d.]*(?:[+-]\d{4})?)?-(\d[\d.]*(?:[+-]\d{4})?)?$/.exec(value);
  return match ? [match[1] ?? "", match[2] ?? ""] : undefined;
}
