/**
 * Metadata never drops an instance silently: a cut-short instance is listed (its header is whole), from the
 * store and from the catalog alike; an object whose header cannot be read is left out with a `Warning`, logged,
 * and counted by `GET /admin/index`, and the rest of the study is served.
 */

import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { memoryCatalog, testHandler } from "../_server.ts";
import { pydicomCorpus } from "../_corpus.ts";
import { HeaderCache } from "../../lib/objects/header_cache.ts";

type Json = Record<string, { Value?: unknown[] }>;

const corpus = await pydicomCorpus();
const file = (name: string) => corpus.find((f) => f.name === name)!;
const whole = file("MR_small.dcm");
const truncated = file("MR_truncated.dcm"); // Pixel Data declared 8192 bytes, 8130 in the file
const [study, series] = whole.key.split("/");
const sopOf = (key: string) => key.split("/")[2].replace(/\.dcm$/, "");
/** Sorts before every other key of the series, so it is met before the first instance is sent. */
const unreadableFirst = `${study}/${series}/1.2.3.dcm`;
/** Sorts after them: met once the response has started. */
const unreadableLast = `${study}/${series}/1.9.9.dcm`;
const NOT_DICOM = new TextEncoder().encode("this is not DICOM\n".repeat(40));

async function bucket(keys: string[]): Promise<MemoryStore> {
  const store = new MemoryStore(["pacs"]);
  await store.put("pacs", whole.key, whole.bytes);
  await store.put("pacs", truncated.key, truncated.bytes);
  for (const key of keys) await store.put("pacs", key, NOT_DICOM);
  return store;
}

const sops = (body: Json[]) => body.map((i) => i["00080018"].Value![0]).sort();

