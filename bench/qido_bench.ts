/**
 * Search benchmark: `deno run -P=bench bench/qido_bench.ts [--studies 1000] [--series 3] [--instances 20]
 * [--qido-studies 10000] [--qido-studies-large 100000] [--samples 300] [--crawl 0] [--postgres 0]
 * [--clients 50] [--replica-requests 3000 (0: no replica part)] [--fill-batch-large 500] [--sqlite 1]`.
 *
 * Against TEST_S3_ENDPOINT (e.g. Ceph RGW from ../shared/tools/ceph/start.sh) when set, else s3rver:
 * 1. uploads a generated bucket of tiny instances (N studies × M series × K instances);
 * 2. crawls it: listing, then one header per series (study/series search is complete here), reporting objects/s,
 *    header reads and bytes;
 * 3. the background instance pass (every other header), objects/s;
 * 4. an incremental re-crawl of the unchanged bucket (counts object reads: expected 0);
 * 5. QIDO latency through `Deno.serve`: p50/p99 of `/studies?PatientName=*X*&limit=101` (and a few other shapes)
 *    over a catalog filled directly with `--qido-studies` studies, then `--qido-studies-large` (0: skipped);
 *    the fill goes through `recordInstances` in batches of 50, as STOW-RS files instances, and its rate (time
 *    inside `recordInstances`) is the catalog's STOW ingest rate; the large catalog is filled the same way in
 *    batches of `--fill-batch-large` (500: a bench-only bulk fill, its rate printed too).
 *
 * Steps 2-5 run on SQLite and, when Debian's postgresql is installed (`--postgres 0` to skip), on PostgreSQL
 * (a throw-away cluster, tests/_postgres.ts). Then 6: three replicas (three processes, each its own pool, one
 * database of `--qido-studies-large` studies, or `--qido-studies` when that is 0) under `--clients` concurrent
 * clients in this process, p50/p99 and requests/s. Targets (issue #17): PostgreSQL p50 ≤ 10 ms and p99 ≤ 50 ms
 * at 100,000 studies; SQLite p50 ≤ 5 ms at 10,000. Clients, replicas and PostgreSQL share this machine's cores.
 * Prints figures only; nothing is asserted on time.
 */

import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import postgres from "postgres";
import { AetRegistry } from "../lib/objects/aets.ts";
import { createHandler } from "../lib/app/handler.ts";
import { parseConfig } from "../lib/config/config.ts";
import { Crawler } from "../lib/catalog/crawler.ts";
import { parseBuffer } from "../lib/dicom/part10.ts";
import { S3Store } from "../lib/store/s3/s3_store.ts";
import { openSqliteCatalog } from "../lib/catalog/sqlite_catalog.ts";
import type { ObjectStore } from "../lib/store/store.ts";
import { buildPart10, type Fx } from "../tests/_dicom_fixtures.ts";
import { startS3 } from "../tests/_s3server.ts";
import { observe } from "../tests/_stores.ts";
import { assembleServices } from "../lib/app/open.ts";
import type { Catalog, InstanceToRecord } from "../lib/catalog/catalog.ts";
import { openPostgresCatalog } from "../lib/catalog/postgres_catalog.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "../tests/_postgres.ts";

const args = new Map<string, number>();
for (let i = 0; i < Deno.args.length; i += 2) {
  args.set(Deno.args[i].replace(/^--/, ""), Number(Deno.args[i + 1]));
}
const STUDIES = args.get("studies") ?? 1000;
const SERIES = args.get("series") ?? 3;
const INSTANCES = args.get("instances") ?? 20;
const QIDO_STUDIES = args.get("qido-studies") ?? 10_000;
const SAMPLES = args.get("samples") ?? 300;
/** `--crawl 0` runs the QIDO part only. */
const CRAWL = args.get("crawl") ?? 1;
const QIDO_STUDIES_LARGE = args.get("qido-studies-large") ?? 100_000;
const CLIENTS = args.get("clients") ?? 50;
const REPLICA_REQUESTS = args.get("replica-requests") ?? 3000;
/** The large catalog is filled through `recordInstances` in batches of this many (a bench-only bulk fill). */
const FILL_BATCH_LARGE = args.get("fill-batch-large") ?? 500;
/** `--sqlite 0` skips the SQLite QIDO part. */
const SQLITE = args.get("sqlite") ?? 1;

