import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { AetRegistry } from "../../lib/objects/aets.ts";
import { type Config, parseConfig } from "../../lib/config/config.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { type GetOptions, type ObjectBody, type ObjectStore, StoreError } from "../../lib/store/store.ts";
import { boundaryOf, type ParsedPart, parseMultipart } from "../_multipart_parser.ts";
import { testHandler } from "../_server.ts";
import { buildPart10 } from "../_dicom_fixtures.ts";
import { AuditLog } from "../../lib/security/audit.ts";

const ELE = "1.2.840.10008.1.2.1";
const ILE = "1.2.840.10008.1.2";
const JPEG = "1.2.840.10008.1.2.4.50";
const J2K = "1.2.840.10008.1.2.4.90";
const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- small Part 10 objects built in code ----

/** A Part 10 object of `sop` whose pixel bytes are pseudo-random (and hold multipart-like text). */
function part10(study: string, series: string, sop: string, ts = ELE, pixels = 2000): Uint8Array {
  const data = new Uint8Array(pixels);
  let x = [...sop].reduce((n, c) => (n * 31 + c.charCodeAt(0)) >>> 0, 17) || 1;
  for (let i = 0; i < data.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = x & 0xff;
  }
  // "--" and CRLF inside the payload must not confuse the multipart framing.
  data.set(encoder.encode("\r\n--boundary\r\n--"), 0);
  return buildPart10([
    { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.7" },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x0020000d, vr: "UI", value: study },
    { tag: 0x0020000e, vr: "UI", value: series },
    { tag: 0x7fe00010, vr: "OB", value: data },
  ], { transferSyntax: ts, sopInstanceUid: sop });
}

function md5(bytes: Uint8Array): string {
  return createHash("md5").update(bytes).digest("hex");
}

// ---- fixtures: prefix collisions at every level and a mixed-syntax series ----

interface Fixture {
  study: string;
  series: string;
  sop: string;
  ts: string;
  pixels?: number;
}

const FIXTURES: Fixture[] = [
  { study: "1.2.3", series: "1.2.3.1", sop: "1.2.3.1.1", ts: ELE },
  { study: "1.2.3", series: "1.2.3.1", sop: "1.2.3.1.2", ts: JPEG, pixels: 3000 },
  { study: "1.2.3", series: "1.2.3.1", sop: "1.2.3.1.10", ts: ELE, pixels: 100 },
  { study: "1.2.3", series: "1.2.3.1", sop: "1.2.3.1.11", ts: J2K },
  { study: "1.2.3", series: "1.2.3.11", sop: "1.2.3.11.1", ts: ELE },
  { study: "1.2.34", series: "1.2.34.1", sop: "1.2.34.1.1", ts: ELE },
  // Mixed series: ELE, ILE, ELE, JPEG.
  { study: "2.25.7", series: "2.25.7.1", sop: "2.25.7.1.1", ts: ELE },
  { study: "2.25.7", series: "2.25.7.1", sop: "2.25.7.1.2", ts: ILE },
  { study: "2.25.7", series: "2.25.7.1", sop: "2.25.7.1.3", ts: ELE },
  { study: "2.25.7", series: "2.25.7.1", sop: "2.25.7.1.4", ts: JPEG },
];

const keyOf = (f: Fixture) => `${f.study}/${f.series}/${f.sop}.dcm`;
const BUCKET = "pacs-bucket";
const SOURCE = new Map(FIXTURES.map((f) => [keyOf(f), part10(f.study, f.series, f.sop, f.ts, f.pixels)]));

async function filledStore(): Promise<MemoryStore> {
  const store = new MemoryStore([BUCKET]);
  for (const [key, bytes] of SOURCE) await store.put(BUCKET, key, bytes);
  // Objects off the key layout are ignored by retrieval.
  await store.put(BUCKET, "1.2.3/1.2.3.1/README.txt", encoder.encode("not an instance"));
  return store;
}

/** The keys of a study or series, in S3 listing (byte) order. */
function keysUnder(prefix: string): string[] {
  return [...SOURCE.keys()].filter((k) => k.startsWith(prefix)).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

// ---- a store wrapper that records calls and bodies, and injects failures ----

interface Hooks {
  /** Deliver bodies in pieces of this many bytes, pulled on demand. */
  chunk?: number;
  /** Fail the n-th (0-based) full GET. */
  failGet?: (key: string, index: number) => Error | undefined;
  /** Make the body of a key error after this many bytes. */
  failBodyAfter?: (key: string) => number | undefined;
  failCheck?: Error;
  /** Error open bodies when the GET's signal aborts (what the S3 and folder stores do). */
  honourSignal?: boolean;
}

interface Recorder extends ObjectStore {
  calls: string[];
  cancelled: string[];
  openBodies(): number;
}

function record(inner: ObjectStore, hooks: Hooks = {}): Recorder {
  const calls: string[] = [];
  const cancelled: string[] = [];
  let open = 0;
  let gets = 0;
  return {
    kind: inner.kind,
    location: inner.location,
    calls,
    cancelled,
    openBodies: () => open,
    listBuckets(o) {
      calls.push("listBuckets");
      return inner.listBuckets(o);
    },
    list(bucket, prefix, o) {
      calls.push(`list ${prefix}`);
      return inner.list(bucket, prefix, o);
    },
    head(bucket, key, o) {
      calls.push(`head ${key}`);
      return inner.head(bucket, key, o);
    },
    put: (b, k, body, o) => inner.put(b, k, body, o),
    delete: (b, k, o) => inner.delete(b, k, o),
    check(bucket, o) {
      calls.push(`check ${bucket}`);
      return hooks.failCheck ? Promise.reject(hooks.failCheck) : inner.check(bucket, o);
    },
    async get(bucket: string, key: string, options?: GetOptions): Promise<ObjectBody | null> {
      const range = options?.range;
      calls.push(range ? `get ${key} ${range.start}-${range.end ?? ""}` : `get ${key}`);
      if (!range) {
        const failure = hooks.failGet?.(key, gets++);
        if (failure) throw failure;
      }
      const object = await inner.get(bucket, key, options);
      if (object === null) return null;
      const all = new Uint8Array(await new Response(object.body).arrayBuffer());
      const chunk = hooks.chunk ?? all.length;
      const failAt = range ? undefined : hooks.failBodyAfter?.(key);
      let at = 0;
      let closed = false;
      const close = () => {
        if (!closed) {
          closed = true;
          open--;
        }
      };
      open++;
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          const signal = options?.signal;
          if (!hooks.honourSignal || !signal) return;
          signal.addEventListener("abort", () => {
            if (closed) return;
            close();
            controller.error(signal.reason);
          }, { once: true });
        },
        pull(controller) {
          if (failAt !== undefined && at >= failAt) {
            close();
            controller.error(new StoreError("failed", `Connection reset while reading ${key}`));
            return;
          }
          if (at >= all.length) {
            close();
            controller.close();
            return;
          }
          const end = Math.min(all.length, at + Math.max(1, chunk), failAt ?? Infinity);
          controller.enqueue(all.slice(at, end));
          at = end;
        },
        cancel() {
          cancelled.push(key);
          close();
        },
      }, { highWaterMark: 0 });
      return { ...object, body };
    },
  };
}

