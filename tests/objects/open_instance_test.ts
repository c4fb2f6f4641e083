import assert from "node:assert/strict";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { ahead, openInstance, SharedReadAhead } from "../../lib/objects/open_instance.ts";
import type { GetOptions, ObjectBody, ObjectStore } from "../../lib/store/store.ts";
import { buildPart10 } from "../_dicom_fixtures.ts";
import { concatBytes } from "../../lib/util/bytes.ts";
import { freeHandedOff } from "../../lib/util/handoff.ts";
import { byteStream, delegating } from "../_stores.ts";

const ELE = "1.2.840.10008.1.2.1";
const encoder = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- a minimal Part 10 object ----

/** A Part 10 object of `sop` with `pixels` bytes of pixel data. */
function part10(sop: string, ts = ELE, pixels = 4096): Uint8Array {
  const data = new Uint8Array(pixels);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + sop.length) & 0xff;
  return buildPart10([
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x7fe00010, vr: "OW", value: data },
  ], { transferSyntax: ts, sopInstanceUid: sop });
}

async function bytesOf(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Wraps a store so bodies arrive in `chunk`-byte pieces and cancellations are recorded. */
function chunkingStore(inner: ObjectStore, chunk: number, cancelled: string[] = []): ObjectStore {
  return delegating(inner, {
    async get(bucket: string, key: string, options?: GetOptions): Promise<ObjectBody | null> {
      const object = await inner.get(bucket, key, options);
      if (object === null) return null;
      const all = await bytesOf(object.body);
      let at = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (at >= all.length) return controller.close();
          controller.enqueue(all.slice(at, at + chunk));
          at += chunk;
        },
        cancel() {
          cancelled.push(key);
        },
      }, { highWaterMark: 0 });
      return { ...object, body };
    },
  });
}

/** `inner` whose bodies are byte streams (as `fetch` bodies are) handing out at most `piece` bytes a read. */
function byteStreamStore(inner: ObjectStore, piece: number): ObjectStore {
  return delegating(inner, {
    async get(bucket: string, key: string, options?: GetOptions): Promise<ObjectBody | null> {
      const object = await inner.get(bucket, key, options);
      if (object === null) return null;
      return { ...object, body: byteStream(await bytesOf(object.body), piece) };
    },
  });
}

// ---- ahead() ----

