/**
 * QIDO-RS matching (PS3.4 C.2.2.2): values normalized for comparison (dates, times, date-times, folded person
 * names), wildcard and fuzzy person-name matching, and matching a filter against a DICOM JSON data set, into
 * sequences. The same rules decide the SQL conditions (sql_filter.ts) and the rows checked in code.
 *
 * @module
 */

import type { DicomJson, DicomJsonAttribute } from "../dicom/dicom_json.ts";
import { tagToHex } from "../dicom/dictionary.ts";
import type { Filter, Matcher } from "./qido_query.ts";

/**
 * A DA value as `YYYYMMDD`, or undefined when it is not a date. Accepts the old `YYYY.MM.DD` form.
 * (`upper` is accepted for symmetry with the time normalizers; a date is its own upper bound.)
 */
export function normalizeDate(value: string, _upper = false): string | undefined {
  const text = value.trim().replaceAll(".", "");
  const match = /^(\d{4})(\d{2})(\d{2})$/.exec(text);
  if (!match) return undefined;
  const month = Number(match[2]);
  const day = Number(match[3]);
  if (month < 1 || month > 12 || day < 1 || day > 31) return undefined;
  return text;
}

/**
 * A TM value as `HHMMSS.FFFFFF`; missing parts are filled with the lowest value, or with the highest when
 * `upper` (so `12` as an upper bound is `125959.999999`). Accepts the old `HH:MM:SS` form.
 *
 * @example
 * ```ts
 * import { normalizeTime } from "./matching.ts";
 * normalizeTime("1230"); // "123000.000000"
 * normalizeTime("1230", true); // "123059.999999"
 * ```
 */
export function normalizeTime(value: string, upper = false): string | undefined {
  const match = /^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$/.exec(value.trim().replaceAll(":", ""));
  if (!match) return undefined;
  const [, hh, mm, ss, frac] = match;
  if (Number(hh) > 23 || Number(mm ?? 0) > 59 || Number(ss ?? 0) > 60) return undefined;
  if (frac !== undefined && ss === undefined) return undefined;
  const fill = upper ? "59" : "00";
  const fraction = frac !== undefined ? frac.padEnd(6, upper ? "9" : "0") : upper ? "999999" : "000000";
  return `${hh}${mm ?? fill}${ss ?? fill}.${fraction}`;
}

/** A DT value as `YYYYMMDDHHMMSS.FFFFFF` (any UTC offset dropped), filled like {@linkcode normalizeTime}. */
export function normalizeDateTime(value: string, upper = false): string | undefined {
  const text = value.trim().replace(/[-+]\d{4}$/, "");
  const match = /^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?$/.exec(text);
  if (!match) return undefined;
  const [, yyyy, mm, dd, time] = match;
  if (mm !== undefined && (Number(mm) < 1 || Number(mm) > 12)) return undefined;
  if (dd !== undefined && (Number(dd) < 1 || Number(dd) > 31)) return undefined;
  const date = `${yyyy}${mm ?? (upper ? "12" : "01")}${dd ?? (upper ? "31" : "01")}`;
  const t = time === undefined ? (upper ? "235959.999999" : "000000.000000") : normalizeTime(time, upper);
  return t === undefined ? undefined : date + t;
}

/**
 * A person name folded for matching: accents removed, upper case, spaces around `^` and `=` and trailing empty
 * components dropped.
 *
 * @example
 * ```ts
 * import { normalizePn } from "./matching.ts";
 * normalizePn("Müller^Jürgen^^"); // "MULLER^JURGEN"
 * ```
 */
export function normalizePn(value: string): string {
  return value.normalize("NFKD").replace(/\p{M}/gu, "").toUpperCase()
    .split("=").map((group) =>
      group.split("^").map((c) => c.trim().replace(/\s+/g, " ")).join("^").replace(/\^+$/, "")
    )
    .join("=").replace(/=+$/, "");
}

/** The folded text of a DICOM JSON PN value (`{ Alphabetic, Ideographic, Phonetic }` or a string). */
export function pnText(value: unknown): string {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return normalizePn(value);
  const name = value as Record<string, string | undefined>;
  return normalizePn([name.Alphabetic ?? "", name.Ideographic ?? "", name.Phonetic ?? ""].join("="));
}

const patternCache = new Map<string, RegExp>();

/**
 * Whether `text` matches a pattern with `*` (any run) and `?` (one character).
 *
 * @example
 * ```ts
 * import { wildcardMatch } from "./matching.ts";
 * wildcardMatch("*BRA*", "ABRAHAM"); // true
 * wildcardMatch("BR?", "BRAIN"); // false
 * ```
 */
