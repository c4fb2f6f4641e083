/**
 * STOW-RS through the handler, on the memory and local-folder stores: the corpus in one request, the
 * streaming path for parts above the buffer, statuses and the response, and the faults that must leave
 * nothing behind (store failures, a client gone, a truncated body).
 */

import assert from "node:assert/strict";
import { AetRegistry } from "../../lib/objects/aets.ts";
import type { Catalog, InstanceToRecord, RecordOutcome } from "../../lib/catalog/catalog.ts";
import { parseConfig } from "../../lib/config/config.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { readHeader } from "../../lib/dicom/part10.ts";
import type { ObjectInfo, ObjectStore } from "../../lib/store/store.ts";
import type { StowOptions } from "../../lib/dicomweb/stow.ts";
import { buildInstance, CORPUS_DIR, md5, pydicomCorpus } from "../_corpus.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { observe } from "../_stores.ts";
import { Part10Check } from "../../lib/dicom/part10_check.ts";
import { FAILURE } from "../../lib/dicomweb/stow_response.ts";
import { testHandler } from "../_server.ts";
import type { Part10Header } from "../../lib/dicom/dataset.ts";
import { concatBytes } from "../../lib/util/bytes.ts";
import { readFileMeta, writeFileMeta } from "../../lib/dicom/file_meta.ts";

const AET = "STOW";
const BUCKET = "stow-bucket";
const TYPE = 'multipart/related; type="application/dicom"; boundary=';
const DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*';
const encoder = new TextEncoder();

// ---- request bodies ----

interface BodyPart {
  bytes: Uint8Array;
  contentType?: string | null;
}

function multipartBytes(parts: BodyPart[], boundary: string, close = true): Uint8Array {
  const chunks: Uint8Array[] = [];
  for (const p of parts) {
    const type = p.contentType === undefined ? "application/dicom" : p.contentType;
    chunks.push(
      encoder.encode(`--${boundary}\r\n${type === null ? "" : `Content-Type: ${type}\r\n`}\r\n`),
      p.bytes,
    );
    chunks.push(encoder.encode("\r\n"));
  }
  if (close) chunks.push(encoder.encode(`--${boundary}--\r\n`));
  else chunks.pop(); // ends right after the last part's bytes: no closing delimiter
  return concatBytes(chunks);
}

/** Delivers `bytes` in chunks of `size`; then ends, or errors with `fail`. */
function chunked(
  bytes: Uint8Array,
  size: number,
  fail?: { at: number; error: Error },
): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (fail && at >= fail.at) return controller.error(fail.error);
      if (at >= bytes.length) return controller.close();
      const end = Math.min(at + size, bytes.length, fail ? Math.max(fail.at, at + 1) : Infinity);
      controller.enqueue(bytes.slice(at, end));
      at = end;
    },
  }, { highWaterMark: 0 });
}

function stowRequest(
  path: string,
  parts: BodyPart[],
  options: {
    chunk?: number;
    close?: boolean;
    headers?: Record<string, string>;
    fail?: { at: number; error: Error };
  } = {},
): Request {
  const boundary = `b-${crypto.randomUUID()}`;
  const bytes = multipartBytes(parts, boundary, options.close ?? true);
  return new Request(`http://localhost${path}`, {
    method: "POST",
    body: chunked(bytes, options.chunk ?? 65536, options.fail),
    headers: { "content-type": TYPE + boundary, ...options.headers },
  });
}

// ---- servers ----

interface Recorded {
  aet: string;
  bucket: string;
  info: ObjectInfo;
  header: Part10Header;
}

interface App {
  store: ObjectStore;
  recorded: Recorded[];
  /** The size of each batch given to the catalog. */
  batches: number[];
  /** The whole app (createHandler): STOW-RS, WADO-RS. */
  handler: (request: Request) => Promise<Response>;
  /** The app with the STOW-RS `options` (a small buffer, ...). */
  stow: (request: Request) => Promise<Response>;
}

function makeApp(
  store: ObjectStore,
  options: StowOptions & { env?: Record<string, string>; catalog?: (r: Recorded) => Promise<void> } = {},
): App {
  const config = parseConfig({ AETS: `${AET}=${BUCKET}`, ...options.env });
  const aets = new AetRegistry(store, { configured: config.aets });
  const recorded: Recorded[] = [];
  const batches: number[] = [];
  // only recordInstances is called by STOW
  const catalog = {
    recordInstances(aet: string, bucket: string, items: InstanceToRecord[]) {
      batches.push(items.length);
      return Promise.all(items.map(async ({ info, header }): Promise<PromiseSettledResult<RecordOutcome>> => {
        const entry = { aet, bucket, info, header };
        try {
          await options.catalog?.(entry);
        } catch (reason) {
          return { status: "rejected", reason };
        }
        recorded.push(entry);
        return { status: "fulfilled", value: "indexed" };
      }));
    },
  } as unknown as Catalog;
  const app = testHandler({ store, config, aets, capabilities: { reEncode: false }, catalog });
  // STOW-RS with `options` (a small buffer, ...) through a handler of its own
  const alone = testHandler({
    store,
    config,
    aets,
    capabilities: { reEncode: false },
    catalog,
    handler: { stow: options },
  });
  return { store, recorded, batches, handler: app.handler, stow: alone.handler };
}

// ---- responses ----

interface Item {
  sopClass?: string;
  sop?: string;
  url?: string;
  warning?: number;
  failure?: number;
}

interface StowResult {
  status: number;
  retrieveUrl?: string;
  stored: Item[];
  failed: Item[];
  warnings: string[];
  json: Record<string, unknown>;
}

