/**
 * A small HTTP/1.1 client kept alive per origin: what `S3Store` uses for GetObject, listings and PutObject.
 *
 * Deno's `fetch` copies a `Uint8Array` body before sending it and costs about 0.7 ms of CPU per request
 * besides; for STOW-RS, which writes hundreds of 0.5 MB objects a second, that was a sixth of the server's
 * CPU and tens of MB of garbage. This client writes the caller's bytes straight to the socket. On the way
 * back, {@linkcode Http1Client.request} reads a small answer whole (a PUT's), and
 * {@linkcode Http1Client.stream} hands out the body as a byte stream read straight from the socket into the
 * reader's buffer: no copy, and one socket read per chunk instead of `fetch`'s body machinery (about 0.5 s of
 * CPU per GB less in Deno 2.9). Bodies may have a Content-Length, be chunked, or run to the end of the
 * connection.
 *
 * A connection is reused while the server keeps it open. One taken from the pool that fails before any byte
 * of an answer came back (the server closed it while it was idle) is replaced by a new one at once; every
 * other failure is the caller's to retry. Aborting the signal closes the connection.
 *
 * @module
 */

/** One request: `url` holds the path and query as they go on the wire (already encoded). */
export interface Http1Request {
  method: string;
  url: URL;
  /** Header names and values (no Host, no Content-Length: both are added). */
  headers: Record<string, string>;
  /** The body; none for a GET (no Content-Length is sent then). */
  body?: Uint8Array;
  signal?: AbortSignal;
}

/** The answer, body read whole. */
export interface Http1Response {
  status: number;
  headers: Headers;
  body: Uint8Array<ArrayBuffer>;
}

/**
 * The answer with its body streaming from the connection (`null`: the answer has none). The connection goes
 * back to the pool once the body is read to its end; cancelling the body, or aborting the request's signal
 * while it streams, closes the connection.
 */
export interface Http1StreamResponse {
  status: number;
  headers: Headers;
  body: ReadableStream<Uint8Array> | null;
}

/** The parsed head of an answer, and the reader positioned at its body. */
interface Head {
  status: number;
  headers: Headers;
  reader: ResponseReader;
  /** Whether the server keeps the connection open after this answer. */
  keepAlive: boolean;
  /** The request body could not be written whole (the answer came early). */
  writeFailed: boolean;
}

/** How a body is framed: a length, chunked, or up to the end of the connection. */
type Framing = { kind: "length"; left: number } | { kind: "chunked"; left: number; ended: boolean } | {
  kind: "close";
};

/** Bytes a default (non-BYOB) reader of a streamed body gets per read. */
const STREAM_CHUNK = 256 * 1024;

/** Options for {@linkcode Http1Client}. */
export interface Http1ClientOptions {
  /** Idle connections kept per origin (default 64). */
  maxIdle?: number;
  /** A connection idle longer than this is closed, not reused (default 4000 ms, below common server timeouts). */
  idleMs?: number;
  /** Largest response body read (default 1 MiB: S3 answers to a PUT are empty or a short XML error). */
  maxBodyBytes?: number;
  /** PEM certificates trusted for `https:` besides Deno's root store (as `Deno.startTls` takes them). */
  caCerts?: string[];
  /** Opens a connection to `url`'s host (default: TCP, then TLS for `https:`). */
  connect?: (url: URL) => Promise<Deno.Conn>;
}

/** A pooled connection that the server had closed: nothing of the answer came back on it. */
class StaleConnection extends Error {}

const CRLF = new Uint8Array([13, 10]);
const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

/** Keep-alive HTTP/1.1 connections per origin (`http:` and `https:`). */
export class Http1Client {
  #idle = new Map<string, { conn: Deno.Conn; since: number }[]>();
  /** Each open connection's reader, kept across the answers on it. */
  #readers = new WeakMap<Deno.Conn, ResponseReader>();
  #maxIdle: number;
  #idleMs: number;
  #maxBody: number;
  #connect: (url: URL) => Promise<Deno.Conn>;
  #closed = false;
  /** Closes expired idle connections of every origin while any are pooled (a quiet bucket's too). */
  #sweeper?: ReturnType<typeof setInterval>;

  constructor(options: Http1ClientOptions = {}) {
    this.#maxIdle = options.maxIdle ?? 64;
    this.#idleMs = options.idleMs ?? 4000;
    this.#maxBody = options.maxBodyBytes ?? 1024 * 1024;
    this.#connect = options.connect ?? ((url) => connect(url, options.caCerts));
  }

