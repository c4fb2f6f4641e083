/**
 * Metadata details (issue #16.7): pixel data nested in an item (an Icon Image Sequence, (0088,0200)) and
 * odd-length binary values, as PS3.18 Annex F and dcm2json have them.
 *
 * - Nested Pixel Data is an attribute like any binary one: `InlineBinary` up to the bulk data threshold, a
 *   `BulkDataURI` above it (or when encapsulated, which has no InlineBinary form), and that URI answers with
 *   the value (little endian; an encapsulated icon as its one compressed frame). It is never taken for the
 *   instance's Pixel Data: frames, rendered images and retrieval use the top-level one.
 * - An odd-length binary value (PS3.5 7.1.1 forbids them; writers do leave them) is sent with the zero byte its
 *   writer owed, in `InlineBinary` and in bulk data alike, as dcm2json writes it.
 *
 * The corpus has neither an icon image nor a large odd-length value, so the instances are built here
 * (tests/_dicom_fixtures.ts) in the three native syntaxes and in JPEG baseline.
 */

import assert from "node:assert/strict";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { parseBuffer, parseObject } from "../../lib/dicom/part10.ts";
import { type DicomJson, stringifyDicomJson, toDicomJson } from "../../lib/dicom/dicom_json.ts";
import { getNumber } from "../../lib/dicom/dataset.ts";
import { planFrame } from "../../lib/dicom/frames.ts";
import { encodeJpeg } from "../../lib/imaging/encode.ts";
import { testHandler } from "../_server.ts";
import { pydicomCorpus } from "../_corpus.ts";
import { buildPart10, EBE, ELE, type Fx, hasCommand, ILE } from "../_dicom_fixtures.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { skipFor } from "../_skip.ts";

const JPEG_BASELINE = "1.2.840.10008.1.2.4.50";
const MR = "1.2.840.10008.5.1.4.1.1.4";
const STUDY = "2.25.9160007";
const SERIES = `${STUDY}.1`;
const TOP = { rows: 32, columns: 48 };
const ICON = { rows: 40, columns: 40 };

/** Top-level pixels: 16-bit words, a ramp. */
const topWords = Array.from({ length: TOP.rows * TOP.columns }, (_, i) => (i * 37) % 4096);
/** Icon pixels: 8-bit, another pattern (1600 bytes: above the 1024-byte bulk data threshold). */
const iconBytes = Uint8Array.from({ length: ICON.rows * ICON.columns }, (_, i) => (i * 7 + 3) % 251);
/** Odd-length binary values: a small one (inline) and a large one (bulk data). */
const oddSmall = new Uint8Array([1, 2, 3]);
const oddLarge = Uint8Array.from({ length: 2001 }, (_, i) => (i * 13 + 1) % 256 || 1);

function imagePixel(
  rows: number,
  columns: number,
  bits: number,
  samples = 1,
  photometric = "MONOCHROME2",
): Fx[] {
  return [
    { tag: 0x00280002, vr: "US", value: [samples] },
    { tag: 0x00280004, vr: "CS", value: photometric },
    ...(samples > 1 ? [{ tag: 0x00280006, vr: "US", value: [0] }] : []),
    { tag: 0x00280010, vr: "US", value: [rows] },
    { tag: 0x00280011, vr: "US", value: [columns] },
    { tag: 0x00280100, vr: "US", value: [bits] },
    { tag: 0x00280101, vr: "US", value: [bits === 16 ? 12 : 8] },
    { tag: 0x00280102, vr: "US", value: [bits === 16 ? 11 : 7] },
    { tag: 0x00280103, vr: "US", value: [0] },
  ];
}

function identity(sop: string): Fx[] {
  return [
    { tag: 0x00080016, vr: "UI", value: MR },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x00080060, vr: "CS", value: "MR" },
    { tag: 0x00090010, vr: "LO", value: "ODD LENGTHS" },
    { tag: 0x00091001, vr: "OB", value: oddSmall },
    { tag: 0x00091002, vr: "OB", value: oddLarge },
    { tag: 0x00100010, vr: "PN", value: "Icon^Nested" },
    { tag: 0x0020000d, vr: "UI", value: STUDY },
    { tag: 0x0020000e, vr: "UI", value: SERIES },
  ];
}

interface Built {
  name: string;
  sop: string;
  transferSyntax: string;
  bytes: Uint8Array;
  /** The icon's pixels as a client must get them. */
  icon: Uint8Array;
  /** Frame 1 as stored (compressed) or as little endian samples (native). */
  frame: Uint8Array;
  rows: number;
  columns: number;
}

