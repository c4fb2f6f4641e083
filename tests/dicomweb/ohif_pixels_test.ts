/**
 * Every transfer syntax of the corpus, asked for the way OHIF asks (tests/_ohif_requests.ts): frames and
 * Pixel Data bulk data with `transfer-syntax=*` come back in a syntax the viewer's loader decodes, the server
 * choosing (issue #16.5). Each part's Content-Type names the syntax of its bytes, and the bytes are what that
 * syntax says: native frames are little endian samples equal to dcmtk's (`dcmconv +te`) and to the little
 * endian twin's (MR_small.dcm against its big endian, implicit and deflated relatives), compressed frames are
 * the stored fragments, and frames in a syntax viewers cannot decode (JPEG 2000 Part 2 here) are decoded. The
 * metadata names no syntax the frames contradict.
 */

import assert from "node:assert/strict";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { parseObject } from "../../lib/dicom/part10.ts";
import { frameCount, frameMediaType, planFrame } from "../../lib/dicom/frames.ts";
import type { Part10Header } from "../../lib/dicom/dataset.ts";
import type { DicomJson } from "../../lib/dicom/dicom_json.ts";
import { testHandler } from "../_server.ts";
import { builtCorpus, type CorpusFile, pydicomCorpus } from "../_corpus.ts";
import { buildPart10, EBE, ELE, type Fx, hasCommand, ILE } from "../_dicom_fixtures.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import {
  CORNERSTONE_DECODES,
  loaderTransferSyntax,
  NATIVE_LITTLE_ENDIAN,
  OHIF_BULKDATA_ACCEPTS,
  OHIF_FRAME_ACCEPTS,
} from "../_ohif_requests.ts";
import { skipFor } from "../_skip.ts";

const J2K_LOSSLESS = "1.2.840.10008.1.2.4.90";
const J2K_PART2_LOSSLESS = "1.2.840.10008.1.2.4.92";

/** Replaces every occurrence of `from` by `to` (same length) in a copy of `bytes`. */
function patch(bytes: Uint8Array, from: string, to: string): Uint8Array {
  assert.equal(from.length, to.length);
  const out = bytes.slice();
  const text = new TextDecoder("latin1").decode(bytes);
  let count = 0;
  for (let at = text.indexOf(from); at >= 0; at = text.indexOf(from, at + 1)) {
    out.set(new TextEncoder().encode(to), at);
    count++;
  }
  assert.ok(count > 0, `${from} found`);
  return out;
}

