/**
 * Running a fleet: `GET /metrics` in the Prometheus text format (version 0.0.4), OpenTelemetry spans for S3
 * calls, and `LOG_FORMAT=json` log lines.
 *
 * Metrics ({@linkcode Metrics}, one registry per process, {@linkcode METRICS}):
 * - `dicomweb_http_requests_total{route,method,status}`, `dicomweb_http_request_duration_seconds{route,method}`
 *   (histogram, until the body is sent), `dicomweb_http_response_bytes_total{route}`; `route` is the route
 *   pattern (`/aets/{aet}/studies/{study}/series`), never the UIDs, so the label set stays bounded;
 * - `dicomweb_s3_requests_total{operation,outcome}` (`ok`, `not_found`, `error`),
 *   `dicomweb_s3_request_duration_seconds{operation}` (to the response headers for `get`),
 *   `dicomweb_s3_errors_total{operation,kind}` (the `StoreError` kind);
 * - at each scrape: `dicomweb_catalog_objects{aet,state}`, `dicomweb_catalog_studies{aet}`,
 *   `dicomweb_catalog_complete_timestamp_seconds{aet}`, `dicomweb_catalog_crawl_lease_held{aet}` (1 while any
 *   replica crawls), `dicomweb_crawler_phase{aet,phase}` (this replica), `dicomweb_crawler_headers_read_total{aet}`,
 *   `dicomweb_catalog_up`, `dicomweb_catalog_pool_connections{state="max"|"busy"}`.
 *
 * `/metrics` is not under `/aets/`, so the request guard treats it as `/admin/index`: server read access.
 *
 * Traces: Deno's built-in OpenTelemetry (`OTEL_DENO=true`, exporting OTLP to `OTEL_EXPORTER_OTLP_ENDPOINT`,
 * default `http://localhost:4318`) traces every request `Deno.serve` handles and every `fetch`; S3 calls
 * ({@linkcode instrumentStore}) and catalog database calls (postgres_catalog.ts) add spans of their own through
 * `@opentelemetry/api`, which is a no-op when tracing is off.
 *
 * @module
 */

import { ProxyTracerProvider, type Span, SpanStatusCode, trace } from "@opentelemetry/api";
import type { Catalog } from "../catalog/catalog.ts";
import type { Crawler } from "../catalog/crawler.ts";
import type { ObjectBody, ObjectInfo, ObjectStore } from "../store/store.ts";
import { StoreError } from "../store/store.ts";
import { watchBody } from "../http/body.ts";

/** Label names and values of one series. */
export type Labels = Record<string, string>;

/** Histogram bucket bounds (seconds) for request and call latencies: 1 ms to 30 s. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

interface Family {
  type: "counter" | "histogram";
  help: string;
  series: Map<string, { labels: Labels; value: number; buckets?: number[]; sum?: number }>;
}

function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function labelText(labels: Labels, extra?: [string, string]): string {
  const pairs = Object.entries(labels);
  if (extra) pairs.push(extra);
  if (pairs.length === 0) return "";
  return `{${pairs.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
}

/**
 * A registry of counters and histograms, rendered in the Prometheus text format.
 *
 * @example
 * ```ts
 * import { Metrics } from "./metrics.ts";
 * const metrics = new Metrics();
 * metrics.count("jobs_total", "Jobs done", { kind: "a" });
 * metrics.render(); // "# HELP jobs_total Jobs done\n# TYPE jobs_total counter\njobs_total{kind=\"a\"} 1\n"
 * ```
 */
export class Metrics {
  readonly #families = new Map<string, Family>();

  #series(name: string, type: Family["type"], help: string, labels: Labels) {
    let family = this.#families.get(name);
    if (!family) {
      family = { type, help, series: new Map() };
      this.#families.set(name, family);
    }
    const id = JSON.stringify(labels);
    let series = family.series.get(id);
    if (!series) {
      series = { labels, value: 0 };
      if (type === "histogram") {
        series.buckets = LATENCY_BUCKETS.map(() => 0);
        series.sum = 0;
      }
      family.series.set(id, series);
    }
    return series;
  }

  /** Adds `by` (default 1) to a counter. */
  count(name: string, help: string, labels: Labels = {}, by = 1): void {
    this.#series(name, "counter", help, labels).value += by;
  }

  /** Records one observation (seconds) in a histogram. */
  observe(name: string, help: string, labels: Labels, seconds: number): void {
    const series = this.#series(name, "histogram", help, labels);
    series.value++;
    series.sum! += seconds;
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) if (seconds <= LATENCY_BUCKETS[i]) series.buckets![i]++;
  }

  /** Every family in the text format; `extra` (gauges made at scrape time) is appended. */
  render(extra = ""): string {
    let text = "";
    for (const [name, family] of this.#families) {
      text += `# HELP ${name} ${family.help}\n# TYPE ${name} ${family.type}\n`;
      for (const s of family.series.values()) {
        if (family.type === "counter") {
          text += `${name}${labelText(s.labels)} ${s.value}\n`;
          continue;
        }
        LATENCY_BUCKETS.forEach((bound, i) => {
          text += `${name}_bucket${labelText(s.labels, ["le", String(bound)])} ${s.buckets![i]}\n`;
        });
        text += `${name}_bucket${labelText(s.labels, ["le", "+Inf"])} ${s.value}\n`;
        text += `${name}_sum${labelText(s.labels)} ${s.sum}\n${name}_count${
          labelText(s.labels)
        } ${s.value}\n`;
      }
    }
    return text + extra;
  }
}

