import assert from "node:assert/strict";
import {
  instrumentHandler,
  instrumentStore,
  logSink,
  Metrics,
  metricsResponse,
  routeOf,
} from "../../lib/app/metrics.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { openSqliteCatalog } from "../../lib/catalog/sqlite_catalog.ts";
import { files, filled } from "../catalog/_catalog_contract.ts";
import { testHandler } from "../_server.ts";

Deno.test("routeOf() names route patterns, never UIDs, and 'other' for paths no route has", () => {
  const cases: [string, string][] = [
    ["/aets/PACS/studies", "/aets/{aet}/studies"],
    [
      "/aets/PACS/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/1,2",
      "/aets/{aet}/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    ],
    [
      "/aets/PACS/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/bulkdata/7FE00010",
      "/aets/{aet}/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}",
    ],
    ["/aets/PACS/studies/1.2.3/metadata", "/aets/{aet}/studies/{study}/metadata"],
    ["/aets/PACS/series", "/aets/{aet}/series"],
    ["/admin/index", "/admin/index"],
    ["/metrics", "/metrics"],
    ["/readyz", "/readyz"],
    ["/wp-login.php", "other"],
    ["/aets/PACS/studies/1.2.3/evil", "other"],
  ];
  for (const [path, route] of cases) assert.equal(routeOf(path, ""), route, path);
  assert.equal(routeOf("/dicomweb/aets/A/studies", "/dicomweb"), "/aets/{aet}/studies");
  assert.equal(routeOf("/aets/A/studies", "/dicomweb"), "other");
});

Deno.test("instrumentHandler() counts requests by route and status, with latency and bytes once sent", async () => {
  const metrics = new Metrics();
  const handler = instrumentHandler(
    (request: Request) =>
      Promise.resolve(
        new URL(request.url).pathname.endsWith("/studies")
          ? new Response("[1,2,3]")
          : new Response("{}", { status: 404 }),
      ),
    { basePath: "", metrics },
  );
  for (const path of ["/aets/A/studies", "/aets/B/studies", "/nothing"]) {
    const response = await handler(new Request(`http://localhost${path}`));
    await response.text();
  }
  const text = metrics.render();
  assert.match(
    text,
    /^dicomweb_http_requests_total\{route="\/aets\/\{aet\}\/studies",method="GET",status="200"\} 2$/m,
  );
  assert.match(text, /^dicomweb_http_requests_total\{route="other",method="GET",status="404"\} 1$/m);
  assert.match(text, /^dicomweb_http_response_bytes_total\{route="\/aets\/\{aet\}\/studies"\} 14$/m);
  assert.match(
    text,
    /^dicomweb_http_request_duration_seconds_count\{route="\/aets\/\{aet\}\/studies",method="GET"\} 2$/m,
  );
  assert.match(
    text,
    /^dicomweb_http_request_duration_seconds_bucket\{route="other",method="GET",le="\+Inf"\} 1$/m,
  );
  assert.match(text, /^# TYPE dicomweb_http_request_duration_seconds histogram$/m);
});

Deno.test("instrumentStore() counts and times store calls by outcome", async () => {
  const metrics = new Metrics();
  const store = instrumentStore(new MemoryStore(["b"]), metrics);
  await store.put("b", "k", new Uint8Array([1, 2, 3]));
  assert.equal((await store.head("b", "k"))?.size, 3);
  assert.equal(await store.get("b", "missing"), null);
  const body = await store.get("b", "k");
  await body?.body.cancel();
  const keys = [];
  for await (const info of store.list("b", "")) keys.push(info.key);
  assert.deepEqual(keys, ["k"]);
  const text = metrics.render();
  assert.match(text, /^dicomweb_s3_requests_total\{operation="get",outcome="not_found"\} 1$/m);
  assert.match(text, /^dicomweb_s3_requests_total\{operation="get",outcome="ok"\} 1$/m);
  assert.match(text, /^dicomweb_s3_requests_total\{operation="list",outcome="ok"\} 1$/m);
  assert.match(text, /^dicomweb_s3_request_duration_seconds_count\{operation="put"\} 1$/m);
});

Deno.test("metricsResponse() adds the catalog's state and the crawler's phase at scrape time", async () => {
  const catalog = await openSqliteCatalog(":memory:");
  try {
    await filled(catalog);
    const response = await metricsResponse({ catalog, metrics: new Metrics() });
    assert.equal(response.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const text = await response.text();
    assert.match(
      text,
      new RegExp(`^dicomweb_catalog_objects\\{aet="A",state="indexed"\\} ${files.length}$`, "m"),
    );
    assert.match(text, /^dicomweb_catalog_up 1$/m);
    assert.match(text, /^dicomweb_catalog_crawl_lease_held\{aet="A"\} 0$/m);
  } finally {
    await catalog.close();
  }
});

Deno.test("logSink('json') writes one JSON object per line, request lines taken apart", () => {
  const lines: string[] = [];
  const log = logSink("json", (line) => lines.push(line));
  log("GET /aets/A/studies?PatientID=*** 200 1234B 5.6ms");
  log("error GET /x: boom");
  const [request, error] = lines.map((line) => JSON.parse(line));
  assert.deepEqual(
    [request.method, request.path, request.status, request.bytes, request.ms, request.level],
    ["GET", "/aets/A/studies?PatientID=***", 200, 1234, 5.6, "info"],
  );
  assert.equal(error.level, "error");
  assert.ok(!Number.isNaN(Date.parse(request.time)));
  const plain: string[] = [];
  logSink("text", (line) => plain.push(line))("as is");
  assert.deepEqual(plain, ["as is"]);
});

Deno.test("GET /metrics of the server counts the requests it answered, by route pattern and status", async () => {
  const app = testHandler({ store: new MemoryStore(["pacs"]), config: { AETS: "PACS=pacs" } });
  const count = async (route: string, status: number) => {
    const text = await (await app.fetch("/metrics")).text();
    const escaped = route.replace(/[{}/]/g, (c) => `\\${c}`);
    const line = new RegExp(
      `^dicomweb_http_requests_total\\{route="${escaped}",method="GET",status="${status}"\\} (\\d+)$`,
      "m",
    )
      .exec(text);
    return line ? Number(line[1]) : 0;
  };
  const before = await count("/aets/{aet}/studies/{study}/metadata", 404);
  const response = await app.fetch("/aets/PACS/studies/1.2.3/metadata");
  assert.equal(response.status, 404);
  await response.body?.cancel();
  assert.equal(await count("/aets/{aet}/studies/{study}/metadata", 404), before + 1);
  const metrics = await app.fetch("/metrics");
  assert.match(metrics.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  await metrics.body?.cancel();
  await app.close();
});
