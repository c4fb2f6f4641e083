/**
 * Search end to end through `Deno.serve` on port 0, from a local folder and from a real S3 server (s3rver, or
 * Ceph RGW with TEST_S3_ENDPOINT): crawl started over HTTP, progress polled, OHIF's searches, an incremental
 * re-crawl that reads no object, and a new object found by the next crawl.
 */

import assert from "node:assert/strict";
import type { Catalog } from "../../lib/catalog/catalog.ts";
import { parseConfig } from "../../lib/config/config.ts";
import { memoryCatalog, testServer } from "../_server.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import type { ObjectStore } from "../../lib/store/store.ts";
import { generatedCorpus, putAll, STUDIES } from "../_qido_fixtures.ts";
import { startS3 } from "../_s3server.ts";
import { observe, type ObservedStore } from "../_stores.ts";

const AET = "E2E";
const files = generatedCorpus();
const GARBAGE_KEY = "2.25.66/2.25.66.1/2.25.66.1.1.dcm";

type Json = Record<string, { vr: string; Value?: unknown[] }>;

interface Server {
  url: string;
  store: ObservedStore;
  catalog: Catalog;
  close(): Promise<void>;
}

async function serve(store: ObjectStore, bucket: string): Promise<Server> {
  const observed = observe(store);
  const config = parseConfig({ PORT: "0", AETS: `${AET}=${bucket}`, CRAWL_INTERVAL: "0" });
  const catalog = await memoryCatalog({ bulkDataThreshold: config.bulkDataThreshold });
  const server = testServer({
    store: observed,
    config,
    capabilities: { reEncode: true },
    catalog,
    handler: { log: () => {} },
  });
  return {
    url: server.url,
    store: observed,
    catalog,
    async close() {
      await server.close();
      await catalog.close();
    },
  };
}

async function getJson(url: string): Promise<{ response: Response; body: unknown }> {
  const response = await fetch(url, { headers: { accept: "application/dicom+json" } });
  const body = await response.json();
  return { response, body };
}

interface AdminAet {
  aet: string;
  pending: number;
  studies: number;
  completeAt?: string;
  crawl?: { phase: string; last?: { startedAt: string; outcome: string; listed: number; unchanged: number } };
}

