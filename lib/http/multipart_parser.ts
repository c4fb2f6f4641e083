/**
 * A streaming `multipart/related` reader (RFC 2046 5.1.1, RFC 2387, PS3.18 8.6.1.2) for STOW-RS request
 * bodies: parts come out one at a time as streams, so a request of any size passes through in bounded memory.
 *
 * @module
 */

import { MalformedError } from "../util/errors.ts";

/** A media type with lower-cased type, subtype and parameter names, parameter values unquoted. */
export interface MediaType {
  /** The type, lower case. */
  type: string;
  /** The subtype, lower case. */
  subtype: string;
  /** The parameters, names lower case. */
  params: Record<string, string>;
}

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Parses a `Content-Type` value. Parameter values may be quoted or not (PS3.18 8.7 treats both alike;
 * unquoted values may contain "/" as clients send `type=application/dicom`). Throws a `SyntaxError` when
 * it is malformed.
 *
 * @example
 * ```ts
 * import { parseMediaType } from "./multipart_parser.ts";
 * const t = parseMediaType('multipart/related; type="application/dicom"; boundary=abc');
 * t.params.boundary; // "abc"
 * ```
 */
export function parseMediaType(value: string): MediaType {
  const s = value.trim();
  const slash = s.indexOf("/");
  const semi = s.indexOf(";");
  const end = semi < 0 ? s.length : semi;
  const type = s.slice(0, slash).trim().toLowerCase();
  const subtype = s.slice(slash + 1, end).trim().toLowerCase();
  if (slash < 0 || slash > end || !TOKEN.test(type) || !TOKEN.test(subtype)) {
    throw new MalformedError(`Malformed media type ${JSON.stringify(value)}: expected type/subtype`);
  }
  const params: Record<string, string> = {};
  let i = end;
  while (i < s.length) {
    i++; // the ";"
    while (s[i] === " " || s[i] === "\t") i++;
    if (i >= s.length || s[i] === ";") continue; // empty parameter
    const eq = s.indexOf("=", i);
    if (eq < 0) {
      throw new MalformedError(`Malformed media type ${JSON.stringify(value)}: parameter without "="`);
    }
    const name = s.slice(i, eq).trim().toLowerCase();
    if (!TOKEN.test(name)) {
      throw new MalformedError(`Malformed media type ${JSON.stringify(value)}: bad parameter name at ${i}`);
    }
    i = eq + 1;
    let v = "";
    if (s[i] === '"') {
      i++;
      while (i < s.length && s[i] !== '"') {
        if (s[i] === "\\" && i + 1 < s.length) i++;
        v += s[i++];
      }
      if (s[i] !== '"') {
        throw new MalformedError(
          `Malformed media type ${JSON.stringify(value)}: unterminated quoted "${name}"`,
        );
      }
      i++;
      while (s[i] === " " || s[i] === "\t") i++;
      if (i < s.length && s[i] !== ";") {
        throw new MalformedError(
          `Malformed media type ${JSON.stringify(value)}: text after quoted "${name}"`,
        );
      }
    } else {
      const next = s.indexOf(";", i);
      const stop = next < 0 ? s.length : next;
      v = s.slice(i, stop).trim();
      i = stop;
    }
    params[name] = v;
  }
  return { type, subtype, params };
}

/** One part of a multipart body. */
export interface MultipartPart {
  /** 1-based position in the body. */
  index: number;
  /** The part's header fields. */
  headers: Headers;
  /**
   * The part's bytes. Read it to the end or cancel it before asking for the next part; a body left
   * unfinished is skipped then. It errors if the request ends before the part's closing delimiter.
   */
  body: ReadableStream<Uint8Array>;
}

/** Options for {@linkcode readMultipart}. */
export interface ReadMultipartOptions {
  /** Largest header block of one part, its closing blank line included (default 16 KiB). */
  maxHeaderBytes?: number;
}

const CR = 0x0d;
const LF = 0x0a;
const DASH = 0x2d;
const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/**
 * Reads the parts of a multipart body as they arrive. Throws (from the iteration) a `SyntaxError` for a
 * malformed body, e.g. one that ends before its close delimiter, and passes on errors of `body` (a client
 * gone away); the part being read errors the same way, so whatever consumes it knows it is incomplete.
 *
 * @example
 * ```ts
 * import { readMultipart } from "./multipart_parser.ts";
 * const body = new Response("--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n").body!;
 * for await (const part of readMultipart(body, "b")) {
 *   await new Response(part.body).text(); // "hello"
 * }
 * ```
 */