// ---- handler setup ----

interface Setup {
  store?: ObjectStore;
  env?: Record<string, string>;
  configured?: Map<string, string> | null;
}

async function setup(options: Setup = {}) {
  const store = options.store ?? await filledStore();
  const config: Config = parseConfig(options.env ?? {});
  const configured = options.configured === null
    ? undefined
    : options.configured ?? new Map([["PACS", BUCKET]]);
  const aets = new AetRegistry(store, { configured });
  const { handler, fetch, logs } = testHandler({
    store,
    config,
    aets,
    capabilities: { reEncode: false },
  });
  return { handler, fetch, store, logs };
}

async function multipart(response: Response): Promise<ParsedPart[]> {
  const contentType = response.headers.get("content-type") ?? "";
  assert.match(contentType, /^multipart\/related;/);
  assert.match(contentType, /type="?application\/dicom"?/);
  const body = new Uint8Array(await response.arrayBuffer());
  const parsed = parseMultipart(body, boundaryOf(contentType));
  assert.equal(parsed.preamble.length, 0);
  return parsed.parts;
}

function instancePath(key: string, aet = "PACS"): string {
  const [study, series, file] = key.split("/");
  return `/aets/${aet}/studies/${study}/series/${series}/instances/${file.replace(/\.dcm$/, "")}`;
}

/** Checks parts against the source objects of `keys`, in order. */
function assertParts(parts: ParsedPart[], keys: string[], base = "http://localhost") {
  assert.deepEqual(
    parts.map((p) => p.headers["content-location"]),
    keys.map((k) => base + instancePath(k)),
  );
  parts.forEach((part, i) => {
    const fixture = FIXTURES.find((f) => keyOf(f) === keys[i])!;
    assert.equal(part.headers["content-type"], `application/dicom; transfer-syntax=${fixture.ts}`, keys[i]);
    assert.equal(md5(part.body), md5(SOURCE.get(keys[i])!), `body of ${keys[i]} is byte-exact`);
    if (part.headers["content-length"] !== undefined) {
      assert.equal(Number(part.headers["content-length"]), part.body.length);
    }
  });
}