/** POSTs a crawl and polls GET /admin/index until it and its background instance pass are done. */
async function crawl(base: string): Promise<AdminAet> {
  const before = Date.now();
  const post = await fetch(`${base}/admin/index?aet=${AET}`, { method: "POST" });
  assert.equal(post.status, 202);
  await post.body?.cancel();
  const until = Date.now() + 15_000;
  for (;;) {
    const { body } = await getJson(`${base}/admin/index`);
    const aet = (body as { aets: AdminAet[] }).aets.find((a) => a.aet === AET);
    const last = aet?.crawl?.last;
    if (aet && last && Date.parse(last.startedAt) >= before - 1 && aet.crawl!.phase === "idle") return aet;
    if (Date.now() > until) throw new Error(`Crawl did not finish: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function run(t: Deno.TestContext, store: ObjectStore, bucket: string): Promise<void> {
  await putAll(store, bucket, files);
  await store.put(bucket, GARBAGE_KEY, new TextEncoder().encode("not DICOM"));
  const server = await serve(store, bucket);
  const base = server.url;
  try {
    await t.step("POST /admin/index crawls; GET /admin/index reports it and the failed object", async () => {
      const aet = await crawl(base);
      assert.equal(aet.crawl!.last!.outcome, "complete");
      assert.equal(aet.crawl!.last!.listed, files.length + 1);
      assert.equal(aet.studies, STUDIES.length);
      assert.equal(aet.pending, 0, `the background pass read every instance header: ${JSON.stringify(aet)}`);
      const { body } = await getJson(`${base}/admin/index?aet=${AET}`);
      assert.deepEqual((body as { failures: { key: string }[] }).failures.map((f) => f.key), [GARBAGE_KEY]);
      const gets = server.store.calls.filter((c) => c.startsWith("get "));
      assert.equal(gets.length, files.length + 1, "each object's header read once");
      assert.ok(gets.every((g) => / \d+-\d+$/.test(g)), "ranged reads only");
    });

    await t.step("OHIF's study list, study, series and instance searches", async () => {
      const list =
        `${base}/aets/${AET}/studies?limit=101&offset=0&fuzzymatching=true&includefield=00081030%2C00080060`;
      const { response, body } = await getJson(`${list}&PatientName=*BRA*`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-type"), "application/dicom+json; charset=utf-8");
      const studies = body as Json[];
      assert.deepEqual(studies.map((s) => s["0020000D"].Value![0]), ["2.25.1003", "2.25.1001"]);
      assert.equal(studies[1]["00081190"].Value![0], `${base}/aets/${AET}/studies/2.25.1001`);
      assert.deepEqual(studies[0]["00080061"].Value, ["CT", "PT"]);
      const series = (await getJson(
        `${base}/aets/${AET}/studies/2.25.1001/series?includefield=00080021%2C00080031%2C0008103E%2C00200011`,
      ))
        .body as Json[];
      assert.deepEqual(series.map((s) => s["0008103E"].Value![0]), ["SCOUT", "AXIAL 5mm"]);
      const instances = (await getJson(`${base}/aets/${AET}/studies/2.25.1001/series/2.25.1001.2/instances`))
        .body as Json[];
      assert.deepEqual(instances.map((i) => i["00200013"].Value![0]), [1, 2, 3]);
      const retrieve = await fetch(instances[0]["00081190"].Value![0] as string, {
        headers: { accept: "application/dicom" },
      });
      assert.equal(retrieve.status, 200, "RetrieveURL works");
      await retrieve.body?.cancel();
      const { body: none } = await getJson(`${base}/aets/${AET}/studies?PatientID=nobody`);
      assert.deepEqual(none, []);
      const unknown = await fetch(`${base}/aets/NOPE/studies`);
      assert.equal(unknown.status, 404);
      await unknown.body?.cancel();
    });

    await t.step("re-crawl of the unchanged bucket reads no object", async () => {
      server.store.calls.length = 0;
      const aet = await crawl(base);
      assert.equal(aet.crawl!.last!.unchanged, files.length + 1);
      assert.deepEqual(server.store.calls.filter((c) => c.startsWith("get ")), []);
    });

    await t.step("an object written by another tool is found by the next crawl", async () => {
      const [extra] = generatedCorpus([{
        ...STUDIES[4],
        uid: "2.25.1077",
        series: [{ ...STUDIES[4].series[0], uid: "2.25.1077.1" }],
      }]);
      await store.put(bucket, extra.key, extra.bytes);
      const query = `${base}/aets/${AET}/studies?StudyInstanceUID=2.25.1077`;
      assert.deepEqual((await getJson(query)).body, []);
      server.store.calls.length = 0;
      await crawl(base);
      assert.deepEqual(server.store.calls.filter((c) => c.startsWith("get ")).map((c) => c.split(" ")[1]), [
        extra.key,
      ]);
      const found = (await getJson(query)).body as Json[];
      assert.equal(found.length, 1);
      assert.equal(found[0]["00201208"].Value![0], 1);
    });
  } finally {
    await server.close();
  }
}

Deno.test("QIDO end to end from a local folder", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "qido-e2e-" });
  try {
    await Deno.mkdir(`${dir}/e2e-bucket`);
    await run(t, new FileStore(dir), "e2e-bucket");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("QIDO end to end from S3", async (t) => {
  const s3 = await startS3();
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  try {
    const bucket = s3.uniqueBucket("qido");
    await s3.createBucket(bucket);
    await run(t, store, bucket);
  } finally {
    await store.close?.();
    await s3.stop();
  }
});
