/**
 * The choice of transfer syntax to send for a stored instance (PS3.18 8.7.3.5), given what the client asked
 * for and what this server can convert: re-encoding (lib/objects/explicit_le_body.ts) and decoding (the codecs
 * of lib/codecs).
 *
 * @module
 */

import { DECODABLE_SYNTAXES } from "../codecs/mod.ts";
import {
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
  LOSSY_SYNTAXES,
} from "../dicom/transfer_syntax.ts";

/** Syntaxes that can become Explicit VR Little Endian by re-encoding, without decoding pixels. */
export const RE_ENCODABLE = new Set([
  IMPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
]);

/**
 * The frame transfer syntaxes web viewers decode themselves: the cases of cornerstone3D's dicom-image-loader
 * `decodeImageFrame` (the loader of OHIF 3.x). Native syntaxes are listed but never reach a viewer in any other
 * form than Explicit VR Little Endian (frames go out little endian). Frames stored in another syntax that this
 * server can decode (JPEG 2000 Part 2, `.92`/`.93`) are decoded when the client leaves the syntax to the server
 * (`transfer-syntax=*` with `application/octet-stream` or any type), so that a viewer can show them.
 */
export const VIEWER_DECODABLE: ReadonlySet<string> = new Set([
  IMPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  "1.2.840.10008.1.2.5",
  ...["50", "51", "57", "70", "80", "81", "90", "91", "201", "202", "203"].map((s) =>
    `1.2.840.10008.1.2.4.${s}`
  ),
  "3.2.840.10008.1.2.4.96",
]);

/** How one instance will be sent. */
export interface SyntaxChoice {
  /** The transfer syntax of the bytes that go out. */
  transferSyntax: string;
  /** Whether the stored bytes must be re-encoded to get there. */
  convert: boolean;
  /** Set when the default was asked for but the instance goes out in another syntax. */
  warning?: string;
}

/** The conversions this server may make. */
export interface SyntaxCapabilities {
  /** Re-encode ILE/EBE/deflated to ELE. */
  reEncode: boolean;
  /** Decode compressed pixel data (lib/codecs: JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE) to produce ELE. */
  decode?: boolean;
}

/**
 * Picks how to send an instance stored as `stored`, given the client's wishes in order
 * (`"*"` = as stored, `undefined` = the default ELE, or a UID). `null` when none can be produced.
 *
 * @example
 * ```ts
 * import { chooseSyntax } from "./syntax_choice.ts";
 * chooseSyntax("1.2.840.10008.1.2.4.50", ["*"], { reEncode: true }); // as stored
 * ```
 */
export function chooseSyntax(
  stored: string,
  wanted: (string | undefined)[],
  capabilities: SyntaxCapabilities,
): SyntaxChoice | null {
  for (const wish of wanted) {
    if (wish === "*" || wish === stored) return { transferSyntax: stored, convert: false };
    if (wish === undefined || wish === EXPLICIT_VR_LITTLE_ENDIAN) {
      if (stored === EXPLICIT_VR_LITTLE_ENDIAN) return { transferSyntax: stored, convert: false };
      if (capabilities.reEncode && RE_ENCODABLE.has(stored)) {
        return { transferSyntax: EXPLICIT_VR_LITTLE_ENDIAN, convert: true };
      }
      if (capabilities.decode && DECODABLE_SYNTAXES.has(stored)) {
        if (wish === undefined && LOSSY_SYNTAXES.has(stored)) {
          // PS3.18 8.7.3.5.2: pixel data held only in lossy form may go out in its lossy syntax.
          return {
            transferSyntax: stored,
            convert: false,
            warning:
              `instance sent in its stored lossy transfer syntax ${stored} (pixel data held only in lossy form); ` +
              `ask for transfer-syntax=${EXPLICIT_VR_LITTLE_ENDIAN} to get it decoded`,
          };
        }
        return { transferSyntax: EXPLICIT_VR_LITTLE_ENDIAN, convert: true };
      }
      if (wish === undefined) {
        // The default was asked for but producing it needs decoding: send as stored and say so.
        return {
          transferSyntax: stored,
          convert: false,
          warning:
            `instance sent in its stored transfer syntax ${stored}: conversion to Explicit VR Little Endian needs a decoder this server does not have`,
        };
      }
    }
  }
  return null;
}
