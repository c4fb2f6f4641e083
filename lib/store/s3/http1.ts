/**
 * A small HTTP/1.1 client for sending whole bodies, kept alive per origin: what `S3Store` uses for PutObject.
 *
 * Deno's `fetch` copies a `Uint8Array` body before sending it and costs about 0.7 ms of CPU per request
 * besides; for STOW-RS, which writes hundreds of 0.5 MB objects a second, that was a sixth of the server's
 * CPU and tens of MB of garbage. This client writes the caller's bytes straight to the socket. It speaks
 * only what S3 answers to a PUT: a status line, headers, and a small body (Content-Length, chunked, or up to
 * the end of the connection).
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
  body: Uint8Array;
  signal?: AbortSignal;
}

/** The answer, body read whole. */
export interface Http1Response {
  status: number;
  headers: Headers;
  body: Uint8Array<ArrayBuffer>;
}

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

  /** Sends `request` and reads the answer; throws on network errors and on an aborted signal. */
  async request(request: Http1Request): Promise<Http1Response> {
    const { url, signal } = request;
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TypeError(`Http1Client sends http: and https: only, not ${url.protocol}`);
    }
    signal?.throwIfAborted();
    const origin = `${url.protocol}//${url.host}`;
    let head = `${request.method} ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
    for (const [name, value] of Object.entries(request.headers)) {
      if (/[\r\n:]/.test(name) || /[\r\n]/.test(value)) {
        throw new TypeError(`Invalid header for ${request.method} ${origin}: ${JSON.stringify(name)}`);
      }
      head += `${name}: ${value}\r\n`;
    }
    head += `content-length: ${request.body.byteLength}\r\n\r\n`;
    const headBytes = encoder.encode(head);
    for (;;) {
      const pooled = this.#take(origin);
      let conn: Deno.Conn | undefined = pooled;
      const onAbort = () => conn && closeQuietly(conn);
      signal?.addEventListener("abort", onAbort, { once: true });
      try {
        conn ??= await untilAborted(this.#connect(url), signal);
        const { response, reusable } = await this.#exchange(
          conn,
          headBytes,
          request.body,
          pooled !== undefined,
        );
        if (reusable) this.#give(origin, conn);
        else closeQuietly(conn);
        return response;
      } catch (error) {
        if (conn) closeQuietly(conn);
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

  /** Writes the request and reads the answer on `conn`. */
  async #exchange(
    conn: Deno.Conn,
    head: Uint8Array,
    body: Uint8Array,
    pooled: boolean,
  ): Promise<{ response: Http1Response; reusable: boolean }> {
    const reader = new ResponseReader(conn);
    let writeError: { error: unknown } | undefined;
    try {
      await writeAll(conn, head);
      await writeAll(conn, body);
    } catch (error) {
      // the server may have answered (403, 413) and stopped reading: that answer is read below
      writeError = { error };
    }
    let status: number;
    let headers: Headers;
    let version: string;
    for (;;) {
      let line: string;
      try {
        line = await reader.line();
      } catch (error) {
        // a pooled connection the server closed: the write fails, or it succeeds and the read finds the end
        if (pooled && reader.received === 0) {
          throw new StaleConnection("The idle connection was closed", { cause: writeError?.error ?? error });
        }
        throw writeError?.error ?? error;
      }
      const match = /^HTTP\/(1\.[01]) (\d{3})(?: .*)?$/.exec(line);
      if (!match) throw new Error(`Not an HTTP/1.1 answer: ${JSON.stringify(line.slice(0, 80))}`);
      version = match[1];
      status = Number(match[2]);
      headers = new Headers();
      for (let field = await reader.line(); field !== ""; field = await reader.line()) {
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
    let reusable = version === "1.1" ? !/\bclose\b/.test(connection) : /\bkeep-alive\b/.test(connection);
    let responseBody: Uint8Array<ArrayBuffer>;
    const length = headers.get("content-length");
    if (status === 204 || status === 304) responseBody = new Uint8Array(0);
    else if (/\bchunked\b/i.test(headers.get("transfer-encoding") ?? "")) {
      responseBody = await reader.chunked(this.#maxBody);
    } else if (length !== null) {
      const n = Number(length);
      if (!/^\d+$/.test(length) || n > this.#maxBody) {
        throw new Error(`HTTP answer with Content-Length ${length}: at most ${this.#maxBody} bytes are read`);
      }
      responseBody = await reader.bytes(n);
    } else {
      responseBody = await reader.rest(this.#maxBody);
      reusable = false;
    }
    return {
      response: { status, headers, body: responseBody },
      reusable: reusable && !writeError && reader.drained,
    };
  }
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
