/**
 * The HTTP handler: routes, CORS, errors turned into responses in one place, and one log line
 * per request (method, path, status, bytes, milliseconds).
 *
 * @module
 */

import { type AuditLog, redactedSearch } from "../security/audit.ts";
import { type AuthenticatorOptions, RequestGuard, type ServeInfo } from "../security/auth.ts";
import { errorResponse, HttpError, toHttpError } from "../http/errors.ts";
import { type RouteContext, Router } from "../http/router.ts";
import { HeaderCache } from "../objects/header_cache.ts";
import { freeHandedOff } from "../util/handoff.ts";
import { SharedReadAhead } from "../objects/open_instance.ts";
import { metadataHandlers } from "../dicomweb/metadata.ts";
import { pixelHandlers } from "../dicomweb/frames_bulkdata.ts";
import { registerQido } from "../dicomweb/search.ts";
import { reEncodeBody } from "../objects/explicit_le_body.ts";
import { registerRendered } from "../dicomweb/rendered.ts";
import { registerStow } from "../dicomweb/stow.ts";
import { transcodingEncoder } from "../imaging/pixel_transcode.ts";
import { registerViewer } from "../viewer/viewer.ts";
import type { Services } from "../dicomweb/services.ts";
import { retrieveHandlers, type RetrieveOptions } from "../dicomweb/retrieve.ts";

/** A sink for log lines (stdout by default). */
export type Logger = (line: string) => void;

/** Options for {@linkcode createHandler}. */
export interface HandlerOptions extends RetrieveOptions {
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
  services: Services,
  options: HandlerOptions = {},
): (request: Request, info?: ServeInfo) => Promise<Response> {
  const log = options.log ?? ((line: string) => console.log(line));
  const { config } = services;
  // Authentication, authorization and limits wrap every route; the store is capped per request.
  const guard = new RequestGuard(config, options.auth);
  services = { ...services, store: guard.store(services.store) };
  const router = new Router(config.basePath);
  const withHeaders = {
    ...services,
    headers: services.headers ?? new HeaderCache(config.headerCacheMb * 1024 * 1024),
    readAhead: services.readAhead ?? new SharedReadAhead(config.s3Concurrency, config.s3ConcurrencyTotal),
    log,
  };
  const retrieve = retrieveHandlers(withHeaders, {
    encode: options.encode ??
      transcodingEncoder((opened, _choice, bucket) =>
        reEncodeBody(opened, {
          store: services.store,
          headers: withHeaders.headers,
          bucket,
          bulkThreshold: config.bulkDataThreshold,
        })
      ),
  });
  const metadata = metadataHandlers(withHeaders);
  const pixels = pixelHandlers(withHeaders);

  // Health (not PS3.18): liveness and readiness of every configured store.
  router.add("/healthz", { GET: () => json({ status: "ok" }) });
  router.add("/readyz", { GET: () => ready(services, guard.enabled) });
  router.add("/aets", { GET: ({ request }) => listAets(services, guard, request) });
  // PS3.18 10.4.1 Retrieve Instances: study, series, instance resources.
  router.add("/aets/:aet/studies/:study", { GET: retrieve.study });
  router.add("/aets/:aet/studies/:study/series/:series", { GET: retrieve.series });
  router.add("/aets/:aet/studies/:study/series/:series/instances/:instance", { GET: retrieve.instance });
  // PS3.18 10.4.1.1.2 Retrieve Metadata (Annex F JSON).
  router.add("/aets/:aet/studies/:study/metadata", { GET: metadata.study });
  router.add("/aets/:aet/studies/:study/series/:series/metadata", { GET: metadata.series });
  router.add("/aets/:aet/studies/:study/series/:series/instances/:instance/metadata", {
    GET: metadata.instance,
  });
  // PS3.18 10.4.1.1.3 Retrieve Frames, 10.4.1.1.4 Retrieve Bulkdata.
  router.add("/aets/:aet/studies/:study/series/:series/instances/:instance/frames/:frames", {
    GET: pixels.frames,
  });
  router.add("/aets/:aet/studies/:study/series/:series/instances/:instance/bulkdata/:path(.+)", {
    GET: pixels.bulkdata,
  });
  registerQido(router, withHeaders);
  registerStow(router, withHeaders);
  // PS3.18 10.4.1.1.5 Retrieve Rendered, 10.4.1.1.6 Retrieve Thumbnail (study, series, instance, frame).
  registerRendered(router, withHeaders);
  // Not PS3.18: the OHIF Viewer at /viewer/ when VIEWER is set (off by default).
  if (config.viewer !== undefined) registerViewer(router, withHeaders, { distDir: config.viewer });

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
    headers.set("access-control-allow-methods", "GET, HEAD, POST, OPTIONS");
    headers.set(
      "access-control-allow-headers",
      request.headers.get("access-control-request-headers") ?? CORS_ALLOW_HEADERS,
    );
    headers.set("access-control-max-age", "600");
  }
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

/**
 * Wraps the body to count bytes, and calls `done` once when it ends, fails or is cancelled. With
 * `freeSent`, a handed-off chunk is freed when the consumer asks for the next one.
 */
function logged(
  response: Response,
  freeSent: boolean,
  done: (bytes: number, outcome?: string) => void,
): Response {
  if (!response.body) {
    done(0);
    return response;
  }
  let bytes = 0;
  let finished = false;
  const finish = (outcome?: string) => {
    if (finished) return;
    finished = true;
    done(bytes, outcome);
  };
  const reader = response.body.getReader();
  // the chunk last handed to the consumer: `Deno.serve` asks for the next one only after taking it
  let sent: Uint8Array | undefined;
  const free = () => {
    if (sent !== undefined) freeHandedOff(sent);
    sent = undefined;
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        if (freeSent) free();
        const { value, done } = await reader.read();
        if (done) {
          controller.close();
          finish();
        } else {
          bytes += value.byteLength;
          if (freeSent) sent = value;
          controller.enqueue(value);
        }
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        finish(`aborted: ${message}`);
        throw error;
      }
    },
    async cancel(reason) {
      if (freeSent) free();
      finish("client disconnected");
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value) + "\n", {
    status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

async function listAets(services: Services, guard: RequestGuard, request: Request): Promise<Response> {
  const entries = await services.aets.entries();
  return json(guard.visibleAets(request, entries.map(([aet]) => aet)));
}

async function ready(services: Services, redact: boolean): Promise<Response> {
  const response = await readiness(services);
  if (!redact) return response;
  const { status } = await response.json(); // with authentication on: no AET or bucket names
  return json({ status }, response.status);
}

async function readiness(services: Services): Promise<Response> {
  try {
    const entries = await services.aets.entries();
    const problems: string[] = [];
    await Promise.all(entries.map(async ([aet, bucket]) => {
      try {
        await services.store.check(bucket, { signal: AbortSignal.timeout(5_000) });
      } catch (error) {
        problems.push(
          `AET ${aet} (bucket ${bucket}): ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    }));
    if (problems.length > 0) return json({ status: "unavailable", problems: problems.sort() }, 503);
    return json({ status: "ready", store: services.store.kind, aets: entries.length });
  } catch (error) {
    return json(
      { status: "unavailable", problems: [error instanceof Error ? error.message : String(error)] },
      503,
    );
  }
}