async function errorJson(response: Response, status: number): Promise<{ error: string; status: number }> {
  assert.equal(response.status, status, `status ${response.status}, expected ${status}`);
  assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
  const body = await response.json();
  assert.equal(body.status, status);
  assert.equal(typeof body.error, "string");
  return body;
}

async function eventually(condition: () => boolean, what: string | (() => string), ms = 300) {
  const until = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > until) {
      throw new Error(`Timed out waiting for ${typeof what === "string" ? what : what()}`);
    }
    await sleep(5);
  }
}

// ---- tests ----

Deno.test("createHandler() health and AETs", async (t) => {
  await t.step("GET /healthz answers 200 ok", async () => {
    const { fetch } = await setup();
    const response = await fetch("/healthz");
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { status: "ok" });
  });

  await t.step("GET /readyz answers 200 when the store answers", async () => {
    const { fetch } = await setup();
    const response = await fetch("/readyz");
    assert.equal(response.status, 200);
    assert.equal((await response.json()).status, "ready");
  });

  await t.step("GET /readyz answers 503 with the reason when the store check fails", async () => {
    const store = record(await filledStore(), {
      failCheck: new StoreError(
        "unavailable",
        "S3 endpoint http://127.0.0.1:9 is unreachable: connection refused",
      ),
    });
    const { fetch } = await setup({ store });
    const response = await fetch("/readyz");
    assert.equal(response.status, 503);
    const body = await response.json();
    assert.equal(body.status, "unavailable");
    assert.ok(JSON.stringify(body.problems).includes("connection refused"), JSON.stringify(body));
    assert.ok(JSON.stringify(body.problems).includes("PACS"), "names the AET");
    assert.ok(store.calls.includes(`check ${BUCKET}`));
  });

  await t.step("GET /aets lists the configured AETs", async () => {
    const { fetch } = await setup({ configured: new Map([["PACS", BUCKET], ["RESEARCH", "r"]]) });
    const response = await fetch("/aets");
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), ["PACS", "RESEARCH"]);
  });

  await t.step("GET /aets lists the store's buckets when no AETs are configured", async () => {
    const store = new MemoryStore(["B1", "A2"]);
    const { fetch } = await setup({ store, configured: null });
    assert.deepEqual(await (await fetch("/aets")).json(), ["A2", "B1"]);
  });

  await t.step("an unknown path is a 404 JSON error", async () => {
    const { fetch } = await setup();
    await errorJson(await fetch("/nope"), 404);
    await errorJson(await fetch("/aets/PACS/studies/1.2.3/series/1.2.3.4/nope"), 404);
  });
});