type Backend = "sqlite" | "postgres";
const BACKENDS: Backend[] = SQLITE ? ["sqlite"] : [];
let cluster: TestPostgres | undefined;
if (import.meta.main && (args.get("postgres") ?? 1) !== 0) {
  const missing = await postgresMissing();
  if (missing) console.log(`PostgreSQL part skipped: ${missing}`);
  else BACKENDS.push("postgres");
}

/** A new empty catalog of `backend` (PostgreSQL: a new database of one throw-away cluster), and its URL. */
async function openBackend(backend: Backend): Promise<{ catalog: Catalog; url?: string }> {
  if (backend === "sqlite") return { catalog: await openSqliteCatalog(":memory:") };
  cluster ??= await startPostgres();
  const url = await cluster.createDatabase("bench");
  return { catalog: await openPostgresCatalog(url, { poolSize: 20, log: () => {} }), url };
}

const FAMILY = [
  "SMITH",
  "MÜLLER",
  "GARCÍA",
  "NGUYEN",
  "XAVIER",
  "DOE",
  "BRAUN",
  "ROSSI",
  "KOWALSKI",
  "DIXON",
  "OLSEN",
  "PÉREZ",
];
const GIVEN = ["ALEX", "MAX", "ANNA", "JOSÉ", "LI", "FELIX", "MARIA", "JOHN", "ROXANA", "OMAR"];
const MODALITIES = ["CT", "MR", "PT", "CR", "US", "XA"];

function instance(
  study: number,
  series: number,
  index: number,
  prefix = "2.25.77",
): { key: string; bytes: Uint8Array } {
  const studyUid = `${prefix}.${study + 1}`;
  const seriesUid = `${studyUid}.${series + 1}`;
  const sop = `${seriesUid}.${index + 1}`;
  const day = 1 + (study * 7919) % 3650;
  const date = new Date(Date.UTC(2015, 0, day)).toISOString().slice(0, 10).replaceAll("-", "");
  const name = `${FAMILY[study % FAMILY.length]}^${GIVEN[(study * 7) % GIVEN.length]}`;
  const utf8 = new TextEncoder().encode(name);
  const elements: Fx[] = [
    { tag: 0x00080005, vr: "CS", value: "ISO_IR 192" },
    { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.2" },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x00080020, vr: "DA", value: date },
    {
      tag: 0x00080030,
      vr: "TM",
      value: `${String(8 + study % 10).padStart(2, "0")}${String(study % 60).padStart(2, "0")}00`,
    },
    { tag: 0x00080050, vr: "SH", value: `ACC${study + 1}` },
    { tag: 0x00080060, vr: "CS", value: MODALITIES[(study + series) % MODALITIES.length] },
    { tag: 0x00081030, vr: "LO", value: `STUDY ${study + 1}` },
    { tag: 0x0008103e, vr: "LO", value: `SERIES ${series + 1}` },
    { tag: 0x00100010, vr: "PN", value: utf8.length % 2 ? Uint8Array.from([...utf8, 0x20]) : utf8 },
    { tag: 0x00100020, vr: "LO", value: `PID${study % 5000}` },
    { tag: 0x0020000d, vr: "UI", value: studyUid },
    { tag: 0x0020000e, vr: "UI", value: seriesUid },
    { tag: 0x00200010, vr: "SH", value: String(study + 1) },
    { tag: 0x00200011, vr: "IS", value: String(series + 1) },
    { tag: 0x00200013, vr: "IS", value: String(index + 1) },
    { tag: 0x00280010, vr: "US", value: [4] },
    { tag: 0x00280011, vr: "US", value: [4] },
    { tag: 0x00280100, vr: "US", value: [16] },
    { tag: 0x7fe00010, vr: "OW", value: new Uint8Array(32) },
  ];
  return {
    key: `${studyUid}/${seriesUid}/${sop}.dcm`,
    bytes: buildPart10(elements, { sopInstanceUid: sop }),
  };
}

async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits });
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))];
}