/** The process's registry. */
export const METRICS: Metrics = new Metrics();

const ROUTE_PATTERNS: [RegExp, string][] = [
  [/\/frames\/[^/]+/, "/frames/{frames}"],
  [/\/bulkdata\/.+$/, "/bulkdata/{path}"],
  [/\/instances\/[^/]+/, "/instances/{instance}"],
  [/\/series\/[^/]+/, "/series/{series}"],
  [/\/studies\/[^/]+/, "/studies/{study}"],
  [/^\/aets\/[^/]+/, "/aets/{aet}"],
  [/^\/viewer\/.*$/, "/viewer/{path}"],
];

/** The segments a route pattern is made of: anything else is not a route. */
const SEGMENTS = new Set([
  "aets",
  "studies",
  "series",
  "instances",
  "metadata",
  "rendered",
  "thumbnail",
  "frames",
  "bulkdata",
  "healthz",
  "readyz",
  "metrics",
  "admin",
  "index",
  "viewer",
  "{aet}",
  "{study}",
  "{series}",
  "{instance}",
  "{frames}",
  "{path}",
]);

/**
 * The route pattern of a request path (UIDs and names replaced by `{study}`, ...), `other` for paths no route
 * has: bounded label values.
 *
 * @example
 * ```ts
 * import { routeOf } from "./metrics.ts";
 * routeOf("/dicomweb/aets/PACS/studies/1.2.3/series", "/dicomweb"); // "/aets/{aet}/studies/{study}/series"
 * ```
 */
export function routeOf(pathname: string, basePath: string): string {
  if (basePath !== "" && !pathname.startsWith(basePath + "/")) return "other";
  let path = pathname.slice(basePath.length).replace(/\/+$/, "") || "/";
  for (const [pattern, replacement] of ROUTE_PATTERNS) path = path.replace(pattern, replacement);
  return path.split("/").slice(1).every((segment) => SEGMENTS.has(segment)) ? path : "other";
}

/** One answered request, as {@linkcode recordRequest} counts it. */
export interface RequestSample {
  /** The request path (made a route pattern here). */
  pathname: string;
  /** The request method. */
  method: string;
  /** The response status. */
  status: number;
  /** Body bytes sent. */
  bytes: number;
  /** Milliseconds until the body was sent (or abandoned). */
  ms: number;
}

/**
 * Counts one answered request: by route, method and status, its duration and its bytes. The handler's
 * per-request log callback (lib/app/handler.ts) has all of these; {@linkcode instrumentHandler} does the same
 * from outside.
 */
export function recordRequest(sample: RequestSample, basePath: string, metrics: Metrics = METRICS): void {
  const route = routeOf(sample.pathname, basePath);
  const method = sample.method.toUpperCase();
  metrics.count("dicomweb_http_requests_total", "HTTP requests answered", {
    route,
    method,
    status: String(sample.status),
  });
  metrics.observe(
    "dicomweb_http_request_duration_seconds",
    "HTTP request duration until the body was sent",
    { route, method },
    sample.ms / 1000,
  );
  metrics.count("dicomweb_http_response_bytes_total", "Response body bytes sent", { route }, sample.bytes);
}

/**
 * Wraps the server's handler: counts each request by route, method and status, and records its duration and
 * bytes once its body has been sent (or abandoned). (Inside handler.ts, calling {@linkcode recordRequest} from
 * the log callback does the same without a second body watcher.)
 */
export function instrumentHandler<I>(
  handler: (request: Request, info?: I) => Promise<Response>,
  options: { basePath: string; metrics?: Metrics },
): (request: Request, info?: I) => Promise<Response> {
  return async (request, info) => {
    const started = performance.now();
    const pathname = new URL(request.url).pathname;
    const response = await handler(request, info);
    return watchBody(response, {
      done(bytes) {
        recordRequest(
          {
            pathname,
            method: request.method,
            status: response.status,
            bytes,
            ms: performance.now() - started,
          },
          options.basePath,
          options.metrics,
        );
      },
    });
  };
}

