/**
 * Errors and HTTP statuses, in one place: {@linkcode HttpError} (what the HTTP layers throw, with a status),
 * {@linkcode STATUS_OF}, the one table that maps the typed errors of the layers below (lib/util/errors.ts,
 * `StoreError`) to statuses, and {@linkcode errorResponse}, the JSON body every error is answered with.
 *
 * Built-in `SyntaxError`, `RangeError` and `TypeError`s are programming errors or the engine's (a stack
 * overflow, an invalid array length): 500, never a client's 400.
 *
 * May import: util, store (for `StoreError`).
 *
 * @module
 */

import { StoreError } from "../store/store.ts";
import {
  BusyError,
  CorruptObjectError,
  MalformedError,
  NotAcceptableError,
  NotFoundError,
  OutOfRangeError,
  TooLargeError,
  UnprocessableError,
} from "../util/errors.ts";

/** An error with the HTTP status it should be answered with. */
export class HttpError extends Error {
  /** The HTTP status to answer with. */
  readonly status: number;
  /** Headers to add to the error response. */
  readonly headers: Record<string, string>;
  /** An error answered with `status` and `message`. */
  constructor(
    status: number,
    message: string,
    options?: ErrorOptions & { headers?: Record<string, string> },
  ) {
    super(message, options);
    this.name = "HttpError";
    this.status = status;
    this.headers = options?.headers ?? {};
  }
}

/** An error class of a lower layer and the status it is answered with. */
export type StatusRule = readonly [new (...args: never[]) => Error, number | ((error: Error) => number)];

/**
 * The one table from typed errors to statuses, tried in order: the first class the error is an instance of
 * decides. Anything not listed (built-in errors included) is a 500.
 */
export const STATUS_OF: readonly StatusRule[] = [
  [MalformedError, 400],
  [OutOfRangeError, 400],
  [NotFoundError, 404],
  [NotAcceptableError, 406],
  [TooLargeError, 413],
  [UnprocessableError, 422],
  [CorruptObjectError, 500],
  [BusyError, 503],
  [StoreError, (error) => (error as StoreError).kind === "unavailable" ? 503 : 502],
];

/** Maps any thrown value to a status and a message for the client (see {@linkcode STATUS_OF}). */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  for (const [type, status] of STATUS_OF) {
    if (error instanceof type) {
      return new HttpError(typeof status === "number" ? status : status(error), error.message, {
        cause: error,
      });
    }
  }
  if (error instanceof Error && error.name === "AbortError") {
    return new HttpError(499, "Client closed the request", { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new HttpError(500, `Internal error: ${message}`, { cause: error });
}

/** A JSON error response: `{ "error": message, "status": n }`. */
export function errorResponse(error: HttpError): Response {
  const body = JSON.stringify({ error: error.message, status: error.status }) + "\n";
  return new Response(body, {
    status: error.status,
    headers: { "content-type": "application/json; charset=utf-8", ...error.headers },
  });
}
