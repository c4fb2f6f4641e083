/**
 * The one error type that carries an HTTP status, and its conversion to a response.
 *
 * @module
 */

import { NotAcceptableError } from "./negotiation.ts";
import { StoreError } from "../store/store.ts";

/** An error with the HTTP status it should be answered with. */
export class HttpError extends Error {
  readonly status: number;
  readonly headers: Record<string, string>;
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

/** Maps any thrown value to a status and a message for the client. */
export function toHttpError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  if (error instanceof NotAcceptableError) return new HttpError(406, error.message, { cause: error });
  if (error instanceof StoreError) {
    const status = error.kind === "unavailable" ? 503 : 502;
    return new HttpError(status, error.message, { cause: error });
  }
  if (error instanceof RangeError || error instanceof SyntaxError || error instanceof TypeError) {
    // TypeErrors from our own validation are 400s; unexpected ones are bugs and surface as 500.
    if (error instanceof TypeError && !("expose" in error)) {
      return new HttpError(500, `Internal error: ${error.message}`, { cause: error });
    }
    return new HttpError(400, error.message, { cause: error });
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