Deno.test("ahead()", async (t) => {
  await t.step("yields results in key order whatever order the opens finish in", async () => {
    const keys = Array.from({ length: 40 }, (_, i) => `k${i}`);
    const out: string[] = [];
    for await (
      const value of ahead(keys, async (key) => {
        await sleep(Math.random() * 8);
        return key.toUpperCase();
      }, { concurrency: 6 })
    ) out.push(value);
    assert.deepEqual(out, keys.map((k) => k.toUpperCase()));
  });

  /** Runs `keys` through `ahead` with a slow open and a slow consumer; `gauge.peak`: most opens in flight. */
  const drain = async (
    keys: string[],
    options: Parameters<typeof ahead<string, string>>[2],
    gauge: { inFlight: number; peak: number },
  ) => {
    const out: string[] = [];
    for await (
      const value of ahead(keys, async (key) => {
        gauge.inFlight++;
        gauge.peak = Math.max(gauge.peak, gauge.inFlight);
        await sleep(1 + Math.random() * 5);
        gauge.inFlight--;
        return key;
      }, options)
    ) {
      out.push(value);
      await sleep(Math.random() * 2); // a slow consumer
    }
    assert.deepEqual(out, keys);
  };

  await t.step("never has more than `concurrency` opens in flight, and uses the concurrency", async () => {
    for (const concurrency of [1, 3, 8]) {
      const gauge = { inFlight: 0, peak: 0 };
      await drain(Array.from({ length: 30 }, (_, i) => String(i)), { concurrency }, gauge);
      assert.ok(gauge.peak <= concurrency, `peak ${gauge.peak} > concurrency ${concurrency}`);
      assert.equal(gauge.peak, concurrency, `concurrency ${concurrency} is used`);
    }
  });

  await t.step("with a SharedReadAhead, requests running together split the total", async () => {
    const shared = new SharedReadAhead(8, 16);
    const gauge = { inFlight: 0, peak: 0 };
    const run = (n: number) => {
      const { concurrency, leave } = shared.join();
      return drain(
        Array.from({ length: 40 }, (_, i) => `${n}.${i}`),
        { concurrency, onFinish: leave },
        gauge,
      );
    };
    // one request alone: its whole 8
    await run(0);
    assert.equal(gauge.peak, 8);
    assert.equal(shared.active, 0, "the request left when its read-ahead ended");
    // four at once: 16 in all, 4 each
    gauge.peak = 0;
    await Promise.all([1, 2, 3, 4].map(run));
    assert.ok(gauge.peak <= 16, `peak ${gauge.peak} > 16 opens in flight over 4 requests`);
    assert.ok(gauge.peak >= 12, `peak ${gauge.peak}: the shares are used`);
    assert.equal(shared.active, 0);
    // more requests than the total: each still gets one
    const many = Array.from({ length: 20 }, () => shared.join());
    assert.equal(shared.share(), 1);
    for (const m of many) m.leave();
    many[0].leave(); // leaving twice counts once
    assert.equal(shared.active, 0);
    assert.equal(shared.share(), 8);
  });

  await t.step("onFinish runs once when the consumer stops early or the keys fail", async () => {
    let finished = 0;
    for await (
      const _ of ahead(["a", "b", "c"], (k) => Promise.resolve(k), {
        concurrency: 2,
        onFinish: () => finished++,
      })
    ) {
      break;
    }
    assert.equal(finished, 1);
    const failing = (async function* () {
      yield "a";
      throw new Error("listing failed");
    })();
    await assert.rejects(async () => {
      for await (
        const _ of ahead(failing, (k) => Promise.resolve(k), {
          concurrency: 2,
          onFinish: () => finished++,
        })
      ) {
        // consume
      }
    }, /listing failed/);
    assert.equal(finished, 2);
  });

  await t.step("accepts an async iterable of keys", async () => {
    async function* keys() {
      for (let i = 0; i < 10; i++) {
        await sleep(0);
        yield `a${i}`;
      }
    }
    const out: string[] = [];
    for await (const v of ahead(keys(), (k) => Promise.resolve(k), { concurrency: 3 })) out.push(v);
    assert.deepEqual(out, Array.from({ length: 10 }, (_, i) => `a${i}`));
  });

  await t.step("disposes every opened value the consumer did not take when it stops early", async () => {
    const opened = new Set<number>();
    const disposed = new Set<number>();
    const taken: number[] = [];
    let keySourceClosed = false;
    function* keys() {
      try {
        for (let i = 0; i < 100; i++) yield String(i);
      } finally {
        keySourceClosed = true;
      }
    }
    for await (
      const value of ahead(keys(), async (key) => {
        await sleep(Math.random() * 5);
        opened.add(Number(key));
        return Number(key);
      }, { concurrency: 5, dispose: (v) => disposed.add(v) })
    ) {
      taken.push(value);
      if (taken.length === 3) break;
    }
    await sleep(20); // opens still in flight at the break settle and get disposed
    assert.deepEqual(taken, [0, 1, 2]);
    assert.equal(keySourceClosed, true, "the key source is closed");
    for (const v of opened) assert.ok(taken.includes(v) !== disposed.has(v), `value ${v} taken xor disposed`);
    assert.ok(opened.size <= 3 + 5, `opened ${opened.size}`);
    assert.ok(disposed.size >= 1);
  });

  await t.step(
    "an early rejection is not an unhandled rejection and reaches the consumer in order",
    async () => {
      const out: string[] = [];
      const iterator = ahead(["0", "1", "2", "3"], async (key) => {
        if (key === "2") throw new Error("open 2 failed"); // rejects at once, long before it is awaited
        await sleep(15);
        return key;
      }, { concurrency: 4 });
      await assert.rejects(async () => {
        for await (const v of iterator) out.push(v);
      }, /open 2 failed/);
      assert.deepEqual(out, ["0", "1"]);
      await sleep(20);
    },
  );

  await t.step("a rejection the consumer never reaches is not unhandled either", async () => {
    const disposed: string[] = [];
    for await (
      const v of ahead(["0", "1", "2"], async (key) => {
        if (key !== "0") throw new Error(`open ${key} failed`);
        await sleep(10);
        return key;
      }, { concurrency: 3, dispose: (v) => disposed.push(v) })
    ) {
      assert.equal(v, "0");
      break;
    }
    await sleep(20);
    assert.deepEqual(disposed, [], "rejected opens have nothing to dispose");
  });

  await t.step("on a failed open, disposes the values opened after it", async () => {
    const disposed: string[] = [];
    await assert.rejects(async () => {
      for await (
        const _ of ahead(["0", "1", "2"], async (key) => {
          if (key === "0") {
            await sleep(5);
            throw new Error("open 0 failed");
          }
          return key;
        }, { concurrency: 3, dispose: (v) => disposed.push(v) })
      ) { /* never reached */ }
    }, /open 0 failed/);
    await sleep(5);
    assert.deepEqual(disposed.sort(), ["1", "2"]);
  });
});

// ---- openInstance() ----

