/**
 * Three replicas over one S3 bucket (s3rver) and one PostgreSQL catalog (a throw-away cluster), each its own
 * handler, catalog pool and crawler behind `Deno.serve`, as three processes would be:
 *
 * - started together, one crawls and the others skip; `GET /admin/index` shows the same shared state on each,
 *   and every object's header is read once in all;
 * - a STOW through one is found by QIDO and metadata on the others as soon as it answered;
 * - a change filed by one drops the others' cached header of that object (NOTIFY);
 * - a replica that took the crawl lease and died: another takes the crawl over once the lease runs out;
 * - the database goes away: QIDO 503 naming it, retrieval and metadata still 200, `/readyz` degraded; it comes
 *   back by itself in the same processes.
 *
 * Needs Debian's `postgresql`: fails without it under CI=true, else skipped with one line naming it.
 */

import assert from "node:assert/strict";
import { assembleServices } from "../../lib/app/open.ts";
import { createHandler } from "../../lib/app/handler.ts";
import { Crawler } from "../../lib/catalog/crawler.ts";
import { openPostgresCatalog, type PostgresCatalog } from "../../lib/catalog/postgres_catalog.ts";
import { parseConfig } from "../../lib/config/config.ts";
import { parseBuffer } from "../../lib/dicom/part10.ts";
import { HeaderCache } from "../../lib/objects/header_cache.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { concatBytes } from "../../lib/util/bytes.ts";
import { generatedCorpus, putAll, STUDIES } from "../_qido_fixtures.ts";
import { postgresMissing, startPostgres } from "../_postgres.ts";
import { startS3 } from "../_s3server.ts";
import { skipBecause } from "../_skip.ts";
import { observe } from "../_stores.ts";

const missing = await postgresMissing();
if (missing) skipBecause("the three-replica test", missing);

const AET = "FLEET";
const LEASE_MS = 1_500;
const files = generatedCorpus();
const encoder = new TextEncoder();

type Json = Record<string, { vr: string; Value?: unknown[] }>;

interface Replica {
  name: string;
  url: string;
  catalog: PostgresCatalog;
  crawler: Crawler;
  headers: HeaderCache;
  close(): Promise<void>;
}