const tracer = trace.getTracer("dicomweb-server");
let tracing: boolean | undefined;

/**
 * Whether spans are recorded: a tracer provider is registered (Deno's own when `OTEL_DENO=true`). Without one,
 * the API's no-op spans cost every store call allocations for nothing, so none is made.
 */
function tracingOn(): boolean {
  if (tracing === undefined) {
    const provider = trace.getTracerProvider();
    tracing = !(provider instanceof ProxyTracerProvider) ||
      provider.getDelegate() !== new ProxyTracerProvider().getDelegate();
  }
  return tracing;
}

/** Runs one store call as a span (when tracing is on) and a sample of the S3 metrics. */
async function measured<T>(
  metrics: Metrics,
  kind: string,
  operation: string,
  attributes: Record<string, string>,
  call: () => Promise<T>,
): Promise<T> {
  if (!tracingOn()) return await sampled(metrics, operation, call);
  return await tracer.startActiveSpan(
    `${kind} ${operation}`,
    { attributes },
    (span) => sampled(metrics, operation, call, span),
  );
}

/** Runs one store call, counted and timed; its failure recorded on `span`, which it ends. */
async function sampled<T>(
  metrics: Metrics,
  operation: string,
  call: () => Promise<T>,
  span?: Span,
): Promise<T> {
  const started = performance.now();
  let outcome = "ok";
  try {
    const result = await call();
    if (result === null) outcome = "not_found";
    return result;
  } catch (error) {
    outcome = "error";
    if (error instanceof StoreError) {
      metrics.count("dicomweb_s3_errors_total", "Store calls that failed, by StoreError kind", {
        operation,
        kind: error.kind,
      });
    }
    span?.recordException(error as Error);
    span?.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
    throw error;
  } finally {
    metrics.count("dicomweb_s3_requests_total", "Store calls", { operation, outcome });
    metrics.observe(
      "dicomweb_s3_request_duration_seconds",
      "Store call duration (get: until the response headers)",
      { operation },
      (performance.now() - started) / 1000,
    );
    span?.end();
  }
}

/**
 * `store` with every call counted and timed ({@linkcode METRICS}) and traced as a span (`s3 get`, ...; the
 * bucket and key as attributes). Listing pages are counted as one `list` call each time the iteration starts.
 */
export function instrumentStore(store: ObjectStore, metrics: Metrics = METRICS): ObjectStore {
  const kind = store.kind;
  const wrapped: ObjectStore = {
    kind: store.kind,
    location: store.location,
    listBuckets: (options) => measured(metrics, kind, "list_buckets", {}, () => store.listBuckets(options)),
    list: (bucket, prefix, options) => ({
      [Symbol.asyncIterator]: () => {
        const started = performance.now();
        const iterator = store.list(bucket, prefix, options)[Symbol.asyncIterator]();
        let first = true;
        return {
          async next() {
            try {
              const next = await iterator.next();
              if (first || next.done) {
                if (next.done) {
                  metrics.count("dicomweb_s3_requests_total", "Store calls", {
                    operation: "list",
                    outcome: "ok",
                  });
                  metrics.observe(
                    "dicomweb_s3_request_duration_seconds",
                    "Store call duration (get: until the response headers)",
                    { operation: "list" },
                    (performance.now() - started) / 1000,
                  );
                }
                first = false;
              }
              return next;
            } catch (error) {
              metrics.count("dicomweb_s3_requests_total", "Store calls", {
                operation: "list",
                outcome: "error",
              });
              throw error;
            }
          },
          return: (value?: unknown) =>
            iterator.return?.(value) ?? Promise.resolve({ done: true as const, value: undefined }),
        } as AsyncIterator<ObjectInfo>;
      },
    }),
    head: (bucket, key, options) =>
      measured(metrics, kind, "head", { bucket, key }, () => store.head(bucket, key, options)),
    get: (bucket, key, options) =>
      measured<ObjectBody | null>(
        metrics,
        kind,
        "get",
        { bucket, key },
        () => store.get(bucket, key, options),
      ),
    put: (bucket, key, body, options) =>
      measured(metrics, kind, "put", { bucket, key }, () => store.put(bucket, key, body, options)),
    delete: (bucket, key, options) =>
      measured(metrics, kind, "delete", { bucket, key }, () => store.delete(bucket, key, options)),
    check: (bucket, options) =>
      measured(metrics, kind, "check", { bucket }, () => store.check(bucket, options)),
  };
  if (store.close) wrapped.close = () => store.close!();
  return wrapped;
}