  /** Sends `request` and reads the answer whole; throws on network errors and on an aborted signal. */
  async request(request: Http1Request): Promise<Http1Response> {
    return await this.#send(request, async (head) => {
      const { reader } = head;
      let body: Uint8Array<ArrayBuffer>;
      let reusable = head.keepAlive;
      const length = head.headers.get("content-length");
      const framing = framingOf(head);
      if (framing.kind === "chunked") body = await reader.chunked(this.#maxBody);
      else if (framing.kind === "length") {
        if (framing.left > this.#maxBody) {
          throw new Error(
            `HTTP answer with Content-Length ${length}: at most ${this.#maxBody} bytes are read`,
          );
        }
        body = await reader.bytes(framing.left);
      } else {
        body = await reader.rest(this.#maxBody);
        reusable = false;
      }
      return {
        value: { status: head.status, headers: head.headers, body },
        release: reusable && !head.writeFailed && reader.drained ? "pool" : "close",
      };
    });
  }

  /**
   * Sends `request` and resolves once the head of the answer is in; the body streams from the connection
   * (see {@linkcode Http1StreamResponse}). Throws on network errors and on an aborted signal.
   */
  async stream(request: Http1Request): Promise<Http1StreamResponse> {
    const { signal } = request;
    const origin = originOf(request.url);
    return await this.#send<Http1StreamResponse>(request, (head, conn) => {
      const framing = framingOf(head);
      if ((framing.kind === "length" && framing.left === 0) || request.method === "HEAD") {
        const reusable = head.keepAlive && !head.writeFailed && head.reader.drained;
        return {
          value: { status: head.status, headers: head.headers, body: null },
          release: reusable ? "pool" : "close",
        };
      }
      const reusable = head.keepAlive && !head.writeFailed && framing.kind !== "close";
      let finished = false;
      const finish = (outcome: "end" | "close") => {
        if (finished) return;
        finished = true;
        signal?.removeEventListener("abort", onAbort);
        if (outcome === "end" && reusable && head.reader.drained) this.#give(origin, conn);
        else closeQuietly(conn);
      };
      const onAbort = () => finish("close");
      signal?.addEventListener("abort", onAbort, { once: true });
      const reader = head.reader;
      const body: ReadableStream<Uint8Array> = new ReadableStream({
        type: "bytes",
        // a default reader gets buffers of this size: no bigger than the body (a header's ranged GET is a few
        // KiB, and a fresh 256 KiB buffer per answer cost more than the rest of the request)
        autoAllocateChunkSize: framing.kind === "length"
          ? Math.min(STREAM_CHUNK, framing.left)
          : STREAM_CHUNK,
        async pull(controller: ReadableByteStreamController) {
          const request = controller.byobRequest!;
          const view = request.view as Uint8Array;
          let n: number | null;
          try {
            n = await reader.body(framing, view);
          } catch (error) {
            finish("close");
            throw signal?.aborted ? signal.reason : error;
          }
          if (n === null) {
            finish("end");
            controller.close();
            request.respond(0);
            return;
          }
          request.respond(n);
          if (framing.kind === "length" && framing.left === 0) {
            finish("end");
            controller.close();
          }
        },
        cancel() {
          finish("close");
        },
      });
      return { value: { status: head.status, headers: head.headers, body }, release: "keep" };
    });
  }

  /**
   * Takes or opens a connection, writes `request`, reads the head of the answer and passes it to `answer`,
   * which says what becomes of the connection: back to the pool, closed, or kept by the body it returns.
   */
  async #send<T>(
    request: Http1Request,
    answer: (head: Head, conn: Deno.Conn) => Promise<Answered<T>> | Answered<T>,
  ): Promise<T> {
    const { url, signal } = request;
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TypeError(`Http1Client sends http: and https: only, not ${url.protocol}`);
    }
    signal?.throwIfAborted();
    const origin = originOf(url);
    let head = `${request.method} ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
    for (const name in request.headers) {
      const value = request.headers[name];
      if (/[\r\n:]/.test(name) || /[\r\n]/.test(value)) {
        throw new TypeError(`Invalid header for ${request.method} ${origin}: ${JSON.stringify(name)}`);
      }
      head += `${name}: ${value}\r\n`;
    }
    if (request.body) head += `content-length: ${request.body.byteLength}\r\n`;
    head += "\r\n";
    const headBytes = encoder.encode(head);
    for (;;) {
      const pooled = this.#take(origin);
      let conn: Deno.Conn | undefined = pooled;
      const onAbort = () => conn && closeQuietly(conn);
      signal?.addEventListener("abort", onAbort, { once: true });
      let release: Answered<T>["release"] = "close";
      try {
        conn ??= await untilAborted(this.#connect(url), signal);
        const parsed = await this.#exchange(conn, headBytes, request.body, pooled !== undefined);
        const answered = await answer(parsed, conn);
        release = answered.release;
        return answered.value;
      } catch (error) {
        release = "close";
        if (signal?.aborted) throw signal.reason;
        if (error instanceof StaleConnection) continue;
        // a TypeError, as `fetch` throws for what went wrong on the way
        throw new TypeError(
          `${request.method} ${origin}${url.pathname} failed: ${(error as Error).message}`,
          {
            cause: error,
          },
        );
      } finally {
        signal?.removeEventListener("abort", onAbort);
        if (conn && release === "pool") this.#give(origin, conn);
        else if (conn && release === "close") closeQuietly(conn);
      }
    }
  }

  /** Closes the idle connections; requests in flight finish on theirs, which are then closed. */
  close(): void {
    this.#closed = true;
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    for (const list of this.#idle.values()) for (const { conn } of list) closeQuietly(conn);
    this.#idle.clear();
  }

  #take(origin: string): Deno.Conn | undefined {
    const list = this.#idle.get(origin);
    const now = Date.now();
    while (list && list.length > 0) {
      const { conn, since } = list.pop()!;
      if (now - since <= this.#idleMs) return conn;
      closeQuietly(conn);
    }
    return undefined;
  }

  #give(origin: string, conn: Deno.Conn): void {
    let list = this.#idle.get(origin);
    if (!list) this.#idle.set(origin, list = []);
    if (this.#closed || list.length >= this.#maxIdle) return closeQuietly(conn);
    list.push({ conn, since: Date.now() });
    if (this.#sweeper === undefined) {
      const sweeper = setInterval(() => this.#sweep(), this.#idleMs);
      Deno.unrefTimer(sweeper as unknown as number); // never what keeps the process alive
      this.#sweeper = sweeper;
    }
  }

  #sweep(): void {
    const now = Date.now();
    for (const [origin, list] of this.#idle) {
      // the oldest are first
      while (list.length > 0 && now - list[0].since > this.#idleMs) closeQuietly(list.shift()!.conn);
      if (list.length === 0) this.#idle.delete(origin);
    }
    if (this.#idle.size === 0) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  /** Writes the request and reads the head of the answer on `conn`. */
  async #exchange(
    conn: Deno.Conn,
    head: Uint8Array,
    body: Uint8Array | undefined,
    pooled: boolean,
  ): Promise<Head> {
    // a connection's reader (and its buffer) serves each answer on it: one comes back to the pool drained
    let reader = this.#readers.get(conn);
    if (reader === undefined) this.#readers.set(conn, reader = new ResponseReader(conn));
    else reader.reset();
    let writeError: { error: unknown } | undefined;
    try {
      await writeAll(conn, head);
      if (body) await writeAll(conn, body);
    } catch (error) {
      // the server may have answered (403, 413) and stopped reading: that answer is read below
      writeError = { error };
    }
    let status: number;
    let headers: Headers;
    let version: string;
    for (;;) {
      let lines: string[];
      try {
        lines = await reader.head();
      } catch (error) {
        // a pooled connection the server closed: the write fails, or it succeeds and the read finds the end
        if (pooled && reader.received === 0) {
          throw new StaleConnection("The idle connection was closed", { cause: writeError?.error ?? error });
        }
        throw writeError?.error ?? error;
      }
      const line = lines[0];
      const match = /^HTTP\/(1\.[01]) (\d{3})(?: .*)?$/.exec(line);
      if (!match) throw new Error(`Not an HTTP/1.1 answer: ${JSON.stringify(line.slice(0, 80))}`);
      version = match[1];
      status = Number(match[2]);
      headers = new Headers();
      for (let i = 1; i < lines.length; i++) {
        const field = lines[i];
        const colon = field.indexOf(":");
        if (colon <= 0) throw new Error(`Malformed header line in an HTTP answer: ${JSON.stringify(field)}`);
        headers.append(field.slice(0, colon).trim(), field.slice(colon + 1).trim());
      }
      // 1xx answers (100 Continue) come before the real one
      if (status >= 200 || status === 101) break;
    }
    // some servers and proxies say 408 on an idle connection before closing it: not this request's answer
    if (pooled && status === 408) throw new StaleConnection("The idle connection timed out (408)");
    const connection = headers.get("connection")?.toLowerCase() ?? "";
    const keepAlive = version === "1.1" ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
    return { status, headers, reader, keepAlive, writeFailed: writeError !== undefined };
  }
}

/** What became of a connection once its answer was handled. */
interface Answered<T> {
  value: T;
  /** `pool`: reuse it; `close`: close it; `keep`: the returned body owns it now. */
  release: "pool" | "close" | "keep";
}

function originOf(url: URL): string {
  return `${url.protocol}//${url.host}`;
}

