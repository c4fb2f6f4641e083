/**
 * QIDO-RS filters as SQL conditions, for SQLite and PostgreSQL ({@linkcode SqlDialect}): indexed columns
 * (folded names, normalized dates and times, integers) are compared in SQL; the rest are matched by
 * `matchDataset` on the stored JSON. SQLite runs that inside the query (the `qido_match`/`qido_pn` SQL
 * functions), so LIMIT/OFFSET stay in SQL; PostgreSQL has no JavaScript functions, so the condition there is
 * only a narrowing pre-filter (a literal part of the value in the JSON text or the name column) and the filter is
 * handed back as a {@linkcode Residual} for the caller to match on each row it reads. Either way the same
 * code ({@linkcode condition}) decides which filters go where. Placeholders are written `?`; PostgreSQL's
 * caller numbers them ({@linkcode numberPlaceholders}).
 *
 * @module
 */

import type { Filter, Level, Matcher } from "./qido_query.ts";

/** An SQL parameter value. */
export type SqlValue = string | number | null;

/** Where a condition's parameters go, in placeholder order (an array). */
export interface SqlArgs {
  /** Appends parameters. */
  push(...values: SqlValue[]): number;
}

/** What differs between the SQL of the two databases. */
export interface SqlDialect {
  /** A condition that is always true. */
  readonly true: string;
  /** A condition that is always false. */
  readonly false: string;
  /** `haystack` contains the text of the parameter `needle` (a placeholder). */
  contains(haystack: string, needle: string): string;
  /** `column` matches the DICOM wildcard `pattern` (`*`, `?`); the parameter is appended to `args`. */
  wildcard(column: string, pattern: string, args: SqlArgs): string;
  /** Whether `qido_match(doc, spec)` and `qido_pn(names, spec)` exist in the database. */
  readonly functions: boolean;
}

/** SQLite: `instr`, `GLOB`, and the JavaScript matching functions registered on the connection. */
export const SQLITE: SqlDialect = {
  true: "1",
  false: "0",
  contains: (haystack, needle) => `instr(${haystack}, ${needle}) > 0`,
  wildcard(column, pattern, args) {
    args.push(pattern.replaceAll("[", "[[]"));
    return `${column} GLOB ?`;
  },
  functions: true,
};

/** PostgreSQL: `strpos`, `LIKE` (columns are `COLLATE "C"`, so both are byte-wise as SQLite's), no functions. */
export const POSTGRES: SqlDialect = {
  true: "TRUE",
  false: "FALSE",
  contains: (haystack, needle) => `strpos(${haystack}, ${needle}) > 0`,
  wildcard(column, pattern, args) {
    args.push(pattern.replace(/[\\%_]/g, (c) => `\\${c}`).replaceAll("*", "%").replaceAll("?", "_"));
    return `${column} LIKE ?`;
  },
  functions: false,
};

/** A filter the SQL only narrowed: the caller matches it on each row (PostgreSQL). */
export type Residual =
  /** `matchDataset` on the row's JSON of `filter.level`. */
  | { kind: "document"; filter: Filter }
  /** `matchPersonName` on one of the folded names of `column` (selected as `pn{index}`). */
  | { kind: "pn"; filter: Filter; column: string; index: number };

type ColumnType = "text" | "pn" | "date" | "time" | "int";

interface Column {
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

/**
 * One filter as an SQL condition (its parameters appended to `args`). With a dialect without matching
 * functions, a filter SQL cannot decide is pushed onto `residuals` and the condition only narrows.
 */
export function condition(
  filter: Filter,
  level: Level,
  args: SqlArgs,
  dialect: SqlDialect = SQLITE,
  residuals: Residual[] = [],
): string {
  if (filter.matcher.kind === "universal") return dialect.true;
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
      textCondition("m.modality", m, args, dialect)
    })`;
  }
  const column = COLUMNS[filter.key];
  if (!column) {
    const doc = DOCUMENTS[filter.level];
    // The JSON text must contain a literal part of the value (not for PN, which is folded, nor numbers).
    const literal = filter.vr === "PN" ? undefined : longestLiteral(filter.matcher);
    const plain = literal !== undefined && literal.length >= 2 &&
      ![...literal].some((c) => c < " " || c === '"' || c === "\\");
    if (plain) args.push(literal!);
    if (!dialect.functions) {
      residuals.push({ kind: "document", filter });
      return plain ? dialect.contains(doc, "?") : dialect.true;
    }
    const prefilter = plain ? `${dialect.contains(doc, "?")} AND ` : "";
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
        return dialect.contains(c, "?");
      }
      const literal = longestLiteral(m);
      if (!dialect.functions) {
        residuals.push({ kind: "pn", filter, column: c, index: residuals.length });
        if (literal === undefined) return dialect.true;
        args.push(literal);
        return dialect.contains(c, "?");
      }
      if (literal === undefined) {
        args.push(spec);
        return `qido_pn(${c}, ?)`;
      }
      args.push(literal, spec);
      return `(${dialect.contains(c, "?")} AND qido_pn(${c}, ?))`;
    }
    case "date":
    case "time": {
      if (m.kind !== "range") return dialect.false;
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
      if (m.kind !== "number") return dialect.false;
      args.push(m.value);
      return `${c} = ?`;
    default:
      return textCondition(c, m, args, dialect);
  }
}

/** The longest run of a single/wildcard value without wildcards or name separators, if any. */
function longestLiteral(m: Matcher): string | undefined {
  const text = m.kind === "single" ? m.value : m.kind === "wildcard" ? m.pattern : undefined;
  if (text === undefined) return undefined;
  const longest = text.split(/[*?=\\^]/).reduce((a, b) => b.length > a.length ? b : a, "");
  return longest === "" ? undefined : longest;
}

function textCondition(c: string, m: Matcher, args: SqlArgs, dialect: SqlDialect): string {
  switch (m.kind) {
    case "universal":
      return dialect.true;
    case "empty":
      return `(${c} IS NULL OR ${c} = '')`;
    case "single":
      args.push(m.value);
      return `${c} = ?`;
    case "wildcard":
      return dialect.wildcard(c, m.pattern, args);
    case "list":
      args.push(...m.values);
      return `${c} IN (${m.values.map(() => "?").join(", ")})`;
    case "number":
      args.push(String(m.value));
      return `${c} = ?`;
    case "range":
      return dialect.false;
  }
}

/**
 * `?` placeholders numbered `$1`, `$2`, ... (PostgreSQL). The SQL written here holds no other `?`: every
 * value is a parameter.
 *
 * @example
 * ```ts
 * import { numberPlaceholders } from "./sql_filter.ts";
 * numberPlaceholders("a = ? AND b IN (?, ?)"); // "a = $1 AND b IN ($2, $3)"
 * ```
 */
export function numberPlaceholders(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}
