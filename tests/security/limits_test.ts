/**
 * The limit pieces one by one (431, 429, 413, 408, 504, the store read budget), their settings (milliseconds
 * read as milliseconds), and each one answering through the guarded handler with its status and message.
 */

import assert from "node:assert/strict";
import { HttpError } from "../../lib/http/errors.ts";
import {
  checkHeaderSize,
  ClientLimiter,
  limitRequestBody,
  parseLimitsConfig,
  releaseWhenDone,
  tooManyParts,
  withDeadline,
} from "../../lib/security/limits.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import type { GetOptions, ObjectStore } from "../../lib/store/store.ts";
import { buildInstance } from "../_corpus.ts";
import { securedHandler } from "../_jwks.ts";
import { byteStream, delegating, eventually, observe } from "../_stores.ts";
import { ReadBudget } from "../../lib/store/read_budget.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function caught(fn: () => unknown): HttpError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof HttpError, String(error));
    return error;
  }
  assert.fail("expected an HttpError");
}

async function rejected(promise: Promise<unknown>): Promise<HttpError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof HttpError, String(error));
    return error;
  }
  assert.fail("expected an HttpError");
}

/** A promise's state without waiting for it. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(() => (done = true), () => (done = true));
  await sleep(10);
  return done;
}

Deno.test("parseLimitsConfig(): defaults, bounds, and milliseconds that stay milliseconds", () => {
  const problems: string[] = [];
  const defaults = parseLimitsConfig({}, problems);
  assert.deepEqual(problems, []);
  assert.deepEqual(defaults, {
    maxHeaderBytes: 32768,
    maxHeaderCount: 100,
    clientConcurrency: 32,
    responseTimeoutMs: 60000,
    bodyTimeoutMs: 600000,
    stowMaxParts: 10000,
    readBudgetBytes: 256 * 1024 * 1024,
  });
  const set = parseLimitsConfig({
    RESPONSE_TIMEOUT_MS: "1500",
    BODY_TIMEOUT_MS: "250",
    REQUEST_READ_BUDGET_MB: "0",
  }, problems);
  assert.equal(set.responseTimeoutMs, 1500, "1500 means 1.5 s, not 1500 s (DICOM-RST's bug)");
  assert.equal(set.bodyTimeoutMs, 250);
  assert.equal(set.readBudgetBytes, 0);
  parseLimitsConfig(
    { MAX_HEADER_BYTES: "10", CLIENT_CONCURRENCY: "-1", RESPONSE_TIMEOUT_MS: "1.5s" },
    problems,
  );
  assert.deepEqual(problems, [
    'MAX_HEADER_BYTES="10" is not valid: use a whole number from 1024 to 1048576',
    'CLIENT_CONCURRENCY="-1" is not valid: use a whole number from 0 to 100000',
    'RESPONSE_TIMEOUT_MS="1.5s" is not valid: use a whole number from 0 to 86400000',
  ]);
});

Deno.test("checkHeaderSize() answers 431 naming the limit", () => {
  const limits = { maxHeaderBytes: 1024, maxHeaderCount: 8 };
  checkHeaderSize(
    new Headers({ accept: "application/dicom+json", authorization: "Bearer " + "x".repeat(900) }),
    limits,
  );
  const big = caught(() =>
    checkHeaderSize(new Headers({ authorization: "Bearer " + "x".repeat(1100) }), limits)
  );
  assert.equal(big.status, 431);
  assert.match(
    big.message,
    /^Request header fields too large: \d+ bytes, at most 1024 \(MAX_HEADER_BYTES\)$/,
  );
  const many = new Headers();
  for (let i = 0; i < 9; i++) many.set(`x-h${i}`, "1");
  assert.match(
    caught(() => checkHeaderSize(many, limits)).message,
    /9 fields, at most 8 \(MAX_HEADER_COUNT\)/,
  );
});

Deno.test("ClientLimiter counts per key, answers 429 with Retry-After, releases once", () => {
  const limiter = new ClientLimiter(2);
  const a1 = limiter.acquire("a");
  const a2 = limiter.acquire("a");
  const b1 = limiter.acquire("b");
  const error = caught(() => limiter.acquire("a"));
  assert.equal(error.status, 429);
  assert.equal(error.headers["retry-after"], "1");
  assert.match(
    error.message,
    /Too many requests at once from this client: at most 2 in flight \(CLIENT_CONCURRENCY\)/,
  );
  a1();
  a1();
  assert.equal(limiter.active("a"), 1, "a second release of the same slot does nothing");
  limiter.acquire("a");
  a2();
  b1();
  assert.equal(limiter.active(), 1);
  const off = new ClientLimiter(0);
  for (let i = 0; i < 1000; i++) off.acquire("x");
  assert.equal(off.active(), 0);
});

Deno.test("releaseWhenDone() fires on end, on error, on cancel, and at once without a body", async () => {
  let count = 0;
  const done = () => count++;
  releaseWhenDone(new Response(null, { status: 204 }), done);
  assert.equal(count, 1);
  await releaseWhenDone(new Response("abc"), done).text();
  assert.equal(count, 2);
  const failing = new ReadableStream({ pull: (c) => c.error(new Error("boom")) });
  await assert.rejects(releaseWhenDone(new Response(failing), done).text());
  assert.equal(count, 3);
  const endless = new ReadableStream({ pull: (c) => c.enqueue(new Uint8Array(10)) });
  const wrapped = releaseWhenDone(new Response(endless), done);
  const reader = wrapped.body!.getReader();
  await reader.read();
  await reader.cancel();
  assert.equal(count, 4);
});

Deno.test("limitRequestBody(): 413 on Content-Length or on bytes sent, 408 when the body is too slow", async () => {
  const post = (body: BodyInit, headers: HeadersInit = {}) =>
    new Request("http://x/", { method: "POST", body, headers });
  assert.equal(await limitRequestBody(post("hello"), { maxBytes: 5, timeoutMs: 0 }).text(), "hello");
  const get = new Request("http://x/");
  assert.equal(limitRequestBody(get, { maxBytes: 0, timeoutMs: 1 }), get, "no body, nothing to limit");

  const declared = caught(() =>
    limitRequestBody(post("x", { "content-length": "999999" }), { maxBytes: 10, timeoutMs: 0 })
  );
  assert.equal(declared.status, 413);
  assert.equal(
    declared.message,
    "Request body too large: Content-Length 999999, at most 10 bytes (STOW_MAX_BYTES)",
  );

  let pulled = 0;
  const endless = new ReadableStream<Uint8Array>({
    pull(c) {
      pulled++;
      c.enqueue(new Uint8Array(4096));
    },
  });
  const streamed = await rejected(
    limitRequestBody(post(endless), { maxBytes: 10_000, timeoutMs: 0 }).arrayBuffer(),
  );
  assert.equal(streamed.status, 413);
  assert.match(streamed.message, /more than 10000 bytes sent/);
  assert.ok(pulled < 10, "the source is not drained after the limit");

  const stalled = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new Uint8Array(100));
    },
  });
  const slow = await rejected(
    limitRequestBody(post(stalled), { maxBytes: 1000, timeoutMs: 50 }).arrayBuffer(),
  );
  assert.equal(slow.status, 408);
  assert.equal(slow.message, "Request body not received in time: 100 bytes in 50 ms (BODY_TIMEOUT_MS)");
  assert.equal(tooManyParts(3).status, 413);
  assert.match(tooManyParts(3).message, /at most 3 \(STOW_MAX_PARTS\)/);
});

Deno.test("limitRequestBody(): a byte-stream body is read in large chunks, byte-exact; others as they come", async () => {
  const bytes = new Uint8Array(1_000_000).map((_, i) => (i * 7) % 251);
  const pieces = (type?: "bytes") =>
    new ReadableStream({
      type,
      start(controller) {
        // 10 KB network-sized pieces, as a request body arrives
        for (let at = 0; at < bytes.length; at += 10_000) controller.enqueue(bytes.slice(at, at + 10_000));
        controller.close();
      },
    } as UnderlyingDefaultSource<Uint8Array>);
  const chunksOf = async (body: ReadableStream<Uint8Array>) => {
    const request = new Request("http://x/", { method: "POST", body, duplex: "half" } as RequestInit);
    const chunks: Uint8Array[] = [];
    for await (const chunk of limitRequestBody(request, { maxBytes: 2_000_000, timeoutMs: 0 }).body!) {
      chunks.push(chunk);
    }
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.byteLength;
    }
    assert.deepEqual(all, bytes);
    return chunks;
  };
  const large = await chunksOf(pieces("bytes"));
  assert.ok(large.length <= 5, `${large.length} chunks for 1 MB read as a byte stream`);
  assert.equal(large[0].byteLength, 256 * 1024);
  assert.equal((await chunksOf(pieces())).length, 100, "a default stream's chunks pass as they come");
});

Deno.test("withDeadline(): 504 after the limit, and a late response's body is cancelled", async () => {
  assert.equal((await withDeadline(Promise.resolve(new Response("ok")), 0)).status, 200);
  let cancelled = false;
  const late = new Promise<Response>((resolve) =>
    setTimeout(() => resolve(new Response(new ReadableStream({ cancel: () => void (cancelled = true) }))), 80)
  );
  const error = await rejected(withDeadline(late, 20));
  assert.equal(error.status, 504);
  assert.match(error.message, /^Timed out after 20 ms preparing the response \(RESPONSE_TIMEOUT_MS\)/);
  await late;
  await eventually(() => cancelled, 1000, "the late body to be cancelled");
  await assert.rejects(withDeadline(Promise.reject(new RangeError("bad")), 1000), RangeError);
});

Deno.test("ReadBudget: one request's open reads are capped, others are not affected, nothing deadlocks", async (t) => {
  const base = new MemoryStore(["b"]);
  for (let i = 0; i < 4; i++) await base.put("b", `k${i}`, new Uint8Array(100).fill(i));
  const budget = new ReadBudget(250, { maxWaitMs: 300 });
  const store = budget.store(base);
  const read = async (key: string, options?: GetOptions) => (await store.get("b", key, options))!;

  await t.step("outside a scope reads pass through uncounted", async () => {
    const a = await read("k0");
    const b = await read("k1");
    const c = await read("k2");
    assert.equal(budget.openBytes(), 0);
    for (const o of [a, b, c]) await o.body.cancel();
  });
  await t.step("a third 100-byte read waits until one of two finishes; cancel releases too", async () => {
    await budget.scope(async () => {
      const a = await read("k0");
      await read("k1", { range: { start: 0, end: 99 } });
      assert.equal(budget.openBytes(), 200);
      const third = read("k2");
      assert.equal(await settled(third), false, "over budget: waits");
      const other = budget.scope(async () => {
        const o = await read("k3");
        await o.body.cancel();
        return new Response(null);
      });
      assert.equal(await settled(other), true, "another request has its own budget");
      assert.equal(new Uint8Array(await new Response(a.body).arrayBuffer())[0], 0);
      const c = await third;
      assert.equal(budget.openBytes(), 200);
      await c.body.cancel();
      assert.equal(budget.openBytes(), 100);
      return new Response(null);
    });
  });
  await t.step("a read larger than the whole budget proceeds when nothing else is open", async () => {
    const small = new ReadBudget(10);
    const wrapped = small.store(base);
    await small.scope(async () => {
      const o = (await wrapped.get("b", "k0"))!;
      assert.equal((await new Response(o.body).arrayBuffer()).byteLength, 100);
      return new Response(null);
    });
  });
  await t.step("an aborted wait rejects; a wait past maxWaitMs proceeds", async () => {
    await budget.scope(async () => {
      const a = await read("k0");
      const b = await read("k1");
      const abort = new AbortController();
      const waiting = read("k2", { signal: abort.signal });
      abort.abort(new Error("client gone"));
      await assert.rejects(waiting, /client gone/);
      const overdue = await read("k3");
      assert.equal(budget.openBytes(), 300, "went ahead over budget after maxWaitMs");
      for (const o of [a, b, overdue]) await o.body.cancel();
      return new Response(null);
    });
  });
  await t.step("the response body pulled later still counts against its request", async () => {
    let seen = -1;
    const response = await budget.scope(async () => {
      const o = await read("k0");
      return new Response(
        new ReadableStream({
          async pull(c) {
            seen = budget.openBytes();
            const r = await new Response(o.body).arrayBuffer();
            c.enqueue(new Uint8Array(r));
            c.close();
          },
        }),
      );
    });
    await response.arrayBuffer();
    assert.equal(seen, 100, "the body's pull runs in the request's scope");
  });
  await t.step(
    "a byte-stream body stays one: BYOB reads pass through, bytes intact, released at the end",
    async () => {
      const bytes = new Uint8Array(300_000).map((_, i) => i % 251);
      const byteStore = delegating(base, {
        get: async (_b, key) => {
          const info = (await base.head("b", "k0"))!;
          const body = byteStream(bytes, 10_000);
          return { info: { ...info, key, size: bytes.byteLength }, start: 0, length: bytes.byteLength, body };
        },
      });
      const wrapped = budget.store(byteStore);
      await budget.scope(async () => {
        const o = (await wrapped.get("b", "k"))!;
        assert.equal(budget.openBytes(), bytes.byteLength);
        const reader = o.body.getReader({ mode: "byob" });
        const out = new Uint8Array(bytes.byteLength);
        let filled = 0;
        let buffer = new Uint8Array(65_536);
        while (true) {
          const { value, done } = await reader.read(buffer);
          if (done) break;
          out.set(value, filled);
          filled += value.byteLength;
          buffer = new Uint8Array(value.buffer);
        }
        assert.equal(filled, bytes.byteLength);
        assert.deepEqual(out, bytes);
        assert.equal(budget.openBytes(), 0, "released when the body ended");
        const cancelled = (await wrapped.get("b", "k"))!;
        assert.equal(budget.openBytes(), bytes.byteLength);
        await cancelled.body.getReader({ mode: "byob" }).cancel();
        assert.equal(budget.openBytes(), 0, "released on cancel");
        return new Response(null);
      });
    },
  );
});

/** A store whose gets (or heads) take `delayMs` first. */
function slowStore(store: ObjectStore, delayMs: number): ObjectStore {
  return delegating(store, {
    head: async (b, k, o) => (await sleep(delayMs), store.head(b, k, o)),
    get: async (b, k, o) => (await sleep(delayMs), store.get(b, k, o)),
  });
}

