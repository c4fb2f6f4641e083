/**
 * negotiateFrames() with `transfer-syntax=*`, the server's choice (issue #16.5): native frames always go out
 * little endian (Explicit VR Little Endian), compressed frames as stored unless web viewers cannot decode
 * them (VIEWER_DECODABLE) and this server can.
 */

import assert from "node:assert/strict";
import { negotiateFrames } from "../../lib/dicomweb/frames_bulkdata.ts";
import { frameMediaType } from "../../lib/dicom/frames.ts";
import { OHIF_FRAME_ACCEPTS } from "../_ohif_requests.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { buildInstance } from "../_corpus.ts";
import { testHandler } from "../_server.ts";

const ELE = "1.2.840.10008.1.2.1";
const EBE = "1.2.840.10008.1.2.2";
const J2K = "1.2.840.10008.1.2.4.90";
const J2K_PART2 = "1.2.840.10008.1.2.4.92";

const frames = (ts: string, accept: string, decodable: boolean, single = false) =>
  negotiateFrames(accept, { transferSyntax: ts, mediaType: frameMediaType(ts) }, single, { decodable });

Deno.test("negotiateFrames(): transfer-syntax=* leaves the syntax to the server", async (t) => {
  await t.step("big endian frames: Explicit VR Little Endian (the words are swapped)", () => {
    for (const accept of OHIF_FRAME_ACCEPTS) {
      assert.deepEqual(frames(EBE, accept, false), {
        multipart: true,
        contentType: `application/octet-stream; transfer-syntax=${ELE}`,
      });
    }
  });
  await t.step("a syntax viewers decode: as stored", () => {
    for (const accept of OHIF_FRAME_ACCEPTS) {
      assert.deepEqual(frames(J2K, accept, true), {
        multipart: true,
        contentType: `image/jp2; transfer-syntax=${J2K}`,
      });
    }
  });
  await t.step("one they cannot: decoded when we can, else as stored", () => {
    const decoded = {
      multipart: true,
      contentType: `application/octet-stream; transfer-syntax=${ELE}`,
      decode: true,
    };
    for (const accept of [...OHIF_FRAME_ACCEPTS, 'multipart/related; type="*/*"; transfer-syntax=*']) {
      assert.deepEqual(frames(J2K_PART2, accept, true), decoded, accept);
      assert.deepEqual(frames(J2K_PART2, accept, false), {
        multipart: true,
        contentType: `image/jpx; transfer-syntax=${J2K_PART2}`,
      });
    }
    assert.deepEqual(frames(J2K_PART2, "application/octet-stream; transfer-syntax=*", true, true), {
      ...decoded,
      multipart: false,
    });
  });
  await t.step("a client naming the compressed type gets it as stored", () => {
    assert.deepEqual(frames(J2K_PART2, 'multipart/related; type="image/jpx"; transfer-syntax=*', true), {
      multipart: true,
      contentType: `image/jpx; transfer-syntax=${J2K_PART2}`,
    });
  });
});

Deno.test("a single stored frame streams through: its first bytes go out before the store has sent them all", async () => {
  const uids = { study: "2.25.61", series: "2.25.61.1", sop: "2.25.61.1.1" };
  const side = 256;
  const bytes = buildInstance({ ...uids, pixelBytes: side * side * 2, frames: 4 });
  // Frame reads hand over their first 4 KiB, then hold the rest until released.
  let release!: () => void;
  let held!: Promise<void>;
  let cancelled = 0;
  const gate = () => held = new Promise<void>((resolve) => release = resolve);
  class GatedStore extends MemoryStore {
    override async get(...args: Parameters<MemoryStore["get"]>) {
      const object = await super.get(...args);
      // (the header is read from offset 0; frame 2 starts past frame 1)
      if (object === null || (args[2]?.range?.start ?? 0) < 8192 || object.length < 8192) return object;
      const all = new Uint8Array(await new Response(object.body).arrayBuffer());
      let sent = false;
      return {
        ...object,
        body: new ReadableStream<Uint8Array>({
          async pull(controller) {
            if (!sent) {
              sent = true;
              controller.enqueue(all.subarray(0, 4096));
              return;
            }
            await held;
            controller.enqueue(all.subarray(4096));
            controller.close();
          },
          cancel() {
            cancelled++;
          },
        }),
      };
    }
  }
  const gated = new GatedStore(["pacs"]);
  await gated.put("pacs", `${uids.study}/${uids.series}/${uids.sop}.dcm`, bytes);
  const app = testHandler({ store: gated, config: { AETS: "PACS=pacs" } });
  const url = `/aets/PACS/studies/${uids.study}/series/${uids.series}/instances/${uids.sop}/frames/2`;
  for (
    const accept of [
      'multipart/related; type="application/octet-stream"; transfer-syntax=*',
      "application/octet-stream; transfer-syntax=*",
    ]
  ) {
    gate();
    const responded = app.fetch(url, { headers: { accept } });
    const early = await Promise.race([
      responded,
      new Promise<"held">((resolve) => setTimeout(() => resolve("held"), 2000)),
    ]);
    assert.notEqual(early, "held", `${accept}: the response waited for the whole frame`);
    const response = early as Response;
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    const first = await reader.read();
    assert.ok(first.value!.byteLength > 0);
    release();
    let total = first.value!.byteLength;
    for (let r = await reader.read(); !r.done; r = await reader.read()) total += r.value.byteLength;
    assert.ok(total >= side * side * 2, `${accept}: the whole frame (${total} bytes)`);
    if (!accept.startsWith("multipart")) assert.equal(total, side * side * 2);
    // its length is said up front, multipart too: a body that ends short is seen as cut by the client
    assert.equal(response.headers.get("content-length"), String(total), `${accept}: Content-Length`);
  }

  // a client gone before the first byte: the store's body is cancelled (its connection released)
  gate();
  const dropped = await app.fetch(url, {
    headers: { accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=*' },
  });
  await dropped.body!.cancel();
  release();
  assert.equal(cancelled, 1, "the opened span was cancelled");
});