/** What `/metrics` reads at each scrape besides the registry. */
export interface MetricsSources {
  /** The catalog (shared state, pool use). */
  catalog?: Catalog;
  /** This replica's crawler. */
  crawler?: Crawler;
  /** The registry (default {@linkcode METRICS}). */
  metrics?: Metrics;
}

/** The gauges made at scrape time: catalog state, this replica's crawler, the database pool. */
async function gauges(sources: MetricsSources): Promise<string> {
  const lines: string[] = [];
  const family = (name: string, help: string) => lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} gauge`);
  const { catalog, crawler } = sources;
  if (catalog) {
    let up = 1;
    try {
      const status = await catalog.status();
      family("dicomweb_catalog_objects", "Objects in the catalog by state");
      for (const s of status) {
        for (const state of ["indexed", "pending", "failed", "ignored"] as const) {
          lines.push(`dicomweb_catalog_objects${labelText({ aet: s.aet, state })} ${s[state]}`);
        }
      }
      family("dicomweb_catalog_studies", "Studies in the catalog");
      for (const s of status) lines.push(`dicomweb_catalog_studies${labelText({ aet: s.aet })} ${s.studies}`);
      family("dicomweb_catalog_complete_timestamp_seconds", "Start of the last complete crawl");
      for (const s of status) {
        if (s.completeAt !== undefined) {
          lines.push(
            `dicomweb_catalog_complete_timestamp_seconds${labelText({ aet: s.aet })} ${s.completeAt / 1000}`,
          );
        }
      }
      family("dicomweb_catalog_crawl_lease_held", "1 while a replica holds the crawl lease");
      for (const s of status) {
        lines.push(`dicomweb_catalog_crawl_lease_held${labelText({ aet: s.aet })} ${s.crawlingBy ? 1 : 0}`);
      }
    } catch {
      up = 0;
    }
    family("dicomweb_catalog_up", "1 when the catalog database answered this scrape");
    lines.push(`dicomweb_catalog_up ${up}`);
    const pool = catalog.pool?.();
    if (pool) {
      family("dicomweb_catalog_pool_connections", "Catalog database pool: its size and the calls using it");
      lines.push(`dicomweb_catalog_pool_connections{state="max"} ${pool.size}`);
      lines.push(`dicomweb_catalog_pool_connections{state="busy"} ${pool.busy}`);
    }
  }
  if (crawler) {
    const progress = crawler.progress();
    family("dicomweb_crawler_phase", "What this replica's crawler is doing (1 for the current phase)");
    for (const p of progress) {
      for (const phase of ["idle", "listing", "series", "instances"]) {
        lines.push(`dicomweb_crawler_phase${labelText({ aet: p.aet, phase })} ${p.phase === phase ? 1 : 0}`);
      }
    }
    family("dicomweb_crawler_headers_read_total", "Headers read by this replica's crawler");
    for (const p of progress) {
      lines.push(`dicomweb_crawler_headers_read_total${labelText({ aet: p.aet })} ${p.headersRead}`);
    }
  }
  return lines.length > 0 ? lines.join("\n") + "\n" : "";
}

/** `GET /metrics`: the registry and the scrape-time gauges, `text/plain; version=0.0.4`. */
export async function metricsResponse(sources: MetricsSources): Promise<Response> {
  const text = (sources.metrics ?? METRICS).render(await gauges(sources));
  return new Response(text, { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } });
}

/**
 * A log sink for `LOG_FORMAT`: `text` (the default) writes lines as they are; `json` writes one JSON object
 * per line, `{"time", "level", "msg"}`, with `method`, `path`, `status`, `bytes` and `ms` taken apart for the
 * request lines the handler writes (`GET /path 200 123B 4.5ms`).
 *
 * @example
 * ```ts
 * import { logSink } from "./metrics.ts";
 * const lines: string[] = [];
 * logSink("json", (line) => lines.push(line))("GET /aets 200 12B 0.4ms");
 * JSON.parse(lines[0]).status; // 200
 * ```
 */
export function logSink(
  format: "text" | "json",
  write: (line: string) => void = (line) => console.log(line),
): (line: string) => void {
  if (format === "text") return write;
  return (line) => {
    const entry: Record<string, unknown> = {
      time: new Date().toISOString(),
      level: /^(error|Warning)/i.test(line) ? (line.startsWith("error") ? "error" : "warn") : "info",
      msg: line,
    };
    const m = /^([A-Z]+) (\S+) (\d{3}) (\d+)B ([\d.]+)ms(?: (.*))?$/.exec(line);
    if (m) {
      entry.method = m[1];
      entry.path = m[2];
      entry.status = Number(m[3]);
      entry.bytes = Number(m[4]);
      entry.ms = Number(m[5]);
      if (m[6]) entry.outcome = m[6];
    }
    write(JSON.stringify(entry));
  };
}