export function wildcardMatch(pattern: string, text: string): boolean {
  let regex = patternCache.get(pattern);
  if (!regex) {
    const source = [...pattern].map((c) =>
      c === "*" ? ".*" : c === "?" ? "." : c.replace(/[\\^$.|+()[\]{}]/g, "\\$&")
    )
      .join("");
    regex = new RegExp(`^${source}$`, "su");
    if (patternCache.size > 500) patternCache.clear();
    patternCache.set(pattern, regex);
  }
  return regex.test(text);
}

/**
 * Whether a folded person name (see {@linkcode normalizePn}) matches a single-value or wildcard matcher whose
 * value is folded the same way.
 */
export function matchPersonName(name: string, matcher: Matcher, fuzzy: boolean): boolean {
  if (matcher.kind === "universal") return true;
  if (matcher.kind === "empty") return name === "";
  if (matcher.kind !== "single" && matcher.kind !== "wildcard") return false;
  const query = matcher.kind === "single" ? matcher.value : matcher.pattern;
  const wild = matcher.kind === "wildcard";
  const test = (pattern: string, text: string) =>
    wild || fuzzy ? wildcardMatch(pattern, text) : pattern === text;
  if (query.includes("=")) return test(query, name);
  const groups = name.split("=");
  if (groups.some((group) => test(query, group))) return true;
  if (!fuzzy) return false;
  const prefix = (part: string) => /[*?]/.test(part) ? part : `${part}*`;
  const wanted = query.split("^");
  return groups.some((group) => {
    const components = group.split("^");
    if (wanted.length === 1) {
      const words = components.flatMap((c) => [c, ...c.split(" ")]);
      return words.some((word) => wildcardMatch(prefix(wanted[0]), word));
    }
    return wanted.every((part, i) => part === "" || wildcardMatch(prefix(part), components[i] ?? ""));
  });
}

/** Whether one value of an attribute (as it appears in a DICOM JSON `Value` array) matches. */
export function matchValue(value: unknown, vr: string, matcher: Matcher, fuzzy: boolean): boolean {
  if (vr === "PN") return matchPersonName(pnText(value), matcher, fuzzy);
  if (value === null || value === undefined) return false;
  switch (matcher.kind) {
    case "universal":
      return true;
    case "empty":
      return String(value) === "";
    case "single":
      return String(value) === matcher.value;
    case "wildcard":
      return wildcardMatch(matcher.pattern, String(value));
    case "list":
      return matcher.values.includes(String(value));
    case "number":
      return Number(value) === matcher.value;
    case "range": {
      const text = String(value);
      const low = vr === "DA"
        ? normalizeDate(text)
        : vr === "TM"
        ? normalizeTime(text)
        : normalizeDateTime(text);
      const high = vr === "DA"
        ? low
        : vr === "TM"
        ? normalizeTime(text, true)
        : normalizeDateTime(text, true);
      if (low === undefined || high === undefined) return false;
      // A stored value is itself a span (a time without seconds): it matches when the spans overlap.
      return (matcher.from === undefined || high >= matcher.from) &&
        (matcher.to === undefined || low <= matcher.to);
    }
  }
}

/** Whether an attribute (possibly missing) matches: multi-valued attributes match when any value does. */
export function matchAttribute(
  attribute: DicomJsonAttribute | undefined,
  vr: string,
  matcher: Matcher,
  fuzzy: boolean,
): boolean {
  if (matcher.kind === "universal") return true;
  const values = attribute?.Value ?? [];
  if (matcher.kind === "empty") return values.every((v) => v === null || v === "" || pnText(v) === "");
  return values.some((v) => matchValue(v, attribute?.vr ?? vr, matcher, fuzzy));
}

/**
 * Whether a data set in the DICOM JSON Model matches a filter, following its path into sequence items (any item
 * may match).
 *
 * @example
 * ```ts
 * import { parseSearch } from "./qido_query.ts";
 * const { filters } = parseSearch(new URLSearchParams("00081032.00080100=P1*"), {
 *   level: "study", matchable: ["study"], defaultLimit: 10, maxLimit: 10,
 * });
 * const study = { "00081032": { vr: "SQ", Value: [{ "00080100": { vr: "SH", Value: ["P123"] } }] } };
 * matchDataset(study, filters[0]); // true
 * ```
 */
export function matchDataset(
  dataset: DicomJson,
  filter: Pick<Filter, "path" | "vr" | "matcher" | "fuzzy">,
): boolean {
  const walk = (data: DicomJson, depth: number): boolean => {
    const key = tagToHex(filter.path[depth]);
    const attribute = data[key];
    if (depth === filter.path.length - 1) {
      return matchAttribute(attribute, filter.vr, filter.matcher, filter.fuzzy);
    }
    const items = (attribute?.Value ?? []) as DicomJson[];
    if (items.length === 0) return filter.matcher.kind === "universal" || filter.matcher.kind === "empty";
    return items.some((item) => item !== null && typeof item === "object" && walk(item, depth + 1));
  };
  return walk(dataset, 0);
}
