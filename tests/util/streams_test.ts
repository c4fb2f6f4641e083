import assert from "node:assert/strict";
import { AsyncLocalStorage } from "node:async_hooks";
import { readInContext, watchStream } from "../../lib/util/streams.ts";

function source(chunks: number[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(new Uint8Array(chunks[i++]));
      else controller.close();
    },
  });
}

function recorder() {
  const seen = { chunks: 0, reads: 0, done: [] as [number, string | undefined][] };
  return {
    seen,
    watch: {
      beforeRead: () => void seen.reads++,
      onChunk: () => void seen.chunks++,
      done: (bytes: number, outcome?: string) => void seen.done.push([bytes, outcome]),
    },
  };
}

Deno.test("watchStream(): watches of an unread watched stream share its one layer", async (t) => {
  await t.step("two watches, one stream layer, each told every chunk and the end once", async () => {
    const [a, b] = [recorder(), recorder()];
    const inner = watchStream(source([3, 4, 5]), a.watch);
    const outer = watchStream(inner, b.watch);
    assert.equal(outer, inner, "no second layer");
    assert.equal((await new Response(outer).arrayBuffer()).byteLength, 12);
    for (const r of [a, b]) {
      assert.equal(r.seen.chunks, 3);
      assert.deepEqual(r.seen.done, [[12, undefined]]);
    }
  });
  await t.step(
    "once reading has begun, a new watch wraps the stream (it sees only what follows)",
    async () => {
      const [a, b] = [recorder(), recorder()];
      const inner = watchStream(source([3, 4, 5]), a.watch);
      const reader = inner.getReader();
      await reader.read();
      reader.releaseLock();
      const outer = watchStream(inner, b.watch);
      assert.notEqual(outer, inner);
      await new Response(outer).arrayBuffer();
      assert.deepEqual(a.seen.done, [[12, undefined]]);
      assert.deepEqual(b.seen.done, [[9, undefined]]);
    },
  );
  await t.step("a cancel tells every watch once", async () => {
    const [a, b] = [recorder(), recorder()];
    const outer = watchStream(watchStream(source([3, 4, 5]), a.watch), b.watch);
    const reader = outer.getReader();
    await reader.read();
    await reader.cancel("gone");
    for (const r of [a, b]) assert.deepEqual(r.seen.done, [[3, "client disconnected"]]);
  });
});

Deno.test("readInContext(): reads in the caller's async context; a watch joins its loop", async (t) => {
  const als = new AsyncLocalStorage<string>();
  /** A source that records the context each pull runs in. */
  const contexts: (string | undefined)[] = [];
  const tracked = (chunks: number[]) => {
    let i = 0;
    return new ReadableStream<Uint8Array>({
      pull(controller) {
        contexts.push(als.getStore());
        if (i < chunks.length) controller.enqueue(new Uint8Array(chunks[i++]));
        else controller.close();
      },
    }, { highWaterMark: 0 });
  };
  await t.step("every read in the caller's context, however the consumer pulls", async () => {
    contexts.length = 0;
    const body = als.run("request", () => readInContext(tracked([3, 4])));
    assert.equal((await new Response(body).arrayBuffer()).byteLength, 7);
    assert.ok(contexts.length >= 2 && contexts.every((c) => c === "request"), `contexts ${contexts}`);
  });
  await t.step(
    "a watch of the unread stream adds no layer (the log and slot cost no extra hop)",
    async () => {
      const a = recorder();
      const body = readInContext(source([3, 4, 5]));
      const watched = watchStream(body, a.watch);
      assert.equal(watched, body, "no second layer");
      assert.equal((await new Response(watched).arrayBuffer()).byteLength, 12);
      assert.equal(a.seen.chunks, 3);
      assert.equal(a.seen.reads, 4, "before each read, the last finding the end");
      assert.deepEqual(a.seen.done, [[12, undefined]]);
    },
  );
  await t.step("a cancel and a failure reach the watch once", async () => {
    const a = recorder();
    const reader = watchStream(readInContext(source([3, 4, 5])), a.watch).getReader();
    await reader.read();
    await reader.cancel("gone");
    assert.deepEqual(a.seen.done, [[3, "client disconnected"]]);
    const b = recorder();
    const failing = new ReadableStream<Uint8Array>({
      pull() {
        throw new Error("connection reset");
      },
    });
    const body = watchStream(readInContext(failing), b.watch);
    await assert.rejects(new Response(body).arrayBuffer(), /connection reset/);
    assert.deepEqual(b.seen.done, [[0, "aborted: connection reset"]]);
  });
});