async function result(response: Response): Promise<StowResult> {
  const text = await response.text();
  assert.match(response.headers.get("content-type") ?? "", /^application\/(dicom\+)?json/, text);
  // deno-lint-ignore no-explicit-any
  const json = JSON.parse(text) as Record<string, any>;
  const items = (tag: string): Item[] =>
    // deno-lint-ignore no-explicit-any
    (json[tag]?.Value ?? []).map((item: Record<string, any>) => ({
      sopClass: item["00081150"]?.Value?.[0],
      sop: item["00081155"]?.Value?.[0],
      url: item["00081190"]?.Value?.[0],
      warning: item["00081196"]?.Value?.[0],
      failure: item["00081197"]?.Value?.[0],
    }));
  const warnings = response.headers.get("warning") === null ? [] : [response.headers.get("warning")!];
  return {
    status: response.status,
    retrieveUrl: json["00081190"]?.Value?.[0],
    stored: items("00081199"),
    failed: items("00081198"),
    warnings,
    json,
  };
}

async function keys(store: ObjectStore): Promise<string[]> {
  return (await Array.fromAsync(store.list(BUCKET, ""))).map((o) => o.key);
}

async function objectBytes(store: ObjectStore, key: string): Promise<Uint8Array | null> {
  const object = await store.get(BUCKET, key);
  return object && new Uint8Array(await new Response(object.body).arrayBuffer());
}

/** Every file below `dir`, hidden ones included (temporary files of the folder store). */
async function allFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) out.push(...await allFiles(path));
    else out.push(path);
  }
  return out;
}

// ---- the corpus ----

interface CorpusEntry {
  name: string;
  bytes: Uint8Array;
  /** Where it must be stored, or undefined when it must fail. */
  key?: string;
}

/** Every file of tests/testdata/pydicom/files (keyed or not, valid or not), plus built ones on a bare checkout. */
async function wholeCorpus(): Promise<CorpusEntry[]> {
  const keyed = new Map((await pydicomCorpus()).map((f) => [f.name, f.key]));
  const out: CorpusEntry[] = [];
  const dir = new URL("files/", CORPUS_DIR);
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.name.endsWith(".dcm")) continue;
      const malformed = ["MR_truncated.dcm", "rtplan_truncated.dcm"].includes(entry.name);
      out.push({
        name: entry.name,
        bytes: await Deno.readFile(new URL(entry.name, dir)),
        key: malformed ? undefined : keyed.get(entry.name),
      });
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  for (let i = 1; i <= 3; i++) {
    const spec = { study: "2.25.500", series: "2.25.500.1", sop: `2.25.500.1.${i}`, pixelBytes: 5000 * i };
    out.push({
      name: `built ${i}`,
      bytes: buildInstance(spec),
      key: `${spec.study}/${spec.series}/${spec.sop}.dcm`,
    });
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : 1));
}

function instancePath(key: string): string {
  const [study, series, file] = key.split("/");
  return `/aets/${AET}/studies/${study}/series/${series}/instances/${file.slice(0, -4)}`;
}

async function assertCorpusOutcome(
  app: App,
  corpus: CorpusEntry[],
  res: StowResult,
  expectFail = new Map<string, number>(),
) {
  const good = corpus.filter((c) => c.key !== undefined && !expectFail.has(c.name));
  const bad = corpus.filter((c) => c.key === undefined || expectFail.has(c.name));
  assert.equal(res.status, bad.length > 0 ? 202 : 200, res.warnings.join("\n"));
  assert.equal(res.stored.length, good.length, res.warnings.join("\n"));
  assert.equal(res.failed.length, bad.length);
  for (const f of res.failed) assert.ok(f.failure !== undefined);
  const reasons = res.failed.map((f) => f.failure);
  const expectedReasons = bad.map((c) => expectFail.get(c.name) ?? FAILURE.cannotUnderstand);
  assert.deepEqual(reasons.sort(), expectedReasons.sort());
  assert.deepEqual(
    (await keys(app.store)).sort(),
    good.map((c) => c.key!).sort(),
    "nothing extra, nothing missing",
  );
  for (const c of good) {
    assert.equal(
      await md5((await objectBytes(app.store, c.key!))!),
      await md5(c.bytes),
      `${c.name} stored byte-exact`,
    );
  }
  for (const item of res.stored) {
    assert.ok(item.url?.startsWith("http://localhost/aets/STOW/studies/"), item.url);
    assert.ok(good.some((c) => c.key!.endsWith(`/${item.sop}.dcm`)), `${item.sop} is one of the good files`);
  }
  assert.deepEqual(
    app.recorded.map((r) => r.info.key).sort(),
    good.map((c) => c.key!).sort(),
    "every stored instance is in the catalog when the response is sent",
  );
}

