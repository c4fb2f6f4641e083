/**
 * Handed-off chunks: freed only when marked and only as the very view marked, and, through `Deno.serve`
 * from a real S3 server, freed as they are sent without a byte of any response lost, fast reader or slow.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../../lib/config/config.ts";
import {
  ChunkLedger,
  freedByLedgers,
  freedChunks,
  freeHandedOff,
  handOff,
  handOffChunks,
  markOwned,
} from "../../lib/util/handoff.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { buildInstance, md5 } from "../_corpus.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { startS3 } from "../_s3server.ts";
import { testServer } from "../_server.ts";

Deno.test("handOff / freeHandedOff", async (t) => {
  await t.step("a marked chunk is freed: its buffer is detached", () => {
    const chunk = handOff(new Uint8Array(1024).fill(7));
    const before = freedChunks();
    assert.equal(freeHandedOff(chunk), true);
    assert.equal(chunk.byteLength, 0);
    assert.equal(chunk.buffer.byteLength, 0);
    assert.equal(freedChunks(), before + 1);
    assert.equal(freeHandedOff(chunk), false, "freed once only");
  });

  await t.step("an unmarked chunk, a slice and a copy are left alone", () => {
    const plain = new Uint8Array(16).fill(1);
    assert.equal(freeHandedOff(plain), false);
    assert.equal(plain.byteLength, 16);
    const marked = handOff(new Uint8Array(64).fill(2));
    const slice = marked.subarray(8, 16);
    assert.equal(freeHandedOff(slice), false);
    assert.equal(freeHandedOff(new Uint8Array(marked)), false);
    assert.deepEqual([...slice], new Array(8).fill(2));
    assert.equal(marked.byteLength, 64);
  });

  await t.step("handOffChunks marks each chunk it passes on", async () => {
    const source = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new Uint8Array([1, 2, 3]));
        controller.enqueue(new Uint8Array([4, 5]));
        controller.close();
      },
    });
    const reader = handOffChunks(source).getReader();
    const first = (await reader.read()).value!;
    const second = (await reader.read()).value!;
    assert.deepEqual([...first, ...second], [1, 2, 3, 4, 5]);
    assert.equal(freeHandedOff(first), true);
    assert.equal(freeHandedOff(second), true);
    assert.equal((await reader.read()).done, true);
  });
});

Deno.test("ChunkLedger frees a reader's buffers once left and not held", async (t) => {
  const owned = (n: number) => markOwned(new Uint8Array(n).fill(7));

  await t.step("a buffer goes when the parser has left it and its last hold is given back", () => {
    const ledger = new ChunkLedger();
    const before = freedByLedgers();
    const a = owned(100);
    const [a1, a2] = [a.subarray(0, 40), a.subarray(40)];
    const b1 = owned(50);
    ledger.see(a1);
    ledger.hold(a1);
    ledger.see(a2);
    ledger.hold(a2);
    ledger.release(a1);
    assert.equal(a.byteLength, 100, "the parser is still in the buffer");
    ledger.see(b1);
    assert.equal(a.byteLength, 100, "a view is still held");
    ledger.release(a2);
    assert.equal(a.byteLength, 0, "left and released: freed");
    assert.equal(b1.byteLength, 50, "the buffer being read stays");
    assert.equal(freedByLedgers(), before + 1);
  });

  await t.step("a buffer without holds goes as soon as the parser leaves it", () => {
    const ledger = new ChunkLedger();
    const [a, b] = [owned(10), owned(10)];
    ledger.see(a);
    ledger.see(b);
    assert.equal(a.byteLength, 0);
    assert.equal(b.byteLength, 10);
  });

  await t.step("buffers not marked as owned and pinned ones are never freed", () => {
    const ledger = new ChunkLedger();
    const foreign = new Uint8Array(10);
    const pinned = owned(10);
    const last = owned(10);
    ledger.see(foreign);
    ledger.see(pinned);
    ledger.pin(pinned);
    ledger.hold(pinned);
    ledger.release(pinned);
    ledger.see(last);
    assert.equal(foreign.byteLength, 10);
    assert.equal(pinned.byteLength, 10);
  });
});

Deno.test("retrieve through Deno.serve frees the S3 chunks it has sent, and sends every byte", async (t) => {
  const s3 = await startS3();
  const bucket = s3.uniqueBucket("handoff");
  const study = "1.2.826.0.1.3680043.10.77";
  const series = `${study}.1`;
  const files = Array.from({ length: 6 }, (_, i) => {
    const sop = `${series}.${i + 1}`;
    // 1.5 MB each: several chunks per instance
    const bytes = buildInstance({ study, series, sop, pixelBytes: 1_500_000 + i * 1001 });
    return { key: `${study}/${series}/${sop}.dcm`, bytes };
  });
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  const config = parseConfig({ PORT: "0", AETS: `HANDOFF=${bucket}`, S3_CONCURRENCY: "4" });
  const server = testServer({
    store,
    config,
    capabilities: { reEncode: false },
    handler: { log: () => {}, freeSentChunks: true },
  });
  const url = `${server.url}/aets/HANDOFF/studies/${study}/series/${series}`;
  const expected = await Promise.all(files.map((f) => md5(f.bytes)));
  const accept = 'multipart/related; type="application/dicom"; transfer-syntax=*';

  /** Reads the whole response, pausing `pauseMs` after every chunk, and checks every part's bytes. */
  const retrieveAndCheck = async (pauseMs: number) => {
    const response = await fetch(url, { headers: { accept } });
    assert.equal(response.status, 200);
    const chunks: Uint8Array[] = [];
    for await (const chunk of response.body!) {
      chunks.push(chunk);
      if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
    const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
    let at = 0;
    for (const c of chunks) {
      bytes.set(c, at);
      at += c.byteLength;
    }
    const { parts } = parseMultipart(bytes, boundaryOf(response.headers.get("content-type")!));
    assert.deepEqual(await Promise.all(parts.map((p) => md5(p.body))), expected);
  };

  try {
    await s3.createBucket(bucket);
    for (const f of files) await store.put(bucket, f.key, f.bytes, { size: f.bytes.length });

    await t.step("a fast reader gets every byte, and the chunks read from S3 are freed", async () => {
      const before = freedChunks();
      await retrieveAndCheck(0);
      // each instance is at least 3 chunks of ≤ 512 KiB read in place from the S3 response
      assert.ok(freedChunks() - before >= files.length * 3, `freed ${freedChunks() - before} chunks`);
    });

    await t.step("a slow reader (the server's send buffer full) gets every byte too", async () => {
      await retrieveAndCheck(15);
    });

    await t.step("a reader that goes away mid-response leaves the next ones whole", async () => {
      const abort = new AbortController();
      const response = await fetch(url, { headers: { accept }, signal: abort.signal });
      const reader = response.body!.getReader();
      let got = 0;
      while (got < 2_000_000) got += (await reader.read()).value!.byteLength;
      abort.abort();
      await reader.cancel().catch(() => {});
      await retrieveAndCheck(0);
    });

    await t.step("four readers at once", async () => {
      await Promise.all([0, 2, 5, 0].map((pause) => retrieveAndCheck(pause)));
    });
  } finally {
    await server.close();
    store.close?.();
    await s3.stop();
  }
});
