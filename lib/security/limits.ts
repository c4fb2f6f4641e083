/**
 * Request limits as small composable pieces, each answering with its own status and a message that says
 * which limit was hit and how to stay under it:
 *
 * - {@linkcode checkHeaderSize}: header block too large or too many fields → 431
 * - {@linkcode ClientLimiter}: too many requests in flight from one client (address or subject) → 429
 * - {@linkcode limitRequestBody}: body larger than allowed → 413; not received in time → 408
 * - {@linkcode withDeadline}: no response head within the time limit → 504
 * - {@linkcode tooManyParts}: the 413 a multipart reader throws past its part limit
 * - {@linkcode ReadBudget}: how many bytes one request may have open from the store at once (waits, never fails)
 *
 * Times are milliseconds everywhere in this module and in every setting named `*_MS`.
 *
 * @module
 */

import { HttpError } from "../http/errors.ts";
import { freeBuffer, markOwned } from "../util/handoff.ts";
import { OutOfRangeError } from "../util/errors.ts";
import { settingsReader } from "../util/settings.ts";
import { watchBody } from "../http/body.ts";

// ---------------------------------------------------------------------------------------------------
// Settings

/** The limit settings, validated. */
export interface LimitsConfig {
  /** `MAX_HEADER_BYTES`: sum of header names and values (431 above). */
  maxHeaderBytes: number;
  /** `MAX_HEADER_COUNT`: number of header fields (431 above). */
  maxHeaderCount: number;
  /** `CLIENT_CONCURRENCY`: requests one client may have in flight, bodies included; 0 = no limit (429 above). */
  clientConcurrency: number;
  /** `RESPONSE_TIMEOUT_MS`: milliseconds to produce the status and headers; 0 = no limit (504 after). */
  responseTimeoutMs: number;
  /** `BODY_TIMEOUT_MS`: milliseconds to receive a whole request body; 0 = no limit (408 after). */
  bodyTimeoutMs: number;
  /** `STOW_MAX_PARTS`: parts in one STOW-RS request (413 above). */
  stowMaxParts: number;
  /** `REQUEST_READ_BUDGET_MB` in bytes: store bytes one request may have open at once; 0 = no limit. */
  readBudgetBytes: number;
}

/** The names {@linkcode parseLimitsConfig} reads (add them to `CONFIG_NAMES`). */
export const LIMITS_CONFIG_NAMES = [
  "MAX_HEADER_BYTES",
  "MAX_HEADER_COUNT",
  "CLIENT_CONCURRENCY",
  "RESPONSE_TIMEOUT_MS",
  "BODY_TIMEOUT_MS",
  "STOW_MAX_PARTS",
  "REQUEST_READ_BUDGET_MB",
] as const;

/**
 * Validates the limit settings; problems are pushed onto `problems`.
 *
 * @example
 * ```ts
 * import { parseLimitsConfig } from "./limits.ts";
 * const limits = parseLimitsConfig({ RESPONSE_TIMEOUT_MS: "1500" }, []);
 * limits.responseTimeoutMs; // 1500 (milliseconds, as the name says)
 * ```
 */
export function parseLimitsConfig(env: Record<string, string | undefined>, problems: string[]): LimitsConfig {
  const s = settingsReader(env, problems);
  return {
    maxHeaderBytes: s.integer("MAX_HEADER_BYTES", 32 * 1024, 1024, 1024 * 1024),
    maxHeaderCount: s.integer("MAX_HEADER_COUNT", 100, 8, 10_000),
    clientConcurrency: s.integer("CLIENT_CONCURRENCY", 32, 0, 100_000),
    responseTimeoutMs: s.integer("RESPONSE_TIMEOUT_MS", 60_000, 0, 24 * 3600 * 1000),
    bodyTimeoutMs: s.integer("BODY_TIMEOUT_MS", 600_000, 0, 24 * 3600 * 1000),
    stowMaxParts: s.integer("STOW_MAX_PARTS", 10_000, 1, 10_000_000),
    readBudgetBytes: s.integer("REQUEST_READ_BUDGET_MB", 256, 0, 1024 * 1024) * 1024 * 1024,
  };
}

// ---------------------------------------------------------------------------------------------------
// 431

/** Options for {@linkcode checkHeaderSize}. */
export interface HeaderLimits {
  /** `MAX_HEADER_BYTES`: the largest request head. */
  maxHeaderBytes: number;
  /** `MAX_HEADER_COUNT`: the most header fields. */
  maxHeaderCount: number;
}