Deno.test("STOW-RS of the corpus", async (t) => {
  const corpus = await wholeCorpus();

  await t.step(
    "valid files are stored byte-exact, malformed ones fail with C000, WADO-RS returns them",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]));
      const res = await result(await app.handler(stowRequest(`/aets/${AET}/studies`, corpus)));
      await assertCorpusOutcome(app, corpus, res);
      for (const c of corpus.filter((c) => c.key)) {
        const response = await app.handler(
          new Request(`http://localhost${instancePath(c.key!)}`, { headers: { accept: DICOM_ACCEPT } }),
        );
        assert.equal(response.status, 200, c.name);
        const bytes = new Uint8Array(await response.arrayBuffer());
        const parts = parseMultipart(bytes, boundaryOf(response.headers.get("content-type"))).parts;
        assert.equal(await md5(parts[0].body), await md5(c.bytes), `${c.name} byte-exact through WADO-RS`);
      }
      for (const r of app.recorded) {
        assert.equal(r.aet, AET);
        assert.equal(r.bucket, BUCKET);
        assert.ok(r.info.etag !== "");
        assert.equal(
          r.info.key.split("/")[0],
          new TextDecoder().decode(r.header.dataset.elements.get(0x0020000d)!.bytes).replace(/\0$/, ""),
        );
      }
    },
  );

  await t.step(
    "through the streaming path (parts above the buffer, small chunks) the outcome is the same",
    async () => {
      const app = makeApp(observe(new MemoryStore([BUCKET])), { bufferBytes: 4096 });
      const res = await result(await app.stow(stowRequest(`/aets/${AET}/studies`, corpus, { chunk: 97 })));
      const expectFail = new Map<string, number>();
      if (corpus.some((c) => c.name === "image_dfl.dcm")) {
        expectFail.set("image_dfl.dcm", FAILURE.outOfResources); // deflated: only up to the buffer
        expectFail.set("J2K_pixelrep_mismatch.dcm", FAILURE.outOfResources); // header above 4 KiB
      }
      await assertCorpusOutcome(app, corpus, res, expectFail);
      // headers come from the streamed bytes (front, tail, recorded item headers); only a part with elements
      // in its middle beyond both (the 291 KB waveform, no Pixel Data) is read back after writing
      const gets = (app.store as ReturnType<typeof observe>).calls.filter((c) => c.startsWith("get"));
      const readBack = corpus.filter((c) => gets.some((g) => g.startsWith(`get ${c.key} `)));
      assert.deepEqual(
        readBack.map((c) => c.name),
        corpus.some((c) => c.name === "waveform_ecg.dcm") ? ["waveform_ecg.dcm"] : [],
      );
      const streamed = corpus.find((c) => c.name === "CT_small.dcm");
      if (streamed) {
        const header = app.recorded.find((r) => r.info.key === streamed.key)!.header;
        const direct = await readHeader({
          name: "x",
          size: streamed.bytes.length,
          read: (s, e) => Promise.resolve(streamed.bytes.slice(s, e)),
        });
        assert.deepEqual([...header.dataset.elements.keys()], [...direct.dataset.elements.keys()]);
      }
    },
  );

  await t.step("into a local folder: same outcome, no temporary files left", async () => {
    const dir = await Deno.makeTempDir({ prefix: "stow-" });
    try {
      await Deno.mkdir(`${dir}/${BUCKET}`);
      const app = makeApp(new FileStore(dir), { bufferBytes: 8192 });
      const res = await result(await app.stow(stowRequest(`/aets/${AET}/studies`, corpus, { chunk: 1000 })));
      await assertCorpusOutcome(app, corpus, res);
      assert.deepEqual((await allFiles(dir)).filter((p) => p.includes("/.")), []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});

// ---- small requests ----

const STUDY = "2.25.77";
const SERIES = "2.25.77.1";
const inst = (n: number, extra: Partial<Parameters<typeof buildInstance>[0]> = {}) =>
  buildInstance({ study: STUDY, series: SERIES, sop: `${SERIES}.${n}`, pixelBytes: 3000, ...extra });
const keyOf = (n: number, study = STUDY) => `${study}/${SERIES}/${SERIES}.${n}.dcm`;

Deno.test("STOW-RS responses", async (t) => {
  await t.step(
    "200 when all are stored: RetrieveURL of the study, items with classes, UIDs and URLs",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]));
      const response = await app.handler(
        stowRequest(`/aets/${AET}/studies`, [{ bytes: inst(1) }, { bytes: inst(2) }], {
          headers: { "x-forwarded-host": "pacs.example.org", "x-forwarded-proto": "https" },
        }),
      );
      const res = await result(response);
      assert.equal(res.status, 200);
      assert.equal(response.headers.get("content-type"), "application/dicom+json");
      assert.equal(res.retrieveUrl, `https://pacs.example.org/aets/${AET}/studies/${STUDY}`);
      assert.deepEqual(
        res.stored,
        [1, 2].map((n) => ({
          sopClass: "1.2.840.10008.5.1.4.1.1.7",
          sop: `${SERIES}.${n}`,
          url:
            `https://pacs.example.org/aets/${AET}/studies/${STUDY}/series/${SERIES}/instances/${SERIES}.${n}`,
          warning: undefined,
          failure: undefined,
        })),
      );
      assert.equal(res.failed.length, 0);
      assert.deepEqual(
        Object.keys(res.json),
        ["00081190", "00081199"],
        "tags in ascending order, no empty sequences",
      );
      assert.deepEqual(res.json["00081199"], {
        vr: "SQ",
        Value: (res.json["00081199"] as { Value: unknown[] }).Value,
      });
    },
  );

  await t.step("202 with both sequences for a mixed request; non-DICOM parts fail with C000", async () => {
    const app = makeApp(new MemoryStore([BUCKET]));
    const res = await result(
      await app.handler(stowRequest(`/aets/${AET}/studies`, [
        { bytes: inst(1) },
        { bytes: encoder.encode("this is not DICOM at all, just text"), contentType: "application/dicom" },
        { bytes: encoder.encode("{}"), contentType: "application/json" },
        { bytes: inst(2), contentType: null }, // no Content-Type: the request's type applies
        { bytes: inst(3), contentType: "application/dicom; transfer-syntax=1.2.840.10008.1.2.1" },
      ])),
    );
    assert.equal(res.status, 202);
    assert.deepEqual(res.stored.map((i) => i.sop), [1, 2, 3].map((n) => `${SERIES}.${n}`));
    assert.deepEqual(res.failed.map((i) => i.failure), [FAILURE.cannotUnderstand, FAILURE.cannotUnderstand]);
    assert.ok(res.json["00081198"] && res.json["00081199"]);
    assert.match(res.warnings[0], /part 2/);
    assert.match(res.warnings[0], /Part 3 is application\/json/);
    assert.deepEqual((await keys(app.store)).sort(), [1, 2, 3].map((n) => keyOf(n)));
  });

  await t.step("400 when every part is malformed, with the failed items", async () => {
    const app = makeApp(new MemoryStore([BUCKET]));
    const res = await result(
      await app.handler(stowRequest(`/aets/${AET}/studies`, [
        { bytes: new Uint8Array(300) },
      ])),
    );
    assert.equal(res.status, 400);
    assert.deepEqual(res.failed.map((i) => i.failure), [FAILURE.cannotUnderstand]);
  });

  await t.step(
    "a study in the URL: matching parts stored, others fail with 0110; none matching is 409",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]));
      const other = buildInstance({ study: "2.25.78", series: SERIES, sop: `${SERIES}.9`, pixelBytes: 100 });
      let res = await result(
        await app.stow(stowRequest(`/aets/${AET}/studies/${STUDY}`, [{ bytes: inst(1) }, { bytes: other }])),
      );
      assert.equal(res.status, 202);
      assert.deepEqual(res.failed, [{
        sopClass: "1.2.840.10008.5.1.4.1.1.7",
        sop: `${SERIES}.9`,
        url: undefined,
        warning: undefined,
        failure: 0x0110,
      }]);
      assert.equal(res.retrieveUrl, `http://localhost/aets/${AET}/studies/${STUDY}`);
      res = await result(
        await app.stow(stowRequest(`/aets/${AET}/studies/2.25.79`, [{ bytes: inst(2) }, { bytes: other }])),
      );
      assert.equal(res.status, 409);
      assert.deepEqual(res.failed.map((i) => i.failure), [0x0110, 0x0110]);
      assert.equal(res.stored.length, 0);
      assert.deepEqual(await keys(app.store), [keyOf(1)]);
      const bad = await app.stow(stowRequest(`/aets/${AET}/studies/1.02.3`, [{ bytes: inst(2) }]));
      assert.equal(bad.status, 400);
    },
  );

  await t.step(
    "POST /studies/{study} reaches STOW through the app's router (beside WADO-RS's GET)",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]));
      const res = await result(
        await app.handler(stowRequest(`/aets/${AET}/studies/${STUDY}`, [{ bytes: inst(1) }])),
      );
      assert.equal(res.status, 200);
      const get = await app.handler(
        new Request(`http://localhost/aets/${AET}/studies/${STUDY}`, { headers: { accept: DICOM_ACCEPT } }),
      );
      assert.equal(get.status, 200);
      await get.body?.cancel();
    },
  );

  for (const [how, bufferBytes] of [["read whole", undefined], ["streamed", 256]] as const) {
    await t.step(
      `storing an instance again (${how}): the same bytes are a 200 success, others a 409 with 0111, nothing overwritten`,
      async () => {
        const store = observe(new MemoryStore([BUCKET]));
        const app = makeApp(store, { bufferBytes });
        const first = inst(1);
        assert.ok(bufferBytes === undefined || first.length > bufferBytes);
        assert.equal((await app.stow(stowRequest(`/aets/${AET}/studies`, [{ bytes: first }]))).status, 200);
        store.calls.length = 0;
        const again = await result(await app.stow(stowRequest(`/aets/${AET}/studies`, [{ bytes: first }])));
        assert.equal(again.status, 200);
        assert.deepEqual(again.stored.map((i) => [i.sop, i.warning]), [[`${SERIES}.1`, undefined]]);
        assert.deepEqual(again.warnings, []);
        assert.deepEqual(store.calls.filter((c) => c.startsWith("put ")), [], "a retry writes nothing");

        // The same data set behind another File Meta (as a DIMSE peer or another tool wrote it) is the same
        // instance: a success, and the stored object stays as it was.
        const meta = readFileMeta(first, "first", true)!;
        const rewrapped = concatBytes([
          writeFileMeta({ ...meta, sourceAet: "ELSEWHERE" }),
          first.subarray(meta.end),
        ]);
        assert.notEqual(rewrapped.length, first.length);
        const copy = await result(
          await app.stow(stowRequest(`/aets/${AET}/studies`, [{ bytes: rewrapped }])),
        );
        assert.equal(copy.status, 200, copy.warnings.join("; "));
        assert.deepEqual(
          store.calls.filter((c) => c.startsWith("put ")),
          [],
          "another File Meta writes nothing",
        );

        const newer = first.slice();
        newer[newer.length - 1] ^= 0xff; // same size, one pixel byte different

        const res = await result(await app.stow(stowRequest(`/aets/${AET}/studies`, [{ bytes: newer }])));
        assert.equal(res.status, 409);
        assert.deepEqual(res.failed.map((i) => [i.sop, i.failure]), [[`${SERIES}.1`, FAILURE.conflict]]);
        assert.equal(FAILURE.conflict, 0x0111);
        assert.match(res.warnings[0], /is stored already with different content/);
        const longer = inst(1, { pixelBytes: 4000 });
        const mixed = await result(
          await app.stow(stowRequest(`/aets/${AET}/studies`, [{ bytes: longer }, { bytes: inst(2) }])),
        );
        assert.equal(mixed.status, 202);
        assert.deepEqual(mixed.failed.map((i) => i.failure), [FAILURE.conflict]);
        assert.deepEqual(mixed.stored.map((i) => i.sop), [`${SERIES}.2`]);
        assert.equal(await md5((await objectBytes(app.store, keyOf(1)))!), await md5(first));
      },
    );
  }

  await t.step(
    "one SOP Instance UID twice in a request: the first is stored, an identical copy is a success, others conflict",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]));
      const versions = [1, 2, 1].map((v) => inst(1, { patientName: `V${v}^X` }));
      const res = await result(
        await app.handler(stowRequest(`/aets/${AET}/studies`, versions.map((bytes) => ({ bytes })))),
      );
      assert.equal(res.status, 202);
      assert.deepEqual(res.stored.map((i) => i.warning), [undefined, undefined]);
      assert.deepEqual(res.failed.map((i) => i.failure), [FAILURE.conflict]);
      assert.equal(await md5((await objectBytes(app.store, keyOf(1)))!), await md5(versions[0]));
    },
  );

  await t.step(
    "stored instances are found with one HEAD and one listing per series, not a HEAD per instance",
    async () => {
      const store = observe(new MemoryStore([BUCKET]));
      const app = makeApp(store);
      await app.handler(stowRequest(`/aets/${AET}/studies`, [2, 4].map((n) => ({ bytes: inst(n) }))));
      store.calls.length = 0;
      const res = await result(
        await app.handler(
          stowRequest(`/aets/${AET}/studies`, [1, 2, 3, 4, 5, 2].map((n) => ({ bytes: inst(n) }))),
        ),
      );
      assert.equal(res.status, 200);
      assert.deepEqual(res.stored.map((i) => i.sop), [1, 2, 3, 4, 5, 2].map((n) => `${SERIES}.${n}`));
      assert.equal(store.calls.filter((c) => c.startsWith("head ")).length, 1);
      assert.deepEqual(store.calls.filter((c) => c.startsWith("list ")), [`list ${STUDY}/${SERIES}/`]);
      assert.equal(store.calls.filter((c) => c.startsWith("put ")).length, 3, "only 1, 3 and 5 are new");
    },
  );

  await t.step("UIDs that are not valid UIDs never become keys", async () => {
    const app = makeApp(new MemoryStore([BUCKET]));
    const bad = [
      "../../etc/x",
      "1.2.3/4",
      "1.02.3",
      "1.2.3.",
      `1.${"2".repeat(70)}`,
      "1.2\\1.3",
      "1.2.3 4",
      "..",
    ];
    const parts = bad.map((sop) => ({
      bytes: buildInstance({ study: STUDY, series: SERIES, sop, pixelBytes: 10 }),
    }));
    parts.push({
      bytes: buildInstance({ study: "../x", series: SERIES, sop: `${SERIES}.5`, pixelBytes: 10 }),
    });
    parts.push({ bytes: buildInstance({ study: STUDY, series: "", sop: `${SERIES}.6`, pixelBytes: 10 }) });
    const response = await app.handler(stowRequest(`/aets/${AET}/studies`, parts));
    const res = await result(response);
    assert.equal(res.status, 400);
    assert.equal(res.failed.length, parts.length);
    assert.ok(res.failed.every((i) => i.failure === FAILURE.cannotUnderstand));
    assert.deepEqual(await keys(app.store), []);
  });

  await t.step(
    "the catalog has every instance before the response, even when it is slow; its failure is a warning",
    async () => {
      let slow = true;
      const app = makeApp(new MemoryStore([BUCKET]), {
        catalog: async () => {
          await new Promise((r) => setTimeout(r, slow ? 30 : 0));
          if (!slow) throw new Error("catalog is read-only");
        },
      });
      let res = await result(
        await app.handler(stowRequest(`/aets/${AET}/studies`, [1, 2, 3].map((n) => ({ bytes: inst(n) })))),
      );
      assert.equal(res.status, 200);
      assert.equal(app.recorded.length, 3);
      slow = false;
      res = await result(await app.handler(stowRequest(`/aets/${AET}/studies`, [{ bytes: inst(4) }])));
      assert.equal(res.status, 202);
      assert.equal(res.stored.length, 1);
      assert.match(res.warnings[0], /not yet searchable/);
    },
  );

  await t.step(
    "the catalog gets a request's instances in batches of at most 50, each instance's outcome its own",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]), {
        catalog: (r) => {
          if (r.info.key === keyOf(77)) throw new Error("catalog disk full");
          return Promise.resolve();
        },
      });
      const numbers = Array.from({ length: 120 }, (_, i) => i + 1);
      const res = await result(
        await app.handler(stowRequest(`/aets/${AET}/studies`, numbers.map((n) => ({ bytes: inst(n) })))),
      );
      assert.equal(res.status, 202);
      assert.equal(res.stored.length, 120);
      assert.equal(app.recorded.length, 119, "every instance was given to the catalog before the response");
      assert.equal(app.batches.reduce((a, b) => a + b, 0), 120);
      assert.ok(app.batches.every((n) => n <= 50), `batches ${app.batches}`);
      assert.ok(app.batches.length <= 10, `batches ${app.batches}`);
      assert.equal(res.warnings.length, 1);
      assert.match(res.warnings[0], /Part 77: instance 2\.25\.77\.1\.77 is stored but not yet searchable/);
    },
  );

  await t.step(
    "requests storing at once share the catalog's batches; each response waits for its own instances",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]), {
        catalog: () => new Promise((r) => setTimeout(r, 5)),
      });
      const groups = [0, 1, 2].map((g) => Array.from({ length: 30 }, (_, i) => 100 + g * 30 + i));
      const results = await Promise.all(
        groups.map(async (numbers) =>
          result(
            await app.handler(
              stowRequest(`/aets/${AET}/studies`, numbers.map((n) => ({ bytes: inst(n) })), { chunk: 4096 }),
            ),
          )
        ),
      );
      for (const [g, res] of results.entries()) {
        assert.equal(res.status, 200);
        assert.deepEqual(res.stored.map((i) => i.sop), groups[g].map((n) => `${SERIES}.${n}`));
      }
      assert.equal(app.recorded.length, 90);
      assert.equal(app.batches.reduce((a, b) => a + b, 0), 90);
      assert.ok(app.batches.every((n) => n <= 50), `batches ${app.batches}`);
    },
  );

  await t.step(
    "a request still being sent: what is stored becomes searchable before the request ends",
    async () => {
      const app = makeApp(new MemoryStore([BUCKET]));
      const boundary = "slow-boundary";
      const first = multipartBytes([1, 2, 3].map((n) => ({ bytes: inst(n) })), boundary, false);
      const rest = encoder.encode(`\r\n--${boundary}--\r\n`);
      let searchableEarly = false;
      let stage = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (stage === 0) controller.enqueue(first);
          else if (stage === 1) {
            // the client pauses: the two parts known to be whole (a delimiter followed each) must reach
            // the catalog meanwhile; the third may go on
            for (let i = 0; i < 100 && app.recorded.length < 2; i++) {
              await new Promise((r) => setTimeout(r, 20));
            }
            searchableEarly = app.recorded.length === 2;
            controller.enqueue(rest);
          } else controller.close();
          stage++;
        },
      }, { highWaterMark: 0 });
      const res = await result(
        await app.handler(
          new Request(`http://localhost/aets/${AET}/studies`, {
            method: "POST",
            body,
            headers: { "content-type": TYPE + boundary },
          }),
        ),
      );
      assert.equal(res.status, 200);
      assert.equal(res.stored.length, 3);
      assert.ok(searchableEarly, "recorded while the request was still open");
    },
  );
});

