/**
 * The SOP classes the DIMSE service answers: Verification, the storage SOP classes of the standard, and Query/
 * Retrieve (Patient Root and Study Root; FIND, MOVE, GET).
 *
 * @module
 */

/** Verification SOP Class (PS3.4 A.4). */
export const VERIFICATION = "1.2.840.10008.1.1";

/** Query/Retrieve information models (PS3.4 C.6). */
export const QR = {
  patientFind: "1.2.840.10008.5.1.4.1.2.1.1",
  patientMove: "1.2.840.10008.5.1.4.1.2.1.2",
  patientGet: "1.2.840.10008.5.1.4.1.2.1.3",
  studyFind: "1.2.840.10008.5.1.4.1.2.2.1",
  studyMove: "1.2.840.10008.5.1.4.1.2.2.2",
  studyGet: "1.2.840.10008.5.1.4.1.2.2.3",
} as const;

/** The Q/R SOP classes and what they do. */
export const QR_MODELS: ReadonlyMap<string, { root: "patient" | "study"; op: "find" | "move" | "get" }> =
  new Map([
    [QR.patientFind, { root: "patient", op: "find" }],
    [QR.patientMove, { root: "patient", op: "move" }],
    [QR.patientGet, { root: "patient", op: "get" }],
    [QR.studyFind, { root: "study", op: "find" }],
    [QR.studyMove, { root: "study", op: "move" }],
    [QR.studyGet, { root: "study", op: "get" }],
  ]);

/** Standard storage SOP classes outside the 1.2.840.10008.5.1.4.1.1 branch (PS3.4 Table B.5-1). */
const OTHER_STORAGE = new Set([
  "1.2.840.10008.5.1.4.34.1",
  "1.2.840.10008.5.1.4.34.7",
  "1.2.840.10008.5.1.4.34.10",
  "1.2.840.10008.5.1.4.38.1",
  "1.2.840.10008.5.1.4.39.1",
  "1.2.840.10008.5.1.4.43.1",
  "1.2.840.10008.5.1.4.44.1",
  "1.2.840.10008.5.1.4.45.1",
]);

/**
 * Whether `uid` is a storage SOP class of the standard: every class under `1.2.840.10008.5.1.4.1.1.` (the
 * storage branch of PS3.4 Annex B, retired ones and those added later included) and the few elsewhere.
 *
 * @example
 * ```ts
 * import { isStorageClass } from "./sop_classes.ts";
 * isStorageClass("1.2.840.10008.5.1.4.1.1.2"); // true (CT Image Storage)
 * isStorageClass("1.2.840.10008.5.1.4.1.2.2.1"); // false (Study Root FIND)
 * ```
 */
export function isStorageClass(uid: string): boolean {
  return (uid.startsWith("1.2.840.10008.5.1.4.1.1.") && /^[0-9.]+$/.test(uid)) || OTHER_STORAGE.has(uid);
}