export async function* readMultipart(
  body: ReadableStream<Uint8Array>,
  boundary: string,
  options: ReadMultipartOptions = {},
): AsyncGenerator<MultipartPart, void, undefined> {
  // RFC 2046 says 1-70 characters, but Orthanc 1.10's DICOMweb plugin sends 73: accept up to 200.
  if (boundary.length < 1 || boundary.length > 200 || /[^\x20-\x7e]/.test(boundary)) {
    throw new MalformedError(
      `Invalid multipart boundary ${
        JSON.stringify(boundary)
      }: use 1-200 printable characters (RFC 2046 allows 70)`,
    );
  }
  const scanner = new Scanner(body.getReader(), encoder.encode(`\r\n--${boundary}`));
  const maxHeaderBytes = options.maxHeaderBytes ?? 16 * 1024;
  try {
    // The preamble (if any) is discarded; the first delimiter may start the body without a CRLF.
    while ((await scanner.bodyChunk(0)) !== null);
    for (let index = 1;; index++) {
      if (await scanner.afterDelimiter()) return;
      const headers = await scanner.headers(maxHeaderBytes, index);
      const status = { state: "open" as "open" | "done" | "cancelled" };
      const partBody = new ReadableStream<Uint8Array>({
        async pull(controller) {
          const chunk = await scanner.bodyChunk(index);
          if (status.state !== "open") {
            // the next part was asked for while this body was still being read: never let it look whole
            controller.error(
              new TypeError(`Part ${index} was left unfinished: read or cancel a body before the next part`),
            );
            return;
          }
          if (chunk === null) {
            status.state = "done";
            controller.close();
          } else controller.enqueue(chunk);
        },
        cancel() {
          status.state = "cancelled";
        },
      }, { highWaterMark: 0 });
      yield { index, headers, body: partBody };
      if (status.state !== "done") {
        // unread or cancelled: skip to the part's end (a pull in flight finishes first)
        status.state = "cancelled";
        await scanner.idle();
        if (!scanner.atDelimiter) { while ((await scanner.bodyChunk(index)) !== null); }
      }
    }
  } finally {
    await scanner.close();
  }
}

/** Finds delimiters in a byte stream; holds at most one chunk plus a partial delimiter. */
class Scanner {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #delimiter: Uint8Array;
  #shifts: Uint8Array;
  /** Unconsumed bytes; starts with a virtual CRLF so a body may open with the dash-boundary. */
  #buf: Uint8Array = encoder.encode("\r\n");
  #ended = false;
  #error?: { error: unknown };
  #busy: Promise<unknown> = Promise.resolve();
  /** The last body chunk call stopped at a delimiter (which it consumed). */
  atDelimiter = false;

  constructor(reader: ReadableStreamDefaultReader<Uint8Array>, delimiter: Uint8Array) {
    this.#reader = reader;
    this.#delimiter = delimiter;
    this.#shifts = shiftTable(delimiter);
  }

  /** Resolves when no read is in flight. */
  async idle(): Promise<void> {
    await this.#busy.catch(() => {});
  }

