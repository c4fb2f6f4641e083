/**
 * Pixel decoding against independent decoders: every compressed image of tests/testdata/pydicom, instances dcmtk
 * compresses here (dcmcjpeg, dcmcjpls, dcmcrle) and the HTJ2K/JPEG 2000 samples of tests/testdata, decoded by
 * lib/codecs and by dcmtk (dcmdjpeg, dcmdjpls, dcmdrle) or OpenJPEG's opj_decompress. Lossless: equal samples;
 * lossy: PSNR-bounded. Skips with a reason when the tools are missing, except under CI=true.
 */

import { skipFor } from "../_skip.ts";
import assert from "node:assert/strict";
import { type DecodedFrame, decodeFrame, type FrameDescription } from "../../lib/codecs/mod.ts";
import { decodeRle } from "../../lib/codecs/rle.ts";
import { CodecPool } from "../../lib/imaging/pool.ts";
import { encodeJ2k } from "../../lib/codecs/j2k.ts";
import { decodedFrame, describeFrame } from "../../lib/imaging/decode.ts";
import { frameCount, planFrame } from "../../lib/dicom/frames.ts";
import { toHttpError } from "../../lib/http/errors.ts";
import { NotAcceptableError, TooLargeError } from "../../lib/util/errors.ts";
import { parseObject } from "../../lib/dicom/part10.ts";
import { decodeInstance } from "../../lib/imaging/pixel_transcode.ts";
import { LOSSY_SYNTAXES } from "../../lib/dicom/transfer_syntax.ts";
import { getString, type Part10Header } from "../../lib/dicom/dataset.ts";

const CORPUS = new URL("../testdata/pydicom/files/", import.meta.url);
const TESTDATA = new URL("../testdata/", import.meta.url);
const inline = new CodecPool({ size: 0 });

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

const DCMTK = ["dcmdjpeg", "dcmdjpls", "dcmdrle", "dcmcjpeg", "dcmcjpls", "dcmcrle"];

/** Missing prerequisites → skip (or fail under CI). */
async function prerequisites(
  t: Deno.TestContext,
  opts: { dcmtk?: boolean; opj?: boolean },
) {
  if (opts.dcmtk) {
    for (const tool of DCMTK) {
      if (!await has(tool)) return !unavailable(t, `dcmtk (${tool})`, "apt-get install dcmtk");
    }
  }
  if (opts.opj && !await has("opj_decompress", ["-h"])) {
    return !unavailable(t, "opj_decompress", "apt-get install libopenjp2-tools");
  }
  return true;
}

async function run(command: string, args: string[]): Promise<void> {
  const { code, stderr } = await new Deno.Command(command, { args, stdout: "null", stderr: "piped" })
    .output();
  if (code !== 0) throw new Error(`${command} ${args.join(" ")} failed: ${new TextDecoder().decode(stderr)}`);
}

interface Instance {
  name: string;
  bytes: Uint8Array;
  header: Part10Header;
  description: FrameDescription;
  frames: Uint8Array[];
}

/** Parses an instance and extracts each frame's bytes as the server would read them. */
async function instance(bytes: Uint8Array, name: string): Promise<Instance> {
  const header = await parseObject(bytes, name);
  const source = header.inflated ?? bytes;
  const frames = Array.from({ length: frameCount(header) }, (_, i) => {
    const plan = planFrame(header, i + 1);
    const data = new Uint8Array(plan.ranges.reduce((n, r) => n + r.length, 0));
    let at = 0;
    for (const r of plan.ranges) {
      data.set(source.subarray(r.offset, r.offset + r.length), at);
      at += r.length;
    }
    return plan.extract ? plan.extract(data) : data;
  });
  return { name, bytes, header, description: describeFrame(header), frames };
}

/** Sample values, pixel-interleaved, masked to Bits Stored (so sign extension does not matter). */
function samples(bytes: Uint8Array, d: FrameDescription): Float64Array {
  const n = d.rows * d.columns * d.samplesPerPixel;
  const width = d.bitsAllocated / 8;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const mask = 2 ** Math.min(d.bitsStored, 32);
  const out = new Float64Array(n);
  const planeSize = d.rows * d.columns;
  for (let i = 0; i < n; i++) {
    const at = d.planarConfiguration === 1 && d.samplesPerPixel > 1
      ? (i % d.samplesPerPixel) * planeSize + Math.floor(i / d.samplesPerPixel)
      : i;
    const raw = width === 1
      ? bytes[at]
      : width === 2
      ? view.getUint16(2 * at, true)
      : view.getUint32(4 * at, true);
    out[i] = raw % mask;
  }
  return out;
}

