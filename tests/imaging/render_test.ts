/**
 * Rendering: VOI functions, viewports, the PNG and JPEG encoders, and rendered images of tests/testdata/pydicom
 * compared with dcmtk's dcm2pnm / dcmj2pnm / dcml2pnm (same window options) within a small tolerance.
 * Skips with a reason when dcmtk is missing, except under CI=true.
 */

import { skipFor } from "../_skip.ts";
import assert from "node:assert/strict";
import { decodeFrame } from "../../lib/codecs/mod.ts";
import { decodeJpegBaseline } from "../../lib/codecs/jpeg_turbo.ts";
import { describeFrame } from "../../lib/imaging/decode.ts";
import { frameCount, planFrame } from "../../lib/dicom/frames.ts";
import { parseObject } from "../../lib/dicom/part10.ts";
import {
  type Image8,
  renderAttributes,
  renderFrame,
  toDisplay,
  windowValue,
} from "../../lib/imaging/render.ts";
import type { DicomDataset, DicomElement, Part10Header } from "../../lib/dicom/dataset.ts";
import { applyViewport, fitViewport } from "../../lib/imaging/resample.ts";
import { encodeJpeg, encodePng } from "../../lib/imaging/encode.ts";

const CORPUS = new URL("../testdata/pydicom/files/", import.meta.url);
const TESTDATA = new URL("../testdata/", import.meta.url);

/** Skips (prints why) or, under CI=true, fails saying what to install. */
function unavailable(t: Deno.TestContext, what: string, install: string): boolean {
  return skipFor(t.name, what, install);
}

async function has(command: string, args = ["--version"]): Promise<boolean> {
  try {
    await new Deno.Command(command, { args, stdout: "null", stderr: "null" }).output();
    return true;
  } catch {
    return false;
  }
}

