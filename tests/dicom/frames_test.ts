import assert from "node:assert/strict";
import { skipFor } from "../_skip.ts";
import { createHash } from "node:crypto";
import { frameCount, frameMediaType, type FramePlan, planFrame } from "../../lib/dicom/frames.ts";
import { parseBuffer, parseObject, readHeader } from "../../lib/dicom/part10.ts";
import { buildPart10, corpusDir, EBE, type Fx, memorySource } from "../_dicom_fixtures.ts";

function frameBytes(plan: FramePlan, bytes: Uint8Array): Uint8Array {
  const joined = new Uint8Array(plan.ranges.reduce((n, r) => n + r.length, 0));
  let at = 0;
  for (const r of plan.ranges) {
    joined.set(bytes.subarray(r.offset, r.offset + r.length), at);
    at += r.length;
  }
  const frame = plan.extract ? plan.extract(joined) : joined;
  assert.equal(frame.length, plan.length);
  return frame;
}

const image = (rows: number, columns: number, bits: number, frames: number, extra: Fx[] = []): Fx[] => [
  { tag: 0x00280002, vr: "US", value: [1] },
  { tag: 0x00280004, vr: "CS", value: "MONOCHROME2" },
  { tag: 0x00280008, vr: "IS", value: String(frames) },
  { tag: 0x00280010, vr: "US", value: [rows] },
  { tag: 0x00280011, vr: "US", value: [columns] },
  { tag: 0x00280100, vr: "US", value: [bits] },
  ...extra,
];

Deno.test("frameMediaType() maps transfer syntaxes to frame media types", () => {
  const cases: [string, string][] = [
    ["1.2.840.10008.1.2.1", "application/octet-stream"],
    ["1.2.840.10008.1.2", "application/octet-stream"],
    ["1.2.840.10008.1.2.4.50", "image/jpeg"],
    ["1.2.840.10008.1.2.4.51", "image/jpeg"],
    ["1.2.840.10008.1.2.4.57", "image/jpeg"],
    ["1.2.840.10008.1.2.4.70", "image/jpeg"],
    ["1.2.840.10008.1.2.4.80", "image/jls"],
    ["1.2.840.10008.1.2.4.81", "image/jls"],
    ["1.2.840.10008.1.2.4.90", "image/jp2"],
    ["1.2.840.10008.1.2.4.91", "image/jp2"],
    ["1.2.840.10008.1.2.4.92", "image/jpx"],
    ["1.2.840.10008.1.2.4.93", "image/jpx"],
    ["1.2.840.10008.1.2.4.201", "image/jphc"],
    ["1.2.840.10008.1.2.4.203", "image/jphc"],
    ["1.2.840.10008.1.2.5", "image/dicom-rle"],
    ["1.2.840.10008.1.2.4.100", "video/mpeg2"],
    ["1.2.840.10008.1.2.4.102", "video/mp4"],
  ];
  for (const [uid, type] of cases) assert.equal(frameMediaType(uid), type, uid);
});

