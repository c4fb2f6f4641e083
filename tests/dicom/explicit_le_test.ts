import assert from "node:assert/strict";
import { skipFor } from "../_skip.ts";
import { stringifyDicomJson, toDicomJson } from "../../lib/dicom/dicom_json.ts";
import { planFrame } from "../../lib/dicom/frames.ts";
import { parseBuffer, parseObject, readHeader } from "../../lib/dicom/part10.ts";
import { toExplicitVrLittleEndian, transcodedLength, transcodeStream } from "../../lib/dicom/explicit_le.ts";
import { buildPart10, corpusDir, EBE, type Fx, hasCommand, ILE, memorySource } from "../_dicom_fixtures.ts";
import { EXPLICIT_VR_LITTLE_ENDIAN } from "../../lib/dicom/transfer_syntax.ts";
import type { Part10Header } from "../../lib/dicom/dataset.ts";

const ELEMENTS: Fx[] = [
  { tag: 0x00080005, vr: "CS", value: "ISO_IR 100" },
  { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.7" },
  { tag: 0x00080018, vr: "UI", value: "1.2.3.4.5" },
  { tag: 0x00090010, vr: "LO", value: "ACME" },
  {
    tag: 0x00091001,
    vr: "SQ",
    undefinedLength: true,
    value: [[{ tag: 0x00100020, vr: "LO", value: "in UN" }]],
  },
  {
    tag: 0x00081140,
    vr: "SQ",
    value: [[{ tag: 0x00081155, vr: "UI", value: "1.2.3" }, {
      tag: 0x00209165,
      vr: "AT",
      value: [0x00100020],
    }]],
  },
  { tag: 0x00100010, vr: "PN", value: "M\xfcller^Hans" },
  { tag: 0x00180050, vr: "DS", value: "1.5" },
  { tag: 0x00189219, vr: "SS", value: [-3] },
  { tag: 0x00280002, vr: "US", value: [1] },
  { tag: 0x00280010, vr: "US", value: [3] },
  { tag: 0x00280011, vr: "US", value: [3] },
  { tag: 0x00280100, vr: "US", value: [16] },
  { tag: 0x00281052, vr: "DS", value: "-1024" },
  { tag: 0x00540081, vr: "US", value: [1] },
  { tag: 0x00660016, vr: "OF", value: [0.5, -2] },
  { tag: 0x7fe00010, vr: "OW", value: [1, 2, 3, 0x0405, 0xfffe, 0x8000, 7, 8, 9] },
];

/** A stream delivering `bytes` in chunks of the given sizes (cycled), to cross every word boundary. */
function chunked(bytes: Uint8Array, sizes: number[]): ReadableStream<Uint8Array> {
  let at = 0;
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
      const n = sizes[i++ % sizes.length];
      controller.enqueue(bytes.slice(at, at + n));
      at += n;
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function pixelBytes(header: Part10Header, bytes: Uint8Array): Uint8Array {
  const plan = planFrame(header, 1);
  const range = bytes.subarray(plan.ranges[0].offset, plan.ranges[0].offset + plan.ranges[0].length);
  return plan.extract ? plan.extract(range) : range;
}

Deno.test("transcodeStream() re-encodes implicit VR and big endian as explicit VR little endian", async (t) => {
  for (const [name, ts] of [["ILE", ILE], ["EBE", EBE]]) {
    await t.step(name, async () => {
      const bytes = buildPart10(ELEMENTS, { transferSyntax: ts });
      const source = parseBuffer(bytes, `${name}.dcm`);
      const out = await collect(
        transcodeStream(source, chunked(bytes.subarray(source.datasetOffset), [1, 3, 2, 7])),
      );
      assert.equal(out.length, transcodedLength(source));
      const back = parseBuffer(out, "out.dcm");
      assert.equal(back.transferSyntaxUid, EXPLICIT_VR_LITTLE_ENDIAN);
      assert.equal(back.meta!.mediaStorageSopInstanceUid, "1.2.3.4.5");
      assert.equal(back.meta!.implementationClassUid, "1.2.3.999");
      assert.equal(stringifyDicomJson(toDicomJson(back)), stringifyDicomJson(toDicomJson(source)));
      assert.deepEqual(pixelBytes(back, out), pixelBytes(source, bytes));
      assert.equal(back.dataset.elements.get(0x00091001)!.items!.length, 1, "the UN sequence became an SQ");
    });
  }
});

Deno.test("transcodeStream() writes a correct File Meta group", async () => {
  const bytes = buildPart10(ELEMENTS, { transferSyntax: ILE });
  const out = await toExplicitVrLittleEndian(parseBuffer(bytes, "a.dcm"), bytes);
  assert.equal(new TextDecoder().decode(out.subarray(128, 132)), "DICM");
  const groupLength = new DataView(out.buffer).getUint32(140, true);
  const back = parseBuffer(out, "out.dcm");
  assert.equal(back.datasetOffset, 144 + groupLength);
  assert.deepEqual([...back.meta!.elements.elements.keys()], [
    0x00020000,
    0x00020001,
    0x00020002,
    0x00020003,
    0x00020010,
    0x00020012,
  ]);
});

Deno.test("transcodeStream() writes long values of 16-bit-length VRs as UN", async () => {
  const lut = Array.from({ length: 40_000 }, (_, i) => i % 65536);
  const bytes = buildPart10([{ tag: 0x00540050, vr: "US", value: lut }], { transferSyntax: ILE });
  const header = parseBuffer(bytes, "lut.dcm");
  const back = parseBuffer(await toExplicitVrLittleEndian(header, bytes), "out.dcm", {
    bulkThreshold: Infinity,
  });
  const el = back.dataset.elements.get(0x00540050)!;
  assert.equal(el.vr, "UN");
  assert.equal(el.length, 80_000);
  assert.equal(new DataView(el.bytes!.buffer, el.bytes!.byteOffset).getUint16(2 * 12345, true), 12345);
});

Deno.test("transcodeStream() copies values a ranged header did not load", async () => {
  const bytes = buildPart10([
    { tag: 0x00420011, vr: "OB", value: new Uint8Array(5000).fill(7) },
    ...ELEMENTS.slice(6),
  ], { transferSyntax: EBE });
  const ranged = await readHeader(memorySource(bytes), { initialBytes: 256 });
  const out = await collect(transcodeStream(ranged, chunked(bytes.subarray(ranged.datasetOffset), [4096])));
  assert.deepEqual(
    out,
    await toExplicitVrLittleEndian(parseBuffer(bytes, "a.dcm", { bulkThreshold: Infinity }), bytes),
  );
  const doc = parseBuffer(out, "out.dcm", { bulkThreshold: Infinity }).dataset.elements.get(0x00420011)!;
  assert.deepEqual(doc.bytes, new Uint8Array(5000).fill(7));
});

Deno.test("transcodeStream() reads deflated objects from header.inflated", async () => {
  const plain = buildPart10(ELEMENTS, { meta: false });
  const deflated = new Uint8Array(
    await new Response(new Blob([plain]).stream().pipeThrough(new CompressionStream("deflate-raw")))
      .arrayBuffer(),
  );
  const bytes = Uint8Array.from([
    ...buildPart10([], { transferSyntax: "1.2.840.10008.1.2.1.99" }),
    ...deflated,
  ]);
  const header = await readHeader(memorySource(bytes));
  const out = await collect(transcodeStream(header));
  const back = parseBuffer(out, "out.dcm");
  assert.equal(back.transferSyntaxUid, EXPLICIT_VR_LITTLE_ENDIAN);
  assert.equal(stringifyDicomJson(toDicomJson(back)), stringifyDicomJson(toDicomJson(header)));
});

Deno.test("transcodeStream() fails when the source ends early", async () => {
  const bytes = buildPart10(ELEMENTS, { transferSyntax: ILE });
  const header = parseBuffer(bytes, "a.dcm");
  await assert.rejects(
    collect(transcodeStream(header, chunked(bytes.subarray(header.datasetOffset, bytes.length - 10), [64]))),
    /Cannot transcode "a.dcm": the object ends at offset \d+/,
  );
});

// --- Oracle: dcmdump of source and output ---------------------------------------------------------------------

/** dcmdump lines without what re-encoding may change: transfer syntax, group lengths, length columns. */
async function dump(path: string): Promise<string[]> {
  const output = await new Deno.Command("dcmdump", { args: ["-q", "+L", "+U8", path], stdout: "piped" })
    .output();
  return new TextDecoder().decode(output.stdout).split("\n")
    .map((line) => line.trim().replace(/\s+/g, " "))
    .filter((line) =>
      line && !line.startsWith("#") && !/^\([0-9a-f]{4},0000\)/.test(line) && !line.startsWith("(0002,0010)")
    )
    .map((line) =>
      line.replace(/ # (u\/l|\d+),/, " #,")
        .replace(/(undefined|explicit) length/, "length")
        .replace(/ for re-encod(ing|\.)/, "")
        .replace(/^(\([0-9a-f]{4},[0-9a-f]{4}\)) \?\? /, "$1 UN ")
    );
}

const ROUND_TRIP = [
  "MR_small_implicit.dcm",
  "MR_small_bigendian.dcm",
  "ExplVR_BigEnd.dcm",
  "image_dfl.dcm",
  "rtdose.dcm",
  "priv_SQ.dcm",
  "nested_priv_SQ.dcm",
  "empty_charset_LEI.dcm",
];

Deno.test("transcodeStream() output reads back like the source in dcmdump and in our parser", async (t) => {
  const dir = corpusDir();
  const withDcmdump = hasCommand("dcmdump");
  if (!withDcmdump) skipFor(`${t.name} (the dcmdump comparison)`, "dcmtk", "apt-get install dcmtk");
  const tmp = await Deno.makeTempDir();
  try {
    for (const name of ROUND_TRIP) {
      await t.step(name, async () => {
        const bytes = Deno.readFileSync(dir + name);
        const source = await parseObject(bytes, name, { bulkThreshold: Infinity });
        const out = await toExplicitVrLittleEndian(source, source.deflated ? undefined : bytes);
        const back = parseBuffer(out, "out.dcm", { bulkThreshold: Infinity });
        assert.equal(back.transferSyntaxUid, EXPLICIT_VR_LITTLE_ENDIAN);
        assert.equal(stringifyDicomJson(toDicomJson(back)), stringifyDicomJson(toDicomJson(source)));
        if (source.pixelData && back.dataset.elements.has(0x00280010)) {
          assert.deepEqual(pixelBytes(back, out), pixelBytes(source, source.inflated ?? bytes));
        }
        if (withDcmdump) {
          const path = `${tmp}/${name}`;
          await Deno.writeFile(path, out);
          const [ours, theirs] = await Promise.all([dump(path), dump(dir + name)]);
          assert.deepEqual(ours, theirs);
        }
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