function compare(got: Float64Array, expected: Float64Array, bits: number): { maxDiff: number; psnr: number } {
  assert.equal(got.length, expected.length, "sample count");
  let maxDiff = 0;
  let se = 0;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - expected[i]);
    if (d > maxDiff) maxDiff = d;
    se += d * d;
  }
  const mse = se / got.length;
  const peak = 2 ** bits - 1;
  return { maxDiff, psnr: mse === 0 ? Infinity : 10 * Math.log10(peak * peak / mse) };
}

/** dcmtk's decompression of `file` (ELE, read back with lib/part10). */
async function dcmtkReference(file: string, ts: string, dir: string): Promise<Instance> {
  const last = ts.split(".").pop()!;
  const tool = ts === "1.2.840.10008.1.2.5"
    ? "dcmdrle"
    : last === "80" || last === "81"
    ? "dcmdjpls"
    : "dcmdjpeg";
  const out = `${dir}/ref-${crypto.randomUUID()}.dcm`;
  await run(tool, [file, out]);
  return await instance(await Deno.readFile(out), `${tool}(${file})`);
}

/** opj_decompress of one J2K/HTJ2K codestream, as interleaved samples. */
async function opjReference(codestream: Uint8Array, d: FrameDescription, dir: string): Promise<Float64Array> {
  const jp2 = codestream[0] === 0 && codestream[4] === 0x6a; // "jP  " box
  const input = `${dir}/${crypto.randomUUID()}.${jp2 ? "jp2" : "j2k"}`;
  const output = input.replace(/\.j(2k|p2)$/, ".rawl");
  await Deno.writeFile(input, codestream);
  await run("opj_decompress", ["-quiet", "-i", input, "-o", output]);
  const raw = await Deno.readFile(output);
  // RAWL: little endian, one component plane after another, 1 byte per sample up to 8 bits, else 2.
  const planeSize = d.rows * d.columns;
  const width = raw.length / (planeSize * d.samplesPerPixel);
  return samples(raw, { ...d, bitsAllocated: width * 8, planarConfiguration: 1 });
}

/** Checks every frame of `item` against `reference` samples. */
async function check(
  item: Instance,
  reference: (frame: number) => Float64Array | Promise<Float64Array>,
  lossless: boolean,
  photometric?: string,
) {
  for (let n = 1; n <= item.frames.length; n++) {
    const frame = await decodeFrame(item.header.transferSyntaxUid, item.frames[n - 1], item.description);
    if (photometric) assert.equal(frame.photometricInterpretation, photometric, `${item.name} photometric`);
    const got = samples(frame.bytes, frame);
    const { maxDiff, psnr } = compare(got, await reference(n), item.description.bitsStored);
    if (lossless) {
      assert.equal(maxDiff, 0, `${item.name} frame ${n}: lossless decoding differs by up to ${maxDiff}`);
    } else {assert.ok(
        psnr >= 40,
        `${item.name} frame ${n}: PSNR ${psnr.toFixed(1)} dB < 40 dB (max diff ${maxDiff})`,
      );}
  }
}

function isLossless(item: Instance): boolean {
  const ts = item.header.transferSyntaxUid;
  return !LOSSY_SYNTAXES.has(ts) && getString(item.header.dataset, 0x00282110) !== "01";
}

Deno.test("decodeRle() decodes literal and replicate runs, most significant byte first (PS3.5 G)", () => {
  // 2×2 16-bit: segment 1 (high bytes) = replicate 0x01 ×4, segment 2 (low bytes) = literal 1,2,3,4.
  const data = new Uint8Array(64 + 2 + 5);
  const view = new DataView(data.buffer);
  view.setUint32(0, 2, true);
  view.setUint32(4, 64, true);
  view.setUint32(8, 66, true);
  data.set([0xfd, 0x01], 64);
  data.set([0x03, 1, 2, 3, 4], 66);
  const image = decodeRle(data, { rows: 2, columns: 2, samplesPerPixel: 1, bitsAllocated: 16 });
  assert.deepEqual(Array.from(new Uint16Array(image.bytes.buffer)), [0x0101, 0x0102, 0x0103, 0x0104]);
  assert.throws(
    () => decodeRle(data, { rows: 2, columns: 2, samplesPerPixel: 3, bitsAllocated: 8 }),
    /2 segments for 3 sample\(s\) of 8 bits/,
  );
  assert.throws(
    () => decodeRle(data.subarray(0, 68), { rows: 2, columns: 2, samplesPerPixel: 1, bitsAllocated: 16 }),
    SyntaxError,
  );
});