async function upload(store: ObjectStore, bucket: string): Promise<void> {
  const total = STUDIES * SERIES * INSTANCES;
  console.log(
    `\n== Bucket: ${fmt(STUDIES)} studies × ${SERIES} series × ${INSTANCES} instances = ${
      fmt(total)
    } objects`,
  );
  const keys: [number, number, number][] = [];
  for (let s = 0; s < STUDIES; s++) {
    for (let se = 0; se < SERIES; se++) for (let i = 0; i < INSTANCES; i++) keys.push([s, se, i]);
  }
  const t = performance.now();
  let bytes = 0;
  await pool(keys, 32, async ([s, se, i]) => {
    const { key, bytes: body } = instance(s, se, i);
    bytes += body.length;
    await store.put(bucket, key, body, { size: body.length });
  });
  const seconds = (performance.now() - t) / 1000;
  console.log(
    `upload: ${fmt(total)} objects (${mib(bytes)}, ${fmt(bytes / total)} B each) in ${
      seconds.toFixed(1)
    } s (${fmt(total / seconds)}/s)`,
  );
}

async function crawlBench(store: ObjectStore, bucket: string, backend: Backend): Promise<void> {
  console.log(`\n-- crawl into ${backend}`);
  let t: number;
  let seconds: number;
  const observed = observe(store);
  const { catalog } = await openBackend(backend);
  const aets = new AetRegistry(observed, { configured: new Map([["BENCH", bucket]]) });
  const crawler = new Crawler({
    store: observed,
    aets,
    catalog,
    eagerInstances: false,
    concurrency: 16,
    log: () => {},
  });
  t = performance.now();
  const report = await crawler.crawl("BENCH");
  seconds = (performance.now() - t) / 1000;
  const gets = observed.calls.filter((c) => c.startsWith("get ")).length;
  console.log(
    `crawl to study/series search ready: ${seconds.toFixed(1)} s; listing ${fmt(report.listed)} objects in ` +
      `${(report.listingMs / 1000).toFixed(1)} s (${
        fmt(report.listed / (report.listingMs / 1000))
      } objects/s); ` +
      `${fmt(report.seriesHeaders)} header reads (one per series; ${fmt(gets)} ranged GETs, ${
        mib(report.headerBytes)
      }); ` +
      `overall ${fmt(report.listed / seconds)} objects/s`,
  );
  const [ready] = await catalog.status("BENCH");
  console.log(
    `  catalog: ${fmt(ready.studies)} studies, ${fmt(ready.series)} series, ${
      fmt(ready.pending)
    } instances pending`,
  );

  observed.calls.length = 0;
  const before = crawler.headerReads;
  t = performance.now();
  await crawler.ensureIndexed("BENCH", {});
  seconds = (performance.now() - t) / 1000;
  const after = crawler.headerReads;
  const read = after.count - before.count;
  console.log(
    `instance pass: ${fmt(read)} headers in ${seconds.toFixed(1)} s (${fmt(read / seconds)} objects/s, ` +
      `${mib(after.bytes - before.bytes)}, ${
        fmt((after.bytes - before.bytes) / Math.max(1, read))
      } B per header)`,
  );

  observed.calls.length = 0;
  t = performance.now();
  const again = await crawler.crawl("BENCH");
  seconds = (performance.now() - t) / 1000;
  const reads = observed.calls.filter((c) => c.startsWith("get ")).length;
  const lists = observed.calls.filter((c) => c.startsWith("list")).length;
  console.log(
    `incremental re-crawl (unchanged): ${seconds.toFixed(1)} s, ${fmt(again.unchanged)} unchanged, ` +
      `${reads} object reads, ${lists} listing(s)`,
  );
  await crawler.stop();
  await catalog.close();
}

/**
 * Files `studies` one-instance studies through `recordInstances` in batches of `size` (50: as STOW-RS does),
 * reporting the catalog's rate: the time inside `recordInstances` only (making and parsing the instances is not
 * counted).
 */
