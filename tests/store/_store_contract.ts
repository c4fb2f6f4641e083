/**
 * The behaviour every {@linkcode ObjectStore} must have, as test steps to run against each implementation
 * (memory, local folder, s3rver, Ceph RGW): see `store_test.ts`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { compareKeys, type ObjectStore, StoreError } from "../../lib/store/store.ts";

/** A store with a fresh, empty bucket to test in. */
export interface StoreFixture {
  store: ObjectStore;
  /** An existing, empty bucket. */
  bucket: string;
  /** A bucket name that does not exist. */
  missingBucket: string;
  /** Removes what the fixture made. */
  cleanup(): Promise<void>;
}

/** Options for a fixture's store. */
export interface FixtureOptions {
  /** List in pages of this many keys (stores that do not page ignore it). */
  pageSize?: number;
}

/** Makes a fresh fixture for each step. */
export type MakeStore = (options: FixtureOptions) => Promise<StoreFixture>;

/** What a store is known to get wrong, so the suite can still check the rest. */
export interface ContractOptions {
  /** `false` when the server does not list in UTF-8 byte order (s3rver puts "a/b" before "a.b"). Default `true`. */
  listsInByteOrder?: boolean;
}

const MIB = 1024 * 1024;

/** Runs every contract step against stores made by `makeStore`. */
export async function storeContract(
  t: Deno.TestContext,
  makeStore: MakeStore,
  options: ContractOptions = {},
): Promise<void> {
  const step = (name: string, fn: (f: StoreFixture) => Promise<void>, fixture: FixtureOptions = {}) =>
    t.step(name, async () => {
      const f = await makeStore(fixture);
      try {
        await fn(f);
      } finally {
        await f.cleanup();
      }
    });

  await step(
    "put() then get() returns the bytes exactly (small, empty, binary)",
    async ({ store, bucket }) => {
      const small = bytes(1000, 1);
      const info = await store.put(bucket, "a/b/small.dcm", small, { contentType: "application/dicom" });
      assert.equal(info.key, "a/b/small.dcm");
      assert.equal(info.size, 1000);
      assert.ok(info.etag.length > 0 && !info.etag.includes('"'), `ETag without quotes: ${info.etag}`);
      const object = await store.get(bucket, "a/b/small.dcm");
      assert.ok(object);
      assert.equal(object.start, 0);
      assert.equal(object.length, 1000);
      assert.equal(object.info.size, 1000);
      assert.equal(object.info.etag, info.etag);
      assertSameBytes(await readAll(object.body), small);

      const head = await store.head(bucket, "a/b/small.dcm");
      assert.ok(head);
      assert.deepEqual([head.key, head.size, head.etag], ["a/b/small.dcm", 1000, info.etag]);

      const empty = await store.put(bucket, "empty.dcm", new Uint8Array(0));
      assert.equal(empty.size, 0);
      const got = await store.get(bucket, "empty.dcm");
      assert.ok(got);
      assert.equal(got.length, 0);
      assert.equal((await readAll(got.body)).byteLength, 0);
      assert.equal((await store.head(bucket, "empty.dcm"))?.size, 0);

      const streamedEmpty = await store.put(bucket, "empty-stream.dcm", streamOf([]));
      assert.equal(streamedEmpty.size, 0);
      assert.equal((await store.head(bucket, "empty-stream.dcm"))?.size, 0);
    },
  );

  await step(
    "put() keeps a copy: changing the input afterwards changes nothing",
    async ({ store, bucket }) => {
      const data = bytes(100, 2);
      await store.put(bucket, "copy", data);
      data.fill(0);
      const object = await store.get(bucket, "copy");
      assertSameBytes(await readAll(object!.body), bytes(100, 2));
    },
  );

  await step("put() streams a 20 MiB body byte-exact", async ({ store, bucket }) => {
    const data = bytes(20 * MIB + 123, 3);
    const info = await store.put(bucket, "big/20m.dcm", streamOf(chunksOf(data)));
    assert.equal(info.size, data.byteLength);
    const head = await store.head(bucket, "big/20m.dcm");
    assert.equal(head?.size, data.byteLength);
    assert.equal(head?.etag, info.etag);
    const object = await store.get(bucket, "big/20m.dcm");
    assert.ok(object);
    assert.equal(object.length, data.byteLength);
    assertSameBytes(await readAll(object.body), data);

    // with the size given up front, and exactly 8 MiB (the S3 store's part size)
    const eight = data.subarray(0, 8 * MIB);
    await store.put(bucket, "big/8m.dcm", streamOf(chunksOf(eight)), { size: eight.byteLength });
    assertSameBytes(await readAll((await store.get(bucket, "big/8m.dcm"))!.body), eight);
  });

  await step("get() with a range returns those bytes and the object's size", async ({ store, bucket }) => {
    const data = bytes(1000, 4);
    await store.put(bucket, "r", data);
    const cases: [{ start: number; end?: number }, number, number][] = [
      [{ start: 0, end: 0 }, 0, 1], // first byte
      [{ start: 100, end: 199 }, 100, 100], // middle
      [{ start: 900 }, 900, 100], // to the end
      [{ start: 990, end: 5000 }, 990, 10], // end past the size clamps
      [{ start: 999, end: 999 }, 999, 1], // last byte
      [{ start: 0 }, 0, 1000], // all
    ];
    for (const [range, start, length] of cases) {
      const object = await store.get(bucket, "r", { range });
      assert.ok(object, JSON.stringify(range));
      assert.equal(object.start, start, JSON.stringify(range));
      assert.equal(object.length, length, JSON.stringify(range));
      assert.equal(object.info.size, 1000);
      assertSameBytes(await readAll(object.body), data.subarray(start, start + length));
    }
    for (const range of [{ start: 1000 }, { start: 5000, end: 6000 }, { start: -1 }, { start: 10, end: 5 }]) {
      await assert.rejects(store.get(bucket, "r", { range }), RangeError, JSON.stringify(range));
    }
    await store.put(bucket, "empty", new Uint8Array(0));
    await assert.rejects(store.get(bucket, "empty", { range: { start: 0 } }), RangeError);
    assert.equal(await store.get(bucket, "missing", { range: { start: 0 } }), null);
  });

  await step("head() and get() of a missing key return null", async ({ store, bucket }) => {
    await store.put(bucket, "1.2.3/1.4/1.5.dcm", bytes(10, 5));
    assert.equal(await store.head(bucket, "nothing.dcm"), null);
    assert.equal(await store.get(bucket, "nothing.dcm"), null);
    assert.equal(await store.head(bucket, "1.2.3/1.4/1.5"), null);
    assert.equal(await store.get(bucket, "1.2.3/1.4"), null, "a 'folder' is not an object");
    assert.equal(await store.head(bucket, "1.2.3"), null, "a 'folder' is not an object");
  });

  await step("list() yields nested keys flat, in UTF-8 byte order", async ({ store, bucket }) => {
    const keys = [
      "1.2.3/1.4/1.5.dcm",
      "1.2.3/1.4/1.55.dcm",
      "1.2.3/1.44/1.dcm",
      "1.2.34/1.4/1.5.dcm",
      "1.2.3.4/1.4/1.5.dcm",
      "z.dcm",
      "top.dcm",
      "\uFFFD.dcm",
      "\u{1F600}.dcm",
      "x/a&b <c> d+e'f\"g.dcm", // XML-escaped in S3 listings
    ];
    for (const key of [...keys].reverse()) await store.put(bucket, key, bytes(key.length, 6));
    const listed = await list(store, bucket, "");
    const expected = [...keys].sort(compareKeys);
    if (options.listsInByteOrder ?? true) assert.deepEqual(listed.map((i) => i.key), expected);
    else assert.deepEqual(listed.map((i) => i.key).sort(compareKeys), expected);
    for (const info of listed) {
      assert.equal(info.size, info.key.length);
      assert.equal(info.etag, (await store.head(bucket, info.key))?.etag);
    }
  });

  await step(
    "list() with a prefix follows S3 semantics and never crosses UIDs",
    async ({ store, bucket }) => {
      const keys = [
        "1.2.3/1.4/1.5.dcm",
        "1.2.3/1.4/1.55.dcm",
        "1.2.3/1.44/1.dcm",
        "1.2.34/1.4/1.5.dcm",
        "1.2.3.4/1.4/1.5.dcm",
        "s/se/1.2.3.dcm",
        "s/se/1.2.34.dcm",
      ];
      for (const key of keys) await store.put(bucket, key, bytes(3, 7));
      const keysOf = async (prefix: string) =>
        (await list(store, bucket, prefix)).map((i) => i.key).sort(compareKeys);
      assert.deepEqual(await keysOf("1.2.3/"), [
        "1.2.3/1.4/1.5.dcm",
        "1.2.3/1.4/1.55.dcm",
        "1.2.3/1.44/1.dcm",
      ]);
      assert.deepEqual(await keysOf("1.2.3/1.4/"), ["1.2.3/1.4/1.5.dcm", "1.2.3/1.4/1.55.dcm"]);
      assert.deepEqual(await keysOf("s/se/1.2.3.dcm"), ["s/se/1.2.3.dcm"]);
      assert.deepEqual(await keysOf("1.2.34/"), ["1.2.34/1.4/1.5.dcm"]);
      // a prefix may end inside a name
      assert.deepEqual(await keysOf("1.2.3/1.4/1.5"), ["1.2.3/1.4/1.5.dcm", "1.2.3/1.4/1.55.dcm"]);
      assert.deepEqual(await keysOf("1.2.3/1.4"), [
        "1.2.3/1.4/1.5.dcm",
        "1.2.3/1.4/1.55.dcm",
        "1.2.3/1.44/1.dcm",
      ]);
      assert.deepEqual(await keysOf("1.2.3"), keys.slice(0, 5).sort(compareKeys));
      assert.deepEqual(await keysOf("s/se/1.2.3"), ["s/se/1.2.3.dcm", "s/se/1.2.34.dcm"]);
      assert.deepEqual(await keysOf("s/"), ["s/se/1.2.3.dcm", "s/se/1.2.34.dcm"]);
      assert.deepEqual(await keysOf("9"), []);
      assert.deepEqual(await keysOf("1.2.3/9/"), []);
      assert.deepEqual(await keysOf("nothing/here/"), []);
    },
  );

  await step("list() follows pagination to the end and honours startAfter", async ({ store, bucket }) => {
    // letters and digits only: s3rver's paging loses keys when "." and "/" order differently
    const keys = [
      "p/a/1",
      "p/a/2",
      "p/a/3",
      "p/b/1",
      "p/c",
      "p/d/e/f",
      "p/d/e/g",
      "p/e",
      "p/f/1",
      "p/f/2",
      "p/g",
      "q/1",
    ];
    for (const key of keys) await store.put(bucket, key, bytes(1, 8));
    assert.deepEqual((await list(store, bucket, "")).map((i) => i.key), keys);
    assert.deepEqual((await list(store, bucket, "p/")).map((i) => i.key), keys.slice(0, 11));
    assert.deepEqual((await list(store, bucket, "p/", "p/b/1")).map((i) => i.key), keys.slice(4, 11));
    assert.deepEqual((await list(store, bucket, "", "p/f/2")).map((i) => i.key), ["p/g", "q/1"]);
    assert.deepEqual((await list(store, bucket, "", "q/1")).map((i) => i.key), []);
  }, { pageSize: 3 });

  await step("put() of a stream that errors writes nothing", async ({ store, bucket }) => {
    await store.put(bucket, "keep", bytes(10, 9));
    for (const [key, at] of [["small", 100_000], ["large", 12 * MIB], ["keep", 50_000]] as const) {
      const body = failingStream(at, new Error("source broke"));
      await assert.rejects(store.put(bucket, key, body), /source broke/, key);
      if (key !== "keep") assert.equal(await store.head(bucket, key), null, key);
    }
    // the object being replaced stays as it was
    assertSameBytes(await readAll((await store.get(bucket, "keep"))!.body), bytes(10, 9));
    assert.deepEqual((await list(store, bucket, "")).map((i) => i.key), ["keep"]);
  });

  await step("put() aborted by its signal writes nothing and cancels the body", async ({ store, bucket }) => {
    for (const [key, at] of [["small", 256 * 1024], ["large", 12 * MIB]] as const) {
      const controller = new AbortController();
      const cancelled = Promise.withResolvers<unknown>();
      const body = slowStream(
        at,
        () => controller.abort(new DOMException("Client went away", "AbortError")),
        cancelled.resolve,
      );
      await assert.rejects(store.put(bucket, key, body, { signal: controller.signal }), {
        name: "AbortError",
      }, key);
      const reason = await withTimeout(cancelled.promise, 5000, `${key}: body not cancelled`);
      assert.equal((reason as Error)?.name, "AbortError");
      assert.equal(await store.head(bucket, key), null, key);
    }
    await assert.rejects(
      store.put(bucket, "pre", bytes(10, 1), { signal: AbortSignal.abort() }),
      { name: "AbortError" },
    );
    assert.deepEqual(await list(store, bucket, ""), []);
  });

  await step("put() with a size that does not match writes nothing", async ({ store, bucket }) => {
    await assert.rejects(store.put(bucket, "a", bytes(10, 1), { size: 11 }), RangeError);
    await assert.rejects(store.put(bucket, "b", streamOf([bytes(10, 1)]), { size: 9 }), RangeError);
    assert.deepEqual(await list(store, bucket, ""), []);
  });

  await step("put() over an object replaces it atomically", async ({ store, bucket }) => {
    const v1 = bytes(300_000, 10);
    const v2 = bytes(500_000, 11);
    const first = await store.put(bucket, "o", v1);
    const gate = Promise.withResolvers<void>();
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === 100_000) await gate.promise; // hold the upload half-way
        if (sent >= v2.byteLength) return controller.close();
        controller.enqueue(v2.slice(sent, sent + 100_000));
        sent += 100_000;
      },
    });
    const writing = store.put(bucket, "o", body);
    await new Promise((resolve) => setTimeout(resolve, 50));
    // mid-write, readers see the old object whole
    const during = await store.get(bucket, "o");
    assert.equal(during?.info.etag, first.etag);
    assertSameBytes(await readAll(during!.body), v1);
    gate.resolve();
    const second = await writing;
    assert.notEqual(second.etag, first.etag);
    const after = await store.get(bucket, "o");
    assert.equal(after?.info.etag, second.etag);
    assertSameBytes(await readAll(after!.body), v2);
    assert.deepEqual((await list(store, bucket, "")).map((i) => [i.key, i.size]), [["o", v2.byteLength]]);
  });

  await step("delete() removes the object; a missing key is fine", async ({ store, bucket }) => {
    await store.put(bucket, "d/1.dcm", bytes(5, 1));
    await store.put(bucket, "d/2.dcm", bytes(5, 2));
    await store.delete(bucket, "d/1.dcm");
    assert.equal(await store.head(bucket, "d/1.dcm"), null);
    assert.equal(await store.get(bucket, "d/1.dcm"), null);
    assert.deepEqual((await list(store, bucket, "")).map((i) => i.key), ["d/2.dcm"]);
    await store.delete(bucket, "d/1.dcm");
    await store.delete(bucket, "never/was.dcm");
  });

  await step("listBuckets() and check() see the bucket", async ({ store, bucket }) => {
    assert.ok((await store.listBuckets()).includes(bucket));
    await store.check(bucket);
  });

  await step("a missing bucket is a StoreError of kind no-bucket", async ({ store, missingBucket }) => {
    const noBucket = (error: unknown) => {
      assert.ok(error instanceof StoreError, String(error));
      assert.equal(error.kind, "no-bucket");
      assert.ok(error.message.includes(missingBucket), error.message);
      return true;
    };
    await assert.rejects(store.check(missingBucket), noBucket);
    await assert.rejects(list(store, missingBucket, ""), noBucket);
    await assert.rejects(store.get(missingBucket, "a.dcm"), noBucket);
    await assert.rejects(store.put(missingBucket, "a.dcm", bytes(1, 1)), noBucket);
    // HEAD answers have no body, so S3 cannot say which is missing: null is allowed
    await store.head(missingBucket, "a.dcm").then((info) => assert.equal(info, null), noBucket);
    assert.ok(!(await store.listBuckets()).includes(missingBucket));
  });

  await step("cancelling or aborting a body releases it", async ({ store, bucket }) => {
    const data = bytes(3 * MIB, 12);
    await store.put(bucket, "c", data);
    for (let i = 0; i < 25; i++) {
      const object = await store.get(bucket, "c");
      const reader = object!.body.getReader();
      if (i % 2) await reader.read();
      await reader.cancel();
    }
    // a body aborted by its signal ends with the abort reason
    const controller = new AbortController();
    const object = await store.get(bucket, "c", { signal: controller.signal });
    const reader = object!.body.getReader();
    await reader.read();
    controller.abort(new DOMException("Client went away", "AbortError"));
    await assert.rejects(
      (async () => {
        while (!(await reader.read()).done);
      })(),
      { name: "AbortError" },
    );
    await assert.rejects(store.get(bucket, "c", { signal: AbortSignal.abort() }), { name: "AbortError" });
    // and the store still serves plenty of requests
    const reads = Array.from({ length: 20 }, async () => readAll((await store.get(bucket, "c"))!.body));
    for (const read of await Promise.all(reads)) assertSameBytes(read, data);
  });
}