Deno.test("createHandler() retrieve (WADO-RS)", async (t) => {
  await t.step("a study comes back as multipart with every instance in key order, byte-exact", async () => {
    const { fetch } = await setup();
    const response = await fetch("/aets/PACS/studies/1.2.3");
    assert.equal(response.status, 200);
    const parts = await multipart(response);
    const keys = keysUnder("1.2.3/");
    assert.equal(keys.length, 5);
    // Byte order: 1.2.3.1.1 < 1.2.3.1.10 < 1.2.3.1.11 < 1.2.3.1.2, then series 1.2.3.11.
    assert.deepEqual(keys.map((k) => k.split("/")[2]), [
      "1.2.3.1.1.dcm",
      "1.2.3.1.10.dcm",
      "1.2.3.1.11.dcm",
      "1.2.3.1.2.dcm",
      "1.2.3.11.1.dcm",
    ]);
    assertParts(parts, keys);
  });

  await t.step("a series comes back with its instances only", async () => {
    const { fetch } = await setup();
    const parts = await multipart(await fetch("/aets/PACS/studies/1.2.3/series/1.2.3.1"));
    assertParts(parts, keysUnder("1.2.3/1.2.3.1/"));
    assert.equal(parts.length, 4);
  });

  await t.step("an instance comes back as a one-part multipart with an exact Content-Length", async () => {
    const { fetch } = await setup();
    const key = "1.2.3/1.2.3.1/1.2.3.1.2.dcm";
    const response = await fetch(instancePath(key));
    assert.equal(response.status, 200);
    const declared = Number(response.headers.get("content-length"));
    const actual = (await response.clone().arrayBuffer()).byteLength;
    assert.equal(declared, actual, "Content-Length matches the multipart body");
    assertParts(await multipart(response), [key]);
  });

  await t.step(
    "prefix collisions never leak: study 1.2.3 vs 1.2.34, series 1.2.3.1 vs 1.2.3.11, instance 1.2.3.1.1 vs 1.2.3.1.10/11",
    async () => {
      const { fetch } = await setup();
      assertParts(await multipart(await fetch("/aets/PACS/studies/1.2.34")), [
        "1.2.34/1.2.34.1/1.2.34.1.1.dcm",
      ]);
      const study = await multipart(await fetch("/aets/PACS/studies/1.2.3"));
      assert.ok(study.every((p) => !p.headers["content-location"].includes("/studies/1.2.34/")));
      assertParts(await multipart(await fetch("/aets/PACS/studies/1.2.3/series/1.2.3.11")), [
        "1.2.3/1.2.3.11/1.2.3.11.1.dcm",
      ]);
      assertParts(await multipart(await fetch(instancePath("1.2.3/1.2.3.1/1.2.3.1.1.dcm"))), [
        "1.2.3/1.2.3.1/1.2.3.1.1.dcm",
      ]);
      // UIDs that are bare prefixes of stored UIDs match nothing.
      await errorJson(await fetch("/aets/PACS/studies/1.2"), 404);
      await errorJson(await fetch("/aets/PACS/studies/1.2.3/series/1.2.3"), 404);
      await errorJson(await fetch("/aets/PACS/studies/1.2.3/series/1.2.3.1/instances/1.2.3.1"), 404);
    },
  );

  await t.step("an unknown AET is a 404 naming it", async () => {
    const { fetch } = await setup();
    const body = await errorJson(await fetch("/aets/NOPE/studies/1.2.3"), 404);
    assert.match(body.error, /NOPE/);
    assert.match(body.error, /PACS/, "lists the known AETs");
  });

  await t.step("a missing study, series or instance is a 404", async () => {
    const { fetch } = await setup();
    await errorJson(await fetch("/aets/PACS/studies/9.9.9"), 404);
    await errorJson(await fetch("/aets/PACS/studies/1.2.3/series/9.9"), 404);
    await errorJson(await fetch("/aets/PACS/studies/1.2.3/series/1.2.3.1/instances/9.9"), 404);
    await errorJson(await fetch("/aets/PACS/studies/1.2.34/series/1.2.3.1"), 404);
    await errorJson(await fetch("/aets/PACS/studies/1.2.34/series/1.2.3.1/instances/1.2.3.1.1"), 404);
  });

  await t.step("invalid UIDs are a 400 and the store is never called", async () => {
    const store = record(await filledStore());
    const { fetch } = await setup({ store });
    const bad = ["1.02.3", "abc", "1..2", "1.2%2F3", "1.2.3.", "9".repeat(65), "1.2%00"];
    for (const uid of bad) {
      for (
        const path of [
          `/aets/PACS/studies/${uid}`,
          `/aets/PACS/studies/1.2.3/series/${uid}`,
          `/aets/PACS/studies/1.2.3/series/1.2.3.1/instances/${uid}`,
        ]
      ) {
        const body = await errorJson(await fetch(path), 400);
        assert.match(body.error, /UID/, path);
      }
    }
    assert.deepEqual(store.calls, []);
  });

  await t.step(
    "PUT is a 405 with Allow (POST is STOW-RS, DELETE removes: tests/dicomweb/delete_test.ts)",
    async () => {
      const { fetch } = await setup();
      for (const method of ["PUT"]) {
        const response = await fetch("/aets/PACS/studies/1.2.3", {
          method,
          body: method === "DELETE" ? undefined : "x",
        });
        await errorJson(response, 405);
        const allow = (response.headers.get("allow") ?? "").split(",").map((s) => s.trim());
        assert.ok(
          allow.includes("GET") && allow.includes("HEAD") && allow.includes("POST") &&
            allow.includes("DELETE"),
          `Allow: ${allow}`,
        );
        assert.ok(!allow.includes(method));
      }
    },
  );

  await t.step("HEAD gives the GET headers and no body", async () => {
    const { fetch } = await setup();
    for (const path of ["/aets/PACS/studies/1.2.3", instancePath("1.2.3/1.2.3.1/1.2.3.1.1.dcm")]) {
      const response = await fetch(path, { method: "HEAD" });
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /^multipart\/related/);
      assert.equal((await response.arrayBuffer()).byteLength, 0);
    }
    const missing = await fetch("/aets/PACS/studies/9.9", { method: "HEAD" });
    assert.equal(missing.status, 404);
    assert.equal((await missing.arrayBuffer()).byteLength, 0);
  });

  await t.step("Accept: image/png is a 406, a malformed Accept a 400", async () => {
    const { fetch } = await setup();
    for (const path of ["/aets/PACS/studies/1.2.3", instancePath("1.2.3/1.2.3.1/1.2.3.1.1.dcm")]) {
      await errorJson(await fetch(path, { headers: { accept: "image/png" } }), 406);
      await errorJson(
        await fetch(path, { headers: { accept: 'multipart/related; type="application/dicom' } }),
        400,
      );
    }
  });

  await t.step("the Accept strings real clients send are served", async () => {
    const { fetch } = await setup();
    for (
      const accept of [
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="*/*"',
        "*/*",
        "multipart/related;type=application/dicom;transfer-syntax=*", // dcm4che wadors
      ]
    ) {
      const response = await fetch("/aets/PACS/studies/1.2.34", { headers: { accept } });
      assert.equal(response.status, 200, accept);
      await response.body?.cancel();
    }
  });

  await t.step(
    "Accept: application/dicom on an instance gives the raw file with Content-Length",
    async () => {
      const { fetch } = await setup();
      const key = "1.2.3/1.2.3.1/1.2.3.1.2.dcm";
      const response = await fetch(instancePath(key), { headers: { accept: "application/dicom" } });
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-type"), `application/dicom; transfer-syntax=${JPEG}`);
      assert.equal(response.headers.get("content-length"), String(SOURCE.get(key)!.length));
      assert.equal(md5(new Uint8Array(await response.arrayBuffer())), md5(SOURCE.get(key)!));
    },
  );

  await t.step("Accept: application/dicom on a study is a 406", async () => {
    const { fetch } = await setup();
    await errorJson(
      await fetch("/aets/PACS/studies/1.2.3", { headers: { accept: "application/dicom" } }),
      406,
    );
  });

  await t.step("parts follow the base path and forwarded headers in Content-Location", async () => {
    const { fetch } = await setup({ env: { BASE_PATH: "/dicomweb" } });
    await errorJson(await fetch("/aets/PACS/studies/1.2.34"), 404);
    const response = await fetch("/dicomweb/aets/PACS/studies/1.2.34", {
      headers: { "x-forwarded-host": "pacs.example.org", "x-forwarded-proto": "https" },
    });
    const parts = await multipart(response);
    assert.equal(
      parts[0].headers["content-location"],
      "https://pacs.example.org/dicomweb/aets/PACS/studies/1.2.34/series/1.2.34.1/instances/1.2.34.1.1",
    );
  });
});

