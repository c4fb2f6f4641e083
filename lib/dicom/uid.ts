/**
 * DICOM UID validation (PS3.5 9.1) and the object keys planned from UIDs.
 *
 * @module
 */

import { OutOfRangeError } from "../util/errors.ts";

/** Longest UID the standard allows. */
export const MAX_UID_LENGTH = 64;

const UID_PATTERN = /^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$/;

/**
 * Whether `value` is a valid UID: digits and dots, no empty or leading-zero components, ≤ 64 chars.
 *
 * @example
 * ```ts
 * import { isValidUid } from "./uid.ts";
 * isValidUid("1.2.840.10008.1.2.1"); // true
 * isValidUid("1.02.3"); // false
 * ```
 */
export function isValidUid(value: string): boolean {
  return value.length > 0 && value.length <= MAX_UID_LENGTH && UID_PATTERN.test(value);
}

/**
 * Returns `value` when it is a valid UID, else throws a `RangeError` naming `what` and why.
 */
export function checkUid(value: string, what: string): string {
  if (isValidUid(value)) return value;
  let why = "only digits and dots are allowed";
  if (value.length === 0) why = "it is empty";
  else if (value.length > MAX_UID_LENGTH) why = `it has ${value.length} characters, at most 64 are allowed`;
  else if (/^[0-9.]+$/.test(value)) why = "components must be non-empty and have no leading zeros";
  const shown = value.length > 80 ? `${value.slice(0, 80)}…` : value;
  return fail(`Invalid ${what} ${JSON.stringify(shown)}: ${why}`);
}

function fail(message: string): never {
  throw new OutOfRangeError(message);
}

/** The exact key of one instance: `{study}/{series}/{sop}.dcm`. */
export function instanceKey(study: string, series: string, instance: string): string {
  return `${study}/${series}/${instance}.dcm`;
}

/** The listing prefix of a series; it ends in `/` so `1.2.3` never matches `1.2.34`. */
export function seriesPrefix(study: string, series: string): string {
  return `${study}/${series}/`;
}

/** The listing prefix of a study; it ends in `/`. */
export function studyPrefix(study: string): string {
  return `${study}/`;
}

/** The UIDs of a key laid out as `{study}/{series}/{sop}.dcm`. */
export interface InstanceUids {
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID. */
  series: string;
  /** SOP Instance UID. */
  instance: string;
}

/**
 * Splits a key into its UIDs, or returns `null` when the key does not follow the
 * `{study}/{series}/{sop}.dcm` layout with valid UIDs (such objects are ignored).
 */
export function parseInstanceKey(key: string): InstanceUids | null {
  if (!key.endsWith(".dcm")) return null;
  const parts = key.slice(0, -4).split("/");
  if (parts.length !== 3 || !parts.every(isValidUid)) return null;
  return { study: parts[0], series: parts[1], instance: parts[2] };
}