Deno.test("STOW-RS request checks", async (t) => {
  const app = makeApp(new MemoryStore([BUCKET]), { env: { STOW_MAX_BYTES: "20000" } });
  const post = (headers: Record<string, string>, body: BodyInit = "x") =>
    app.handler(new Request(`http://localhost/aets/${AET}/studies`, { method: "POST", headers, body }));

  await t.step("415 for anything but multipart/related of application/dicom", async () => {
    for (
      const type of [
        "application/dicom",
        "application/json",
        "multipart/mixed; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
        'multipart/related; type="application/dicom+xml"; boundary=x',
      ]
    ) {
      const response = await post({ "content-type": type });
      assert.equal(response.status, 415, type);
      assert.match((await response.json()).error, /multipart\/related; type="application\/dicom"/);
    }
    const none = await app.handler(
      new Request(`http://localhost/aets/${AET}/studies`, { method: "POST", body: new Uint8Array(4) }),
    );
    assert.equal(none.status, 415);
  });

  await t.step("400 for a missing boundary, a body without it, no parts, a bad Content-Type", async () => {
    assert.equal((await post({ "content-type": 'multipart/related; type="application/dicom"' })).status, 400);
    assert.equal(
      (await post(
        { "content-type": "multipart/related; type=application/dicom; boundary=zz" },
        "no boundary here",
      )).status,
      400,
    );
    assert.equal(
      (await post({ "content-type": "multipart/related; type=application/dicom; boundary=zz" }, "--zz--\r\n"))
        .status,
      400,
    );
    assert.equal((await post({ "content-type": "multipart/related; boundary" })).status, 400);
  });

  await t.step(
    "406 when the client takes only XML; JSON and wildcards are fine; unquoted parameters work",
    async () => {
      const parts = [{ bytes: inst(1) }];
      let response = await app.handler(
        stowRequest(`/aets/${AET}/studies`, parts, { headers: { accept: "application/dicom+xml" } }),
      );
      assert.equal(response.status, 406);
      await response.body?.cancel();
      for (
        const [accept, type] of [
          ["application/json", "application/json"],
          ["*/*", "application/dicom+json"],
          ["application/dicom+xml;q=0.9, application/dicom+json", "application/dicom+json"],
        ]
      ) {
        response = await app.handler(stowRequest(`/aets/${AET}/studies`, parts, { headers: { accept } }));
        assert.equal(response.headers.get("content-type"), type, accept);
        await response.body?.cancel();
      }
      const boundary = "unquoted";
      response = await post({
        "content-type": `multipart/related;type=application/dicom;boundary=${boundary}`,
      }, multipartBytes(parts, boundary) as Uint8Array<ArrayBuffer>);
      assert.ok(response.status === 200 || response.status === 202, String(response.status));
      await response.body?.cancel();
    },
  );

  await t.step("404 for an unknown AET, 405-free: POST is routed", async () => {
    const response = await app.handler(
      new Request("http://localhost/aets/NOPE/studies", { method: "POST", body: "x" }),
    );
    assert.equal(response.status, 404);
    await response.body?.cancel();
  });

  await t.step(
    "413 from Content-Length before reading, and when counting a body sent without it",
    async () => {
      let pulled = 0;
      const body = new ReadableStream({
        pull(c) {
          pulled++;
          c.enqueue(new Uint8Array(1000));
        },
      });
      const request = new Request(`http://localhost/aets/${AET}/studies`, {
        method: "POST",
        body,
        headers: { "content-type": `${TYPE}x`, "content-length": "30000" },
      });
      const response = await app.handler(request);
      assert.equal(response.status, 413);
      assert.match((await response.json()).error, /at most 20000 bytes/);
      assert.ok(pulled <= 1, "the body is not read");
      const before = await keys(app.store);
      const counted = await result(
        await app.handler(
          stowRequest(`/aets/${AET}/studies`, [{ bytes: inst(7, { pixelBytes: 5000 }) }, {
            bytes: inst(8, { pixelBytes: 30000 }),
          }], { chunk: 1000 }),
        ),
      );
      assert.equal(counted.status, 413);
      assert.deepEqual(counted.stored.map((i) => i.sop), [`${SERIES}.7`]);
      assert.deepEqual(counted.failed.map((i) => i.failure), [FAILURE.outOfResources]);
      assert.deepEqual((await keys(app.store)).filter((k) => !before.includes(k)), [keyOf(7)]);
    },
  );
});