Deno.test("createHandler() caching", async (t) => {
  const key = "1.2.3/1.2.3.1/1.2.3.1.1.dcm";

  await t.step("instance responses carry an ETag and Cache-Control", async () => {
    const { fetch } = await setup();
    const response = await fetch(instancePath(key));
    assert.match(response.headers.get("etag") ?? "", /^"[^"]+"$/);
    assert.ok(response.headers.get("cache-control"));
    await response.body?.cancel();
  });

  await t.step("the ETag differs between multipart and single-part answers", async () => {
    const { fetch } = await setup();
    const a = await fetch(instancePath(key));
    const b = await fetch(instancePath(key), { headers: { accept: "application/dicom" } });
    assert.notEqual(a.headers.get("etag"), b.headers.get("etag"));
    await a.body?.cancel();
    await b.body?.cancel();
  });

  await t.step("If-None-Match with the ETag is a 304 without reading the body", async () => {
    const inner = await filledStore();
    const { fetch: first } = await setup({ store: inner });
    const original = await first(instancePath(key));
    const etag = original.headers.get("etag")!;
    await original.body?.cancel();

    const store = record(inner);
    const { fetch } = await setup({ store });
    for (const header of [etag, `W/${etag}`, `"other", ${etag}`]) {
      store.calls.length = 0;
      const response = await fetch(instancePath(key), { headers: { "if-none-match": header } });
      assert.equal(response.status, 304, header);
      assert.equal(response.headers.get("etag"), etag);
      assert.ok(response.headers.get("cache-control"));
      assert.equal((await response.arrayBuffer()).byteLength, 0);
      assert.ok(!store.calls.includes(`get ${key}`), `no full GET: ${store.calls.join("; ")}`);
    }
  });

  await t.step("If-None-Match with another ETag gives the full response", async () => {
    const { fetch } = await setup();
    const response = await fetch(instancePath(key), { headers: { "if-none-match": '"stale-m"' } });
    assert.equal(response.status, 200);
    assertParts(await multipart(response), [key]);
  });

  await t.step("If-None-Match for a missing instance is a 404", async () => {
    const { fetch } = await setup();
    await errorJson(
      await fetch("/aets/PACS/studies/1.2.3/series/1.2.3.1/instances/9.9", {
        headers: { "if-none-match": '"x"' },
      }),
      404,
    );
  });
});