async function run(command: string, args: string[], stdin?: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command(command, {
    args,
    stdin: stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  if (stdin) {
    const writer = child.stdin.getWriter();
    await writer.write(stdin);
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  if (code !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${new TextDecoder().decode(stderr)}`);
  return stdout;
}

/** A PNG decoder for checking ours (8-bit gray/RGB, non-interlaced). */
async function decodePng(png: Uint8Array): Promise<Image8> {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let at = 8;
  let width = 0;
  let height = 0;
  let channels: 1 | 3 = 1;
  const idat: Uint8Array[] = [];
  while (at < png.length) {
    const length = view.getUint32(at);
    const type = new TextDecoder().decode(png.subarray(at + 4, at + 8));
    const data = png.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      channels = png[at + 17] === 2 ? 3 : 1;
    } else if (type === "IDAT") idat.push(data);
    at += 12 + length;
  }
  const stream = new Blob(idat as Uint8Array<ArrayBuffer>[]).stream().pipeThrough(
    new DecompressionStream("deflate"),
  );
  const raw = new Uint8Array(await new Response(stream).arrayBuffer());
  const stride = width * channels;
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    for (let x = 0; x < stride; x++) {
      const v = raw[y * (stride + 1) + 1 + x];
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = y > 0 && x >= channels ? out[(y - 1) * stride + x - channels] : 0;
      let p = 0;
      if (filter === 1) p = a;
      else if (filter === 2) p = b;
      else if (filter === 3) p = (a + b) >> 1;
      else if (filter === 4) {
        const e = a + b - c;
        p = Math.abs(e - a) <= Math.abs(e - b) && Math.abs(e - a) <= Math.abs(e - c)
          ? a
          : Math.abs(e - b) <= Math.abs(e - c)
          ? b
          : c;
      }
      out[y * stride + x] = (v + p) & 0xff;
    }
  }
  return { width, height, channels, pixels: out };
}

/** Parses a binary PGM (P5) or PPM (P6) as dcmtk writes it. */
function parsePnm(bytes: Uint8Array): Image8 {
  const text = new TextDecoder("latin1").decode(bytes.subarray(0, 64));
  const m = /^(P[56])\s+(?:#.*\s+)*(\d+)\s+(\d+)\s+(\d+)\s/.exec(text);
  if (!m) throw new Error(`Not a binary PNM: ${JSON.stringify(text.slice(0, 20))}`);
  const headerLength = m[0].length;
  const channels = m[1] === "P6" ? 3 : 1;
  return { width: Number(m[2]), height: Number(m[3]), channels, pixels: bytes.slice(headerLength) };
}

function difference(a: Image8, b: Image8): { max: number; mean: number } {
  assert.equal(`${a.width}×${a.height}×${a.channels}`, `${b.width}×${b.height}×${b.channels}`, "image size");
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.pixels.length; i++) {
    const d = Math.abs(a.pixels[i] - b.pixels[i]);
    if (d > max) max = d;
    sum += d;
  }
  return { max, mean: sum / a.pixels.length };
}

async function frameOf(header: Part10Header, bytes: Uint8Array, n = 1) {
  const plan = planFrame(header, n);
  const source = header.inflated ?? bytes;
  const data = new Uint8Array(plan.length + 16);
  let at = 0;
  for (const r of plan.ranges) {
    data.set(source.subarray(r.offset, r.offset + r.length), at);
    at += r.length;
  }
  const raw = data.subarray(0, at);
  return await decodeFrame(
    header.transferSyntaxUid,
    plan.extract ? plan.extract(raw) : raw,
    describeFrame(header),
  );
}

Deno.test("windowValue() follows PS3.3 C.11.2.1.2 for LINEAR, LINEAR_EXACT and SIGMOID", () => {
  // LINEAR, c=40 w=400: x <= c - 0.5 - (w-1)/2 = -160 → 0; x > c - 0.5 + (w-1)/2 = 239 → 255.
  assert.equal(windowValue(-160, 40, 400, "LINEAR"), 0);
  assert.equal(windowValue(-159.9, 40, 400, "LINEAR") > 0, true);
  assert.equal(windowValue(239.5, 40, 400, "LINEAR"), 255);
  assert.ok(Math.abs(windowValue(39.5, 40, 400, "LINEAR") - 127.5) < 1e-9);
  // LINEAR_EXACT: c ± w/2.
  assert.equal(windowValue(-160, 40, 400, "LINEAR_EXACT"), 0);
  assert.equal(windowValue(40, 40, 400, "LINEAR_EXACT"), 127.5);
  assert.equal(windowValue(240.1, 40, 400, "LINEAR_EXACT"), 255);
  // SIGMOID: 255 / (1 + exp(-4 (x - c) / w)).
  assert.equal(windowValue(40, 40, 400, "SIGMOID"), 127.5);
  assert.ok(Math.abs(windowValue(140, 40, 400, "SIGMOID") - 255 / (1 + Math.exp(-1))) < 1e-9);
  // A LINEAR window of width 1 is a threshold.
  assert.equal(windowValue(10, 10.5, 1, "LINEAR"), 0);
  assert.equal(windowValue(11, 10.5, 1, "LINEAR"), 255);
});

Deno.test("applyViewport() scales to fit keeping the aspect ratio, cuts regions and flips", () => {
  assert.deepEqual(fitViewport(512, 256, 256, 256), { width: 256, height: 128 });
  assert.deepEqual(fitViewport(64, 64, 256, 128), { width: 128, height: 128 });
  const image: Image8 = {
    width: 4,
    height: 2,
    channels: 1,
    pixels: Uint8Array.from([0, 10, 20, 30, 40, 50, 60, 70]),
  };
  // Halving averages 2×2 blocks.
  assert.deepEqual(Array.from(applyViewport(image, { width: 2, height: 1 }).pixels), [25, 45]);
  // Source region: the right half, at full size.
  assert.deepEqual(
    Array.from(applyViewport(image, { width: 2, height: 2, sx: 2, sy: 0, sw: 2, sh: 2 }).pixels),
    [20, 30, 60, 70],
  );
  // Negative width flips horizontally, negative height vertically.
  assert.deepEqual(
    Array.from(applyViewport(image, { width: 4, height: 2, sx: 3, sy: 0, sw: -4, sh: 2 }).pixels),
    [30, 20, 10, 0, 70, 60, 50, 40],
  );
  assert.deepEqual(
    Array.from(applyViewport(image, { width: 4, height: 2, sx: 0, sy: 1, sw: 4, sh: -2 }).pixels),
    [40, 50, 60, 70, 0, 10, 20, 30],
  );
  // Upscaling is bilinear: constant images stay constant, sizes follow the viewport.
  const up = applyViewport({ width: 2, height: 2, channels: 3, pixels: new Uint8Array(12).fill(9) }, {
    width: 8,
    height: 8,
  });
  assert.equal(up.width, 8);
  assert.ok(up.pixels.every((v) => v === 9));
});

Deno.test("encodePng() writes PNGs that decode to the same pixels and that Python's zlib accepts", async (t) => {
  const gray: Image8 = {
    width: 37,
    height: 21,
    channels: 1,
    pixels: Uint8Array.from({ length: 37 * 21 }, (_, i) => (i * 7) % 256),
  };
  const rgb: Image8 = {
    width: 13,
    height: 9,
    channels: 3,
    pixels: Uint8Array.from({ length: 13 * 9 * 3 }, (_, i) => (i * i) % 253),
  };
  for (const image of [gray, rgb]) {
    const png = await encodePng(image);
    assert.deepEqual(await decodePng(png), image);
    if (await has("/usr/bin/python3")) {
      // Independent check of chunk CRCs and the zlib stream.
      const script = `
import sys, struct, zlib
b = sys.stdin.buffer.read()
assert b[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
at, idat = 8, b""
while at < len(b):
    n, = struct.unpack(">I", b[at:at+4]); kind = b[at+4:at+8]; data = b[at+8:at+8+n]
    crc, = struct.unpack(">I", b[at+8+n:at+12+n])
    assert zlib.crc32(kind + data) == crc, kind
    if kind == b"IDAT": idat += data
    at += 12 + n
print(len(zlib.decompress(idat)))`;
      const out = new TextDecoder().decode(await run("/usr/bin/python3", ["-c", script], png));
      assert.equal(Number(out), (image.width * image.channels + 1) * image.height);
    } else {
      skipFor(`${t.name} (the independent PNG check)`, "/usr/bin/python3", "apt-get install python3");
    }
  }
});

Deno.test("encodeJpeg() writes baseline JPEGs libjpeg-turbo decodes, large and tiny", async () => {
  for (const [w, h, channels] of [[256, 200, 1], [160, 120, 3], [3, 2, 1], [5, 4, 3]] as const) {
    const pixels = Uint8Array.from(
      { length: w * h * channels },
      (_, i) => 128 + Math.round(100 * Math.sin(i / 50)),
    );
    const jpeg = await encodeJpeg({ width: w, height: h, channels, pixels }, 95);
    assert.deepEqual(Array.from(jpeg.subarray(0, 2)), [0xff, 0xd8]);
    const back = await decodeJpegBaseline(jpeg);
    assert.equal(`${back.width}×${back.height}`, `${w}×${h}`);
    // jpeg-js (used below 16 KiB) always writes three components: gray comes back as R = G = B.
    const step = back.components / channels;
    assert.ok(step === 1 || step === 3, `${back.components} components for ${channels}`);
    let se = 0;
    for (let i = 0; i < pixels.length; i++) se += (back.bytes[i * step] - pixels[i]) ** 2;
    const psnr = 10 * Math.log10(255 * 255 / Math.max(se / pixels.length, 1e-9));
    assert.ok(psnr > 30, `${w}×${h}×${channels}: PSNR ${psnr.toFixed(1)}`);
  }
});

Deno.test("renderAttributes() reads window, rescale and VOI LUT function, per frame for enhanced objects", async () => {
  const ct = await parseObject(await Deno.readFile(new URL("htj2k_lossless_ct.dcm", TESTDATA)), "ct");
  const attrs = renderAttributes(ct);
  assert.equal(attrs.rescaleSlope, 1);
  assert.equal(attrs.rescaleIntercept, -1024);
  assert.equal(attrs.voiFunction, "LINEAR");
  const mr = await parseObject(await Deno.readFile(new URL("MR_small.dcm", CORPUS)), "mr");
  assert.deepEqual(renderAttributes(mr).windows, [{ center: 600, width: 1600 }]);
});

/** Builders for synthetic data sets (explicit values, little endian). */
const el = (tag: number, vr: string, bytes: Uint8Array): DicomElement => ({
  tag,
  vr,
  offset: 0,
  length: bytes.length,
  bytes,
});
const text = (tag: number, vr: string, value: string) => el(tag, vr, new TextEncoder().encode(value));
const us = (tag: number, vr: string, ...values: number[]) =>
  el(tag, vr, new Uint8Array(Uint16Array.from(values).buffer));
const dataset = (...elements: DicomElement[]): DicomDataset => ({
  elements: new Map(elements.map((e) => [e.tag, e])),
  characterSet: [],
  littleEndian: true,
});
const sequence = (tag: number, ...items: DicomDataset[]): DicomElement => ({
  tag,
  vr: "SQ",
  offset: 0,
  length: -1,
  items,
});
const synthetic = (ds: DicomDataset) => ({ name: "synthetic", dataset: ds }) as Part10Header;

Deno.test("renderAttributes() applies Shared then Per-Frame Functional Groups of enhanced multi-frame objects", () => {
  const header = synthetic(dataset(
    text(0x00281050, "DS", "40"),
    text(0x00281051, "DS", "400"),
    sequence(
      0x52009229,
      dataset(sequence(0x00289145, dataset(text(0x00281052, "DS", "-1024"), text(0x00281053, "DS", "2")))),
    ),
    sequence(
      0x52009230,
      dataset(),
      dataset(sequence(
        0x00289132,
        dataset(
          text(0x00281050, "DS", "100\\300"),
          text(0x00281051, "DS", "50\\600"),
          text(0x00281056, "CS", "SIGMOID"),
        ),
      )),
    ),
  ));
  const first = renderAttributes(header, 1);
  assert.deepEqual(first.windows, [{ center: 40, width: 400 }]);
  assert.equal(first.rescaleIntercept, -1024);
  assert.equal(first.rescaleSlope, 2);
  const second = renderAttributes(header, 2);
  assert.deepEqual(second.windows, [{ center: 100, width: 50 }, { center: 300, width: 600 }]);
  assert.equal(second.voiFunction, "SIGMOID");
});

Deno.test("PALETTE COLOR frames render through their 16-bit lookup tables", () => {
  const header = synthetic(dataset(
    us(0x00281101, "US", 3, 0, 16),
    us(0x00281102, "US", 3, 0, 16),
    us(0x00281103, "US", 3, 0, 16),
    us(0x00281201, "OW", 0, 65535, 32896),
    us(0x00281202, "OW", 65535, 0, 32896),
    us(0x00281203, "OW", 0, 0, 32896),
  ));
  const attrs = renderAttributes(header);
  const frame = {
    rows: 1,
    columns: 3,
    samplesPerPixel: 1,
    bitsAllocated: 8,
    bitsStored: 8,
    pixelRepresentation: 0,
    photometricInterpretation: "PALETTE COLOR",
    planarConfiguration: 0,
    bytes: Uint8Array.from([0, 1, 2]),
    lossy: false,
  };
  const image = toDisplay(frame, attrs, { mediaType: "image/png" });
  assert.equal(image.channels, 3);
  assert.deepEqual(Array.from(image.pixels), [0, 255, 0, 255, 0, 0, 128, 128, 128]);
});

/** dcmtk renders `file`'s frame `frame` as PGM/PPM with `args`. */
async function dcmtkRender(
  file: string,
  ts: string,
  args: string[],
  frame: number,
  dir: string,
): Promise<Image8> {
  const out = `${dir}/${crypto.randomUUID()}.pnm`;
  const tool = /\.4\.8[01]$/.test(ts) ? "dcml2pnm" : /\.4\.|\.5$/.test(ts) ? "dcmj2pnm" : "dcm2pnm";
  await run(tool, ["+op", "+F", String(frame), ...args, file, out]);
  return parsePnm(await Deno.readFile(out));
}

Deno.test("rendered images of tests/testdata/pydicom match dcmtk's rendering with the same window", async (t) => {
  for (const tool of ["dcm2pnm", "dcmj2pnm", "dcml2pnm", "dcmodify"]) {
    if (!await has(tool)) {
      unavailable(t, `dcmtk (${tool})`, "apt-get install dcmtk");
      return;
    }
  }
  const dir = await Deno.makeTempDir({ prefix: "render-test-" });
  try {
    // A MONOCHROME1 variant of CT_small (dcmtk inverts it for display too).
    await Deno.copyFile(new URL("CT_small.dcm", CORPUS), `${dir}/ct_mono1.dcm`);
    await run("dcmodify", ["-nb", "-m", "(0028,0004)=MONOCHROME1", `${dir}/ct_mono1.dcm`]);
    const files = [
      ...[
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "JPGExtended.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_rle_2frame.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "ExplVR_BigEnd.dcm",
        "image_dfl.dcm",
        "rtdose.dcm",
        "liver_1frame.dcm",
        "chrX1.dcm",
      ].map((n) => new URL(n, CORPUS).pathname),
      `${dir}/ct_mono1.dcm`,
    ];
    for (const file of files) {
      const name = file.split("/").pop()!;
      await t.step(name, async () => {
        const bytes = await Deno.readFile(file);
        const header = await parseObject(bytes, name);
        const attrs = renderAttributes(header);
        const gray = describeFrame(header).samplesPerPixel === 1;
        const frames = [1, frameCount(header)].filter((n, i, a) => a.indexOf(n) === i);
        for (const n of frames) {
          const frame = await frameOf(header, bytes, n);
          // Default window: the file's first window, else the frame's min/max.
          const defaults = gray ? (attrs.windows.length ? ["+Wi", "1"] : ["+Wm"]) : [];
          const cases: [string[], { center: number; width: number } | undefined][] = [[defaults, undefined]];
          if (gray && !name.startsWith("liver")) {
            cases.push([["+Ww", "100", "300"], { center: 100, width: 300 }]);
          }
          for (const [args, window] of cases) {
            const expected = await dcmtkRender(file, header.transferSyntaxUid, args, n, dir);
            const got = toDisplay(frame, attrs, { mediaType: "image/png", window });
            const { max, mean } = difference(got, expected);
            // dcmtk truncates window outputs as lib/imaging/render.ts does: lossless data renders identically; lossy
            // (12-bit JPEG: float IDCT here, integer IDCT in dcmtk) within one level. Native YCbCr: dcmtk
            // centres chroma on 127.5 and truncates, lib/imaging/render.ts uses 128 (PS3.3 C.7.6.3.1.2) and rounds.
            const ybr = /^YBR/.test(describeFrame(header).photometricInterpretation);
            assert.ok(
              max <= 1 && mean <= (ybr ? 0.5 : 0.05),
              `${name} frame ${n} ${args.join(" ")}: max diff ${max}, mean ${mean.toFixed(3)}`,
            );
            // The PNG holds exactly that image.
            const png = await renderFrame(frame, attrs, { mediaType: "image/png", window });
            assert.deepEqual(await decodePng(png.bytes), got);
          }
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