async function fill(catalog: Catalog, studies: number, size: number): Promise<void> {
  let inside = 0;
  const t = performance.now();
  for (let first = 0; first < studies; first += size) {
    const batch: InstanceToRecord[] = [];
    for (let s = first; s < Math.min(studies, first + size); s++) {
      const { key, bytes } = instance(s, 0, 0, "2.25.88");
      batch.push({ info: { key, size: bytes.length, etag: "e" }, header: parseBuffer(bytes, key) });
    }
    const started = performance.now();
    const results = await catalog.recordInstances("BENCH", "bench", batch);
    inside += performance.now() - started;
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
  const seconds = (performance.now() - t) / 1000;
  console.log(
    `fill (${size === 50 ? "STOW ingest" : "bench bulk fill"}, recordInstances in batches of ${size}): ${
      fmt(studies)
    } instances in ${(inside / 1000).toFixed(1)} s inside recordInstances (${
      fmt(studies / (inside / 1000))
    } instances/s; ${seconds.toFixed(1)} s with making the instances)`,
  );
}

async function qidoBench(backend: Backend, studies: number, batch: number): Promise<string | undefined> {
  console.log(`\n== QIDO over ${fmt(studies)} studies on ${backend} (catalog filled directly)`);
  const config = parseConfig({ AETS: "BENCH=bench" });
  const { catalog, url } = await openBackend(backend);
  await fill(catalog, studies, batch);
  let t: number;
  const { MemoryStore } = await import("../lib/store/memory_store.ts");
  const store = new MemoryStore(["bench"]);
  const aets = new AetRegistry(store, { configured: config.aets });
  // The catalog counts as crawled: mark it complete the way a crawl does.
  const ticket = (await catalog.beginCrawl("BENCH", "bench", "bench", 60_000))!;
  await catalog.endCrawl(ticket, { complete: true });
  const handler = createHandler(
    assembleServices(config, store, { aets, catalog, capabilities: { reEncode: true } }),
    {
      log: () => {},
    },
  );
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
  const base = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}/aets/BENCH`;
  const shapes = [
    "/studies?PatientName=*X*&limit=101",
    "/studies?limit=101&offset=0&fuzzymatching=true&includefield=00081030%2C00080060&PatientName=*BRA*",
    "/studies?limit=101&offset=0&StudyDate=20200101-20201231",
    "/studies?PatientID=PID1234",
    "/studies?StudyInstanceUID=2.25.88.5000",
    "/studies?limit=101&offset=9000",
    "/studies/2.25.88.5000/series",
    "/studies/2.25.88.5000/series/2.25.88.5000.1/instances",
  ];
  const measure = async (shape: string, label = shape) => {
    const times: number[] = [];
    let count = 0;
    for (let i = 0; i < SAMPLES; i++) {
      t = performance.now();
      const response = await fetch(base + shape);
      const body = await response.json();
      times.push(performance.now() - t);
      count = body.length;
    }
    times.sort((a, b) => a - b);
    console.log(
      `${label}: ${count} results, p50 ${percentile(times, 0.5).toFixed(2)} ms, p99 ${
        percentile(times, 0.99).toFixed(2)
      } ms`,
    );
  };
  try {
    for (const shape of shapes) await measure(shape);
    if (url !== undefined) {
      // Right after a bulk fill the visibility map is not set yet: index-only scans still visit the heap.
      // Autovacuum sets it within about a minute; this does its work now and measures the deep page again.
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      await sql`VACUUM studies`;
      await sql.end();
      const deep = "/studies?limit=101&offset=9000";
      await measure(deep, `${deep} after VACUUM (autovacuum's work)`);
    }
  } finally {
    await server.shutdown();
    await catalog.close();
  }
  return url;
}

/**
 * Three replicas over the PostgreSQL database at `url` (filled by qidoBench), each its own process
 * (`bench/_qido_replica.ts`), under `CLIENTS` and then 4 clients in this one.
 */