Deno.test("createHandler() CORS", async (t) => {
  await t.step("a preflight OPTIONS is a 204 allowing the requested headers", async () => {
    const { fetch } = await setup();
    const response = await fetch("/aets/PACS/studies/1.2.3", {
      method: "OPTIONS",
      headers: {
        origin: "https://viewer.example.org",
        "access-control-request-method": "GET",
        "access-control-request-headers": "authorization, accept",
      },
    });
    assert.equal(response.status, 204);
    assert.equal(response.headers.get("access-control-allow-origin"), "*");
    assert.match(response.headers.get("access-control-allow-methods") ?? "", /GET/);
    const allowHeaders = (response.headers.get("access-control-allow-headers") ?? "").toLowerCase();
    assert.match(allowHeaders, /authorization/);
    assert.match(allowHeaders, /accept/);
  });

  await t.step("normal and error responses carry Access-Control-Allow-Origin", async () => {
    const { fetch } = await setup();
    const ok = await fetch("/aets/PACS/studies/1.2.34", {
      headers: { origin: "https://viewer.example.org" },
    });
    assert.equal(ok.headers.get("access-control-allow-origin"), "*");
    assert.match(ok.headers.get("access-control-expose-headers") ?? "", /Content-Location/i);
    await ok.body?.cancel();
    const missing = await fetch("/aets/PACS/studies/9.9", {
      headers: { origin: "https://viewer.example.org" },
    });
    assert.equal(missing.headers.get("access-control-allow-origin"), "*");
    await missing.body?.cancel();
  });

  await t.step("a list of origins allows only those, with Vary: Origin", async () => {
    const { fetch } = await setup({ env: { CORS_ORIGINS: "https://viewer.example.org" } });
    const allowed = await fetch("/healthz", { headers: { origin: "https://viewer.example.org" } });
    assert.equal(allowed.headers.get("access-control-allow-origin"), "https://viewer.example.org");
    assert.match(allowed.headers.get("vary") ?? "", /Origin/i);
    await allowed.body?.cancel();
    const other = await fetch("/healthz", { headers: { origin: "https://evil.example" } });
    assert.equal(other.headers.get("access-control-allow-origin"), null);
    await other.body?.cancel();
  });

  await t.step("CORS_ORIGINS=off sends no CORS headers", async () => {
    const { fetch } = await setup({ env: { CORS_ORIGINS: "off" } });
    const response = await fetch("/healthz", { headers: { origin: "https://viewer.example.org" } });
    assert.equal(response.headers.get("access-control-allow-origin"), null);
    await response.body?.cancel();
  });
});