/** How the body of `head` is framed (RFC 9112 6.3); a malformed Content-Length is an error. */
function framingOf(head: Head): Framing {
  const { status, headers } = head;
  if (status === 204 || status === 304) return { kind: "length", left: 0 };
  if (/\bchunked\b/i.test(headers.get("transfer-encoding") ?? "")) {
    return { kind: "chunked", left: 0, ended: false };
  }
  const length = headers.get("content-length");
  if (length === null) return { kind: "close" };
  if (!/^\d+$/.test(length)) throw new Error(`HTTP answer with a malformed Content-Length: ${length}`);
  return { kind: "length", left: Number(length) };
}

/**
 * `connecting`, or a rejection as soon as `signal` aborts (a host that drops the SYN keeps a connect pending
 * for minutes); a connection made after that is closed.
 */
function untilAborted(connecting: Promise<Deno.Conn>, signal?: AbortSignal): Promise<Deno.Conn> {
  if (!signal) return connecting;
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    connecting.then(
      (conn) => {
        signal.removeEventListener("abort", onAbort);
        if (signal.aborted) closeQuietly(conn);
        else resolve(conn);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed already */ }
}

async function connect(url: URL, caCerts?: string[]): Promise<Deno.Conn> {
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const secure = url.protocol === "https:";
  const port = url.port ? Number(url.port) : secure ? 443 : 80;
  const tcp = await Deno.connect({ hostname, port });
  // the head and the body go in two writes: without this, the body's last segment could wait for an ACK
  tcp.setNoDelay(true);
  if (!secure) return tcp;
  try {
    return await Deno.startTls(tcp, { hostname, caCerts });
  } catch (error) {
    closeQuietly(tcp);
    throw error;
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength;) at += await conn.write(bytes.subarray(at));
}

/** Reads an HTTP answer from a connection: lines, then a body. */
class ResponseReader {
  #conn: Deno.Conn;
  #buf = new Uint8Array(16 * 1024);
  #start = 0;
  #end = 0;
  /** Bytes read from the connection so far. */
  received = 0;

  constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  /** Ready for the next answer on the connection (the last one was read to its end, nothing beyond). */
  reset(): void {
    this.#start = this.#end = 0;
    this.received = 0;
  }

  /** Whether no bytes beyond the answer were read (a pipelined or stray byte makes the connection unusable). */
  get drained(): boolean {
    return this.#start === this.#end;
  }

  async #fill(): Promise<boolean> {
    if (this.#start > 0) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    if (this.#end === this.#buf.byteLength) {
      const bigger = new Uint8Array(this.#buf.byteLength * 2);
      bigger.set(this.#buf);
      this.#buf = bigger;
    }
    const n = await this.#conn.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    this.received += n;
    return true;
  }

  /**
   * The lines of the next head up to its empty line, without CRLFs, decoded at once (heads are at most
   * 64 KiB).
   */
  async head(): Promise<string[]> {
    let from = this.#start;
    for (;;) {
      const view = this.#buf.subarray(0, this.#end);
      for (let i = view.indexOf(10, from); i >= 0; i = view.indexOf(10, i + 1)) {
        // CRLF CRLF ends the head (a head with no header lines is "status CRLF CRLF" as well)
        if (i >= this.#start + 3 && view[i - 1] === 13 && view[i - 2] === 10 && view[i - 3] === 13) {
          if (i - this.#start > 64 * 1024) throw new Error("The head of an HTTP answer exceeds 64 KiB");
          const text = latin1.decode(view.subarray(this.#start, i - 3));
          this.#start = i + 1;
          const lines = text.split("\r\n");
          if (lines.some((l) => l.includes("\r"))) throw new Error("A bare CR in the head of an HTTP answer");
          return lines;
        }
      }
      from = Math.max(this.#start, this.#end - 3);
      if (this.#end - this.#start > 64 * 1024) throw new Error("The head of an HTTP answer exceeds 64 KiB");
      const before = this.#start;
      if (!(await this.#fill())) throw new Error("The connection closed before the answer was complete");
      from -= before - this.#start; // #fill moves the bytes to the front
    }
  }

  /** The next line without its CRLF (heads are at most 64 KiB). */
  async line(): Promise<string> {
    for (;;) {
      const at = this.#buf.subarray(this.#start, this.#end).indexOf(CRLF[0]);
      if (at >= 0 && this.#start + at + 1 < this.#end) {
        const i = this.#start + at;
        if (this.#buf[i + 1] !== CRLF[1]) throw new Error("A bare CR in the head of an HTTP answer");
        const text = latin1.decode(this.#buf.subarray(this.#start, i));
        this.#start = i + 2;
        return text;
      }
      if (this.#end - this.#start > 64 * 1024) throw new Error("The head of an HTTP answer exceeds 64 KiB");
      if (!(await this.#fill())) throw new Error("The connection closed before the answer was complete");
    }
  }

  /** The next `n` bytes. */
  async bytes(n: number): Promise<Uint8Array<ArrayBuffer>> {
    while (this.#end - this.#start < n) {
      if (!(await this.#fill())) throw new Error("The connection closed inside the body of an HTTP answer");
    }
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /**
   * Reads the next bytes of a streamed body into `view` (bytes already buffered first, then straight from the
   * connection); the count, or `null` at the end of the body. Updates `framing`.
   */
  async body(framing: Framing, view: Uint8Array): Promise<number | null> {
    let max = view.byteLength;
    if (framing.kind === "length") {
      if (framing.left === 0) return null;
      max = Math.min(max, framing.left);
    } else if (framing.kind === "chunked") {
      if (framing.ended) return null;
      if (framing.left === 0) {
        const size = /^([0-9a-fA-F]+)\s*(?:;.*)?$/.exec(await this.line());
        if (!size) throw new Error("Malformed chunk size in an HTTP answer");
        framing.left = parseInt(size[1], 16);
        if (framing.left === 0) {
          while ((await this.line()) !== "") { /* trailers */ }
          framing.ended = true;
          return null;
        }
      }
      max = Math.min(max, framing.left);
    }
    let n: number;
    if (this.#start < this.#end) {
      n = Math.min(max, this.#end - this.#start);
      view.set(this.#buf.subarray(this.#start, this.#start + n));
      this.#start += n;
    } else {
      const read = await this.#conn.read(max === view.byteLength ? view : view.subarray(0, max));
      if (read === null) {
        if (framing.kind === "close") return null;
        throw new Error("The connection closed inside the body of an HTTP answer");
      }
      n = read;
      this.received += n;
    }
    if (framing.kind !== "close") framing.left -= n;
    if (framing.kind === "chunked" && framing.left === 0 && (await this.line()) !== "") {
      throw new Error("Malformed chunk in an HTTP answer");
    }
    return n;
  }

  /** A chunked body, its trailers skipped. */
  async chunked(max: number): Promise<Uint8Array<ArrayBuffer>> {
    const parts: Uint8Array<ArrayBuffer>[] = [];
    let total = 0;
    for (;;) {
      const size = /^([0-9a-fA-F]+)\s*(?:;.*)?$/.exec(await this.line());
      if (!size) throw new Error("Malformed chunk size in an HTTP answer");
      const n = parseInt(size[1], 16);
      if (n === 0) break;
      total += n;
      if (total > max) throw new Error(`HTTP answer body above ${max} bytes`);
      parts.push(await this.bytes(n));
      if ((await this.line()) !== "") throw new Error("Malformed chunk in an HTTP answer");
    }
    while ((await this.line()) !== "") { /* trailers */ }
    return await new Blob(parts).bytes();
  }

  /** Everything up to the end of the connection. */
  async rest(max: number): Promise<Uint8Array<ArrayBuffer>> {
    while (await this.#fill()) {
      if (this.#end - this.#start > max) throw new Error(`HTTP answer body above ${max} bytes`);
    }
    const out = this.#buf.slice(this.#start, this.#end);
    this.#start = this.#end;
    return out;
  }
}