/** A native MR instance with a 16-bit image and an 8-bit icon, in `ts`. */
function nativeInstance(ts: string, n: number): Built {
  const sop = `${SERIES}.${n}`;
  const elements: Fx[] = [
    ...identity(sop),
    ...imagePixel(TOP.rows, TOP.columns, 16),
    {
      tag: 0x00880200,
      vr: "SQ",
      value: [[...imagePixel(ICON.rows, ICON.columns, 8), { tag: 0x7fe00010, vr: "OB", value: iconBytes }]],
    },
    { tag: 0x7fe00010, vr: "OW", value: topWords },
  ];
  const frame = new Uint8Array(topWords.length * 2);
  topWords.forEach((w, i) => new DataView(frame.buffer).setUint16(2 * i, w, true));
  return {
    name: `native ${ts}`,
    sop,
    transferSyntax: ts,
    bytes: buildPart10(elements, { transferSyntax: ts, sopClassUid: MR, sopInstanceUid: sop }),
    icon: iconBytes,
    frame,
    ...TOP,
  };
}

/** A JPEG baseline instance (a gray 160×128 image) whose icon is encapsulated too: a 100×100 RGB JPEG. */
async function jpegInstance(n: number): Promise<Built> {
  const sop = `${SERIES}.${n}`;
  const rgb = (await pydicomCorpus()).find((f) => f.name === "SC_rgb_jpeg_dcmtk.dcm")!;
  const rgbHeader = parseBuffer(rgb.bytes, rgb.name);
  const iconJpeg = rgb.bytes.slice(
    ...((r) => [r.offset, r.offset + r.length])(planFrame(rgbHeader, 1).ranges[0]),
  );
  // (160×128: large enough for libjpeg-turbo, which writes one component for a gray image)
  const gray = Uint8Array.from({ length: 160 * 128 }, (_, i) => (i % 160) + (Math.floor(i / 160) % 64));
  const topJpeg = await encodeJpeg({ width: 160, height: 128, channels: 1, pixels: gray });
  const even = (b: Uint8Array) => b.length % 2 ? Uint8Array.from([...b, 0]) : b;
  const elements: Fx[] = [
    ...identity(sop),
    ...imagePixel(128, 160, 8),
    {
      tag: 0x00880200,
      vr: "SQ",
      value: [[...imagePixel(100, 100, 8, 3, "YBR_FULL"), {
        tag: 0x7fe00010,
        vr: "OB",
        fragments: [even(iconJpeg)],
      }]],
    },
    { tag: 0x7fe00010, vr: "OB", fragments: [even(topJpeg)] },
  ];
  return {
    name: "JPEG baseline",
    sop,
    transferSyntax: JPEG_BASELINE,
    bytes: buildPart10(elements, { transferSyntax: JPEG_BASELINE, sopClassUid: MR, sopInstanceUid: sop }),
    icon: even(iconJpeg),
    frame: even(topJpeg),
    rows: 128,
    columns: 160,
  };
}

const NATIVE = [nativeInstance(ELE, 1), nativeInstance(ILE, 2), nativeInstance(EBE, 3)];
const ALL = [...NATIVE, await jpegInstance(4)];

const b64 = (bytes: Uint8Array) => btoa(String.fromCharCode(...bytes));
const padded = (bytes: Uint8Array) => bytes.length % 2 ? Uint8Array.from([...bytes, 0]) : bytes;