async function replicaBench(url: string, studies: number): Promise<void> {
  console.log(
    `\n== 3 replicas (3 processes) over one PostgreSQL catalog of ${
      fmt(studies)
    } studies, ${CLIENTS} and 4 concurrent clients`,
  );
  const replicas = await Promise.all([0, 1, 2].map(async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-P=bench", new URL("./_qido_replica.ts", import.meta.url).pathname],
      env: { CATALOG_URL: url },
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!/listening (\d+)/.test(text)) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`A replica ended before listening: ${text}`);
      text += value;
    }
    lines.releaseLock();
    child.stdout.cancel().catch(() => {});
    const port = Number(/listening (\d+)/.exec(text)![1]);
    return { child, base: `http://127.0.0.1:${port}/aets/BENCH` };
  }));
  const shapes = [
    "/studies?PatientName=*X*&limit=101",
    "/studies?limit=101&offset=0&fuzzymatching=true&includefield=00081030%2C00080060&PatientName=*BRA*",
    "/studies?limit=101&offset=0&StudyDate=20200101-20201231",
    "/studies?PatientID=PID1234",
    "/studies?StudyInstanceUID=2.25.88.5000",
    "/studies/2.25.88.5000/series",
  ];
  /** `count` searches from `clients` clients; each one's time by shape. */
  const load = async (count: number, clients: number) => {
    const byShape: number[][] = shapes.map(() => []);
    let next = 0;
    let errors = 0;
    await Promise.all(Array.from({ length: clients }, async () => {
      while (next < count) {
        const i = next++;
        const started = performance.now();
        const response = await fetch(replicas[i % 3].base + shapes[i % shapes.length]);
        const body = await response.text();
        if (response.status !== 200) {
          if (errors++ === 0) console.log(`first failure: ${response.status} ${body.slice(0, 300)}`);
        }
        byShape[i % shapes.length].push(performance.now() - started);
      }
    }));
    return { byShape, errors };
  };
  try {
    // Warm-up: the replicas' first requests pay for JIT compilation and their pools' first connections.
    await load(REPLICA_REQUESTS / 5, CLIENTS);
    // At CLIENTS the machine is saturated (latency ≈ clients / throughput); 4 clients show the service time.
    for (const [clients, perShape] of [[CLIENTS, true], [4, false]] as const) {
      const t = performance.now();
      const { byShape, errors } = await load(REPLICA_REQUESTS, clients);
      const seconds = (performance.now() - t) / 1000;
      const times = byShape.flat().sort((a, b) => a - b);
      console.log(
        `${clients} clients, ${
          fmt(REPLICA_REQUESTS)
        } searches (6 shapes, round robin over the replicas): p50 ${
          percentile(times, 0.5).toFixed(2)
        } ms, p99 ${percentile(times, 0.99).toFixed(2)} ms, ${
          fmt(REPLICA_REQUESTS / seconds)
        } requests/s, ${errors} not 200`,
      );
      if (!perShape) continue;
      for (const [i, shape] of shapes.entries()) {
        const sorted = byShape[i].sort((a, b) => a - b);
        console.log(
          `  ${shape}: p50 ${percentile(sorted, 0.5).toFixed(2)} ms, p99 ${
            percentile(sorted, 0.99).toFixed(2)
          } ms`,
        );
      }
    }
  } finally {
    for (const r of replicas) {
      r.child.kill("SIGTERM");
      await r.child.status;
    }
  }
}

if (import.meta.main && CRAWL) {
  const s3 = await startS3();
  const credentials = { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials,
    maxConcurrency: 64,
  });
  console.log(`S3: ${s3.kind} at ${s3.endpoint}`);
  try {
    const bucket = s3.uniqueBucket("qido-bench");
    if (s3.kind === "external") {
      // Not registered with the test server handle: emptying 60,000 objects one DELETE at a time takes minutes.
      const client = new S3Client({
        endpoint: s3.endpoint,
        region: s3.region,
        forcePathStyle: true,
        credentials,
      });
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
      client.destroy();
      console.log(`bucket ${bucket} is left on the server (a Ceph lab cluster: stop.sh --clean removes it)`);
    } else {
      await s3.createBucket(bucket);
    }
    await upload(store, bucket);
    for (const backend of BACKENDS) await crawlBench(store, bucket, backend);
  } finally {
    await store.close?.();
    await s3.stop();
  }
}
if (import.meta.main) {
  try {
    let replicaUrl: string | undefined;
    let replicaStudies = QIDO_STUDIES;
    for (const backend of BACKENDS) {
      const url = await qidoBench(backend, QIDO_STUDIES, 50);
      if (backend === "postgres") replicaUrl = url;
      if (QIDO_STUDIES_LARGE > 0) {
        const large = await qidoBench(backend, QIDO_STUDIES_LARGE, FILL_BATCH_LARGE);
        if (backend === "postgres") [replicaUrl, replicaStudies] = [large, QIDO_STUDIES_LARGE];
      }
    }
    if (replicaUrl !== undefined && REPLICA_REQUESTS > 0) await replicaBench(replicaUrl, replicaStudies);
  } finally {
    await cluster?.stop();
  }
}