Deno.test("createHandler() store failures", async (t) => {
  await t.step("a store that fails on the first GET is a 503/502 JSON error naming the cause", async () => {
    for (
      const [error, status] of [
        [new StoreError("unavailable", "S3 endpoint http://10.0.0.1:9000 is unreachable"), 503],
        [new StoreError("denied", "Access denied to bucket pacs-bucket"), 502],
      ] as const
    ) {
      for (const path of ["/aets/PACS/studies/1.2.3", instancePath("1.2.3/1.2.3.1/1.2.3.1.1.dcm")]) {
        const store = record(await filledStore(), { failGet: () => error });
        const { fetch, logs } = await setup({ store });
        const body = await errorJson(await fetch(path), status);
        assert.ok(body.error.includes(error.message), body.error);
        assert.ok(logs.some((l) => l.startsWith("error ")), "5xx is logged");
        await sleep(5);
        assert.equal(store.openBodies(), 0, "nothing left open");
      }
    }
  });

  await t.step("an AET whose bucket is missing is a 502 naming the bucket", async () => {
    const { fetch } = await setup({ configured: new Map([["PACS", "no-such-bucket"]]) });
    const body = await errorJson(await fetch("/aets/PACS/studies/1.2.3"), 502);
    assert.match(body.error, /no-such-bucket/);
  });

  await t.step("a body that errors after the first part makes reading the response reject", async () => {
    const keys = keysUnder("1.2.3/");
    const failing = keys[3]; // 1.2.3.1.2: the third part, about 3.3 KB
    assert.ok(SOURCE.get(failing)!.length > 3000);
    for (const afterBytes of [0, 1000, 3000]) {
      const store = record(await filledStore(), {
        chunk: 256,
        failBodyAfter: (key) => (key === failing ? afterBytes : undefined),
      });
      const { fetch } = await setup({ store });
      const response = await fetch("/aets/PACS/studies/1.2.3");
      assert.equal(response.status, 200);
      await assert.rejects(response.arrayBuffer(), `body error after ${afterBytes} bytes`);
      await eventually(() => store.openBodies() === 0, "every store body to be closed");
    }
  });

  await t.step("a GET that fails for a later instance makes reading the response reject", async () => {
    const keys = keysUnder("1.2.3/");
    const store = record(await filledStore(), {
      failGet: (key) => (key === keys[3] ? new StoreError("unavailable", "Timeout") : undefined),
    });
    const { fetch } = await setup({ store });
    const response = await fetch("/aets/PACS/studies/1.2.3");
    assert.equal(response.status, 200);
    await assert.rejects(response.arrayBuffer());
  });

  /** A study of four 3 MiB instances, streamed in 64 KiB store chunks. */
  async function bigStudy(): Promise<{ store: MemoryStore; keys: string[] }> {
    const store = new MemoryStore([BUCKET]);
    const keys: string[] = [];
    for (let i = 1; i <= 4; i++) {
      const key = `2.25.9/2.25.9.1/2.25.9.1.${i}.dcm`;
      keys.push(key);
      await store.put(BUCKET, key, part10("2.25.9", "2.25.9.1", `2.25.9.1.${i}`, ELE, 3 * 1024 * 1024));
    }
    return { store, keys };
  }

  /** Reads `bytes` of the study's response, then cancels it; returns the recorder. */
  async function cancelAfter(bytes: number, hooks: Hooks): Promise<{ store: Recorder; keys: string[] }> {
    const big = await bigStudy();
    const store = record(big.store, { chunk: 64 * 1024, ...hooks });
    const { fetch, logs } = await setup({ store });
    const response = await fetch("/aets/PACS/studies/2.25.9");
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    let received = 0;
    while (received < bytes) received += (await reader.read()).value!.byteLength;
    await reader.cancel("client went away");
    await eventually(() => logs.some((l) => l.includes("/studies/2.25.9")), "the request log line");
    return { store, keys: big.keys };
  }

  const allClosed = (store: Recorder) => () =>
    `every store body to be closed (${store.openBodies()} open; cancelled: ${store.cancelled.join(", ")})`;

  await t.step(
    "cancelling the response mid-stream closes every store body (store honours the signal)",
    async () => {
      const { store } = await cancelAfter(100_000, { honourSignal: true });
      await eventually(() => store.openBodies() === 0, allClosed(store));
    },
  );

  await t.step(
    "cancelling the response during a later part cancels the store bodies opened ahead",
    async () => {
      const { store, keys } = await cancelAfter(4 * 1024 * 1024, {});
      await eventually(() => store.openBodies() === 0, allClosed(store));
      assert.ok(store.cancelled.includes(keys[1]), "the body being streamed is cancelled");
    },
  );

  await t.step(
    "cancelling the response during the first part cancels the store bodies opened ahead",
    async () => {
      // Relies on cancel() alone: a store whose bodies ignore the abort signal (like the memory store).
      const { store, keys } = await cancelAfter(100_000, {});
      assert.ok(store.cancelled.includes(keys[0]), "the body being streamed is cancelled");
      await eventually(() => store.openBodies() === 0, allClosed(store));
    },
  );
});

Deno.test("createHandler() releases store bodies on HEAD and early cancel", async (t) => {
  const instance = instancePath("1.2.3/1.2.3.1/1.2.3.1.2.dcm");
  for (const honourSignal of [true, false]) {
    const how = honourSignal ? "store honours the signal" : "store relies on cancel()";
    for (const path of ["/aets/PACS/studies/1.2.3", instance]) {
      await t.step(
        `HEAD ${path.includes("/instances/") ? "instance" : "study"} closes every store body (${how})`,
        async () => {
          const store = record(await filledStore(), { chunk: 64, honourSignal });
          const { fetch } = await setup({ store });
          const response = await fetch(path, { method: "HEAD" });
          assert.equal(response.status, 200);
          assert.equal(response.body, null);
          assert.ok(store.calls.some((c) => c.startsWith("get ")), "the object was opened");
          await eventually(
            () => store.openBodies() === 0,
            () => `every store body to be closed (${store.openBodies()} open)`,
          );
        },
      );
    }
  }

  for (const path of ["/aets/PACS/studies/1.2.3", instance]) {
    await t.step(
      `a GET ${
        path.includes("/instances/") ? "instance" : "study"
      } cancelled before its first byte closes every store body`,
      async () => {
        const store = record(await filledStore(), { chunk: 64 });
        const { fetch } = await setup({ store });
        const response = await fetch(path);
        assert.equal(response.status, 200);
        await response.body!.cancel("client went away");
        await eventually(
          () => store.openBodies() === 0,
          () => `every store body to be closed (${store.openBodies()} open)`,
        );
      },
    );
  }
});

