/**
 * End to end through `Deno.serve` on port 0: every instance, series and study of the corpus
 * retrieved over HTTP, from a local folder and from a real S3 server, each part parsed by an
 * independent multipart parser and compared byte for byte with its source.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../../lib/config/config.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import type { ObjectStore } from "../../lib/store/store.ts";
import { buildInstance, builtCorpus, type CorpusFile, md5, pydicomCorpus } from "../_corpus.ts";
import { boundaryOf, type ParsedPart, parseMultipart } from "../_multipart_parser.ts";
import { eventually, observe, type ObservedStore } from "../_stores.ts";
import { startS3 } from "../_s3server.ts";
import { testServer } from "../_server.ts";

const AET = "E2E";
const DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*';

interface Server {
  url: string;
  logs: string[];
  store: ObservedStore;
  close(): Promise<void>;
}

function serve(store: ObjectStore, bucket: string, env: Record<string, string> = {}): Server {
  const observed = observe(store);
  const config = parseConfig({ PORT: "0", AETS: `${AET}=${bucket}`, ...env });
  const server = testServer({ store: observed, config, capabilities: { reEncode: false } });
  return { url: server.url, logs: server.logs, store: observed, close: server.close };
}

async function retrieveParts(
  url: string,
  accept = DICOM_ACCEPT,
): Promise<{ response: Response; parts: ParsedPart[] }> {
  const response = await fetch(url, { headers: { accept } });
  const bytes = new Uint8Array(await response.arrayBuffer());
  assert.equal(response.status, 200, `${url}: ${new TextDecoder().decode(bytes.subarray(0, 300))}`);
  const type = response.headers.get("content-type")!;
  assert.match(type, /^multipart\/related; type="application\/dicom"; boundary=/);
  return { response, parts: parseMultipart(bytes, boundaryOf(type)).parts };
}

async function loadCorpus(store: ObjectStore, bucket: string, files: CorpusFile[]): Promise<void> {
  for (const f of files) await store.put(bucket, f.key, f.bytes, { size: f.bytes.length });
}

function groupBy(files: CorpusFile[], level: "study" | "series"): Map<string, CorpusFile[]> {
  const map = new Map<string, CorpusFile[]>();
  for (const f of files) {
    const [study, series] = f.key.split("/");
    const id = level === "study" ? study : `${study}/${series}`;
    map.set(id, [...(map.get(id) ?? []), f]);
  }
  for (const list of map.values()) list.sort((a, b) => (a.key < b.key ? -1 : 1));
  return map;
}

function instancePath(key: string): string {
  const [study, series, file] = key.split("/");
  return `/aets/${AET}/studies/${study}/series/${series}/instances/${file.slice(0, -4)}`;
}

async function assertParts(parts: ParsedPart[], expected: CorpusFile[], base: string): Promise<void> {
  assert.deepEqual(
    parts.map((p) => p.headers["content-location"]),
    expected.map((f) => base + instancePath(f.key)),
    "parts in key order with Content-Location",
  );
  for (const [i, f] of expected.entries()) {
    assert.equal(
      parts[i].headers["content-type"],
      `application/dicom; transfer-syntax=${f.transferSyntax}`,
      `${f.name}: part type carries the file's own transfer syntax`,
    );
    assert.equal(await md5(parts[i].body), await md5(f.bytes), `${f.name}: byte-exact`);
  }
}

async function retrievalSuite(
  t: Deno.TestContext,
  makeStore: () => Promise<{ store: ObjectStore; bucket: string; cleanup(): Promise<void> }>,
) {
  const files = [...await pydicomCorpus(), ...builtCorpus()];
  // Big enough that a response is still streaming when the client goes away: 24 × 1 MiB.
  const big: CorpusFile[] = [];
  for (let i = 1; i <= 24; i++) {
    const spec = { study: "2.25.900", series: "2.25.900.1", sop: `2.25.900.1.${i}`, pixelBytes: 1 << 20 };
    big.push({
      key: `${spec.study}/${spec.series}/${spec.sop}.dcm`,
      name: spec.sop,
      transferSyntax: "1.2.840.10008.1.2.1",
      bytes: buildInstance(spec),
    });
  }
  const { store, bucket, cleanup } = await makeStore();
  await loadCorpus(store, bucket, [...files, ...big]);
  const server = serve(store, bucket);
  try {
    await t.step(`every instance (${files.length}) is byte-exact with its transfer syntax`, async () => {
      for (const f of files) {
        const { parts } = await retrieveParts(server.url + instancePath(f.key));
        assert.equal(parts.length, 1, f.name);
        await assertParts(parts, [f], server.url);
      }
    });

    await t.step("every series and study comes back whole, in key order", async () => {
      for (const [id, expected] of groupBy(files, "series")) {
        const [study, series] = id.split("/");
        const { parts } = await retrieveParts(`${server.url}/aets/${AET}/studies/${study}/series/${series}`);
        await assertParts(parts, expected, server.url);
      }
      for (const [study, expected] of groupBy(files, "study")) {
        const { parts } = await retrieveParts(`${server.url}/aets/${AET}/studies/${study}`);
        await assertParts(parts, expected, server.url);
      }
    });

    await t.step("prefix collisions: 1.2.3 never returns 1.2.34's objects", async () => {
      const study = await retrieveParts(`${server.url}/aets/${AET}/studies/1.2.3`);
      assert.equal(study.parts.length, 3);
      const series = await retrieveParts(`${server.url}/aets/${AET}/studies/1.2.3/series/1.2.3.1`);
      assert.equal(series.parts.length, 2);
      const one = await retrieveParts(
        `${server.url}/aets/${AET}/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1.1`,
      );
      assert.equal(one.parts.length, 1);
      const expected = files.find((f) => f.key === "1.2.3/1.2.3.1/1.2.3.1.1.dcm")!;
      assert.equal(await md5(one.parts[0].body), await md5(expected.bytes));
      const missing = await fetch(`${server.url}/aets/${AET}/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1`);
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
    });

    await t.step("errors: 404, 400, 405, 406 with JSON bodies that say why", async () => {
      const cases: [string, RequestInit, number, RegExp][] = [
        [`/aets/NOPE/studies/1.2.3`, {}, 404, /Unknown AET "NOPE"/],
        [`/aets/${AET}/studies/9.9.9`, {}, 404, /study 9\.9\.9/],
        [`/aets/${AET}/studies/1.2.3/series/9.9`, {}, 404, /series 9\.9/],
        [`/aets/${AET}/studies/1.2.3/series/1.2.3.1/instances/9.9`, {}, 404, /instance 9\.9/],
        [`/aets/${AET}/studies/1.2.abc`, {}, 400, /Invalid StudyInstanceUID/],
        [`/aets/${AET}/studies/1.2.03`, {}, 400, /leading zeros/],
        [`/aets/${AET}/studies/1.2%2F3`, {}, 400, /Invalid StudyInstanceUID/],
        [`/aets/${AET}/studies/${"1.".repeat(40)}1`, {}, 400, /at most 64/],
        [`/aets/${AET}/studies/1.2.3`, { method: "PUT" }, 405, /not allowed/],
        [
          `/aets/${AET}/studies/1.2.3`,
          { headers: { accept: "image/png" } },
          406,
          /multipart\/related; type="application\/dicom"/,
        ],
        [
          `/aets/${AET}/studies/1.2.3`,
          { headers: { accept: 'multipart/related; type="application/dicom' } },
          400,
          /Malformed Accept/,
        ],
      ];
      const before = server.store.calls.length;
      for (const [path, init, status, message] of cases) {
        const response = await fetch(server.url + path, init);
        const body = await response.json();
        assert.equal(response.status, status, `${path}: ${JSON.stringify(body)}`);
        assert.match(body.error, message, path);
        if (status === 405) assert.equal(response.headers.get("allow"), "GET, POST, DELETE, HEAD, OPTIONS");
      }
      const touched = server.store.calls.slice(before).filter((c) => !c.startsWith("list ") || true);
      assert.ok(!touched.some((c) => /abc|03|%2F/.test(c)), `invalid UIDs never reach the store: ${touched}`);
    });

    await t.step("a client that disconnects mid-study cancels the store reads", async () => {
      const controller = new AbortController();
      const response = await fetch(`${server.url}/aets/${AET}/studies/2.25.900`, {
        headers: { accept: DICOM_ACCEPT },
        signal: controller.signal,
      });
      assert.equal(response.status, 200);
      const reader = response.body!.getReader();
      let got = 0;
      while (got < 2 << 20) got += (await reader.read()).value?.byteLength ?? 0;
      assert.ok(server.store.openBodies() > 0, "reads in flight while streaming");
      controller.abort();
      await reader.cancel().catch(() => {});
      await eventually(() => server.store.openBodies() === 0, 5_000, "store bodies to be released");
      await eventually(
        () => server.logs.some((l) => l.includes("/studies/2.25.900 200") && l.includes("disconnected")),
        5_000,
        "the log line",
      );
      const health = await fetch(`${server.url}/healthz`);
      assert.equal(health.status, 200);
      await health.body?.cancel();
    });

    await t.step(
      "a series retrieved again: its first objects are asked for while the listing is on its way; the listing decides what is sent",
      async () => {
        const expected = [...big].sort((a, b) => (a.key < b.key ? -1 : 1)); // key order
        const seriesUrl = `/aets/${AET}/studies/2.25.900/series/2.25.900.1`;
        const events: string[] = [];
        let gate: PromiseWithResolvers<void> | undefined;
        const gated: ObjectStore = {
          kind: store.kind,
          location: store.location,
          listBuckets: (o) => store.listBuckets(o),
          async *list(b, p, o) {
            events.push("list");
            await gate?.promise;
            events.push("listed");
            yield* store.list(b, p, o);
          },
          head: (b, k, o) => store.head(b, k, o),
          get: (b, k, o) => (events.push(`get ${k}`), store.get(b, k, o)),
          put: (b, k, body, o) => store.put(b, k, body, o),
          delete: (b, k, o) => store.delete(b, k, o),
          check: (b, o) => store.check(b, o),
        };
        const again = serve(gated, bucket);
        try {
          // the first time, nothing is known: the listing comes first
          await assertParts((await retrieveParts(again.url + seriesUrl)).parts, expected, again.url);
          assert.equal(events[0], "list");
          assert.equal(events[1], "listed");
          // again: GETs go out before the listing has answered, and every byte is the same
          events.length = 0;
          gate = Promise.withResolvers<void>();
          const pending = retrieveParts(again.url + seriesUrl);
          await eventually(() => events.some((e) => e.startsWith("get ")), 5_000, "GETs before the listing");
          assert.ok(!events.includes("listed"), events.join(", "));
          gate.resolve();
          await assertParts((await pending).parts, expected, again.url);
          // an object deleted since: guessed, asked for, not sent, its read released
          await store.delete(bucket, expected[0].key);
          try {
            events.length = 0;
            gate = Promise.withResolvers<void>();
            const without = retrieveParts(again.url + seriesUrl);
            await eventually(() => events.includes(`get ${expected[0].key}`), 5_000, "the guessed GET");
            gate.resolve();
            await assertParts((await without).parts, expected.slice(1), again.url);
            await eventually(() => again.store.openBodies() === 0, 5_000, "store bodies to be released");
          } finally {
            await store.put(bucket, expected[0].key, expected[0].bytes, { size: expected[0].bytes.length });
          }
        } finally {
          gate?.resolve();
          await again.close();
        }
      },
    );

    await t.step("HEAD answers headers only; one log line per request", async () => {
      const response = await fetch(`${server.url}/aets/${AET}/studies/2.25.100`, {
        method: "HEAD",
        headers: { accept: DICOM_ACCEPT },
      });
      assert.equal(response.status, 200);
      assert.equal((await response.arrayBuffer()).byteLength, 0);
      await eventually(() => server.store.openBodies() === 0, 5_000, "HEAD to release reads");
      const line = server.logs.findLast((l) => l.startsWith("HEAD "))!;
      assert.match(line, /^HEAD \/aets\/E2E\/studies\/2\.25\.100 200 0B \d+\.\dms$/);
    });
  } finally {
    await server.close();
    await cleanup();
  }
}

Deno.test("retrieve end to end from a local folder", async (t) => {
  await retrievalSuite(t, async () => {
    const root = await Deno.makeTempDir({ prefix: "dicomweb-e2e-" });
    const store = new FileStore(root);
    await Deno.mkdir(`${root}/e2e-bucket`);
    return { store, bucket: "e2e-bucket", cleanup: () => Deno.remove(root, { recursive: true }) };
  });
});

Deno.test("retrieve end to end from S3", async (t) => {
  const s3 = await startS3();
  try {
    await retrievalSuite(t, async () => {
      const bucket = s3.uniqueBucket("e2e");
      await s3.createBucket(bucket);
      const store = new S3Store({
        endpoint: s3.endpoint,
        region: s3.region,
        forcePathStyle: true,
        credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
      });
      return { store, bucket, cleanup: async () => await store.close?.() };
    });
  } finally {
    await s3.stop();
  }
});

Deno.test("a store failure after the 200 aborts the response instead of ending it short", async () => {
  const root = await Deno.makeTempDir({ prefix: "dicomweb-e2e-" });
  try {
    const inner = new FileStore(root);
    await Deno.mkdir(`${root}/b`);
    const files = builtCorpus().filter((f) => f.key.startsWith("2.25.100/"));
    await loadCorpus(inner, "b", files);
    const failing = observe(inner, { failBody: { key: files[2].key, afterBytes: 100 } });
    const config = parseConfig({ AETS: `${AET}=b` });
    const server = testServer({
      store: failing,
      config,
      capabilities: { reEncode: false },
      handler: { log: () => {} },
    });
    try {
      const response = await fetch(
        `${server.url}/aets/${AET}/studies/2.25.100`,
      );
      assert.equal(response.status, 200);
      await assert.rejects(response.arrayBuffer(), "the body must fail, not end well-formed");
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