/**
 * Throws a 431 when the header block is larger than `maxHeaderBytes` (names + values + 4 bytes per field)
 * or has more than `maxHeaderCount` fields.
 *
 * @example
 * ```ts
 * import { checkHeaderSize } from "./limits.ts";
 * checkHeaderSize(new Headers({ accept: "*\/*" }), { maxHeaderBytes: 1024, maxHeaderCount: 10 }); // fine
 * ```
 */
export function checkHeaderSize(headers: Headers, limits: HeaderLimits): void {
  let bytes = 0;
  let count = 0;
  for (const [name, value] of headers) {
    bytes += name.length + value.length + 4;
    count++;
  }
  if (count > limits.maxHeaderCount) {
    throw new HttpError(
      431,
      `Request header fields too large: ${count} fields, at most ${limits.maxHeaderCount} (MAX_HEADER_COUNT)`,
    );
  }
  if (bytes > limits.maxHeaderBytes) {
    throw new HttpError(
      431,
      `Request header fields too large: ${bytes} bytes, at most ${limits.maxHeaderBytes} (MAX_HEADER_BYTES)`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// 429

/**
 * Counts requests in flight per client key (a peer address or an authenticated subject) and refuses
 * more than `max` at once with a 429. Release each slot exactly once, when the response body is done:
 * {@linkcode releaseWhenDone} does that.
 *
 * @example
 * ```ts
 * import { ClientLimiter } from "./limits.ts";
 * const limiter = new ClientLimiter(2);
 * const release = limiter.acquire("10.0.0.7");
 * limiter.active("10.0.0.7"); // 1
 * release();
 * ```
 */
export class ClientLimiter {
  /** Requests one client may have in flight. */
  readonly max: number;
  readonly #active = new Map<string, number>();

  /** `max` = 0 turns the limiter off. */
  constructor(max: number) {
    if (!Number.isSafeInteger(max) || max < 0) {
      throw new OutOfRangeError(`Invalid client concurrency: ${max}`);
    }
    this.max = max;
  }

  /** Takes a slot for `key`, or throws a 429 `HttpError` with `Retry-After`. Returns the release function. */
  acquire(key: string): () => void {
    if (this.max === 0) return () => {};
    const n = this.#active.get(key) ?? 0;
    if (n >= this.max) {
      throw new HttpError(
        429,
        `Too many requests at once from this client: at most ${this.max} in flight (CLIENT_CONCURRENCY); ` +
          `wait for one to finish`,
        { headers: { "retry-after": "1" } },
      );
    }
    this.#active.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#active.get(key) ?? 1) - 1;
      if (left <= 0) this.#active.delete(key);
      else this.#active.set(key, left);
    };
  }

  /** Requests in flight for `key` (or for every key when omitted). */
  active(key?: string): number {
    if (key !== undefined) return this.#active.get(key) ?? 0;
    let total = 0;
    for (const n of this.#active.values()) total += n;
    return total;
  }
}

/**
 * Calls `done` once when the response body has been sent, has failed, or was cancelled (client gone),
 * or at once for a response without a body.
 */
export function releaseWhenDone(response: Response, done: () => void): Response {
  return watchBody(response, { done: () => done() });
}

// ---------------------------------------------------------------------------------------------------
// 413 / 408

/** Options for {@linkcode limitRequestBody}. */
export interface BodyLimits {
  /** Largest body in bytes (413 above). */
  maxBytes: number;
  /** Milliseconds to receive the whole body, counted from this call; 0 = no limit (408 after). */
  timeoutMs: number;
  /** The setting named in the 413 message (default `STOW_MAX_BYTES`). */
  setting?: string;
}

/**
 * Returns `request` with a body that errors with a 413 `HttpError` past `maxBytes` and with a 408 when it is
 * not complete within `timeoutMs`. A declared `Content-Length` over the limit is refused at once.
 * Requests without a body are returned as they are.
 *
 * @example
 * ```ts
 * import { limitRequestBody } from "./limits.ts";
 * const request = new Request("http://x/", { method: "POST", body: "hello" });
 * const limited = limitRequestBody(request, { maxBytes: 3, timeoutMs: 0 });
 * await limited.text().catch((e) => e.status); // 413
 * ```
 */
export function limitRequestBody(request: Request, limits: BodyLimits): Request {
  if (request.body === null) return request;
  const setting = limits.setting ?? "STOW_MAX_BYTES";
  const tooLarge = (what: string) =>
    new HttpError(413, `Request body too large: ${what}, at most ${limits.maxBytes} bytes (${setting})`);
  const declared = request.headers.get("content-length");
  if (declared !== null && /^\d+$/.test(declared.trim()) && Number(declared) > limits.maxBytes) {
    throw tooLarge(`Content-Length ${declared.trim()}`);
  }
  const reader = bodyReader(request.body);
  let received = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut: HttpError | undefined;
  const stop = () => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  };
  let fail: ((error: HttpError) => void) | undefined;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      fail = (error) => {
        timedOut = error;
        controller.error(error);
        reader.cancel(error).catch(() => {});
      };
      if (limits.timeoutMs > 0) {
        timer = setTimeout(() => {
          timer = undefined;
          fail!(
            new HttpError(
              408,
              `Request body not received in time: ${received} bytes in ${limits.timeoutMs} ms (BODY_TIMEOUT_MS)`,
            ),
          );
        }, limits.timeoutMs);
      }
    },
    async pull(controller) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (error) {
        stop();
        throw timedOut ?? error;
      }
      if (timedOut) return;
      if (chunk.done) {
        stop();
        controller.close();
        return;
      }
      received += chunk.value.byteLength;
      if (received > limits.maxBytes) {
        stop();
        const error = tooLarge(`more than ${limits.maxBytes} bytes sent`);
        controller.error(error);
        await reader.cancel(error).catch(() => {});
        return;
      }
      controller.enqueue(chunk.value);
    },
    async cancel(reason) {
      stop();
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return new Request(request.url, {
    method: request.method,
    headers: request.headers,
    body,
    // @ts-ignore: needed by the fetch spec for stream bodies; Deno accepts and ignores it
    duplex: "half",
  });
}

/** Bytes asked for per read of a request body that is a byte stream. */
const BODY_CHUNK = 256 * 1024;

/**
 * Reads `body` in chunks of up to 256 KiB when it is a byte stream (a `Deno.serve` request body: its own
 * reads are 64 KiB each), else as it comes. A read that brings little is copied to a buffer of its size.
 * The buffers read into are marked as owned ({@linkcode markOwned}): a consumer that follows their views
 * with a `ChunkLedger` (STOW-RS) frees them as soon as it is done with them.
 */
function bodyReader(body: ReadableStream<Uint8Array>): {
  read(): Promise<ReadableStreamReadResult<Uint8Array>>;
  cancel(reason?: unknown): Promise<void>;
} {
  let byob: ReadableStreamBYOBReader;
  try {
    byob = body.getReader({ mode: "byob" });
  } catch {
    return body.getReader();
  }
  return {
    async read() {
      const { value, done } = await byob.read(new Uint8Array(BODY_CHUNK));
      if (done || value === undefined) return { done: true, value: undefined };
      if (value.byteLength >= BODY_CHUNK / 4) return { done: false, value: markOwned(value) };
      const small = value.slice();
      freeBuffer(value.buffer); // read into by the stream, referenced by nothing else
      return { done: false, value: markOwned(small) };
    },
    cancel: (reason) => byob.cancel(reason),
  };
}

/** The 413 a multipart reader throws when a request has more than `max` parts (`STOW_MAX_PARTS`). */
export function tooManyParts(max: number): HttpError {
  return new HttpError(
    413,
    `Too many parts in one request: at most ${max} (STOW_MAX_PARTS); send fewer per request`,
  );
}

// ---------------------------------------------------------------------------------------------------
// 504

/**
 * Resolves with `work`, or rejects with a 504 `HttpError` when it takes longer than `ms` (0 = no limit).
 * A response that arrives too late has its body cancelled so its store reads are released.
 *
 * @example
 * ```ts
 * import { withDeadline } from "./limits.ts";
 * const response = await withDeadline(Promise.resolve(new Response("ok")), 1000);
 * response.status; // 200
 * ```
 */
export function withDeadline(work: Promise<Response>, ms: number): Promise<Response> {
  if (ms <= 0) return work;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let late = false;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      late = true;
      reject(
        new HttpError(
          504,
          `Timed out after ${ms} ms preparing the response (RESPONSE_TIMEOUT_MS): the store is slow; try again`,
        ),
      );
    }, ms);
  });
  work.then(
    (response) => {
      if (late) response.body?.cancel().catch(() => {});
    },
    () => {},
  );
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------------
// The store read budget
