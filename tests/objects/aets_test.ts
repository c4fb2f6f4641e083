import assert from "node:assert/strict";
import { AetRegistry } from "../../lib/objects/aets.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import type { ObjectStore } from "../../lib/store/store.ts";

Deno.test("AetRegistry.create()", async (t) => {
  await t.step("makes a discovered local AET's folder, which the next listing finds", async () => {
    const root = await Deno.makeTempDir({ prefix: "aets-test-" });
    try {
      const store = new FileStore(root);
      const aets = new AetRegistry(store);
      assert.equal(await aets.bucket("NEWPACS"), undefined);
      assert.equal(await aets.create("NEWPACS"), "NEWPACS");
      assert.ok((await Deno.stat(`${root}/NEWPACS`)).isDirectory);
      assert.equal(await aets.bucket("NEWPACS"), "NEWPACS");
      assert.deepEqual(await store.listBuckets(), ["NEWPACS"]);
      assert.equal(await aets.create("NEWPACS"), "NEWPACS", "creating it again is a no-op");
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });

  await t.step(
    "creates nothing when AETS fixes the AETs, or the store cannot create buckets (S3)",
    async () => {
      const memory = new MemoryStore(["pacs"]);
      const fixed = new AetRegistry(memory, { configured: new Map([["PACS", "pacs"]]) });
      assert.equal(await fixed.create("OTHER"), undefined);
      assert.deepEqual(await memory.listBuckets(), ["pacs"]);
      const s3Like: ObjectStore = {
        kind: "s3",
        location: "http://s3",
        listBuckets: () => Promise.resolve([]),
        list: () => ({
          [Symbol.asyncIterator]: () => ({ next: () => Promise.resolve({ done: true, value: undefined }) }),
        }),
        head: () => Promise.resolve(null),
        get: () => Promise.resolve(null),
        put: () => Promise.reject(new Error("not here")),
        delete: () => Promise.resolve(),
        check: () => Promise.resolve(),
      };
      assert.equal(await new AetRegistry(s3Like).create("NEWPACS"), undefined);
    },
  );
});
