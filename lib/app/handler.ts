/**
 * The HTTP handler: the route table (routes.ts) behind the request guard (authentication, limits), errors
 * turned into responses in one place (lib/http/errors.ts), CORS, and one log line per request (method, path,
 * status, bytes, milliseconds) plus an audit line for patient data.
 *
 * @module
 */

import { recordRequest } from "./metrics.ts";
import { type AuditLog, redactedSearch } from "../security/audit.ts";
import { RequestGuard, type ServeInfo } from "../security/request_guard.ts";
import { errorResponse, HttpError, toHttpError } from "../http/errors.ts";
import { type RouteContext, Router } from "../http/router.ts";
import { freeHandedOff } from "../util/handoff.ts";
import { completeServices, type ServicesInit } from "../dicomweb/services.ts";
import { addRoutes, type RouteOptions } from "./routes.ts";
import type { AuthenticatorOptions } from "../security/authenticator.ts";
import { watchBody } from "../http/body.ts";
import { gzipResponse } from "../http/compress.ts";

/** A sink for log lines (stdout by default). */
export type Logger = (line: string) => void;

/** Options for {@linkcode createHandler}. */
export interface HandlerOptions extends Pick<RouteOptions, "encode" | "stow" | "rendered"> {
  /** Where the one line per request goes (default `console.log`). */
  log?: Logger;
  /** One JSON line per patient-data request (main.ts opens `AUDIT_LOG`); none when omitted. */
  audit?: AuditLog;
  /** JWKS and password-cache tuning (tests). */
  auth?: AuthenticatorOptions;
  /**
   * Free each handed-off chunk (handoff.ts) as soon as the next one is asked for: set it when the
   * responses go straight to `Deno.serve`, which has taken a chunk by then (main.ts does). Leave it unset
   * when JavaScript reads the bodies and may keep their chunks, as `Response.arrayBuffer()` does.
   */
  freeSentChunks?: boolean;
}

const CORS_ALLOW_HEADERS =
  "Accept, Authorization, Content-Type, If-None-Match, Range, Cache-Control, X-Requested-With";
const CORS_EXPOSE_HEADERS =
  "Content-Length, Content-Type, Content-Location, ETag, Warning, Location, WWW-Authenticate, Retry-After";

/**
 * Builds the request handler for `Deno.serve`.
 *
 * @example
 * ```ts ignore
 * const handler = createHandler(services);
 * Deno.serve({ port: 8080 }, handler);
 * ```
 */
export function createHandler(
  init: ServicesInit,
  options: HandlerOptions = {},
): (request: Request, info?: ServeInfo) => Promise<Response> {
  const log = options.log ?? ((line: string) => console.log(line));
  const { config } = init;
  // Authentication, authorization and limits wrap every route; the store is capped per request.
  const guard = new RequestGuard(config, options.auth);
  const services = completeServices({ ...init, store: guard.store(init.store) }, log);
  const router = new Router(config.basePath);
  addRoutes(router, services, {
    guard,
    encode: options.encode,
    stow: options.stow,
    rendered: options.rendered,
    audit: options.audit,
  });

  return async (request: Request, info?: ServeInfo): Promise<Response> => {
    const started = performance.now();
    const url = new URL(request.url);
    const method = request.method.toUpperCase();
    let response: Response;
    try {
      response = await guard.run(request, info, (checked) => dispatch(router, checked, url, method));
    } catch (error) {
      const httpError = toHttpError(error);
      if (httpError.status >= 500) {
        // Deliberate HttpErrors say what is wrong; anything else is a bug and gets its stack.
        const cause = error instanceof HttpError && error.cause === undefined
          ? error.message
          : error instanceof Error
          ? (error.stack ?? error.message)
          : String(error);
        log(`error ${method} ${url.pathname}: ${cause}`);
      }
      response = errorResponse(httpError);
    }
    // text answers gzipped for clients that accept it (lib/http/compress.ts); HEAD says what GET would
    response = await gzipResponse(request, response);
    response = withCors(request, response, config.corsOrigins);
    if (method === "HEAD" && response.body) {
      await response.body.cancel();
      response = new Response(null, { status: response.status, headers: response.headers });
    }
    return logged(response, options.freeSentChunks ?? false, (bytes, outcome) => {
      const ms = performance.now() - started;
      // The query is redacted: patient names and IDs in QIDO filters never reach the log.
      log(
        `${method} ${url.pathname}${redactedSearch(url)} ${response.status} ${bytes}B ${ms.toFixed(1)}ms${
          outcome ? " " + outcome : ""
        }`,
      );
      recordRequest({ pathname: url.pathname, method, status: response.status, bytes, ms }, config.basePath);
      const context = guard.contextOf(request);
      options.audit?.record({
        method,
        url,
        status: response.status,
        bytes,
        ms,
        bodyOutcome: outcome,
        principal: context?.principal,
        client: context?.client,
      });
    });
  };
}

async function dispatch(router: Router, request: Request, url: URL, method: string): Promise<Response> {
  const match = router.match(method === "OPTIONS" ? "GET" : method, url);
  if (match.kind === "none") {
    throw new HttpError(
      404,
      `No such resource: ${url.pathname} (routes live under /aets/{aet}/studies/...; see GET /aets)`,
    );
  }
  if (method === "OPTIONS") return new Response(null, { status: 204 });
  if (match.kind === "method") {
    throw new HttpError(
      405,
      `Method ${method} is not allowed on ${url.pathname}: use ${match.allow.join(", ")}`,
      {
        headers: { allow: match.allow.join(", ") },
      },
    );
  }
  const context: RouteContext = { request, url, params: match.params };
  return await match.handler(context);
}

function withCors(request: Request, response: Response, origins: string[]): Response {
  if (origins.length === 0) return response;
  const origin = request.headers.get("origin");
  let allow: string | undefined;
  if (origins.includes("*")) allow = "*";
  else if (origin !== null && origins.includes(origin)) allow = origin;
  if (allow === undefined) return response;
  const headers = new Headers(response.headers);
  headers.set("access-control-allow-origin", allow);
  if (allow !== "*") headers.append("vary", "Origin");
  headers.set("access-control-expose-headers", CORS_EXPOSE_HEADERS);
  if (request.method.toUpperCase() === "OPTIONS") {
    headers.set("access-control-allow-methods", "GET, HEAD, POST, DELETE, OPTIONS");
    headers.set(
      "access-control-allow-headers",
      request.headers.get("access-control-request-headers") ?? CORS_ALLOW_HEADERS,
    );
    headers.set("access-control-max-age", "600");
  }
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

/**
 * Counts the body's bytes and calls `done` once when it ends, fails or is cancelled. With `freeSent`, a
 * handed-off chunk is freed when the consumer asks for the next one (`Deno.serve` has taken it by then).
 */
function logged(
  response: Response,
  freeSent: boolean,
  done: (bytes: number, outcome?: string) => void,
): Response {
  if (!freeSent) return watchBody(response, { done });
  let sent: Uint8Array | undefined; // the chunk last handed to the consumer
  return watchBody(response, {
    beforeRead() {
      if (sent !== undefined) freeHandedOff(sent);
      sent = undefined;
    },
    onChunk(chunk) {
      sent = chunk;
    },
    done,
  });
}
