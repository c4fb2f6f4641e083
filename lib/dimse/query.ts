/**
 * From a C-FIND, C-MOVE or C-GET identifier to the catalog's query model: the Query/Retrieve Level, and the
 * matching keys as the QIDO-RS parameters they are equal to (`00100010=DOE*`, `0020000D=1.2\1.3`, dotted
 * paths into sequence items), parsed by `parseSearch` so that both protocols match alike (PS3.4 C.2.2.2).
 *
 * @module
 */

import { type Level, parseSearch, QueryError, type SearchQuery } from "../catalog/qido_query.ts";
import { tagToHex } from "../dicom/dictionary.ts";
import type { IdElement } from "./identifier.ts";

/** A Query/Retrieve Level (0008,0052). */
export type QrLevel = "PATIENT" | "STUDY" | "SERIES" | "IMAGE";

/** QueryRetrieveLevel (0008,0052). */
export const QUERY_LEVEL = 0x00080052;
/** Specific Character Set (0008,0005). */
export const CHARSET = 0x00080005;

/** The catalog level searched and the levels matchable for each Q/R level. */
export const LEVELS: Record<QrLevel, { level: Level; matchable: Level[] }> = {
  PATIENT: { level: "study", matchable: ["study"] },
  STUDY: { level: "study", matchable: ["study"] },
  SERIES: { level: "series", matchable: ["study", "series"] },
  IMAGE: { level: "instance", matchable: ["study", "series", "instance"] },
};

/** The unique keys of each level (PS3.4 C.6). */
export const UNIQUE_KEYS: Record<QrLevel, number> = {
  PATIENT: 0x00100020,
  STUDY: 0x0020000d,
  SERIES: 0x0020000e,
  IMAGE: 0x00080018,
};

/** An identifier the SCP cannot use: answered with a failure status and this message as Error Comment. */
export class IdentifierError extends QueryError {
  /** A problem with the identifier, named in `message`. */
  constructor(message: string) {
    super(message);
    this.name = "IdentifierError";
  }
}

/**
 * The Q/R level of an identifier for the `root` information model. Throws an {@linkcode IdentifierError} when
 * it is missing, unknown, or PATIENT under Study Root.
 */
export function levelOfIdentifier(elements: readonly IdElement[], root: "patient" | "study"): QrLevel {
  const value = elements.find((e) => e.tag === QUERY_LEVEL)?.value.trim().toUpperCase();
  if (value === undefined || value === "") {
    throw new IdentifierError("QueryRetrieveLevel (0008,0052) is missing");
  }
  if (!(value in LEVELS)) {
    throw new IdentifierError(`QueryRetrieveLevel ${value} is not PATIENT, STUDY, SERIES or IMAGE`);
  }
  if (value === "PATIENT" && root === "study") {
    throw new IdentifierError("QueryRetrieveLevel PATIENT is not part of the Study Root model");
  }
  return value as QrLevel;
}

/** Whether an element is a key to match and return (not the level, charset, group lengths, private). */
function isKey(e: IdElement): boolean {
  const group = e.tag >>> 16;
  return e.tag !== QUERY_LEVEL && e.tag !== CHARSET && (e.tag & 0xffff) !== 0 && group % 2 === 0 &&
    group !== 0x0002 && group !== 0x0000;
}

/** The keys of an identifier to match and return. */
export function keysOf(elements: readonly IdElement[]): IdElement[] {
  return elements.filter(isKey);
}

/** The QIDO-RS parameters equal to an identifier's keys. */
export function paramsOf(elements: readonly IdElement[]): URLSearchParams {
  const params = new URLSearchParams();
  for (const e of keysOf(elements)) {
    const hex = tagToHex(e.tag);
    if (e.vr === "SQ") {
      const item = e.items?.[0];
      const inner = item?.filter((i) => i.vr !== "SQ" && i.value !== "" && isKey(i)) ?? [];
      if (inner.length === 0) params.append(hex, "");
      for (const i of inner) params.append(`${hex}.${tagToHex(i.tag)}`, i.value);
      continue;
    }
    params.append(hex, e.value);
  }
  return params;
}

/** The catalog query of an identifier at `level`, with up to `pageSize` rows per page. */
export function searchOf(elements: readonly IdElement[], level: QrLevel, pageSize: number): SearchQuery {
  const { level: catalogLevel, matchable } = LEVELS[level];
  try {
    return parseSearch(paramsOf(elements), {
      level: catalogLevel,
      matchable,
      defaultLimit: pageSize,
      maxLimit: pageSize,
    });
  } catch (error) {
    if (error instanceof QueryError) {
      throw new IdentifierError(error.message.replace(/^Invalid /, "Invalid key "));
    }
    throw error;
  }
}