Deno.test("openInstance()", async (t) => {
  const store = new MemoryStore(["B"]);
  const sops = ["1.2.3.1", "1.2.3.2"];
  const objects = new Map<string, Uint8Array>();
  for (const sop of sops) {
    const bytes = part10(sop, ELE, 20_000);
    objects.set(`1.2/3.4/${sop}.dcm`, bytes);
    await store.put("B", `1.2/3.4/${sop}.dcm`, bytes);
  }

  await t.step("reads the File Meta and replays the head so the body is byte-exact", async () => {
    for (const chunk of [1, 7, 100, 300, 65536]) {
      const key = `1.2/3.4/${sops[0]}.dcm`;
      const opened = await openInstance(chunkingStore(store, chunk), "B", key);
      assert.ok(opened);
      assert.equal(opened.key, key);
      assert.equal(opened.meta.transferSyntaxUid, ELE);
      assert.equal(opened.meta.sopInstanceUid, sops[0]);
      assert.equal(opened.info.size, objects.get(key)!.length);
      assert.deepEqual(await bytesOf(opened.body), objects.get(key), `chunk size ${chunk}`);
    }
  });

  await t.step("reads a byte-stream body in place into full chunks of chunkSize, byte-exact", async () => {
    const key = `1.2/3.4/${sops[0]}.dcm`;
    const opened = await openInstance(byteStreamStore(store, 1000), "B", key, { chunkSize: 4096 });
    const sizes: number[] = [];
    const parts: Uint8Array[] = [];
    for await (const chunk of opened!.body) {
      sizes.push(chunk.byteLength);
      parts.push(chunk);
    }
    assert.deepEqual(concatBytes(parts), objects.get(key));
    // the 1000-byte network reads are gathered: every chunk but the last is a whole 4096-byte buffer
    assert.ok(sizes.length > 3, `${sizes}`);
    assert.deepEqual(sizes.slice(0, -1).filter((n) => n !== 4096), [], `chunk sizes ${sizes}`);
  });

  await t.step(
    "handOffBody() marks every chunk, those read ahead before it too, so each can be freed",
    async () => {
      const key = `1.2/3.4/${sops[0]}.dcm`;
      const opened = await openInstance(byteStreamStore(store, 1000), "B", key, {
        chunkSize: 4096,
        readAhead: 16384,
      });
      await sleep(20); // the read-ahead fills before the consumer decides
      const copies: Uint8Array[] = [];
      let freed = 0;
      for await (const chunk of opened!.handOffBody()) {
        copies.push(chunk.slice());
        if (freeHandedOff(chunk)) freed++;
        assert.equal(chunk.byteLength, 0, "a freed chunk reads as empty");
      }
      assert.deepEqual(concatBytes(copies), objects.get(key));
      assert.equal(freed, copies.length);
      // a body that is not read in place is passed as it is, nothing marked
      const plain = await openInstance(chunkingStore(store, 300), "B", key);
      for await (const chunk of plain!.handOffBody()) assert.equal(freeHandedOff(chunk), false);
    },
  );

  await t.step("works with small read-ahead buffers", async () => {
    const key = `1.2/3.4/${sops[1]}.dcm`;
    const opened = await openInstance(chunkingStore(store, 50), "B", key, { readAhead: 1 });
    assert.deepEqual(await bytesOf(opened!.body), objects.get(key));
  });

  await t.step("returns null for a missing key", async () => {
    assert.equal(await openInstance(store, "B", "1.2/3.4/9.9.dcm"), null);
  });

  await t.step("cancelling the body cancels the store's body", async () => {
    const cancelled: string[] = [];
    const key = `1.2/3.4/${sops[0]}.dcm`;
    const opened = await openInstance(chunkingStore(store, 100, cancelled), "B", key, { readAhead: 100 });
    const reader = opened!.body.getReader();
    await reader.read();
    await reader.cancel("stop");
    await sleep(10);
    assert.deepEqual(cancelled, [key]);
  });

  await t.step(
    "rejects with a SyntaxError naming the key for a non-DICOM object, and cancels its body",
    async () => {
      const cancelled: string[] = [];
      await store.put("B", "x/y/not.dcm", encoder.encode("<html>" + "x".repeat(1000) + "</html>"));
      await assert.rejects(
        openInstance(chunkingStore(store, 64, cancelled), "B", "x/y/not.dcm"),
        (error: unknown) => {
          assert.ok(error instanceof SyntaxError);
          assert.match(error.message, /x\/y\/not\.dcm/);
          return true;
        },
      );
      await sleep(10);
      assert.deepEqual(cancelled, ["x/y/not.dcm"]);
    },
  );

  await t.step("rejects with a SyntaxError for an empty or truncated object", async () => {
    await store.put("B", "x/y/empty.dcm", new Uint8Array(0));
    await assert.rejects(openInstance(store, "B", "x/y/empty.dcm"), SyntaxError);
    await store.put("B", "x/y/short.dcm", part10("1.5").subarray(0, 150));
    await assert.rejects(openInstance(chunkingStore(store, 16), "B", "x/y/short.dcm"), /short\.dcm/);
  });

  await t.step("opens an object whose whole content is shorter than the File Meta read", async () => {
    const tiny = part10("1.6", ELE, 0);
    await store.put("B", "x/y/tiny.dcm", tiny);
    const opened = await openInstance(store, "B", "x/y/tiny.dcm");
    assert.deepEqual(await bytesOf(opened!.body), tiny);
  });

  await t.step("passes the store's rejection through", async () => {
    await assert.rejects(openInstance(store, "NO-SUCH-BUCKET", "a/b/c.dcm"), /NO-SUCH-BUCKET/);
  });
});