Deno.test("each limit answers through the guarded handler with its status and message", async (t) => {
  const base = new MemoryStore(["pacs"]);
  const study = "1.2.840.7";
  for (let i = 1; i <= 6; i++) {
    const sop = `${study}.1.${i}`;
    await base.put(
      "pacs",
      `${study}/${study}.1/${sop}.dcm`,
      buildInstance({ study, series: `${study}.1`, sop, pixelBytes: 1 << 20 }),
    );
  }
  const env = {
    AETS: "PACS=pacs",
    CLIENT_CONCURRENCY: "2",
    MAX_HEADER_BYTES: "2048",
    STOW_MAX_BYTES: "4096",
    RESPONSE_TIMEOUT_MS: "200",
    REQUEST_READ_BUDGET_MB: "1",
  };
  const observed = observe(base);
  const { handler } = securedHandler(observed, env);
  const peer = (hostname: string) => ({ remoteAddr: { transport: "tcp", hostname, port: 40000 } });
  const url = `http://127.0.0.1/aets/PACS/studies/${study}`;
  const accept = { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' };

  await t.step("431: a huge header", async () => {
    const response = await handler(
      new Request(url, { headers: { "x-junk": "x".repeat(3000) } }),
      peer("10.0.0.1"),
    );
    assert.equal(response.status, 431);
    assert.match((await response.json()).error, /at most 2048 \(MAX_HEADER_BYTES\)/);
  });
  await t.step("429: a third concurrent request from one address while two bodies stream", async () => {
    const first = await handler(new Request(url, { headers: accept }), peer("10.0.0.2"));
    const second = await handler(new Request(url, { headers: accept }), peer("10.0.0.2"));
    assert.equal(first.status, 200);
    assert.equal(second.status, 200);
    const third = await handler(new Request(url, { headers: accept }), peer("10.0.0.2"));
    assert.equal(third.status, 429);
    assert.equal(third.headers.get("retry-after"), "1");
    assert.match((await third.json()).error, /at most 2 in flight/);
    const elsewhere = await handler(new Request(`${url}/metadata`), peer("10.0.0.3"));
    assert.equal(elsewhere.status, 200, "another client is not affected");
    await elsewhere.body?.cancel();
    await first.body!.cancel();
    const fourth = await handler(new Request(`${url}/metadata`), peer("10.0.0.2"));
    assert.equal(fourth.status, 200, "a cancelled body gave its slot back");
    await fourth.body?.cancel();
    const all = await second.arrayBuffer();
    assert.ok(all.byteLength > 6 << 20, "the whole study under a 1 MiB read budget (objects one at a time)");
    await eventually(() => observed.openBodies() === 0, 2000, "store bodies released");
  });
  await t.step("413: a body over STOW_MAX_BYTES, declared or not", async () => {
    const post = (headers: Record<string, string>) =>
      new Request(`http://127.0.0.1/aets/PACS/studies`, {
        method: "POST",
        body: new Uint8Array(5000),
        headers: { "content-type": 'multipart/related; type="application/dicom"; boundary=x', ...headers },
      });
    const declared = await handler(post({ "content-length": "5000" }), peer("10.0.0.4"));
    assert.equal(declared.status, 413);
    assert.match(
      (await declared.json()).error,
      /^Request body too large: Content-Length 5000, at most 4096 bytes \(STOW_MAX_BYTES\)$/,
    );
    // Without Content-Length the limit bites as the STOW-RS handler reads (405 while its route is shadowed).
    const undeclared = await handler(post({}), peer("10.0.0.4"));
    const error = (await undeclared.json()).error;
    if (undeclared.status !== 405) {
      assert.equal(undeclared.status, 413, error);
      assert.match(error, /STOW_MAX_BYTES/);
    }
  });
  await t.step("504: the store takes longer than RESPONSE_TIMEOUT_MS", async () => {
    const slow = securedHandler(slowStore(base, 400), env).handler;
    const response = await slow(new Request(`${url}/metadata`), peer("10.0.0.5"));
    assert.equal(response.status, 504);
    assert.match((await response.json()).error, /Timed out after 200 ms preparing the response/);
    await sleep(500); // let the late work finish inside the test
  });
});