Deno.test("planFrame() locates native frames", async (t) => {
  await t.step("8/16-bit frames are plain ranges", () => {
    const pixels = Array.from({ length: 2 * 3 * 4 }, (_, i) => i);
    const bytes = buildPart10([...image(2, 3, 16, 4), { tag: 0x7fe00010, vr: "OW", value: pixels }]);
    const header = parseBuffer(bytes, "a.dcm");
    assert.equal(frameCount(header), 4);
    const plan = planFrame(header, 3);
    assert.equal(plan.extract, undefined);
    assert.equal(plan.mediaType, "application/octet-stream");
    assert.deepEqual([...frameBytes(plan, bytes)], [12, 0, 13, 0, 14, 0, 15, 0, 16, 0, 17, 0]);
  });
  await t.step("big endian OW is swapped to little endian", () => {
    const bytes = buildPart10([...image(1, 3, 16, 2), {
      tag: 0x7fe00010,
      vr: "OW",
      value: [1, 2, 3, 4, 5, 0x0a0b],
    }], {
      transferSyntax: EBE,
    });
    const plan = planFrame(parseBuffer(bytes, "be.dcm"), 2);
    assert.equal(plan.byteSwap, 2);
    assert.deepEqual([...frameBytes(plan, bytes)], [4, 0, 5, 0, 0x0b, 0x0a]);
  });
  await t.step("big endian OW with 8-bit samples and odd offsets", () => {
    const bytes = buildPart10([...image(1, 3, 8, 2), {
      tag: 0x7fe00010,
      vr: "OW",
      value: [0x0100, 0x0302, 0x0504],
    }], {
      transferSyntax: EBE,
    });
    const header = parseBuffer(bytes, "be.dcm");
    assert.deepEqual([...frameBytes(planFrame(header, 1), bytes)], [0, 1, 2]);
    assert.deepEqual([...frameBytes(planFrame(header, 2), bytes)], [3, 4, 5]);
  });
  await t.step("1-bit frames off byte boundaries are re-packed from bit 0", () => {
    // 3 frames of 1x5 pixels: bits f1=10110, f2=01101, f3=11100, packed LSB first.
    const bits = [1, 0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0];
    const packed = new Uint8Array(2);
    bits.forEach((b, i) => packed[i >> 3] |= b << (i % 8));
    const bytes = buildPart10([...image(1, 5, 1, 3), { tag: 0x7fe00010, vr: "OB", value: packed }]);
    const header = parseBuffer(bytes, "seg.dcm");
    const expected = [0b01101, 0b10110, 0b00111];
    for (let f = 1; f <= 3; f++) {
      const plan = planFrame(header, f);
      assert.equal(plan.bitOffset, (f - 1) * 5 % 8 || undefined);
      assert.deepEqual([...frameBytes(plan, bytes)], [expected[f - 1]], `frame ${f}`);
    }
  });
  await t.step("YBR_FULL_422 has 2 bytes per pixel", () => {
    const elements = image(2, 2, 8, 1).map((e) => e.tag === 0x00280004 ? { ...e, value: "YBR_FULL_422" } : e);
    elements[0] = { tag: 0x00280002, vr: "US", value: [3] };
    const bytes = buildPart10([...elements, { tag: 0x7fe00010, vr: "OB", value: new Uint8Array(8) }]);
    assert.equal(planFrame(parseBuffer(bytes, "ybr.dcm"), 1).length, 8);
  });
  await t.step("invalid NumberOfFrames falls back to the pixel data length", () => {
    const elements = image(1, 2, 8, 1).map((e) => e.tag === 0x00280008 ? { ...e, value: "1A" } : e);
    const bytes = buildPart10([...elements, { tag: 0x7fe00010, vr: "OB", value: new Uint8Array(6) }]);
    assert.equal(frameCount(parseBuffer(bytes, "bad.dcm")), 3);
  });
});

Deno.test("planFrame() rejects frame numbers out of range", () => {
  const bytes = buildPart10([...image(1, 2, 8, 2), { tag: 0x7fe00010, vr: "OB", value: new Uint8Array(4) }]);
  const header = parseBuffer(bytes, "a.dcm");
  for (const n of [0, 3, 1.5]) {
    assert.throws(
      () => planFrame(header, n),
      (e) =>
        e instanceof RangeError && e.message === `Frame ${n} is out of range: this instance has frames 1-2`,
    );
  }
  const single = parseBuffer(
    buildPart10([...image(1, 2, 8, 1), { tag: 0x7fe00010, vr: "OB", value: new Uint8Array(2) }]),
    "s.dcm",
  );
  assert.throws(() => planFrame(single, 2), {
    name: "RangeError",
    message: "Frame 2 is out of range: this instance has frame 1",
  });
  const none = parseBuffer(buildPart10([{ tag: 0x00100020, vr: "LO", value: "X" }]), "n.dcm");
  assert.throws(() => planFrame(none, 1), { name: "TypeError", message: '"n.dcm" has no pixel data' });
});