// ---- faults ----

/** A store whose put of `key` errors after `after` bytes of its body; everything else passes. */
function failingPut(store: ObjectStore, key: string, after: number): ObjectStore {
  return Object.assign(Object.create(store), {
    kind: store.kind,
    location: store.location,
    list: store.list.bind(store),
    head: store.head.bind(store),
    get: store.get.bind(store),
    delete: store.delete.bind(store),
    check: store.check.bind(store),
    listBuckets: store.listBuckets.bind(store),
    put(
      bucket: string,
      k: string,
      body: ReadableStream<Uint8Array> | Uint8Array,
      options?: { size?: number },
    ) {
      if (k !== key) return store.put(bucket, k, body, options);
      const stream = body instanceof Uint8Array ? new Blob([body as BlobPart]).stream() : body;
      let seen = 0;
      const broken = stream.pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, controller) {
            seen += chunk.byteLength;
            if (seen > after) controller.error(new Error("injected: connection to the store lost"));
            else controller.enqueue(chunk);
          },
        }),
      );
      return store.put(bucket, k, broken, { ...options, size: undefined });
    },
  }) as ObjectStore;
}

async function withStores(
  t: Deno.TestContext,
  name: string,
  fn: (store: ObjectStore, leftovers: () => Promise<string[]>) => Promise<void>,
) {
  await t.step(`${name} (memory)`, () => fn(new MemoryStore([BUCKET]), () => Promise.resolve([])));
  await t.step(`${name} (local folder)`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "stow-fault-" });
    await Deno.mkdir(`${dir}/${BUCKET}`);
    try {
      await fn(
        new FileStore(dir),
        async () => (await allFiles(dir)).filter((p) => p.split("/").at(-1)!.startsWith(".")),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("STOW-RS faults leave nothing partial behind", async (t) => {
  const big = (n: number) => inst(n, { pixelBytes: 300_000 });
  const options = { bufferBytes: 64 * 1024 };

  await withStores(
    t,
    "the store fails in the middle of a streamed part and of a whole part",
    async (store, leftovers) => {
      const app = makeApp(failingPut(failingPut(store, keyOf(2), 100_000), keyOf(3), 1000), options);
      const res = await result(
        await app.stow(
          stowRequest(`/aets/${AET}/studies`, [{ bytes: big(1) }, { bytes: big(2) }, { bytes: inst(3) }, {
            bytes: big(4),
          }], { chunk: 16384 }),
        ),
      );
      assert.equal(res.status, 202);
      assert.deepEqual(res.stored.map((i) => i.sop), [`${SERIES}.1`, `${SERIES}.4`]);
      assert.deepEqual(res.failed.map((i) => [i.sop, i.failure]), [[`${SERIES}.2`, 0x0110], [
        `${SERIES}.3`,
        0x0110,
      ]]);
      assert.deepEqual((await keys(app.store)).sort(), [keyOf(1), keyOf(4)]);
      assert.deepEqual(await leftovers(), []);
      assert.equal(await md5((await objectBytes(store, keyOf(4)))!), await md5(big(4)));
    },
  );

  await withStores(t, "the client goes away in the middle of a streamed part", async (store, leftovers) => {
    const app = makeApp(store, options);
    const parts = [{ bytes: big(1) }, { bytes: inst(2) }, { bytes: big(3) }];
    const total = multipartBytes(parts, "x").length;
    const res = await result(
      await app.stow(stowRequest(`/aets/${AET}/studies`, parts, {
        chunk: 8192,
        fail: { at: total - 150_000, error: new Error("connection reset by peer") },
      })),
    );
    assert.equal(res.status, 202);
    assert.deepEqual(res.stored.map((i) => i.sop), [`${SERIES}.1`, `${SERIES}.2`]);
    assert.deepEqual(res.failed.map((i) => [i.sop, i.failure]), [[`${SERIES}.3`, FAILURE.cannotUnderstand]]);
    assert.match(res.warnings[0], /could not be read to its end: connection reset by peer/);
    assert.deepEqual((await keys(store)).sort(), [keyOf(1), keyOf(2)]);
    assert.deepEqual(await leftovers(), []);
  });

  await withStores(
    t,
    "the last part has no closing boundary (streamed, then whole)",
    async (store, leftovers) => {
      const app = makeApp(store, options);
      let res = await result(
        await app.stow(
          stowRequest(`/aets/${AET}/studies`, [{ bytes: inst(1) }, { bytes: big(2) }], {
            close: false,
            chunk: 8192,
          }),
        ),
      );
      assert.equal(res.status, 202);
      assert.deepEqual(res.stored.map((i) => i.sop), [`${SERIES}.1`]);
      assert.deepEqual(res.failed.map((i) => i.failure), [FAILURE.cannotUnderstand]);
      assert.match(res.warnings[0], /ends inside part 2/);
      res = await result(
        await app.stow(stowRequest(`/aets/${AET}/studies`, [{ bytes: inst(3) }], { close: false })),
      );
      assert.equal(res.status, 400);
      assert.deepEqual((await keys(store)).sort(), [keyOf(1)]);
      assert.deepEqual(await leftovers(), []);
    },
  );

  await withStores(t, "a streamed part that turns out invalid after its header", async (store, leftovers) => {
    const app = makeApp(store, options);
    const cut = big(2).slice(0, 200_000); // Pixel Data runs past the end
    const trailing = concatBytes([big(3), new Uint8Array([0x08, 0x00])]); // stray bytes after the last element
    const res = await result(
      await app.stow(
        stowRequest(`/aets/${AET}/studies`, [{ bytes: big(1) }, { bytes: cut }, { bytes: trailing }], {
          chunk: 8192,
        }),
      ),
    );
    assert.equal(res.status, 202);
    assert.deepEqual(res.failed.map((i) => [i.sop, i.failure]), [[`${SERIES}.2`, FAILURE.cannotUnderstand], [
      `${SERIES}.3`,
      FAILURE.cannotUnderstand,
    ]]);
    assert.deepEqual(await keys(store), [keyOf(1)]);
    assert.deepEqual(await leftovers(), []);
  });
});

// ---- Part10Check ----

Deno.test("Part10Check", async (t) => {
  const corpus = await wholeCorpus();

  await t.step(
    "accepts what readHeader reads whole, at any chunking; refuses what is cut short",
    async () => {
      for (const c of corpus) {
        let header: Part10Header | undefined;
        try {
          header = await readHeader({
            name: c.name,
            size: c.bytes.length,
            read: (s, e) => Promise.resolve(c.bytes.slice(s, e)),
          });
        } catch {
          // unreadable
        }
        if (!header || header.deflated) continue;
        // Pixel Data cut short: readHeader keeps the header (to serve what is stored), STOW refuses it (below)
        if (header.pixelData && header.pixelData.offset + header.pixelData.length > c.bytes.length) continue;
        const data = c.bytes.subarray(header.datasetOffset);
        for (const size of [1, 7, 64, data.length]) {
          const check = new Part10Check(header, c.name);
          for (let at = 0; at < data.length; at += size) check.push(data.subarray(at, at + size));
          check.finish();
        }
      }
      // and rejects what readHeader rejects (the truncated files)
      for (const name of ["MR_truncated.dcm", "rtplan_truncated.dcm"]) {
        const c = corpus.find((c) => c.name === name);
        if (!c) continue;
        const check = new Part10Check(encodingOf(c.bytes), c.name, { start: datasetStart(c.bytes) });
        assert.throws(
          () => {
            check.push(c.bytes.subarray(datasetStart(c.bytes)));
            check.finish();
          },
          SyntaxError,
          name,
        );
      }
    },
  );

  await t.step("keeps wanted top-level values and headers past an offset", () => {
    const bytes = buildInstance({ study: "1.2", series: "1.2.3", sop: "1.2.3.4", pixelBytes: 100 });
    const start = datasetStart(bytes);
    const check = new Part10Check({ explicit: true, little: true }, "x", {
      start,
      want: [0x0020000d, 0x00080018],
      recordFrom: start,
    });
    for (const b of bytes.subarray(start)) check.push(new Uint8Array([b]));
    check.finish();
    assert.equal(new TextDecoder().decode(check.values.get(0x0020000d)), "1.2\0");
    assert.equal(new TextDecoder().decode(check.values.get(0x00080018)), "1.2.3.4\0");
    assert.equal(check.values.size, 2);
    assert.ok(check.recorded.has(start));
    assert.equal(check.position, bytes.length);
  });

  await t.step("rejects broken structures with a SyntaxError naming the offset", () => {
    const le = (...n: number[]) => new Uint8Array(n);
    const cases: [string, Uint8Array][] = [
      ["lower-case VR", le(0x08, 0, 0x60, 0, 0x63, 0x73, 2, 0, 0x41, 0x42)],
      ["sequence without delimiter", le(0x08, 0, 0x15, 0x11, 0x53, 0x51, 0, 0, 0xff, 0xff, 0xff, 0xff)],
      [
        "item past its sequence",
        le(0x08, 0, 0x15, 0x11, 0x53, 0x51, 0, 0, 8, 0, 0, 0, 0xfe, 0xff, 0, 0xe0, 16, 0, 0, 0),
      ],
      [
        "pixel data without offset table",
        le(0xe0, 0x7f, 0x10, 0, 0x4f, 0x42, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0),
      ],
      ["text with undefined length", le(0x08, 0, 0x60, 0, 0x55, 0x54, 0, 0, 0xff, 0xff, 0xff, 0xff)],
      ["half a header at the end", le(0x08, 0, 0x60)],
      ["a value cut short", le(0x08, 0, 0x60, 0, 0x43, 0x53, 4, 0, 0x41)],
    ];
    for (const [what, bytes] of cases) {
      assert.throws(
        () => {
          const check = new Part10Check({ explicit: true, little: true }, what);
          check.push(bytes);
          check.finish();
        },
        /Cannot parse ".*": .*(offset|end)/,
        what,
      );
    }
  });
});

function datasetStart(bytes: Uint8Array): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return 144 + view.getUint32(140, true);
}

function encodingOf(bytes: Uint8Array): { explicit: boolean; little: boolean } {
  const text = new TextDecoder("latin1").decode(bytes.subarray(132, datasetStart(bytes)));
  if (text.includes("1.2.840.10008.1.2\0") || /1\.2\.840\.10008\.1\.2[^.\d]/.test(text)) {
    return { explicit: false, little: true };
  }
  return { explicit: true, little: true };
}

Deno.test("STOW-RS into an AET that does not exist yet", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "stow-new-aet-" });
  try {
    await t.step("zero-config local mode: its folder is made and the instance stored there", async () => {
      const app = testHandler({ store: new FileStore(root), config: { DATA_DIR: root } });
      const res = await result(await app.handler(stowRequest(`/aets/NEWAET/studies`, [{ bytes: inst(1) }])));
      assert.equal(res.status, 200, res.warnings.join("; "));
      assert.ok((await Deno.stat(`${root}/NEWAET/${keyOf(1)}`)).isFile);
      assert.deepEqual(await (await app.fetch("/aets")).json(), ["NEWAET"]);
      assert.ok(app.logs.some((line) => line.startsWith("Created the AET NEWAET")), app.logs.join("\n"));
    });
    await t.step("with AETS fixed, an unknown AET stays a 404 and nothing is made", async () => {
      const app = testHandler({ store: new FileStore(root), config: { DATA_DIR: root, AETS: "NEWAET" } });
      const response = await app.handler(stowRequest(`/aets/OTHER/studies`, [{ bytes: inst(1) }]));
      assert.equal(response.status, 404);
      assert.match((await response.json()).error, /Unknown AET "OTHER"/);
      assert.equal(await Deno.stat(`${root}/OTHER`).then(() => true, () => false), false);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