  /** Appends the next chunk; `false` at the end of the stream. */
  async #fill(): Promise<boolean> {
    if (this.#error) throw this.#error.error;
    if (this.#ended) return false;
    let result;
    try {
      result = await this.#reader.read();
    } catch (error) {
      this.#error = { error };
      throw error;
    }
    if (result.done) {
      this.#ended = true;
      return false;
    }
    const chunk = result.value;
    if (this.#buf.byteLength === 0) this.#buf = chunk;
    else {
      const joined = new Uint8Array(this.#buf.byteLength + chunk.byteLength);
      joined.set(this.#buf);
      joined.set(chunk, this.#buf.byteLength);
      this.#buf = joined;
    }
    return true;
  }

  /**
   * The next bytes of the current part (or of the preamble when `index` is 0), or `null` once its
   * delimiter has been consumed. Errors when the stream ends first.
   */
  bodyChunk(index: number): Promise<Uint8Array | null> {
    const run = this.#bodyChunk(index);
    this.#busy = run;
    return run;
  }

  async #bodyChunk(index: number): Promise<Uint8Array | null> {
    this.atDelimiter = false;
    while (true) {
      const buf = this.#buf;
      const { at, full } = findDelimiter(buf, this.#delimiter, this.#shifts);
      if (full && at === 0) {
        this.#buf = buf.subarray(this.#delimiter.byteLength);
        this.atDelimiter = true;
        return null;
      }
      // bytes before a delimiter (the end comes with the next call) or before a possible start of one
      if (at > 0) {
        this.#buf = buf.subarray(at);
        return buf.subarray(0, at);
      }
      if (!(await this.#fill())) {
        throw new MalformedError(
          index === 0
            ? "Malformed multipart body: the boundary given in Content-Type never occurs"
            : `Malformed multipart body: it ends inside part ${index} (no closing boundary)`,
        );
      }
    }
  }

  /** After a delimiter: `true` for the close delimiter, `false` when a part follows (its CRLF consumed). */
  async afterDelimiter(): Promise<boolean> {
    this.atDelimiter = false;
    while (this.#buf.byteLength < 2) {
      if (!(await this.#fill())) {
        throw new MalformedError("Malformed multipart body: it ends after a boundary");
      }
    }
    if (this.#buf[0] === DASH && this.#buf[1] === DASH) return true;
    // transport padding, then CRLF
    while (true) {
      let i = 0;
      while (i < this.#buf.byteLength && (this.#buf[i] === 0x20 || this.#buf[i] === 0x09)) i++;
      // before looking for the CRLF, so the limit holds however the bytes arrive
      if (i > 1024) throw new MalformedError("Malformed multipart body: too much padding after a boundary");
      if (i + 2 <= this.#buf.byteLength) {
        if (this.#buf[i] !== CR || this.#buf[i + 1] !== LF) {
          throw new MalformedError('Malformed multipart body: a boundary is not followed by CRLF or "--"');
        }
        this.#buf = this.#buf.subarray(i + 2);
        return false;
      }
      if (!(await this.#fill())) {
        throw new MalformedError("Malformed multipart body: it ends after a boundary");
      }
    }
  }

  /** Reads a part's header block up to and including the empty line. */
  async headers(maxBytes: number, index: number): Promise<Headers> {
    while (true) {
      const buf = this.#buf;
      if (buf.byteLength >= 2 && buf[0] === CR && buf[1] === LF) {
        this.#buf = buf.subarray(2);
        return new Headers();
      }
      const end = indexOfCrlfCrlf(buf);
      // The limit holds however the bytes arrive: a block over it is refused when it came in one chunk too.
      if (end >= 0 && end + 4 <= maxBytes) {
        this.#buf = buf.subarray(end + 4);
        return parseHeaderBlock(latin1.decode(buf.subarray(0, end)), index);
      }
      if (end >= 0 || buf.byteLength >= maxBytes) {
        throw new MalformedError(
          `Malformed multipart body: the headers of part ${index} exceed ${maxBytes} bytes`,
        );
      }
      if (!(await this.#fill())) {
        throw new MalformedError(`Malformed multipart body: it ends inside the headers of part ${index}`);
      }
    }
  }

  async close(): Promise<void> {
    await this.idle();
    if (!this.#ended && !this.#error) await this.#reader.cancel().catch(() => {});
    this.#reader.releaseLock();
  }
}

/** Horspool's shifts for the delimiter: how far the window may move given its last byte. */
function shiftTable(delimiter: Uint8Array): Uint8Array {
  const m = delimiter.byteLength; // at most 74
  const table = new Uint8Array(256).fill(m);
  for (let i = 0; i < m - 1; i++) table[delimiter[i]] = m - 1 - i;
  return table;
}

/**
 * Where the delimiter starts in `buf` (`full`), or where a partial match running to the end of `buf`
 * starts (bytes before `at` are free of delimiters either way). Horspool's search: about one byte in
 * `delimiter.length` is looked at.
 */
function findDelimiter(
  buf: Uint8Array,
  delimiter: Uint8Array,
  shifts: Uint8Array,
): { at: number; full: boolean } {
  const n = buf.byteLength;
  const m = delimiter.byteLength;
  const last = m - 1;
  const lastByte = delimiter[last];
  for (let i = 0; i <= n - m;) {
    const c = buf[i + last];
    if (c === lastByte) {
      let j = last - 1;
      while (j >= 0 && buf[i + j] === delimiter[j]) j--;
      if (j < 0) return { at: i, full: true };
    }
    i += shifts[c];
  }
  // a delimiter may begin in the last m - 1 bytes and continue in the next chunk
  for (let i = Math.max(0, n - last); i < n; i++) {
    i = buf.indexOf(CR, i);
    if (i < 0) break;
    let j = 1;
    while (i + j < n && buf[i + j] === delimiter[j]) j++;
    if (i + j === n) return { at: i, full: false };
  }
  return { at: n, full: false };
}

function indexOfCrlfCrlf(buf: Uint8Array): number {
  let from = 0;
  while (true) {
    const i = buf.indexOf(CR, from);
    if (i < 0 || i + 3 >= buf.byteLength) return -1;
    if (buf[i + 1] === LF && buf[i + 2] === CR && buf[i + 3] === LF) return i;
    from = i + 1;
  }
}

function parseHeaderBlock(block: string, index: number): Headers {
  const headers = new Headers();
  const lines: string[] = [];
  for (const line of block.split("\r\n")) {
    if ((line.startsWith(" ") || line.startsWith("\t")) && lines.length > 0) {
      lines[lines.length - 1] += " " + line.trim(); // obsolete line folding
    } else lines.push(line);
  }
  for (const line of lines) {
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).trim();
    if (colon <= 0 || !TOKEN.test(name)) {
      throw new MalformedError(
        `Malformed multipart body: bad header line in part ${index}: ${JSON.stringify(line.slice(0, 80))}`,
      );
    }
    try {
      headers.append(name, line.slice(colon + 1).trim());
    } catch {
      throw new MalformedError(`Malformed multipart body: bad value of header ${name} in part ${index}`);
    }
  }
  return headers;
}
