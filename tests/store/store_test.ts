import assert from "node:assert/strict";
import { FileStore } from "../../lib/store/file_store.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { Http1Client } from "../../lib/store/s3/http1.ts";
import { S3Store, type S3StoreOptions } from "../../lib/store/s3/s3_store.ts";
import { type ListOptions, StoreError } from "../../lib/store/store.ts";
import { startS3 } from "../_s3server.ts";
import { assertSameBytes, bytes, list, readAll, storeContract } from "./_store_contract.ts";

const MIB = 1024 * 1024;

Deno.test("MemoryStore passes the store contract", async (t) => {
  await storeContract(t, () => {
    const store = new MemoryStore(["bucket"]);
    return Promise.resolve({
      store,
      bucket: "bucket",
      missingBucket: "no-such-bucket",
      cleanup: async () => {},
    });
  });
});

Deno.test("FileStore passes the store contract", async (t) => {
  await storeContract(t, async () => {
    const root = await Deno.makeTempDir({ prefix: "file-store-" });
    await Deno.mkdir(`${root}/bucket`);
    return {
      store: new FileStore(root),
      bucket: "bucket",
      missingBucket: "no-such-bucket",
      cleanup: () => Deno.remove(root, { recursive: true }),
    };
  });
});

Deno.test("FileStore keeps keys inside the bucket folder", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "file-store-" });
  try {
    await Deno.mkdir(`${root}/bucket`);
    const store = new FileStore(root);
    await t.step("rejects keys and buckets that could escape with a RangeError", async () => {
      const keys = [
        "../x",
        "/etc/passwd",
        "a/../../b",
        "a/./b",
        "a\\..\\b",
        "a\0b",
        "a//b",
        "a/",
        "",
        ".hidden",
        "a/.b",
      ];
      for (const key of keys) {
        await assert.rejects(store.get("bucket", key), RangeError, JSON.stringify(key));
        await assert.rejects(store.head("bucket", key), RangeError, JSON.stringify(key));
        await assert.rejects(store.put("bucket", key, bytes(1, 1)), RangeError, JSON.stringify(key));
        await assert.rejects(store.delete("bucket", key), RangeError, JSON.stringify(key));
      }
      for (const bucket of ["..", ".", "", "a/b", "..\\x", ".hidden", "a\0"]) {
        await assert.rejects(store.get(bucket, "k"), RangeError, JSON.stringify(bucket));
        await assert.rejects(store.check(bucket), RangeError, JSON.stringify(bucket));
        await assert.rejects(list(store, bucket, ""), RangeError, JSON.stringify(bucket));
      }
      await assert.rejects(list(store, "bucket", "../../"), RangeError);
      await assert.rejects(list(store, "bucket", "a//b"), RangeError);
      assert.deepEqual(await Array.fromAsync(Deno.readDir(root), (e) => e.name), ["bucket"]);
    });

    await t.step("list() skips hidden and temporary files and folders", async () => {
      await store.put("bucket", "1.2/1.3/1.4.dcm", bytes(10, 1));
      await Deno.writeTextFile(`${root}/bucket/1.2/1.3/.1.5.dcm.abcd1234.tmp`, "partial");
      await Deno.mkdir(`${root}/bucket/.trash/x`, { recursive: true });
      await Deno.writeTextFile(`${root}/bucket/.trash/x/y.dcm`, "old");
      assert.deepEqual((await list(store, "bucket", "")).map((i) => i.key), ["1.2/1.3/1.4.dcm"]);
      assert.deepEqual(await store.listBuckets(), ["bucket"]);
    });

    await t.step("put() leaves no temporary file behind when it fails", async () => {
      const body = new ReadableStream({
        pull(controller) {
          controller.error(new Error("source broke"));
        },
      });
      await assert.rejects(store.put("bucket", "1.2/1.3/1.6.dcm", body), /source broke/);
      const names = await Array.fromAsync(Deno.readDir(`${root}/bucket/1.2/1.3`), (e) => e.name);
      assert.deepEqual(names.sort(), [".1.5.dcm.abcd1234.tmp", "1.4.dcm"]);
    });

    await t.step("get() streams large files in big chunks", async () => {
      const data = bytes(3 * MIB + 5, 2);
      await store.put("bucket", "big.dcm", data);
      const object = await store.get("bucket", "big.dcm", { range: { start: 5 } });
      const sizes = [];
      for await (const chunk of object!.body) sizes.push(chunk.byteLength);
      assert.deepEqual(sizes, [MIB, MIB, MIB]);
      const small = await store.get("bucket", "1.2/1.3/1.4.dcm");
      assert.deepEqual(await Array.fromAsync(small!.body, (c) => c.byteLength), [10]);
    });

    await t.step("an object and a folder of the same name fail with a StoreError", async () => {
      const sameName = (e: unknown) => e instanceof StoreError && /same name/.test(e.message);
      await assert.rejects(store.put("bucket", "1.2/1.3", bytes(1, 1)), sameName);
      await assert.rejects(
        store.put("bucket", "1.2/1.3/1.4.dcm/x", bytes(1, 1)),
        (e) => e instanceof StoreError,
      );
    });

    await t.step("follows symlinked folders once", async () => {
      await Deno.mkdir(`${root}/elsewhere/s`, { recursive: true });
      await Deno.writeTextFile(`${root}/elsewhere/s/i.dcm`, "x");
      await Deno.symlink(`${root}/elsewhere`, `${root}/bucket/linked`);
      await Deno.symlink(`${root}/bucket/linked`, `${root}/elsewhere/loop`);
      const keys = (await list(store, "bucket", "linked/")).map((i) => i.key);
      assert.ok(keys.includes("linked/s/i.dcm"), String(keys));
      assert.ok(keys.length < 5, String(keys));
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("FileStore without write permission rejects with a StoreError of kind denied", async () => {
  const root = await Deno.makeTempDir({ prefix: "file-store-" });
  try {
    await Deno.mkdir(`${root}/bucket`);
    await Deno.writeTextFile(`${root}/bucket/a.dcm`, "abc");
    const script = `${root}/denied.ts`;
    await Deno.writeTextFile(
      script,
      `import { FileStore } from ${
        JSON.stringify(new URL("../../lib/store/file_store.ts", import.meta.url).href)
      };
      const store = new FileStore(${JSON.stringify(root)});
      const out = { head: (await store.head("bucket", "a.dcm"))?.size };
      for (const [name, op] of Object.entries({
        put: () => store.put("bucket", "b.dcm", new Uint8Array(1)),
        other: () => new FileStore("/").listBuckets(),
      })) {
        try { await op(); out[name] = "ok"; } catch (e) { out[name] = [e.name, e.kind, e.message]; }
      }
      console.log(JSON.stringify(out));`,
    );
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--no-prompt", `--allow-read=${root}`, script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(output.stderr);
    assert.ok(output.success, stderr);
    const result = JSON.parse(new TextDecoder().decode(output.stdout));
    assert.equal(result.head, 3);
    for (const name of ["put", "other"]) {
      assert.equal(result[name][0], "StoreError", JSON.stringify(result[name]));
      assert.equal(result[name][1], "denied");
      assert.match(result[name][2], /permission/);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("MemoryStore hands out copies", async () => {
  const store = new MemoryStore(["b"]);
  await store.put("b", "k", bytes(4, 1));
  const first = await readAll((await store.get("b", "k"))!.body);
  first.fill(0);
  assertSameBytes(await readAll((await store.get("b", "k"))!.body), bytes(4, 1));
});

Deno.test("S3Store passes the store contract and uploads large bodies in parts", async (t) => {
  const s3 = await startS3();
  const stores: S3Store[] = [];
  const makeStore = (options: Partial<S3StoreOptions>) => {
    const store = new S3Store({ endpoint: s3.endpoint, region: s3.region, credentials: s3, ...options });
    stores.push(store);
    return store;
  };
  try {
    await storeContract(t, async ({ pageSize }) => {
      const bucket = s3.uniqueBucket("contract");
      await s3.createBucket(bucket);
      return {
        store: makeStore({ pageSize }),
        bucket,
        missingBucket: s3.uniqueBucket("missing"),
        cleanup: async () => {},
      };
    }, { listsInByteOrder: s3.kind !== "s3rver" });

    const bucket = s3.uniqueBucket("parts");
    await s3.createBucket(bucket);
    const store = makeStore({});

    await t.step("put() of a 20 MiB stream is a multipart upload, 2 parts in flight at most", async () => {
      const spy = spyOnFetch();
      try {
        const data = bytes(20 * MIB, 1);
        const info = await store.put(bucket, "multi", streamOf(data, 256 * 1024));
        assert.deepEqual(spy.counts(), { create: 1, part: 3, complete: 1, abort: 0, put: 0 });
        assert.ok(spy.maxParts() <= 2, `at most 2 parts in flight, saw ${spy.maxParts()}`);
        if (s3.kind === "external") assert.match(info.etag, /-3$/);
        assertSameBytes(await readAll((await store.get(bucket, "multi"))!.body), data);
        spy.reset();
        await store.put(bucket, "single", streamOf(data.subarray(0, 8 * MIB), 256 * 1024));
        assert.deepEqual(spy.counts(), { create: 0, part: 0, complete: 0, abort: 0, put: 1 });
      } finally {
        spy.restore();
      }
    });

    await t.step("a failed multipart upload is aborted on the server", async () => {
      const spy = spyOnFetch();
      try {
        let sent = 0;
        const body = new ReadableStream<Uint8Array>({
          pull(controller) {
            if (sent >= 17 * MIB) return controller.error(new Error("source broke"));
            controller.enqueue(bytes(MIB, sent));
            sent += MIB;
          },
        });
        await assert.rejects(store.put(bucket, "broken", body), /source broke/);
        const counts = spy.counts();
        assert.equal(counts.create, 1);
        assert.equal(counts.abort, 1);
        assert.equal(counts.complete, 0);
        assert.equal(await store.head(bucket, "broken"), null);
        const pending = await s3.pendingUploads(bucket);
        if (pending !== undefined) assert.equal(pending, 0);
      } finally {
        spy.restore();
      }
    });

    await t.step("get() streams: the first chunk comes before the whole body", async () => {
      const object = await store.get(bucket, "multi");
      const reader = object!.body.getReader();
      const first = await reader.read();
      assert.ok(first.value!.byteLength <= MIB, `first chunk ${first.value!.byteLength} bytes`);
      await reader.cancel();
    });

    await t.step("a prefix listed before is listed again in one page as large as it was", async () => {
      const listing = makeStore({ firstPageSize: 3, pageSize: 1000 });
      const keys = Array.from({ length: 20 }, (_, i) => `listed/${String(i).padStart(2, "0")}`);
      for (const key of keys) await listing.put(bucket, key, bytes(10, 1));
      const pages: string[] = [];
      const original = Http1Client.prototype.stream;
      Http1Client.prototype.stream = function (this: Http1Client, request) {
        if (request.url.searchParams.get("list-type") === "2") {
          pages.push(request.url.searchParams.get("max-keys")!);
        }
        return original.call(this, request);
      };
      try {
        assert.deepEqual((await list(listing, bucket, "listed/")).map((i) => i.key), keys);
        assert.deepEqual(pages, ["3", "1000"]);
        pages.length = 0;
        assert.deepEqual((await list(listing, bucket, "listed/")).map((i) => i.key), keys);
        assert.deepEqual(pages, ["21"]);
        // a listing that grew past the remembered size goes on with whole pages
        await listing.put(bucket, "listed/zz", bytes(10, 1));
        await listing.put(bucket, "listed/zzz", bytes(10, 1));
        pages.length = 0;
        assert.deepEqual((await list(listing, bucket, "listed/")).map((i) => i.key), [
          ...keys,
          "listed/zz",
          "listed/zzz",
        ]);
        assert.deepEqual(pages, ["21", "1000"]);
        // a caller that wants the first keys soonest says how many, whatever was remembered
        pages.length = 0;
        const hinted: ListOptions = { firstPage: 2 };
        assert.equal((await Array.fromAsync(listing.list(bucket, "listed/", hinted))).length, 22);
        assert.deepEqual(pages, ["2", "1000"]);
      } finally {
        Http1Client.prototype.stream = original;
      }
    });

    await t.step("errors name what went wrong", async () => {
      const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = probe.addr.port;
      probe.close();
      const down = makeStore({ endpoint: `http://127.0.0.1:${port}`, maxAttempts: 1 });
      await assert.rejects(down.check(bucket), (e) => {
        assert.ok(e instanceof StoreError);
        assert.equal(e.kind, "unavailable");
        assert.ok(e.message.includes(`127.0.0.1:${port}`), e.message);
        return true;
      });
      await assert.rejects(down.get(bucket, "k"), (e) => e instanceof StoreError && e.kind === "unavailable");

      // a server that accepts connections and never answers
      const silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const connections: Deno.Conn[] = [];
      const accepting = (async () => {
        for await (const connection of silent) connections.push(connection);
      })();
      try {
        const { port } = silent.addr;
        const slow = makeStore({ endpoint: `http://127.0.0.1:${port}`, maxAttempts: 1, requestTimeout: 300 });
        const started = Date.now();
        await assert.rejects(slow.head(bucket, "k"), (e) => {
          assert.ok(e instanceof StoreError && e.kind === "unavailable", String(e));
          assert.match(e.message, new RegExp(`127\\.0\\.0\\.1:${port}.*300 ms`));
          return true;
        });
        assert.ok(Date.now() - started < 5000);
      } finally {
        silent.close();
        await accepting.catch(() => {});
        for (const connection of connections) connection.close();
      }

      const wrongKey = makeStore({ credentials: { accessKeyId: "NOBODY", secretAccessKey: "x" } });
      for (
        const op of [
          () => wrongKey.check(bucket),
          () => wrongKey.get(bucket, "multi"),
          () => list(wrongKey, bucket, ""),
        ]
      ) {
        await assert.rejects(
          op(),
          (e) => e instanceof StoreError && e.kind === "denied" && /access key/.test(e.message),
        );
      }
      if (s3.kind === "external") {
        // s3rver does not check secrets
        const wrongSecret = makeStore({
          credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: "wrong" },
        });
        await assert.rejects(
          wrongSecret.get(bucket, "multi"),
          (e) => e instanceof StoreError && e.kind === "denied",
        );
      }
      await assert.rejects(store.check("no-such-bucket-" + crypto.randomUUID().slice(0, 8)), (e) => {
        assert.ok(e instanceof StoreError && e.kind === "no-bucket");
        assert.match(e.message, /no-such-bucket-/);
        return true;
      });
    });
  } finally {
    for (const store of stores) store.close();
    await s3.stop();
  }
});

function streamOf(data: Uint8Array, chunk: number): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= data.byteLength) return controller.close();
      controller.enqueue(data.slice(offset, offset + chunk));
      offset += chunk;
    },
  });
}

/** Counts the S3 requests the SDK sends through `fetch` (FetchHttpHandler looks it up per request). */
/** Counts the S3 requests of each kind, sent through `fetch` or (PUTs) through {@linkcode Http1Client}. */
function spyOnFetch() {
  const original = globalThis.fetch;
  const originalRequest = Http1Client.prototype.request;
  const counts = { create: 0, part: 0, complete: 0, abort: 0, put: 0 };
  let parts = 0;
  let maxParts = 0;
  const observe = async <T>(method: string, url: URL, send: () => Promise<T>): Promise<T> => {
    const q = url.searchParams;
    const isPart = method === "PUT" && q.has("partNumber");
    if (method === "POST" && q.has("uploads")) counts.create++;
    else if (isPart) counts.part++;
    else if (method === "POST" && q.has("uploadId")) counts.complete++;
    else if (method === "DELETE" && q.has("uploadId")) counts.abort++;
    else if (method === "PUT" && url.pathname.split("/").length > 2) counts.put++;
    if (isPart) maxParts = Math.max(maxParts, ++parts);
    try {
      return await send();
    } finally {
      if (isPart) parts--;
    }
  };
  globalThis.fetch = (input: RequestInfo | URL, init?: RequestInit) => {
    const request = new Request(input, init);
    return observe(request.method, new URL(request.url), () => original(request));
  };
  Http1Client.prototype.request = function (this: Http1Client, request) {
    return observe(request.method, request.url, () => originalRequest.call(this, request));
  };
  return {
    counts: () => ({ ...counts }),
    maxParts: () => maxParts,
    reset: () => {
      for (const k of Object.keys(counts) as (keyof typeof counts)[]) counts[k] = 0;
    },
    restore: () => {
      globalThis.fetch = original;
      Http1Client.prototype.request = originalRequest;
    },
  };
}