Deno.test("decodeFrame() equals dcmtk / OpenJPEG for every compressed image of tests/testdata/pydicom", async (t) => {
  if (!await prerequisites(t, { dcmtk: true, opj: true })) return;
  const dir = await Deno.makeTempDir({ prefix: "decode-test-" });
  try {
    const manifest = await Deno.readTextFile(new URL("../MANIFEST.md", CORPUS));
    const names = manifest.split("\n").map((l) => l.split("|").map((c) => c.trim()))
      .filter((c) => c.length > 5 && c[1].endsWith(".dcm") && /1\.2\.840\.10008\.1\.2\.(4\.|5 )/.test(c[3]))
      .map((c) => c[1]);
    assert.ok(names.length >= 8, `compressed files in the manifest: ${names}`);
    for (const name of names) {
      const path = new URL(name, CORPUS).pathname;
      let item: Instance;
      try {
        item = await instance(await Deno.readFile(path), name);
      } catch {
        continue; // no usable pixel module (e.g. UN_sequence.dcm): not an image
      }
      if (!item.header.pixelData) continue;
      await t.step(`${name} (${item.header.transferSyntaxUid}, ${item.frames.length} frame(s))`, async () => {
        const ts = item.header.transferSyntaxUid;
        if (name === "JPEG2000-embedded-sequence-delimiter.dcm") {
          // The codestream itself is damaged (FFFE,E0DD written over its SIZ marker): a clean SyntaxError.
          await assert.rejects(
            decodeFrame(ts, item.frames[0], item.description),
            /Cannot decode JPEG 2000 data/,
          );
          return;
        }
        if (/\.4\.(9\d|20\d)$/.test(ts)) {
          await check(item, (n) => opjReference(item.frames[n - 1], item.description, dir), isLossless(item));
        } else {
          const ref = await dcmtkReference(path, ts, dir);
          await check(
            item,
            (n) => samples(ref.frames[n - 1], ref.description),
            isLossless(item),
            ref.description.photometricInterpretation,
          );
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decodeFrame() equals dcmtk on instances dcmtk compresses (JPEG, JPEG-LS, RLE; gray, RGB, 8–32 bits, multi-frame)", async (t) => {
  if (!await prerequisites(t, { dcmtk: true })) return;
  const dir = await Deno.makeTempDir({ prefix: "decode-test-" });
  try {
    const src = (name: string) => new URL(name, CORPUS).pathname;
    await run("dcmdrle", [src("SC_rgb_rle_2frame.dcm"), `${dir}/rgb.dcm`]);
    const sources: Record<string, string> = {
      ct16: src("CT_small.dcm"), // 128×128, 16-bit signed
      rgb: `${dir}/rgb.dcm`, // 2 frames 100×100 RGB
      gray8: src("image_dfl.dcm"), // 512×512 8-bit (deflated: dcmtk inflates it)
      dose32: src("rtdose.dcm"), // 15 frames 10×10, 32-bit
    };
    const cases: [string, string, string[]][] = [
      ["ct16", "dcmcjpeg", ["+el"]], // .57
      ["ct16", "dcmcjpeg", ["+e1"]], // .70
      ["ct16", "dcmcjpls", []], // .80
      ["ct16", "dcmcrle", []],
      ["rgb", "dcmcjpeg", ["+eb"]], // .50 YBR_FULL_422
      ["rgb", "dcmcjpeg", ["+e1"]], // .70 RGB
      ["rgb", "dcmcjpls", ["+il"]],
      ["rgb", "dcmcjpls", ["+is"]],
      ["rgb", "dcmcjpls", ["+in"]],
      ["rgb", "dcmcjpls", ["+en"]],
      ["rgb", "dcmcrle", []],
      ["gray8", "dcmcjpeg", ["+eb"]],
      ["gray8", "dcmcjpeg", ["+ee"]], // .51 with 8-bit samples
      ["gray8", "dcmcjpls", []],
      ["gray8", "dcmcjpls", ["+en", "+md", "3"]], // .81 near-lossless
      ["dose32", "dcmcrle", []], // 4 segments per sample
    ];
    for (const [source, tool, args] of cases) {
      await t.step(`${source}: ${tool} ${args.join(" ")}`, async () => {
        const file = `${dir}/${source}-${tool}${args.join("")}.dcm`;
        await run(tool, [...args, sources[source], file]);
        const item = await instance(await Deno.readFile(file), file);
        const ref = await dcmtkReference(file, item.header.transferSyntaxUid, dir);
        const lossless = isLossless(item) && !args.includes("+en");
        await check(
          item,
          (n) => samples(ref.frames[n - 1], ref.description),
          lossless,
          ref.description.photometricInterpretation,
        );
        if (lossless) {
          // ... and equal to the uncompressed source.
          const original = await instance(await Deno.readFile(sources[source]), source);
          await check(item, (n) => samples(original.frames[n - 1], original.description), true);
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decodeFrame() decodes the HTJ2K and JPEG 2000 samples of tests/testdata like OpenJPEG, lossless ones to their source", async (t) => {
  if (!await prerequisites(t, { opj: true })) return;
  const dir = await Deno.makeTempDir({ prefix: "decode-test-" });
  try {
    const sources: Record<string, string> = {
      "htj2k_lossless_ct.dcm": "CT_small.dcm",
      "htj2k_rpcl_rgb.dcm": "SC_rgb_rle_2frame.dcm",
      "htj2k_lossy_mr.dcm": "MR_small.dcm",
      "j2k_rgb.dcm": "SC_rgb_rle_2frame.dcm",
    };
    for (const [name, sourceName] of Object.entries(sources)) {
      await t.step(name, async () => {
        const item = await instance(await Deno.readFile(new URL(name, TESTDATA)), name);
        const lossless = isLossless(item);
        const rgb = item.description.samplesPerPixel === 3 ? "RGB" : undefined;
        await check(item, (n) => opjReference(item.frames[n - 1], item.description, dir), lossless, rgb);
        let source = await instance(await Deno.readFile(new URL(sourceName, CORPUS)), sourceName);
        if (source.header.pixelData?.encapsulated) {
          source = await instance(
            await decodeInstance(source.bytes, sourceName, { pool: inline }),
            sourceName,
          );
        }
        await check(item, (n) => samples(source.frames[n - 1], source.description), lossless);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decodeFrame() reports damaged data as a SyntaxError naming the codec", async () => {
  const d: FrameDescription = {
    rows: 8,
    columns: 8,
    samplesPerPixel: 1,
    bitsAllocated: 8,
    bitsStored: 8,
    pixelRepresentation: 0,
    photometricInterpretation: "MONOCHROME2",
    planarConfiguration: 0,
  };
  const junk = new Uint8Array([0xff, 0xd8, 0xff, 0xc0, 0, 11, 8, 0, 8, 0, 8, 1, 1, 0x11, 0, 0xff, 0xd9]);
  await assert.rejects(decodeFrame("1.2.840.10008.1.2.4.50", junk, d), /Cannot decode JPEG data/);
  await assert.rejects(
    decodeFrame("1.2.840.10008.1.2.4.80", junk, d),
    /Cannot decode JPEG-LS data \(CharLS\)/,
  );
  await assert.rejects(
    decodeFrame("1.2.840.10008.1.2.4.90", junk, d),
    /Cannot decode JPEG 2000 data \(OpenJPEG\)/,
  );
  await assert.rejects(
    decodeFrame("1.2.840.10008.1.2.4.201", junk, d),
    /Cannot decode HTJ2K data \(OpenJPH\)/,
  );
  await assert.rejects(decodeFrame("1.2.840.10008.1.2.4.100", junk, d), RangeError);
  // The codecs still work after a failure (a trapped WASM instance is replaced).
  const pixels = Uint8Array.from({ length: 64 }, (_, i) => i * 3);
  const j2k = await encodeJ2k(pixels, {
    width: 8,
    height: 8,
    components: 1,
    bitsPerSample: 8,
    signed: false,
  });
  const frame = await decodeFrame("1.2.840.10008.1.2.4.90", j2k, d);
  assert.deepEqual(frame.bytes, pixels);
});

Deno.test("decodedFrame() refuses frames above the size bound with 413 and frames without a codec with 406", async () => {
  const item = await instance(await Deno.readFile(new URL("htj2k_lossless_ct.dcm", TESTDATA)), "ct");
  await assert.rejects(
    decodedFrame(item.header, item.frames[0], { pool: inline, maxFrameBytes: 1000 }),
    (e: unknown) =>
      e instanceof TooLargeError && toHttpError(e).status === 413 &&
      /Frame too large to decode: 128×128×1/.test(e.message),
  );
  const ok = await decodedFrame(item.header, item.frames[0], { pool: inline });
  assert.equal(ok.bytes.length, 128 * 128 * 2);
  const video = { ...item.header, transferSyntaxUid: "1.2.840.10008.1.2.4.102" };
  await assert.rejects(
    decodedFrame(video, item.frames[0], { pool: inline }),
    (e: unknown) => e instanceof NotAcceptableError && toHttpError(e).status === 406,
  );
});

Deno.test("CodecPool decodes in workers like inline decoding, in parallel, and survives a failure", async () => {
  const pool = new CodecPool({ size: 2 });
  try {
    const items = await Promise.all(
      ["htj2k_lossless_ct.dcm", "htj2k_rpcl_rgb.dcm", "j2k_rgb.dcm"].map(async (n) =>
        instance(await Deno.readFile(new URL(n, TESTDATA)), n)
      ),
    );
    const jobs: Promise<[DecodedFrame, DecodedFrame]>[] = [];
    for (const item of items) {
      for (const data of item.frames) {
        const ts = item.header.transferSyntaxUid;
        jobs.push(
          Promise.all([pool.decode(ts, data, item.description), inline.decode(ts, data, item.description)]),
        );
      }
    }
    for (const [worker, local] of await Promise.all(jobs)) {
      assert.deepEqual(worker.bytes, local.bytes);
      assert.equal(worker.photometricInterpretation, local.photometricInterpretation);
    }
    assert.equal(pool.size, 2, "ran in workers, not inline");
    await assert.rejects(
      pool.decode("1.2.840.10008.1.2.4.90", new Uint8Array(20), items[0].description),
      (e: unknown) => e instanceof SyntaxError && /OpenJPEG/.test((e as Error).message),
    );
    const again = await pool.decode(
      items[0].header.transferSyntaxUid,
      items[0].frames[0],
      items[0].description,
    );
    assert.equal(again.bytes.length, 128 * 128 * 2);
  } finally {
    pool.close();
  }
});

Deno.test("decodeInstance() writes an Explicit VR Little Endian instance with the decoded frames", async (t) => {
  if (!await prerequisites(t, { dcmtk: true })) return;
  const dir = await Deno.makeTempDir({ prefix: "decode-test-" });
  try {
    for (
      const name of [
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_rle_2frame.dcm",
        "MR_small_jp2klossless.dcm",
        "JPGExtended.dcm",
      ]
    ) {
      await t.step(name, async () => {
        const path = new URL(name, CORPUS).pathname;
        const source = await instance(await Deno.readFile(path), name);
        const out = await decodeInstance(source.bytes, name, { pool: inline });
        const back = await instance(out, `decoded ${name}`);
        assert.equal(back.header.transferSyntaxUid, "1.2.840.10008.1.2.1");
        assert.equal(back.frames.length, source.frames.length);
        assert.equal(back.header.pixelData?.encapsulated, false);
        for (let n = 1; n <= source.frames.length; n++) {
          const frame = await decodeFrame(
            source.header.transferSyntaxUid,
            source.frames[n - 1],
            source.description,
          );
          assert.deepEqual(back.frames[n - 1], frame.bytes, `${name} frame ${n}`);
        }
        const lossy = LOSSY_SYNTAXES.has(source.header.transferSyntaxUid);
        if (lossy) assert.equal(getString(back.header.dataset, 0x00282110), "01", "Lossy Image Compression");
        if (source.description.samplesPerPixel === 3) {
          assert.equal(back.description.photometricInterpretation, "RGB");
          assert.equal(back.description.planarConfiguration, 0);
        }
        // dcmtk reads it and finds the same pixels.
        await Deno.writeFile(`${dir}/out.dcm`, out);
        await run("dcmdump", ["-q", `${dir}/out.dcm`]);
        for (const [tag, value] of source.header.dataset.elements) {
          if (tag === 0x7fe00010 || tag === 0x00280004 || tag === 0x00280006 || tag === 0x00282110) continue;
          const copy = back.header.dataset.elements.get(tag);
          assert.ok(copy, `${name}: element ${tag.toString(16)} kept`);
          if (value.bytes) {
            assert.deepEqual(copy.bytes, value.bytes, `${name}: element ${tag.toString(16)} value`);
          }
        }
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
