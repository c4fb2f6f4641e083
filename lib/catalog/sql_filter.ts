/**
 * QIDO-RS filters as SQL conditions: indexed columns (folded names, normalized dates and times, integers) are
 * compared in SQL; the rest go through the `qido_match`/`qido_pn` SQL functions, which run `matchDataset` on
 * the stored JSON, so LIMIT/OFFSET stay in SQL. Written for SQLite.
 *
 * @module
 */

import type { SQLInputValue } from "node:sqlite";
import type { Filter, Level, Matcher } from "./qido_query.ts";

export type ColumnType = "text" | "pn" | "date" | "time" | "int";

export interface Column {
  type: ColumnType;
  /** The column expression per query level (the alias holding it). */
  column: (level: Level) => string;
  /** For times: the column holding the upper end of the stored value's span. */
  high?: string;
}

const fixed = (expression: string) => () => expression;

const COLUMNS: Record<string, Column> = {
  "0020000D": {
    type: "text",
    column: (level) => level === "study" ? "s.study" : level === "series" ? "se.study" : "o.study",
  },
  "00080020": { type: "date", column: fixed("s.study_date") },
  "00080030": { type: "time", column: fixed("s.study_time"), high: "s.study_time_high" },
  "00080050": { type: "text", column: fixed("s.accession") },
  "00080090": { type: "pn", column: fixed("s.referring") },
  "00100010": { type: "pn", column: fixed("s.patient_name") },
  "00100020": { type: "text", column: fixed("s.patient_id") },
  "00200010": { type: "text", column: fixed("s.study_id") },
  "0020000E": { type: "text", column: (level) => level === "series" ? "se.series" : "o.series" },
  "00080060": { type: "text", column: fixed("se.modality") },
  "00200011": { type: "int", column: fixed("se.series_number") },
  "00400244": { type: "date", column: fixed("se.pps_date") },
  "00400245": { type: "time", column: fixed("se.pps_time"), high: "se.pps_time_high" },
  "00080018": { type: "text", column: fixed("o.sop") },
  "00080016": { type: "text", column: fixed("o.sop_class") },
  "00200013": { type: "int", column: fixed("o.instance_number") },
};

const DOCUMENTS: Record<Level, string> = { study: "s.json", series: "se.json", instance: "d.json" };

/** One filter as an SQL condition (its parameters appended to `args`). */
export function condition(filter: Filter, level: Level, args: SQLInputValue[]): string {
  if (filter.matcher.kind === "universal") return "1";
  const spec = JSON.stringify({
    path: filter.path,
    vr: filter.vr,
    matcher: filter.matcher,
    fuzzy: filter.fuzzy,
  });
  if (filter.key === "00080061") {
    const m = filter.matcher;
    if (m.kind === "empty") {
      return "NOT EXISTS (SELECT 1 FROM series m WHERE m.aet = s.aet AND m.study = s.study AND m.modality <> '')";
    }
    return `EXISTS (SELECT 1 FROM series m WHERE m.aet = s.aet AND m.study = s.study AND ${
      textCondition("m.modality", m, args)
    })`;
  }
  const column = COLUMNS[filter.key];
  if (!column) {
    const doc = DOCUMENTS[filter.level];
    // The JSON text must contain a literal part of the value (not for PN, which is folded, nor numbers).
    const literal = filter.vr === "PN" ? undefined : longestLiteral(filter.matcher);
    const plain = literal !== undefined && literal.length >= 2 &&
      ![...literal].some((c) => c < " " || c === '"' || c === "\\");
    const prefilter = plain ? `instr(${doc}, ?) > 0 AND ` : "";
    if (prefilter) args.push(literal!);
    args.push(spec);
    return `(${prefilter}qido_match(${doc}, ?))`;
  }
  const c = column.column(level);
  const m = filter.matcher;
  if (m.kind === "empty") return `(${c} IS NULL OR ${c} = '')`;
  switch (column.type) {
    case "pn": {
      // `*LIT*` (OHIF's filter) is exactly "some name contains LIT"; otherwise a literal part narrows first.
      const contains = m.kind === "wildcard" ? /^\*+([^*?=\\^]+)\*+$/.exec(m.pattern)?.[1] : undefined;
      if (contains !== undefined) {
        args.push(contains);
        return `instr(${c}, ?) > 0`;
      }
      const literal = longestLiteral(m);
      if (literal === undefined) {
        args.push(spec);
        return `qido_pn(${c}, ?)`;
      }
      args.push(literal, spec);
      return `(instr(${c}, ?) > 0 AND qido_pn(${c}, ?))`;
    }
    case "date":
    case "time": {
      if (m.kind !== "range") return "0";
      const parts: string[] = [`${c} IS NOT NULL`];
      if (m.from !== undefined) {
        parts.push(`${column.high ?? c} >= ?`);
        args.push(m.from);
      }
      if (m.to !== undefined) {
        parts.push(`${c} <= ?`);
        args.push(m.to);
      }
      return `(${parts.join(" AND ")})`;
    }
    case "int":
      if (m.kind !== "number") return "0";
      args.push(m.value);
      return `${c} = ?`;
    default:
      return textCondition(c, m, args);
  }
}

/** The longest run of a single/wildcard value without wildcards or name separators, if any. */
function longestLiteral(m: Matcher): string | undefined {
  const text = m.kind === "single" ? m.value : m.kind === "wildcard" ? m.pattern : undefined;
  if (text === undefined) return undefined;
  const longest = text.split(/[*?=\\^]/).reduce((a, b) => b.length > a.length ? b : a, "");
  return longest === "" ? undefined : longest;
}

function textCondition(c: string, m: Matcher, args: SQLInputValue[]): string {
  switch (m.kind) {
    case "universal":
      return "1";
    case "empty":
      return `(${c} IS NULL OR ${c} = '')`;
    case "single":
      args.push(m.value);
      return `${c} = ?`;
    case "wildcard":
      args.push(m.pattern.replaceAll("[", "[[]"));
      return `${c} GLOB ?`;
    case "list":
      args.push(...m.values);
      return `${c} IN (${m.values.map(() => "?").join(", ")})`;
    case "number":
      args.push(String(m.value));
      return `${c} = ?`;
    case "range":
      return "0";
  }
}
