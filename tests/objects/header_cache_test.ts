import assert from "node:assert/strict";
import { HeaderCache, loadHeader } from "../../lib/objects/header_cache.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { buildPart10 } from "../_dicom_fixtures.ts";
import { observe } from "../_stores.ts";

/** An instance whose header is about 12 KiB (a long Image Comments), then 64 KiB of pixel data. */
function instance(sop: string): Uint8Array {
  return buildPart10([
    { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.2" },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x0020000d, vr: "UI", value: "2.25.90" },
    { tag: 0x0020000e, vr: "UI", value: "2.25.90.1" },
    { tag: 0x00204000, vr: "LT", value: `${sop} `.padEnd(12_000, "x") },
    { tag: 0x7fe00010, vr: "OW", value: new Uint8Array(65_536) },
  ], { sopInstanceUid: sop });
}

Deno.test("loadHeader: after one header of a series, the next ones are read in one GET each", async () => {
  const store = observe(new MemoryStore(["pacs"]));
  const sops = ["2.25.90.1.1", "2.25.90.1.2", "2.25.90.1.3"];
  for (const sop of sops) await store.put("pacs", `2.25.90/2.25.90.1/${sop}.dcm`, instance(sop));
  const cache = new HeaderCache();
  const getsPer: number[] = [];
  for (const sop of sops) {
    const key = `2.25.90/2.25.90.1/${sop}.dcm`;
    const info = (await store.head("pacs", key))!;
    store.calls.length = 0;
    const header = await loadHeader(store, cache, "pacs", info);
    assert.ok(header.pixelData!.offset > 12_000);
    getsPer.push(store.calls.filter((c) => c.startsWith("get ")).length);
  }
  assert.deepEqual(
    getsPer,
    [2, 1, 1],
    "the first header takes two reads (8 KiB, then the rest); the others one",
  );
  // another series starts from 8 KiB again
  assert.equal(cache.headerHint("pacs", "2.25.90/2.25.90.2/x.dcm"), undefined);
});