Deno.test("planFrame() locates encapsulated frames", async (t) => {
  const jpeg = { transferSyntax: "1.2.840.10008.1.2.4.50" };
  const frag = (n: number, size = 4) => new Uint8Array(size).fill(n);
  const frames = (header: Part10Header, bytes: Uint8Array) =>
    Array.from({ length: frameCount(header) }, (_, i) => [...frameBytes(planFrame(header, i + 1), bytes)]);
  await t.step("through the Basic Offset Table (several fragments per frame)", () => {
    const bytes = buildPart10([...image(1, 1, 8, 2), {
      tag: 0x7fe00010,
      vr: "OB",
      fragments: [frag(1, 2), frag(2, 2), frag(3, 2)],
      bot: [0, 20],
    }], jpeg);
    const header = parseBuffer(bytes, "a.dcm");
    assert.deepEqual(frames(header, bytes), [[1, 1, 2, 2], [3, 3]]);
    assert.equal(planFrame(header, 1).mediaType, "image/jpeg");
  });
  await t.step("one fragment per frame without an offset table", () => {
    const bytes = buildPart10([...image(1, 1, 8, 3), {
      tag: 0x7fe00010,
      vr: "OB",
      fragments: [frag(1), frag(2), frag(3)],
    }], jpeg);
    assert.deepEqual(frames(parseBuffer(bytes, "a.dcm"), bytes), [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]]);
  });
  await t.step("a single frame spread over fragments", () => {
    const bytes = buildPart10([...image(1, 1, 8, 1), {
      tag: 0x7fe00010,
      vr: "OB",
      fragments: [frag(1, 2), frag(2, 2)],
    }], jpeg);
    assert.deepEqual(frames(parseBuffer(bytes, "a.dcm"), bytes), [[1, 1, 2, 2]]);
  });
  await t.step("through the Extended Offset Table", () => {
    const eot = new Uint8Array(16);
    new DataView(eot.buffer).setBigUint64(8, 12n, true);
    const lengths = new Uint8Array(16);
    new DataView(lengths.buffer).setBigUint64(0, 4n, true);
    new DataView(lengths.buffer).setBigUint64(8, 3n, true);
    const bytes = buildPart10([
      ...image(1, 1, 8, 2),
      { tag: 0x7fe00001, vr: "OV", value: eot },
      { tag: 0x7fe00002, vr: "OV", value: lengths },
      { tag: 0x7fe00010, vr: "OB", fragments: [frag(1), frag(2)] },
    ], jpeg);
    assert.deepEqual(frames(parseBuffer(bytes, "a.dcm"), bytes), [[1, 1, 1, 1], [2, 2, 2]]);
  });
  await t.step("fails clearly when fragments cannot be assigned to frames", () => {
    const bytes = buildPart10([...image(1, 1, 8, 2), {
      tag: 0x7fe00010,
      vr: "OB",
      fragments: [frag(1), frag(2), frag(3)],
    }], jpeg);
    assert.throws(() => planFrame(parseBuffer(bytes, "x.dcm"), 1), {
      name: "SyntaxError",
      message: 'Cannot locate frames of "x.dcm": 3 fragments for 2 frames and no offset table',
    });
  });
});

// --- Oracle: pydicom's frame bytes ----------------------------------------------------------------------------