/** A 3-frame 16-bit signed image of 5×3 pixels (frames start mid-word-run), in `ts`. */
function builtMultiframe(ts: string, sop: string): CorpusFile {
  const words = Array.from({ length: 45 }, (_, i) => (i * 2731 - 30000) & 0xffff);
  const elements: Fx[] = [
    { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.7" },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x00080060, vr: "CS", value: "OT" },
    { tag: 0x0020000d, vr: "UI", value: "2.25.5160" },
    { tag: 0x0020000e, vr: "UI", value: "2.25.5160.1" },
    { tag: 0x00280002, vr: "US", value: [1] },
    { tag: 0x00280004, vr: "CS", value: "MONOCHROME2" },
    { tag: 0x00280008, vr: "IS", value: "3" },
    { tag: 0x00280010, vr: "US", value: [3] },
    { tag: 0x00280011, vr: "US", value: [5] },
    { tag: 0x00280100, vr: "US", value: [16] },
    { tag: 0x00280101, vr: "US", value: [16] },
    { tag: 0x00280102, vr: "US", value: [15] },
    { tag: 0x00280103, vr: "US", value: [1] },
    { tag: 0x7fe00010, vr: "OW", value: words },
  ];
  return {
    key: `2.25.5160/2.25.5160.1/${sop}.dcm`,
    name: `built 3-frame ${ts}`,
    transferSyntax: ts,
    bytes: buildPart10(elements, { transferSyntax: ts, sopInstanceUid: sop }),
  };
}

async function corpus(): Promise<CorpusFile[]> {
  const files = await pydicomCorpus();
  const j2k = files.find((f) => f.name === "MR_small_jp2klossless.dcm")!;
  const sop = j2k.key.split("/")[2].slice(0, -4);
  const part2Sop = sop.slice(0, -1) + "9";
  return [
    ...files,
    ...builtCorpus().slice(0, 1),
    builtMultiframe(ELE, "2.25.5160.1.1"),
    builtMultiframe(ILE, "2.25.5160.1.2"),
    builtMultiframe(EBE, "2.25.5160.1.3"),
    {
      // The same JPEG 2000 code stream labelled JPEG 2000 Part 2 (a superset): a syntax OHIF cannot decode.
      key: j2k.key.replace(sop, part2Sop),
      name: "MR_small as JPEG 2000 Part 2",
      transferSyntax: J2K_PART2_LOSSLESS,
      bytes: patch(patch(j2k.bytes, J2K_LOSSLESS, J2K_PART2_LOSSLESS), sop, part2Sop),
    },
  ];
}

/** The frames of an object as dcmtk writes it in Explicit VR Little Endian (`dcmconv +te`). */
async function dcmtkFrames(bytes: Uint8Array, tmp: string, name: string): Promise<Uint8Array[] | undefined> {
  const input = `${tmp}/in.dcm`;
  const output = `${tmp}/out.dcm`;
  await Deno.writeFile(input, bytes);
  const run = await new Deno.Command("dcmconv", { args: ["+te", input, output], stderr: "null" }).output();
  if (!run.success) return undefined;
  const written = await Deno.readFile(output);
  const header = await parseObject(written, `${name} (dcmconv +te)`, { bulkThreshold: Infinity });
  return Array.from({ length: frameCount(header) }, (_, i) => frameBytes(header, written, i + 1));
}

function frameBytes(header: Part10Header, bytes: Uint8Array, n: number): Uint8Array {
  const plan = planFrame(header, n);
  const source = header.inflated ?? bytes;
  const raw = new Uint8Array(plan.ranges.reduce((sum, r) => sum + r.length, 0));
  let at = 0;
  for (const r of plan.ranges) {
    raw.set(source.subarray(r.offset, r.offset + r.length), at);
    at += r.length;
  }
  return plan.extract ? plan.extract(raw) : raw;
}

async function partsOf(response: Response, what: string) {
  const body = new Uint8Array(await response.arrayBuffer());
  assert.equal(response.status, 200, `${what}: ${new TextDecoder().decode(body.subarray(0, 300))}`);
  assert.match(response.headers.get("content-type") ?? "", /^multipart\/related;/, what);
  return parseMultipart(body, boundaryOf(response.headers.get("content-type"))).parts;
}

/** The syntax the metadata names for the instance ((0002,0010), else (0008,3002)), if any. */
function metadataSyntax(json: DicomJson): string | undefined {
  const value = json["00020010"]?.Value ?? json["00083002"]?.Value;
  return value?.[0] as string | undefined;
}

Deno.test("OHIF's pixel requests over every transfer syntax of the corpus", async (t) => {
  const files = await corpus();
  const store = new MemoryStore(["px"]);
  const headers = new Map<string, Part10Header>();
  for (const f of files) {
    try {
      headers.set(f.key, await parseObject(f.bytes, f.name, { bulkThreshold: 1024 }));
    } catch {
      continue; // malformed files: frames_bulkdata_s3_test.ts checks how they fail
    }
    await store.put("px", f.key, f.bytes);
  }
  const app = testHandler({ store, config: { AETS: "PX=px" } });
  const dcmtk = hasCommand("dcmconv");
  if (!dcmtk) skipFor(`${t.name}: the comparison with dcmtk`, "dcmtk (dcmconv)", "apt-get install dcmtk");
  const tmp = await Deno.makeTempDir();
  /** Frame 1 as OHIF received it, by file name, for the twins. */
  const firstFrames = new Map<string, Uint8Array>();
  const syntaxes = new Map<string, string[]>();
  try {
    for (const f of files) {
      const header = headers.get(f.key);
      if (!header?.pixelData) continue;
      const stored = header.transferSyntaxUid;
      const pixelPlanned = (() => {
        try {
          planFrame(header, 1);
          return (header.inflated ?? f.bytes).length >=
            header.pixelData.offset + Math.max(0, header.pixelData.length);
        } catch {
          return false; // frames_test.ts covers pixel data that cannot be split into frames
        }
      })();
      if (!pixelPlanned) continue;
      const [study, series, sop] = f.key.slice(0, -4).split("/");
      const base = `/aets/PX/studies/${study}/series/${series}/instances/${sop}`;
      await t.step(`${f.name} (${stored})`, async () => {
        const metadata = await app.fetch(`${base}/metadata`);
        assert.equal(metadata.status, 200);
        const [json] = await metadata.json() as DicomJson[];
        const reference = dcmtk && !header.pixelData!.encapsulated
          ? await dcmtkFrames(f.bytes, tmp, f.name)
          : undefined;
        const count = frameCount(header);
        for (const accept of OHIF_FRAME_ACCEPTS) {
          for (let n = 1; n <= count; n++) {
            const what = `${f.name} frame ${n} (Accept: ${accept})`;
            const [part, ...more] = await partsOf(
              await app.fetch(`${base}/frames/${n}`, { headers: { accept } }),
              what,
            );
            assert.equal(more.length, 0, what);
            const contentType = part.headers["content-type"];
            const sent = loaderTransferSyntax(contentType);
            assert.match(contentType, /transfer-syntax=/, `${what}: the part names its syntax`);
            assert.ok(CORNERSTONE_DECODES.has(sent), `${what}: sent in ${sent}, which the viewer decodes`);
            assert.equal(contentType.split(";")[0], frameMediaType(sent), `${what}: media type of ${sent}`);
            const claimed = metadataSyntax(json);
            if (claimed !== undefined) assert.equal(claimed, sent, `${what}: the metadata's syntax`);
            if (NATIVE_LITTLE_ENDIAN.has(sent)) {
              if (reference) assert.deepEqual(part.body, reference[n - 1], `${what}: dcmtk's samples`);
              if (stored === J2K_PART2_LOSSLESS) {
                assert.equal(part.body.length, 64 * 64 * 2, `${what}: decoded`);
              }
            } else {
              assert.equal(sent, stored, `${what}: compressed frames go as stored`);
              assert.deepEqual(part.body, frameBytes(header, f.bytes, n), `${what}: the stored fragments`);
            }
            if (n === 1) firstFrames.set(f.name, part.body);
            syntaxes.set(stored, [...new Set([...(syntaxes.get(stored) ?? []), sent])]);
          }
        }
        const pixelUri = json["7FE00010"]?.BulkDataURI;
        assert.ok(pixelUri, `${f.name}: Pixel Data has a BulkDataURI`);
        for (const accept of OHIF_BULKDATA_ACCEPTS) {
          const what = `${f.name} Pixel Data bulk data (Accept: ${accept})`;
          const response = await app.fetch(new URL(pixelUri).pathname, { headers: { accept } });
          if (accept === "application/octet-stream" && header.pixelData!.encapsulated) {
            // Compressed Pixel Data is one part per frame, in the frames' media type (multipart whatever asked).
            await response.body?.cancel();
            continue;
          }
          const parts = accept.startsWith("multipart/") ? await partsOf(response, what) : [{
            headers: { "content-type": response.headers.get("content-type")! },
            body: new Uint8Array(await response.arrayBuffer()),
          }];
          for (const part of parts) {
            const sent = loaderTransferSyntax(part.headers["content-type"]);
            assert.ok(CORNERSTONE_DECODES.has(sent), `${what}: ${part.headers["content-type"]}`);
            if (!header.pixelData!.encapsulated) {
              assert.equal(sent, ELE, `${what}: native pixels are little endian`);
              if (reference) assert.deepEqual(part.body.subarray(0, reference[0].length), reference[0], what);
            }
          }
        }
      });
    }

    await t.step(
      "twins: big endian, implicit, deflated and decoded JPEG 2000 Part 2 as the little endian original",
      () => {
        const original = firstFrames.get("MR_small.dcm")!;
        for (
          const twin of ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small as JPEG 2000 Part 2"]
        ) {
          assert.deepEqual(firstFrames.get(twin), original, twin);
        }
        const ele = builtMultiframe(ELE, "x").name;
        for (const ts of [ILE, EBE]) {
          assert.deepEqual(firstFrames.get(builtMultiframe(ts, "x").name), firstFrames.get(ele), ts);
        }
      },
    );

    await t.step("what each stored syntax was sent in", () => {
      assert.deepEqual(syntaxes.get(EBE), [ELE], "big endian goes out little endian");
      assert.deepEqual(syntaxes.get(ILE), [ELE]);
      assert.deepEqual(syntaxes.get("1.2.840.10008.1.2.1.99"), [ELE]);
      assert.deepEqual(
        syntaxes.get(J2K_PART2_LOSSLESS),
        [ELE],
        "decoded: the viewer has no JPEG 2000 Part 2",
      );
      for (const [stored, sent] of syntaxes) {
        if (
          CORNERSTONE_DECODES.has(stored) && !stored.startsWith("1.2.840.10008.1.2.1") && stored !== ILE &&
          stored !== EBE
        ) {
          assert.deepEqual(sent, [stored], `${stored} goes as stored`);
        }
      }
      console.log(
        [...syntaxes].map(([stored, sent]) => `${stored} → ${sent.join(", ")}`).join("\n"),
      );
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
    await app.close();
  }
});