/** `length` pseudo-random bytes, the same for the same seed. */
export function bytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  const words = new Uint32Array(out.buffer, 0, length >>> 2);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let i = words.length * 4; i < length; i++) out[i] = (seed + i) & 255;
  return out;
}

/** Throws unless `actual` equals `expected` byte for byte (fast for large arrays). */
export function assertSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  assert.equal(actual.byteLength, expected.byteLength, "length");
  for (let i = 0; i < actual.byteLength; i++) {
    if (actual[i] !== expected[i]) assert.fail(`Bytes differ at offset ${i}: ${actual[i]} != ${expected[i]}`);
  }
}

/** Reads a whole body. */
export async function readAll(body: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(body).arrayBuffer());
}

/** Collects a listing. */
export async function list(store: ObjectStore, bucket: string, prefix: string, startAfter?: string) {
  return await Array.fromAsync(store.list(bucket, prefix, { startAfter }));
}

/** Uneven chunks (1 byte to ~1 MiB) of `data`, as an upload body might arrive. */
function chunksOf(data: Uint8Array): Uint8Array[] {
  const chunks = [];
  const sizes = [1, 65536, 1 << 20, 7, 300_001, 4096];
  for (let offset = 0, i = 0; offset < data.byteLength; i++) {
    const size = sizes[i % sizes.length];
    chunks.push(data.slice(offset, offset + size));
    offset += size;
  }
  return chunks;
}

function streamOf(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]);
      else controller.close();
    },
  });
}

/** A body that errors after `at` bytes. */
function failingStream(at: number, error: Error): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= at) return controller.error(error);
      const chunk = bytes(Math.min(256 * 1024, at - sent), sent);
      sent += chunk.byteLength;
      controller.enqueue(chunk);
    },
  });
}

/** A body that calls `atPoint` after `at` bytes and then stalls until cancelled. */
function slowStream(
  at: number,
  atPoint: () => void,
  onCancel: (reason: unknown) => void,
): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    async pull(controller) {
      if (sent >= at) {
        atPoint();
        await new Promise(() => {}); // never more data
      }
      const chunk = bytes(Math.min(256 * 1024, at - sent), sent);
      sent += chunk.byteLength;
      controller.enqueue(chunk);
    },
    cancel: onCancel,
  });
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => timer = setTimeout(() => reject(new Error(message)), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