Deno.test("study and series metadata list every readable instance and name what they leave out", async (t) => {
  await t.step(
    "from the store (no catalog): the cut-short instance is there; the unreadable one named",
    async () => {
      const app = testHandler({ store: await bucket([unreadableFirst]), config: { AETS: "PACS=pacs" } });
      for (
        const path of [
          `/aets/PACS/studies/${study}/metadata`,
          `/aets/PACS/studies/${study}/series/${series}/metadata`,
        ]
      ) {
        const response = await app.fetch(path);
        assert.equal(response.status, 200, path);
        assert.deepEqual(sops(await response.json()), [sopOf(whole.key), sopOf(truncated.key)].sort(), path);
        const warning = response.headers.get("warning") ?? "";
        assert.match(warning, /^299 localhost "1 object\(s\) left out: their headers cannot be read \(/);
        assert.ok(warning.includes(unreadableFirst), warning);
      }
      assert.ok(
        app.logs.some((line) => line.includes(`metadata: skipping pacs/${unreadableFirst}`)),
        app.logs.join("\n"),
      );
    },
  );

  await t.step(
    "from the catalog: searchable, counted by /admin/index, named even when met late",
    async () => {
      const app = testHandler({
        store: await bucket([unreadableLast]),
        config: { AETS: "PACS=pacs" },
        catalog: await memoryCatalog(),
      });
      await app.services.crawler!.crawl("PACS", { waitForInstances: true });
      const found = await app.fetch(`/aets/PACS/studies/${study}/instances`);
      assert.deepEqual(sops(await found.json()), [sopOf(whole.key), sopOf(truncated.key)].sort());
      const index = await (await app.fetch("/admin/index")).json();
      assert.equal(index.aets[0].failed, 1);
      assert.deepEqual(index.failures.map((f: { key: string }) => f.key), [unreadableLast]);
      const response = await app.fetch(`/aets/PACS/studies/${study}/metadata`);
      assert.equal(response.status, 200);
      assert.deepEqual(sops(await response.json()), [sopOf(whole.key), sopOf(truncated.key)].sort());
      assert.ok((response.headers.get("warning") ?? "").includes(unreadableLast));
    },
  );

  await t.step("met late without the catalog knowing: recorded, so /admin/index counts it", async () => {
    const store = await bucket([]);
    const app = testHandler({ store, config: { AETS: "PACS=pacs" }, catalog: await memoryCatalog() });
    await app.services.crawler!.crawl("PACS", { waitForInstances: true });
    await store.put("pacs", unreadableLast, NOT_DICOM); // written after the crawl
    const response = await app.fetch(`/aets/PACS/studies/${study}/metadata`);
    assert.equal(response.status, 200);
    assert.equal((await response.json()).length, 2);
    const index = await (await app.fetch("/admin/index")).json();
    assert.deepEqual(index.failures.map((f: { key: string }) => f.key), [unreadableLast]);
    const again = await app.fetch(`/aets/PACS/studies/${study}/metadata`);
    await again.body?.cancel();
    assert.ok((again.headers.get("warning") ?? "").includes(unreadableLast));
  });

  await t.step("an instance's own metadata is still an error naming the object when unreadable", async () => {
    const app = testHandler({ store: await bucket([unreadableFirst]), config: { AETS: "PACS=pacs" } });
    const response = await app.fetch(`/aets/PACS/studies/${study}/series/${series}/instances/1.2.3/metadata`);
    assert.ok(response.status >= 500, String(response.status));
    assert.match((await response.json()).error, /1\.2\.3\.dcm/);
  });
});

Deno.test("warm series metadata comes from the header cache whole, without asking the catalog", async (t) => {
  const store = await bucket([]);
  const catalog = await memoryCatalog();
  let asked = 0;
  const instanceMetadata = catalog.instanceMetadata.bind(catalog);
  catalog.instanceMetadata = (...args) => {
    asked++;
    return instanceMetadata(...args);
  };
  const headerCache = new HeaderCache();
  const app = testHandler({ store, config: { AETS: "PACS=pacs" }, catalog, headerCache });
  try {
    const path = `/aets/PACS/studies/${study}/series/${series}/metadata`;
    const chunksOf = async (response: Response) => {
      const chunks: Uint8Array[] = [];
      for await (const chunk of response.body!) chunks.push(chunk);
      return chunks;
    };
    const text = (chunks: Uint8Array[]) =>
      new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
    const cold = await chunksOf(await app.fetch(path));
    assert.equal(asked, 1, "a cold request asks the catalog once, at the first header not cached");
    await t.step("the same JSON in one chunk, the catalog not asked", async () => {
      const warm = await app.fetch(path);
      assert.equal(warm.status, 200);
      assert.equal(warm.headers.get("content-type"), "application/dicom+json; charset=utf-8");
      const chunks = await chunksOf(warm);
      assert.equal(chunks.length, 1);
      assert.equal(text(chunks), text(cold));
      assert.deepEqual(sops(JSON.parse(text(chunks))), [sopOf(whole.key), sopOf(truncated.key)].sort());
      assert.equal(asked, 1);
    });
    await t.step(
      "an object changed since (new ETag) is read again and the rest still comes from the cache",
      async () => {
        const changed = whole.bytes.slice();
        await store.put("pacs", whole.key, changed); // same bytes, a new version
        const before = headerCache.misses;
        const response = await app.fetch(path);
        assert.equal(text(await chunksOf(response)), text(cold));
        assert.ok(headerCache.misses - before <= 1);
      },
    );
  } finally {
    await app.close();
    await catalog.close();
  }
});

Deno.test("a repeated study/series metadata is the response made before while the listing is the same", async () => {
  /** Counts the per-instance JSON lookups a response costs. */
  class CountingCache extends HeaderCache {
    lookups = 0;
    override json(bucket: string, info: { key: string; etag: string }): string | undefined {
      this.lookups++;
      return super.json(bucket, info);
    }
  }
  const store = await bucket([]);
  const headerCache = new CountingCache();
  const app = testHandler({ store, config: { AETS: "PACS=pacs" }, headerCache });
  const path = `/aets/PACS/studies/${study}/series/${series}/metadata`;
  const get = async (url = path, init?: RequestInit) => {
    const response = await app.fetch(url, init);
    assert.equal(response.status, 200);
    return await response.text();
  };
  const first = await get();
  assert.deepEqual(sops(JSON.parse(first)), [sopOf(whole.key), sopOf(truncated.key)].sort());
  const warm = await get(); // JSON at hand: one chunk, kept
  assert.equal(warm, first);
  headerCache.lookups = 0;
  assert.equal(await get(), first);
  assert.equal(headerCache.lookups, 0, "the same listing: sent again without touching an instance");
  // the kept bytes go out as they are (not copied per request), with their length, and stay intact
  const kept = await app.fetch(path);
  const length = new TextEncoder().encode(first).byteLength;
  assert.equal(kept.headers.get("content-length"), String(length));
  assert.equal(await kept.text(), first);
  const head = await app.fetch(path, { method: "HEAD" });
  assert.equal(head.headers.get("content-length"), String(length), "HEAD: the GET's length");
  // a browser's request (Accept-Encoding: gzip): the kept response gzipped, with the gzip's length
  for (let i = 0; i < 2; i++) {
    const zipped = await app.fetch(path, { headers: { "accept-encoding": "gzip, deflate, br, zstd" } });
    assert.equal(zipped.headers.get("content-encoding"), "gzip");
    assert.equal(zipped.headers.get("vary"), "Accept-Encoding");
    const body = await zipped.bytes();
    assert.equal(zipped.headers.get("content-length"), String(body.byteLength));
    assert.equal(new TextDecoder().decode(gunzipSync(body)), first);
    const head = await app.fetch(path, { method: "HEAD", headers: { "accept-encoding": "gzip" } });
    assert.equal(head.headers.get("content-encoding"), "gzip", "HEAD says what GET would");
    assert.equal(head.headers.get("content-length"), String(body.byteLength));
  }
  assert.equal(await get(), first, "sent three times, the kept response is unchanged");

  const other = await get(path, { headers: { host: "pacs.example.org" } });
  assert.ok(
    other.includes("http://pacs.example.org/aets/PACS/studies/"),
    "another base URL: its own response",
  );
  assert.ok(!first.includes("pacs.example.org"));

  await store.delete("pacs", truncated.key);
  assert.deepEqual(sops(JSON.parse(await get())), [sopOf(whole.key)], "an object deleted: made anew");
  await store.put("pacs", truncated.key, truncated.bytes);
  assert.equal(JSON.parse(await get()).length, 2, "an object added: made anew");
  const study2 = await get(`/aets/PACS/studies/${study}/metadata`);
  assert.equal(JSON.parse(study2).length, 2);
});