async function getJson(url: string, accept = "application/dicom+json") {
  const response = await fetch(url, { headers: { accept } });
  const text = await response.text();
  return { status: response.status, body: JSON.parse(text), headers: response.headers };
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function stowBody(bytes: Uint8Array): { body: Blob; type: string } {
  const boundary = `fleet-${crypto.randomUUID()}`;
  const body = new Blob([concatBytes([
    encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
    bytes,
    encoder.encode(`\r\n--${boundary}--\r\n`),
  ]) as Uint8Array<ArrayBuffer>]);
  return { body, type: `multipart/related; type="application/dicom"; boundary=${boundary}` };
}

Deno.test({
  name: "Three replicas share one S3 bucket and one PostgreSQL catalog",
  ignore: missing !== undefined,
  sanitizeResources: false, // s3rver's and the pools' sockets close asynchronously
  sanitizeOps: false,
  async fn(t) {
    const pg = await startPostgres();
    const s3 = await startS3();
    const store = new S3Store({
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    const observed = observe(store);
    const replicas: Replica[] = [];
    try {
      const bucket = s3.uniqueBucket("fleet");
      await s3.createBucket(bucket);
      await putAll(store, bucket, files);
      const url = await pg.createDatabase("fleet");
      const config = parseConfig({ PORT: "0", AETS: `${AET}=${bucket}`, CRAWL_INTERVAL: "0" });
      for (const name of ["a", "b", "c"]) {
        const catalog = await openPostgresCatalog(url, { log: () => {}, probeMs: 100 });
        const headers = new HeaderCache(16 * 1024 * 1024);
        const logs: string[] = [];
        const parts = assembleServices(config, observed, {
          catalog,
          headerCache: headers,
          log: (l) => logs.push(l),
        });
        const crawler = new Crawler({
          store: observed,
          aets: parts.aets,
          catalog,
          log: (l) => logs.push(l),
          leaseMs: LEASE_MS,
          owner: `replica-${name}`,
        });
        const handler = createHandler({ ...parts, crawler }, { log: () => {} });
        const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
        replicas.push({
          name,
          url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`,
          catalog,
          crawler,
          headers,
          async close() {
            await server.shutdown();
            await crawler.stop();
            await catalog.close();
          },
        });
      }
      const [a, b, c] = replicas;

      await t.step(
        "started together, one replica crawls; /admin/index is the same on all three",
        async () => {
          for (const r of replicas) r.crawler.start(0);
          const reports = await Promise.all(
            replicas.map((r) => r.crawler.crawl(AET, { waitForInstances: true })),
          );
          const outcomes = reports.map((r) => r.outcome).sort();
          assert.deepEqual(outcomes.filter((o) => o === "complete").length, 1, JSON.stringify(reports));
          assert.deepEqual(outcomes.filter((o) => o === "skipped").length, 2);
          const shared = await Promise.all(replicas.map(async (r) => {
            const { body } = await getJson(`${r.url}/admin/index?aet=${AET}`, "application/json");
            const { crawl: _crawl, ...state } = body.aets[0];
            return { catalog: body.catalog, state, failures: body.failures };
          }));
          assert.equal(shared[0].state.studies, STUDIES.length);
          assert.equal(shared[0].state.pending, 0);
          assert.equal(shared[0].catalog.kind, "postgresql");
          assert.deepEqual(shared[1], shared[0]);
          assert.deepEqual(shared[2], shared[0]);
          const gets = observed.calls.filter((call) => call.startsWith("get ")).map((call) =>
            call.split(" ")[1]
          );
          assert.equal(gets.length, files.length, "each header read once by the whole fleet");
          assert.equal(new Set(gets).size, files.length);
        },
      );

      await t.step(
        "a STOW through A is found by QIDO and metadata on B and C as soon as A answered",
        async () => {
          const [extra] = generatedCorpus([{
            ...STUDIES[1],
            uid: "2.25.1088",
            series: [{ ...STUDIES[1].series[0], uid: "2.25.1088.1" }],
          }]);
          const { body, type } = stowBody(extra.bytes);
          const stored = await fetch(`${a.url}/aets/${AET}/studies`, {
            method: "POST",
            body,
            headers: { "content-type": type, accept: "application/dicom+json" },
          });
          assert.equal(stored.status, 200, await stored.clone().text());
          await stored.body?.cancel();
          for (const r of [b, c]) {
            const found = await getJson(`${r.url}/aets/${AET}/studies?StudyInstanceUID=2.25.1088`);
            assert.equal(found.status, 200);
            assert.equal((found.body as Json[]).length, 1, `replica ${r.name} finds the study`);
            const instances = await getJson(`${r.url}/aets/${AET}/studies/2.25.1088/instances`);
            assert.deepEqual((instances.body as Json[]).map((i) => i["00080018"].Value![0]), [
              extra.key.split("/")[2].slice(0, -4),
            ]);
            const metadata = await getJson(`${r.url}/aets/${AET}/studies/2.25.1088/metadata`);
            assert.equal(metadata.status, 200);
            assert.equal((metadata.body as Json[])[0]["0020000D"].Value![0], "2.25.1088");
          }
        },
      );

      await t.step("a change filed through A drops B's cached header of that object", async () => {
        const f = files[0];
        const [study, series, name] = f.key.split("/");
        const frames = await fetch(
          `${b.url}/aets/${AET}/studies/${study}/series/${series}/instances/${name.slice(0, -4)}/frames/1`,
          { headers: { accept: "multipart/related; type=application/octet-stream" } },
        );
        assert.equal(frames.status, 200);
        await frames.body?.cancel();
        assert.ok(b.headers.latest(bucket, f.key), "B holds the header (a frame request read it)");
        await a.catalog.recordInstance(
          AET,
          bucket,
          { key: f.key, size: f.bytes.length, etag: "changed" },
          parseBuffer(f.bytes, f.key),
        );
        await until(
          "B to forget the header",
          () => Promise.resolve(b.headers.latest(bucket, f.key) ? undefined : true),
        );
      });

      await t.step(
        "a replica that took the lease and died: B takes the crawl over once the lease runs out",
        async () => {
          const dead = await a.catalog.beginCrawl(AET, bucket, "replica-killed", LEASE_MS);
          assert.ok(dead, "the dead replica holds the lease");
          const before = Date.now();
          const post = await fetch(`${b.url}/admin/index?aet=${AET}`, { method: "POST" });
          assert.equal(post.status, 202);
          await post.body?.cancel();
          const state = await until("B to take the crawl over", async () => {
            const { body } = await getJson(`${b.url}/admin/index?aet=${AET}`, "application/json");
            const last = body.aets[0].crawl?.last;
            return last?.outcome === "complete" && Date.parse(last.startedAt) >= before ? body : undefined;
          });
          assert.equal(state.aets[0].crawlingBy, undefined, "the lease is released after the crawl");
          const { body } = await getJson(`${c.url}/admin/index?aet=${AET}`, "application/json");
          assert.equal(body.aets[0].completeAt, state.aets[0].completeAt, "C sees B's crawl");
        },
      );

      await t.step(
        "the database goes away: QIDO 503 naming it, retrieval 200, /readyz degraded; back by itself",
        async () => {
          const f = files[1];
          const [study, series, name] = f.key.split("/");
          const instance = `/aets/${AET}/studies/${study}/series/${series}/instances/${name.slice(0, -4)}`;
          await pg.pause();
          const search = await getJson(`${b.url}/aets/${AET}/studies`);
          assert.equal(search.status, 503);
          assert.match(
            search.body.error,
            /catalog database \(PostgreSQL postgres:\/\/test@127\.0\.0\.1:\d+\/fleet_\d+\)/,
          );
          const retrieved = await fetch(`${b.url}${instance}`, { headers: { accept: "application/dicom" } });
          assert.equal(retrieved.status, 200);
          const bytes = new Uint8Array(await retrieved.arrayBuffer());
          assert.ok(bytes.length > 132 && new TextDecoder().decode(bytes.subarray(128, 132)) === "DICM");
          const metadata = await getJson(`${c.url}${instance}/metadata`);
          assert.equal(metadata.status, 200);
          const ready = await getJson(`${a.url}/readyz`, "application/json");
          assert.equal(ready.status, 200);
          assert.equal(ready.body.status, "degraded");
          assert.equal(ready.body.catalog.status, "unavailable");
          assert.match(ready.body.catalog.problem, /PostgreSQL/);
          await pg.resume();
          for (const r of replicas) {
            await until(`replica ${r.name} to search again`, async () => {
              const again = await getJson(`${r.url}/aets/${AET}/studies?limit=1`);
              return again.status === 200 ? true : undefined;
            });
          }
          assert.equal((await getJson(`${a.url}/readyz`, "application/json")).body.status, "ready");
        },
      );
    } finally {
      for (const r of replicas) await r.close().catch(() => {});
      await store.close?.();
      await s3.stop();
      await pg.stop();
    }
  },
});
