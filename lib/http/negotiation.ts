/**
 * Accept header parsing and media type negotiation (PS3.18 8.7, RFC 9110 12.5.1).
 *
 * @module
 */

import { MalformedError, NotAcceptableError } from "../util/errors.ts";

/** One media range of an Accept header. */
export interface MediaRange {
  /** Lower-cased type, e.g. `multipart` or `*`. */
  type: string;
  /** Lower-cased subtype, e.g. `related` or `*`. */
  subtype: string;
  /** Parameters with lower-cased names and unquoted values (`q` removed). */
  params: Record<string, string>;
  /** Quality 0..1 (default 1). */
  q: number;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Parses an Accept header. An absent or empty header means `* / *`.
 *
 * Liberal where the meaning is clear, as clients really send it: q-values like `q=.2`, `q=1.` or `q=0.50000`
 * (above 1 counts as 1), a bare `*` for `* / *` (Java's default header), a parameter without a value (ignored),
 * the same range twice, empty list elements. Throws a `MalformedError` naming the problem only for what
 * cannot be understood at all: a range without a subtype, a quoted value left open, a q that is not a number.
 *
 * @example
 * ```ts
 * import { parseAccept } from "./negotiation.ts";
 * const [range] = parseAccept('multipart/related; type="application/dicom"; q=0.9');
 * range.params.type; // "application/dicom"
 * ```
 */
export function parseAccept(header: string | null | undefined): MediaRange[] {
  if (header === null || header === undefined || header.trim() === "") {
    return [{ type: "*", subtype: "*", params: {}, q: 1 }];
  }
  const ranges: MediaRange[] = [];
  const s = header;
  let i = 0;
  const skipSpace = () => {
    while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
  };
  const readToken = (what: string): string => {
    const start = i;
    while (i < s.length && !' \t,;="/'.includes(s[i])) i++;
    const token = s.slice(start, i);
    if (!TOKEN.test(token)) {
      throw new MalformedError(
        `Malformed Accept header: expected a ${what} at position ${start} in ${JSON.stringify(s)}`,
      );
    }
    return token;
  };
  while (i < s.length) {
    skipSpace();
    if (s[i] === ",") { // empty list element
      i++;
      continue;
    }
    if (i >= s.length) break;
    const type = readToken("media type").toLowerCase();
    let subtype: string;
    if (type === "*" && s[i] !== "/") subtype = "*"; // "*" alone: Java's HttpURLConnection sends "*; q=.2"
    else {
      if (s[i] !== "/") {
        throw new MalformedError(
          `Malformed Accept header: "${type}" has no "/subtype" in ${JSON.stringify(s)}`,
        );
      }
      i++;
      subtype = readToken("media subtype").toLowerCase();
    }
    if (type === "*" && subtype !== "*") {
      throw new MalformedError(`Malformed Accept header: "*/${subtype}" is not a valid media range`);
    }
    const params: Record<string, string> = {};
    let q = 1;
    skipSpace();
    while (s[i] === ";") {
      i++;
      skipSpace();
      if (i >= s.length || s[i] === "," || s[i] === ";") continue; // tolerate empty parameter
      const name = readToken("parameter name").toLowerCase();
      skipSpace();
      if (s[i] !== "=") continue; // a parameter without a value says nothing: ignored
      i++;
      skipSpace();
      let value: string;
      if (s[i] === '"') {
        i++;
        value = "";
        while (i < s.length && s[i] !== '"') {
          if (s[i] === "\\" && i + 1 < s.length) i++;
          value += s[i++];
        }
        if (s[i] !== '"') {
          throw new MalformedError(`Malformed Accept header: unterminated quoted value of "${name}"`);
        }
        i++;
      } else {
        // Unquoted values are tokens by RFC 9110, but clients (OHIF) send type=application/octet-stream
        // unquoted, and PS3.18 treats it as equal to the quoted form: accept "/" and "+" in them.
        const start = i;
        while (i < s.length && !' \t,;"'.includes(s[i])) i++;
        value = s.slice(start, i);
        if (!/^[!#$%&'*+.^_`|~0-9A-Za-z\-/:=]+$/.test(value)) {
          throw new MalformedError(
            `Malformed Accept header: parameter "${name}" has no valid value at position ${start} in ${
              JSON.stringify(s)
            }`,
          );
        }
      }
      if (name === "q") {
        // RFC 9110 says 0, 0.x to three digits, or 1; clients send ".2", "1." and "0.50000" too
        if (!/^(?:\d+\.?\d*|\.\d+)$/.test(value)) {
          throw new MalformedError(`Malformed Accept header: q=${value} is not a number between 0 and 1`);
        }
        q = Math.min(1, Number(value));
      } else {
        params[name] = value;
      }
      skipSpace();
    }
    if (i < s.length && s[i] !== ",") {
      throw new MalformedError(
        `Malformed Accept header: unexpected ${JSON.stringify(s[i])} at position ${i} in ${
          JSON.stringify(s)
        }`,
      );
    }
    i++;
    ranges.push({ type, subtype, params, q });
  }
  if (ranges.length === 0) return [{ type: "*", subtype: "*", params: {}, q: 1 }];
  return ranges;
}

/** Ranges with q > 0, best first; equal q keeps the client's order, more specific first. */
export function rankRanges(ranges: MediaRange[]): MediaRange[] {
  const specificity = (r: MediaRange) =>
    (r.type === "*" ? 0 : r.subtype === "*" ? 1 : 2) + Object.keys(r.params).length * 0.1;
  return ranges
    .map((r, index) => ({ r, index }))
    .filter(({ r }) => r.q > 0)
    .sort((a, b) => b.r.q - a.r.q || specificity(b.r) - specificity(a.r) || a.index - b.index)
    .map(({ r }) => r);
}

/** What a client accepts for a resource made of DICOM instances. */
export interface DicomChoice {
  /** `true` for `multipart/related; type="application/dicom"`, `false` for a bare `application/dicom`. */
  multipart: boolean;
  /**
   * Transfer syntaxes the client takes, best first: a UID, `"*"` (as stored), or
   * `undefined` (no parameter: the media type's default).
   */
  transferSyntaxes: (string | undefined)[];
}

/** What can be served, for 406 messages. */
export const DICOM_MEDIA_TYPES =
  'multipart/related; type="application/dicom" (optionally with transfer-syntax=*)';

function isAny(value: string | undefined): boolean {
  return value === undefined || value === "*/*";
}

/**
 * Negotiates a DICOM instance retrieval (PS3.18 8.7.3.5). `single` allows a bare
 * `application/dicom` (one instance, not multipart). Throws a 406-worthy `NotAcceptableError`.
 */
export function negotiateDicom(accept: string | null, options: { single: boolean }): DicomChoice {
  const ranked = rankRanges(parseAccept(accept));
  let multipart: boolean | undefined;
  const syntaxes: (string | undefined)[] = [];
  for (const r of ranked) {
    let thisMultipart: boolean;
    let ts: string | undefined;
    if (r.type === "*" || (r.type === "multipart" && r.subtype === "*")) {
      thisMultipart = true;
      ts = undefined;
    } else if (r.type === "multipart" && r.subtype === "related") {
      const inner = r.params.type?.toLowerCase();
      if (!isAny(inner) && inner !== "application/dicom") continue;
      thisMultipart = true;
      ts = r.params["transfer-syntax"];
    } else if (r.type === "application" && (r.subtype === "dicom" || r.subtype === "*")) {
      if (!options.single) continue;
      thisMultipart = false;
      ts = r.subtype === "dicom" ? r.params["transfer-syntax"] : undefined;
    } else {
      continue;
    }
    if (multipart === undefined) multipart = thisMultipart;
    if (thisMultipart !== multipart) continue;
    if (!syntaxes.includes(ts)) syntaxes.push(ts);
  }
  if (multipart === undefined) {
    const single = options.single ? ' or "application/dicom"' : "";
    throw new NotAcceptableError(
      `None of the media types in Accept can be served: this resource is available as ${DICOM_MEDIA_TYPES}${single}`,
    );
  }
  return { multipart, transferSyntaxes: syntaxes };
}

/**
 * Throws a `NotAcceptableError` (406) unless the client takes `application/dicom+json`, JSON, or anything;
 * `what` ends the message (`metadata is application/dicom+json`).
 */
export function acceptJson(accept: string | null, what: string): void {
  const ok = rankRanges(parseAccept(accept)).some((r) =>
    (r.type === "*" && r.subtype === "*") ||
    (r.type === "application" && ["dicom+json", "json", "*"].includes(r.subtype))
  );
  if (!ok) throw new NotAcceptableError(`None of the media types in Accept can be served: ${what}`);
}
