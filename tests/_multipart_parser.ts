/**
 * An independent multipart parser for tests, written from RFC 2046 5.1.1 (not from lib/http/multipart.ts):
 *
 *   multipart-body := [preamble CRLF] dash-boundary CRLF body-part
 *                     *(CRLF dash-boundary CRLF body-part) CRLF dash-boundary "--" [CRLF epilogue]
 *   body-part      := header-fields CRLF body   (headers end at the first CRLFCRLF)
 *
 * The delimiter is `CRLF "--" boundary`; the first one may appear at the very start of the body
 * (no preamble). Transport padding (spaces/tabs) after a boundary is allowed before the CRLF.
 *
 * @module
 */

/** One parsed body part. */
export interface ParsedPart {
  /** Header fields with lower-cased names, values trimmed. */
  headers: Record<string, string>;
  /** Header names as written, in order (to check exact output). */
  rawHeaderLines: string[];
  body: Uint8Array;
}

/** A whole parsed multipart body. */
export interface ParsedMultipart {
  preamble: Uint8Array;
  parts: ParsedPart[];
  epilogue: Uint8Array;
}

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

function indexOf(haystack: Uint8Array, needle: Uint8Array, from = 0): number {
  const first = needle[0];
  const last = haystack.length - needle.length;
  outer: for (let i = from; i <= last; i++) {
    if (haystack[i] !== first) continue;
    for (let j = 1; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function isSpace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09;
}

/**
 * Parses `body` as a multipart entity with `boundary`. Throws an `Error` describing the first
 * deviation from RFC 2046 (missing boundary, unterminated headers, missing close delimiter...).
 */
export function parseMultipart(body: Uint8Array, boundary: string): ParsedMultipart {
  if (boundary.length < 1 || boundary.length > 70) throw new Error(`Bad boundary length ${boundary.length}`);
  const dashBoundary = encoder.encode(`--${boundary}`);
  const delimiter = encoder.encode(`\r\n--${boundary}`);

  // Locate the first dash-boundary: at offset 0, or after a preamble ending in CRLF.
  let at: number;
  let preamble: Uint8Array;
  if (startsWithAt(body, dashBoundary, 0)) {
    at = dashBoundary.length;
    preamble = body.subarray(0, 0);
  } else {
    const found = indexOf(body, delimiter);
    if (found < 0) throw new Error(`No boundary "--${boundary}" found`);
    preamble = body.subarray(0, found);
    at = found + delimiter.length;
  }

  const parts: ParsedPart[] = [];
  while (true) {
    // After a boundary: "--" closes, else optional padding then CRLF opens a part.
    if (body[at] === 0x2d && body[at + 1] === 0x2d) {
      at += 2;
      let epilogue = body.subarray(at);
      if (epilogue.length > 0) {
        let p = 0;
        while (p < epilogue.length && isSpace(epilogue[p])) p++;
        if (epilogue[p] !== 0x0d || epilogue[p + 1] !== 0x0a) {
          throw new Error(`Close delimiter not followed by CRLF at offset ${at}`);
        }
        epilogue = epilogue.subarray(p + 2);
      }
      return { preamble, parts, epilogue };
    }
    while (at < body.length && isSpace(body[at])) at++;
    if (body[at] !== 0x0d || body[at + 1] !== 0x0a) {
      throw new Error(`Boundary not followed by CRLF or "--" at offset ${at}`);
    }
    at += 2;

    // Header fields end at the first empty line; a part with no headers starts with CRLF directly.
    let headerBlock: string;
    if (body[at] === 0x0d && body[at + 1] === 0x0a) {
      headerBlock = "";
      at += 2;
    } else {
      const end = indexOf(body, encoder.encode("\r\n\r\n"), at);
      if (end < 0) throw new Error(`Unterminated part headers at offset ${at}`);
      headerBlock = latin1.decode(body.subarray(at, end));
      at = end + 4;
    }
    const headers: Record<string, string> = {};
    const rawHeaderLines: string[] = [];
    if (headerBlock !== "") {
      for (const line of headerBlock.split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon <= 0) throw new Error(`Malformed header line ${JSON.stringify(line)}`);
        rawHeaderLines.push(line);
        const name = line.slice(0, colon).trim().toLowerCase();
        if (name in headers) throw new Error(`Repeated header ${name}`);
        headers[name] = line.slice(colon + 1).trim();
      }
    }

    const next = indexOf(body, delimiter, at);
    if (next < 0) throw new Error(`Part ${parts.length + 1} has no closing delimiter (body ends short)`);
    parts.push({ headers, rawHeaderLines, body: body.subarray(at, next) });
    at = next + delimiter.length;
  }
}

function startsWithAt(haystack: Uint8Array, needle: Uint8Array, at: number): boolean {
  if (haystack.length - at < needle.length) return false;
  for (let j = 0; j < needle.length; j++) if (haystack[at + j] !== needle[j]) return false;
  return true;
}

/** The `boundary` parameter of a `multipart/...` Content-Type (quoted or not). */
export function boundaryOf(contentType: string | null): string {
  if (contentType === null) throw new Error("No Content-Type");
  const match = /;\s*boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  if (!match) throw new Error(`No boundary in ${JSON.stringify(contentType)}`);
  return match[1] ?? match[2];
}

/** Reads a whole stream into one array. */
export async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of stream) {
    chunks.push(chunk);
    total += chunk.byteLength;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}