Deno.test("toDicomJson(): nested pixel data and odd-length values, as dcm2json writes them", async (t) => {
  for (const built of NATIVE) {
    await t.step(built.name, async () => {
      const header = await parseObject(built.bytes, built.name, {
        bulkThreshold: Infinity,
        textBulkThreshold: Infinity,
      });
      const json = toDicomJson(header);
      const icon = (json["00880200"].Value as DicomJson[])[0];
      assert.deepEqual(icon["7FE00010"], {
        vr: header.explicitVR ? "OB" : "OW",
        InlineBinary: b64(iconBytes),
      });
      assert.deepEqual(json["00091001"], {
        vr: header.explicitVR ? "OB" : "UN",
        InlineBinary: b64(new Uint8Array([1, 2, 3, 0])),
      });
      assert.equal(atob(json["00091002"].InlineBinary!).length, 2002, "padded to even length");
      // The nested element is no Pixel Data of the instance's own.
      assert.equal(header.pixelData!.length, TOP.rows * TOP.columns * 2);
      assert.equal(getNumber(header.dataset, 0x00280010), TOP.rows);
    });
  }
  if (!hasCommand("dcm2json")) {
    skipFor(t.name, "dcmtk (dcm2json)", "apt-get install dcmtk");
    return;
  }
  const tmp = await Deno.makeTempDir();
  try {
    for (const built of NATIVE) {
      await t.step(`${built.name}: equal to dcm2json -fc`, async () => {
        const file = `${tmp}/${built.sop}.dcm`;
        await Deno.writeFile(file, built.bytes);
        const output = await new Deno.Command("dcm2json", {
          args: ["-fc", file],
          stdout: "piped",
          stderr: "piped",
        })
          .output();
        assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
        const theirs = JSON.parse(new TextDecoder().decode(output.stdout));
        const header = await parseObject(built.bytes, built.name, {
          bulkThreshold: Infinity,
          textBulkThreshold: Infinity,
        });
        assert.deepEqual(JSON.parse(stringifyDicomJson(toDicomJson(header))), theirs);
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

async function multipartParts(response: Response) {
  const body = new Uint8Array(await response.arrayBuffer());
  assert.equal(response.status, 200, new TextDecoder().decode(body.subarray(0, 300)));
  return parseMultipart(body, boundaryOf(response.headers.get("content-type"))).parts;
}

function pngSize(bytes: Uint8Array): { width: number; height: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

Deno.test("the server: nested pixel data resolves, is never the instance's; odd-length values padded", async (t) => {
  const store = new MemoryStore(["icons"]);
  for (const built of ALL) {
    await store.put("icons", `${STUDY}/${SERIES}/${built.sop}.dcm`, built.bytes);
  }
  const app = testHandler({ store, config: { AETS: "ICONS=icons" } });
  const base = (built: Built) => `/aets/ICONS/studies/${STUDY}/series/${SERIES}/instances/${built.sop}`;
  const uriPath = (uri: string) => new URL(uri).pathname;
  try {
    for (const built of ALL) {
      await t.step(built.name, async (t) => {
        const response = await app.fetch(`${base(built)}/metadata`);
        assert.equal(response.status, 200);
        const [json] = await response.json() as DicomJson[];
        const icon = (json["00880200"].Value as DicomJson[])[0];

        await t.step("the icon's Pixel Data: a BulkDataURI that answers with the icon", async () => {
          const uri = icon["7FE00010"].BulkDataURI!;
          assert.match(uri, /\/bulkdata\/00880200\/0\/7FE00010$/);
          const parts = await multipartParts(await app.fetch(uriPath(uri)));
          assert.equal(parts.length, 1);
          assert.deepEqual(parts[0].body, built.icon);
          if (built.transferSyntax === JPEG_BASELINE) {
            assert.equal(parts[0].headers["content-type"], `image/jpeg; transfer-syntax=${JPEG_BASELINE}`);
          } else {
            assert.equal(
              parts[0].headers["content-type"],
              `application/octet-stream; transfer-syntax=${ELE}`,
            );
            const single = await app.fetch(uriPath(uri), { headers: { accept: "application/octet-stream" } });
            assert.deepEqual(new Uint8Array(await single.arrayBuffer()), built.icon);
          }
        });

        await t.step("odd-length values: InlineBinary and bulk data with the zero byte owed", async () => {
          assert.equal(json["00091001"].InlineBinary, b64(padded(oddSmall)));
          const uri = uriPath(json["00091002"].BulkDataURI!);
          const whole = await app.fetch(uri, { headers: { accept: "application/octet-stream" } });
          assert.equal(whole.headers.get("content-type"), "application/octet-stream");
          assert.deepEqual(new Uint8Array(await whole.arrayBuffer()), padded(oddLarge));
          const tail = await app.fetch(uri, {
            headers: { accept: "application/octet-stream", range: "bytes=1998-" },
          });
          assert.equal(tail.status, 206);
          assert.equal(tail.headers.get("content-range"), "bytes 1998-2001/2002");
          assert.deepEqual(new Uint8Array(await tail.arrayBuffer()), padded(oddLarge).subarray(1998));
        });

        await t.step(
          "frames, rendered and Pixel Data's own BulkDataURI are the top-level image's",
          async () => {
            const frames = await multipartParts(
              await app.fetch(`${base(built)}/frames/1`, {
                headers: { accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=*' },
              }),
            );
            assert.deepEqual(frames[0].body, built.frame);
            const second = await app.fetch(`${base(built)}/frames/2`);
            await second.body?.cancel();
            assert.equal(second.status, 400, "one frame only");
            const rendered = await app.fetch(`${base(built)}/rendered`, { headers: { accept: "image/png" } });
            assert.equal(rendered.status, 200);
            assert.deepEqual(pngSize(new Uint8Array(await rendered.arrayBuffer())), {
              width: built.columns,
              height: built.rows,
            });
            const top = await multipartParts(await app.fetch(uriPath(json["7FE00010"].BulkDataURI!)));
            assert.deepEqual(top[0].body, built.frame);
          },
        );

        await t.step("retrieved in Explicit VR Little Endian, the icon comes along whole", async () => {
          const response = await app.fetch(base(built), {
            headers: { accept: `multipart/related; type="application/dicom"; transfer-syntax=${ELE}` },
          });
          const [part] = await multipartParts(response);
          assert.match(
            part.headers["content-type"],
            new RegExp(`transfer-syntax=${ELE.replaceAll(".", "\\.")}`),
          );
          const header = await parseObject(part.body, "retrieved.dcm", { bulkThreshold: Infinity });
          const item = header.dataset.elements.get(0x00880200)!.items![0];
          const nested = item.elements.get(0x7fe00010)!;
          assert.equal(header.pixelData!.encapsulated, false);
          assert.equal(getNumber(header.dataset, 0x00280010), built.rows);
          if (built.transferSyntax === JPEG_BASELINE) {
            // Decoded too: 100×100 RGB samples, not the JPEG (an Explicit VR Little Endian file holds no fragments).
            assert.equal(nested.fragments, undefined);
            assert.equal(nested.length, 100 * 100 * 3);
            assert.equal(getNumber(item, 0x00280010), 100);
          } else {
            assert.deepEqual(nested.bytes, built.icon);
            assert.deepEqual(
              part.body.subarray(
                header.pixelData!.offset,
                header.pixelData!.offset + header.pixelData!.length,
              ),
              built.frame,
            );
          }
        });
      });
    }
  } finally {
    await app.close();
  }
});

Deno.test("bulk data inside a UN sequence of a big endian object is little endian, as its InlineBinary", async () => {
  // A private UN sequence of undefined length (CP-246): its items are Implicit VR Little Endian whatever the
  // object's syntax. One OW value above the bulk data threshold, one below.
  const le = (n: number, width: number) => Array.from({ length: width }, (_, i) => (n >>> (8 * i)) & 0xff);
  const words = Array.from({ length: 1100 }, (_, i) => (i * 977) & 0xffff);
  const large = Uint8Array.from(words.flatMap((w) => le(w, 2)));
  const small = new Uint8Array([1, 2, 3, 4]);
  const element = (
    tag: number,
    value: Uint8Array,
  ) => [...le(tag >>> 16, 2), ...le(tag & 0xffff, 2), ...le(value.length, 4), ...value];
  const items = Uint8Array.from([
    ...le(0xfffe, 2),
    ...le(0xe000, 2),
    ...le(0xffffffff, 4),
    ...element(0x00281201, large),
    ...element(0x00281202, small),
    ...le(0xfffe, 2),
    ...le(0xe00d, 2),
    ...le(0, 4),
    ...le(0xfffe, 2),
    ...le(0xe0dd, 2),
    ...le(0, 4),
  ]);
  const sop = `${SERIES}.9`;
  const bytes = buildPart10([
    ...identity(sop),
    { tag: 0x00110010, vr: "LO", value: "UN SEQUENCE" },
    { tag: 0x00111001, vr: "UN", value: items, lengthOverride: 0xffffffff },
  ], { transferSyntax: EBE, sopClassUid: MR, sopInstanceUid: sop });
  const store = new MemoryStore(["un"]);
  await store.put("un", `${STUDY}/${SERIES}/${sop}.dcm`, bytes);
  const app = testHandler({ store, config: { AETS: "UN=un" } });
  try {
    const base = `/aets/UN/studies/${STUDY}/series/${SERIES}/instances/${sop}`;
    const [json] = await (await app.fetch(`${base}/metadata`)).json() as DicomJson[];
    const item = (json["00111001"].Value as DicomJson[])[0];
    assert.equal(item["00281202"].InlineBinary, b64(small), "inline: little endian as stored");
    const uri = new URL(item["00281201"].BulkDataURI!).pathname;
    const response = await app.fetch(uri, { headers: { accept: "application/octet-stream" } });
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), large, "bulk: the same byte order");
  } finally {
    await app.close();
  }
});