const PYDICOM_FRAMES = `
import sys, os, json, hashlib, warnings
warnings.simplefilter("ignore")
import numpy as np, pydicom
from pydicom.encaps import generate_pixel_data_frame
out = {}
for path in sys.argv[1:]:
    try:
        ds = pydicom.dcmread(path)
        n = int(ds.get("NumberOfFrames", 1) or 1)
        ts = ds.file_meta.TransferSyntaxUID
    except Exception:
        continue  # unreadable for pydicom (malformed files, "1A" frames, no transfer syntax)
    if "PixelData" not in ds or "Rows" not in ds:
        continue
    if ts.is_compressed:
        frames = [bytes(f) for f in generate_pixel_data_frame(ds.PixelData, n)]
    else:
        raw = ds.PixelData
        if not ts.is_little_endian and ds["PixelData"].VR == "OW":
            raw = np.frombuffer(raw, ">u2").astype("<u2").tobytes()
        spp = ds.get("SamplesPerPixel", 1)
        per = 2 if ds.PhotometricInterpretation in ("YBR_FULL_422", "YBR_PARTIAL_422") else spp
        bits = ds.Rows * ds.Columns * per * ds.BitsAllocated
        if ds.BitsAllocated == 1:
            allbits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
            frames = [np.packbits(allbits[i * bits:(i + 1) * bits], bitorder="little").tobytes() for i in range(n)]
        else:
            frames = [raw[i * bits // 8:(i + 1) * bits // 8] for i in range(n)]
    out[os.path.basename(path)] = [hashlib.md5(f).hexdigest() for f in frames]
print(json.dumps(out))
`;
import type { Part10Header } from "../../lib/dicom/dataset.ts";

/** A Python with pydicom and numpy: Debian's /usr/bin/python3 first, then whatever python3 is on PATH. */
function pydicomPython(): string | undefined {
  for (const python of ["/usr/bin/python3", "python3"]) {
    try {
      const check = new Deno.Command(python, {
        args: ["-c", "import pydicom, numpy"],
        stdout: "null",
        stderr: "null",
      });
      if (check.outputSync().success) return python;
    } catch {
      // not installed
    }
  }
  return undefined;
}

Deno.test("planFrame() gives the frames pydicom extracts from the corpus", async (t) => {
  const dir = corpusDir();
  const python = pydicomPython();
  if (!python) {
    skipFor(t.name, "python3-pydicom", "apt-get install python3-pydicom");
    return;
  }
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  const output = await new Deno.Command(python, {
    args: ["-c", PYDICOM_FRAMES, ...names.map((n) => dir + n)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  const expected: Record<string, string[]> = JSON.parse(new TextDecoder().decode(output.stdout));
  assert.ok(Object.keys(expected).length >= 20, "pydicom found the image files");
  for (const [name, md5s] of Object.entries(expected)) {
    await t.step(name, async () => {
      const bytes = Deno.readFileSync(dir + name);
      if (name === "MR_truncated.dcm") {
        // pydicom hands out the short pixel data; we read the header and plan the whole frame, whose read
        // then fails naming the object (see part10_test.ts and tests/dicomweb/metadata_test.ts)
        const header = await parseObject(bytes, name);
        const [range] = planFrame(header, 1).ranges;
        assert.equal(range.offset + range.length - bytes.length, 62);
        return;
      }
      const header = await parseObject(bytes, name);
      const source = header.inflated ?? bytes;
      assert.equal(frameCount(header), md5s.length);
      const ours = md5s.map((_, i) =>
        createHash("md5").update(frameBytes(planFrame(header, i + 1), source)).digest("hex")
      );
      assert.deepEqual(ours, md5s);
      if (!header.deflated) {
        const ranged = await readHeader(memorySource(bytes, name), { initialBytes: 512 });
        assert.deepEqual(planFrame(ranged, md5s.length).ranges, planFrame(header, md5s.length).ranges);
      }
    });
  }
  await t.step("waveform_ecg.dcm has no pixel data", async () => {
    const header = await parseObject(Deno.readFileSync(dir + "waveform_ecg.dcm"), "w.dcm");
    assert.equal(frameCount(header), 0);
    assert.throws(() => planFrame(header, 1), TypeError);
  });
});
