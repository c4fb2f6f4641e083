/**
 * Transfer syntaxes (PS3.5 10, PS3.6 A): the UIDs this server names, and what each says about how a data set
 * is encoded. The one place these facts are written; the choice of what to send for a stored instance, which
 * depends on the codecs, is in lib/imaging/syntax_choice.ts.
 *
 * @module
 */

export const IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2";
/** Explicit VR Little Endian, the default transfer syntax of DICOMweb. */
export const EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1";
/** Deflated Explicit VR Little Endian. */
export const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99";
/** Explicit VR Big Endian (retired). */
export const EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2";
/** JPIP Referenced Deflate: a deflated data set too. */
const JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95";
/** RLE Lossless. */
export const RLE_LOSSLESS = "1.2.840.10008.1.2.5";
const JPEG = "1.2.840.10008.1.2.4.";

/** Native (uncompressed) transfer syntaxes: frames are already samples. */
export const NATIVE_SYNTAXES: ReadonlySet<string> = new Set([
  IMPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
]);

/** Syntaxes whose data set after the File Meta is deflated (RFC 1951). */
export const DEFLATED_SYNTAXES: ReadonlySet<string> = new Set([
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  JPIP_REFERENCED_DEFLATE,
]);

/**
 * Syntaxes whose pixel data is (or may be) lossy: what PS3.18 8.7.3.5.2 lets a server send as stored when the
 * client asked for the default. JPEG 2000 (.91), HTJ2K (.203) and JPEG-LS near-lossless (.81) may hold
 * reversibly coded data too; the syntax alone cannot tell, so they count as lossy.
 */
export const LOSSY_SYNTAXES: ReadonlySet<string> = new Set([
  ...[
    "50",
    "51",
    "52",
    "53",
    "54",
    "55",
    "56",
    "58",
    "59",
    "60",
    "61",
    "62",
    "63",
    "64",
    "65",
    "66",
    "81",
    "91",
    "93",
    "203",
  ]
    .map((s) => JPEG + s),
  ...["100", "101", "102", "103", "104", "105", "106", "107", "108", "110", "111"].map((s) => JPEG + s),
]);

/** How a data set is encoded: explicit or implicit VR, little or big endian. */
export interface Encoding {
  /** Whether VRs are written explicitly. */
  explicit: boolean;
  /** Whether numbers are little endian. */
  little: boolean;
}

/** Implicit VR Little Endian's encoding. */
export const IMPLICIT_LE: Encoding = Object.freeze({ explicit: false, little: true });
const EXPLICIT_LE: Encoding = Object.freeze({ explicit: true, little: true });
const EXPLICIT_BE: Encoding = Object.freeze({ explicit: true, little: false });

/**
 * The encoding a transfer syntax implies for its data set: every syntax but Implicit VR Little Endian and
 * Explicit VR Big Endian is explicit VR little endian (compressed ones included; deflated ones once inflated).
 *
 * @example
 * ```ts
 * import { encodingOf } from "./transfer_syntax.ts";
 * encodingOf("1.2.840.10008.1.2.2"); // { explicit: true, little: false }
 * ```
 */
export function encodingOf(transferSyntax: string): Encoding {
  if (transferSyntax === IMPLICIT_VR_LITTLE_ENDIAN) return IMPLICIT_LE;
  if (transferSyntax === EXPLICIT_VR_BIG_ENDIAN) return EXPLICIT_BE;
  return EXPLICIT_LE;
}