Deno.test("createHandler() corrupt stored objects", async (t) => {
  await t.step(
    "a stored object that is not DICOM is a server error (5xx), not the client's 400",
    async () => {
      const store = new MemoryStore([BUCKET]);
      await store.put(
        BUCKET,
        "2.25.5/2.25.5.1/2.25.5.1.1.dcm",
        encoder.encode("<html>" + "x".repeat(500) + "</html>"),
      );
      const { fetch } = await setup({ store });
      for (
        const path of [
          "/aets/PACS/studies/2.25.5",
          "/aets/PACS/studies/2.25.5/series/2.25.5.1/instances/2.25.5.1.1",
        ]
      ) {
        const response = await fetch(path);
        assert.ok(response.status >= 500, `${path}: status ${response.status}`);
        const body = await response.json();
        assert.match(body.error, /2\.25\.5\.1\.1/, "names the object");
      }
    },
  );
});

Deno.test("createHandler() transfer syntax negotiation", async (t) => {
  const mixed = keysUnder("2.25.7/2.25.7.1/");

  await t.step("without transfer-syntax every instance goes out as stored", async () => {
    const { fetch } = await setup();
    const response = await fetch("/aets/PACS/studies/2.25.7/series/2.25.7.1");
    assert.equal(response.status, 200);
    assertParts(await multipart(response), mixed);
  });

  await t.step("transfer-syntax=ELE on a mixed series is a 206 with only the ELE parts", async () => {
    const { fetch } = await setup();
    const response = await fetch("/aets/PACS/studies/2.25.7/series/2.25.7.1", {
      headers: { accept: `multipart/related; type="application/dicom"; transfer-syntax=${ELE}` },
    });
    assert.equal(response.status, 206);
    assert.ok(response.headers.get("warning"), "a Warning says why instances are missing");
    const parts = await multipart(response);
    const eleKeys = mixed.filter((k) => FIXTURES.find((f) => keyOf(f) === k)!.ts === ELE);
    assert.equal(eleKeys.length, 2);
    assertParts(parts, eleKeys);
  });

  await t.step("a transfer syntax that every instance has is a 200", async () => {
    const { fetch } = await setup();
    const response = await fetch("/aets/PACS/studies/1.2.34", {
      headers: { accept: `multipart/related; type="application/dicom"; transfer-syntax=${ELE}` },
    });
    assert.equal(response.status, 200);
    assertParts(await multipart(response), ["1.2.34/1.2.34.1/1.2.34.1.1.dcm"]);
  });

  await t.step("a transfer syntax no instance has is a 406", async () => {
    const { fetch } = await setup();
    await errorJson(
      await fetch("/aets/PACS/studies/2.25.7/series/2.25.7.1", {
        headers: { accept: `multipart/related; type="application/dicom"; transfer-syntax=${J2K}` },
      }),
      406,
    );
    await errorJson(
      await fetch(instancePath(mixed[1]), {
        headers: { accept: `multipart/related; type="application/dicom"; transfer-syntax=${ELE}` },
      }),
      406,
    );
  });
});

Deno.test("DELETE through the wired handler: one audit line per deleted instance, and CORS allows it", async () => {
  const store = new MemoryStore(["pacs"]);
  const study = "1.2.826.0.1.3680043.9.9.1";
  const series = `${study}.1`;
  for (const n of [1, 2]) {
    await store.put(
      "pacs",
      `${study}/${series}/${series}.${n}.dcm`,
      buildPart10([], { sopInstanceUid: `${series}.${n}` }),
    );
  }
  const lines: string[] = [];
  const app = testHandler({
    store,
    config: { AETS: "PACS=pacs" },
    handler: { audit: new AuditLog((line) => lines.push(line)) },
  });
  const response = await app.fetch(`/aets/PACS/studies/${study}`, { method: "DELETE" });
  assert.equal(response.status, 204, await response.text());
  const records = lines.map((line) => JSON.parse(line));
  assert.deepEqual(
    records.filter((r) => r.resource === "instance").map((r) => [r.action, r.instance]).sort(),
    [["delete", `${series}.1`], ["delete", `${series}.2`]],
  );
  const preflight = await app.fetch(`/aets/PACS/studies/${study}`, {
    method: "OPTIONS",
    headers: { origin: "https://viewer.example.org", "access-control-request-method": "DELETE" },
  });
  assert.match(preflight.headers.get("access-control-allow-methods") ?? "", /\bDELETE\b/);
  await app.close();
});
