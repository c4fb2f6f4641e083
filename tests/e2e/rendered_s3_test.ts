/**
 * Rendered and thumbnail resources end to end through `Deno.serve`, from a local folder and from a real S3
 * server, with frames read by ranged GETs and decoded/rendered on a worker pool; plus transcoding of compressed
 * instances read from the store. The router is built here with `registerRendered` (the same call `lib/app/handler.ts`
 * makes once wired).
 */

import assert from "node:assert/strict";
import { CodecPool } from "../../lib/imaging/pool.ts";
import { parseConfig } from "../../lib/config/config.ts";
import { decodedFrame } from "../../lib/imaging/decode.ts";
import { planFrame } from "../../lib/dicom/frames.ts";
import { HeaderCache, loadHeader } from "../../lib/objects/header_cache.ts";
import { parseObject } from "../../lib/dicom/part10.ts";
import { renderAttributes, renderFrame } from "../../lib/imaging/render.ts";
import { openInstance } from "../../lib/objects/open_instance.ts";
import { decodeInstance, transcodingEncoder } from "../../lib/imaging/pixel_transcode.ts";
import { type CorpusFile, pydicomCorpus } from "../_corpus.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { observe, onFolderAndS3, type SuiteBucket } from "../_stores.ts";
import { testHandler, testServer } from "../_server.ts";
import { getNumber } from "../../lib/dicom/dataset.ts";

const AET = "RND";
const TESTDATA = new URL("../testdata/", import.meta.url);
const OHIF_ACCEPT = 'multipart/related; type="application/octet-stream"';

function instancePath(key: string): string {
  const [study, series, file] = key.split("/");
  return `/aets/${AET}/studies/${study}/series/${series}/instances/${file.slice(0, -4)}`;
}

/** Width and height from a JPEG's SOF marker or a PNG's IHDR. */
function imageSize(bytes: Uint8Array): { width: number; height: number } {
  if (bytes[0] === 0x89) {
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    return { width: view.getUint32(16), height: view.getUint32(20) };
  }
  let p = 2;
  while (p < bytes.length) {
    const marker = bytes[p + 1];
    if (marker >= 0xc0 && marker <= 0xc3) {
      return { height: bytes[p + 5] << 8 | bytes[p + 6], width: bytes[p + 7] << 8 | bytes[p + 8] };
    }
    p += 2 + (bytes[p + 2] << 8 | bytes[p + 3]);
  }
  throw new Error("No SOF marker");
}

async function testdataFiles(): Promise<CorpusFile[]> {
  const out: CorpusFile[] = [];
  for (const name of ["htj2k_lossless_ct.dcm", "htj2k_rpcl_rgb.dcm", "htj2k_lossy_mr.dcm", "j2k_rgb.dcm"]) {
    const bytes = await Deno.readFile(new URL(name, TESTDATA));
    const header = await parseObject(bytes, name);
    const uid = (tag: number) =>
      new TextDecoder().decode(header.dataset.elements.get(tag)!.bytes!).replace(/\0+$/, "").trim();
    // A study of their own, so study-level rendering has a known answer.
    out.push({
      key: `2.25.8000/2.25.8000.${out.length + 1}/${uid(0x00080018)}.dcm`,
      name,
      transferSyntax: header.transferSyntaxUid,
      bytes,
    });
  }
  return out;
}

async function suite(
  t: Deno.TestContext,
  make: () => Promise<SuiteBucket>,
) {
  const corpus = await pydicomCorpus();
  const files = [...corpus, ...await testdataFiles()];
  const { store, bucket, cleanup } = await make();
  for (const f of files) await store.put(bucket, f.key, f.bytes, { size: f.bytes.length });
  const observed = observe(store);
  // every image is asked for at once below: no per-client limit (it is tested in tests/security/limits_test.ts)
  const config = parseConfig({ AETS: `${AET}=${bucket}`, CLIENT_CONCURRENCY: "0" });
  const headers = new HeaderCache();
  const pool = new CodecPool({ size: 2 });
  const server = testServer({
    store: observed,
    config,
    capabilities: { reEncode: true },
    headerCache: headers,
    handler: { log: () => {}, rendered: { pool } },
  });
  const base = server.url;
  const parsed = new Map<string, Awaited<ReturnType<typeof parseObject>>>();
  for (const f of files) {
    try {
      parsed.set(f.key, await parseObject(f.bytes, f.name));
    } catch { /* malformed corpus files */ }
  }
  const images = files.filter((f) => {
    const h = parsed.get(f.key);
    if (!h?.pixelData) return false;
    try {
      planFrame(h, 1);
      return f.name !== "JPEG2000-embedded-sequence-delimiter.dcm" && !f.name.startsWith("MR_truncated");
    } catch {
      return false;
    }
  });
  try {
    await t.step(`instance rendered (JPEG, full size) for every image (${images.length})`, async () => {
      const responses = await Promise.all(images.map((f) => fetch(`${base}${instancePath(f.key)}/rendered`)));
      for (const [i, response] of responses.entries()) {
        const f = images[i];
        const body = new Uint8Array(await response.arrayBuffer());
        assert.equal(response.status, 200, `${f.name}: ${new TextDecoder().decode(body.subarray(0, 300))}`);
        assert.equal(response.headers.get("content-type"), "image/jpeg");
        assert.deepEqual(Array.from(body.subarray(0, 2)), [0xff, 0xd8], f.name);
        const h = parsed.get(f.key)!;
        assert.equal(imageSize(body).height, getNumber(h.dataset, 0x00280010), f.name);
      }
    });

    await t.step("?accept=image/png wins over OHIF's Accept header and equals renderFrame()", async () => {
      const f = files.find((x) => x.name === "htj2k_lossless_ct.dcm")!;
      const response = await fetch(
        `${base}${instancePath(f.key)}/rendered?accept=image%2Fpng&window=40,400`,
        {
          headers: { accept: OHIF_ACCEPT },
        },
      );
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-type"), "image/png");
      const got = new Uint8Array(await response.arrayBuffer());
      const h = await parseObject(f.bytes, f.name);
      const plan = planFrame(h, 1);
      const r = plan.ranges[0];
      const frame = await decodedFrame(h, f.bytes.subarray(r.offset, r.offset + r.length), { pool });
      const expected = await renderFrame(frame, renderAttributes(h), {
        mediaType: "image/png",
        window: { center: 40, width: 400 },
      });
      assert.deepEqual(got, expected.bytes);
      const multipart = await fetch(`${base}${instancePath(f.key)}/rendered`, {
        headers: { accept: 'multipart/related; type="image/png"' },
      });
      const bytes = new Uint8Array(await multipart.arrayBuffer());
      const parts = parseMultipart(bytes, boundaryOf(multipart.headers.get("content-type"))).parts;
      assert.equal(parts.length, 1);
      assert.equal(parts[0].headers["content-type"], "image/png");
    });

    await t.step("frame-level rendered: frames differ, one frame at a time, 400 past the end", async () => {
      const f = files.find((x) => x.name === "SC_rgb_rle_2frame.dcm" || x.name === "htj2k_rpcl_rgb.dcm")!;
      const one = await fetch(`${base}${instancePath(f.key)}/frames/1/rendered?accept=image/png`);
      const two = await fetch(`${base}${instancePath(f.key)}/frames/2/rendered?accept=image/png`);
      assert.equal(one.status, 200);
      assert.equal(two.status, 200);
      assert.notDeepEqual(new Uint8Array(await one.arrayBuffer()), new Uint8Array(await two.arrayBuffer()));
      for (
        const [path, pattern] of [["frames/3/rendered", /out of range/], [
          "frames/1,2/rendered",
          /one frame at a time/,
        ]] as const
      ) {
        const response = await fetch(`${base}${instancePath(f.key)}/${path}`);
        assert.equal(response.status, 400, path);
        assert.match((await response.json()).error, pattern);
      }
    });

    await t.step("thumbnails: OHIF's viewport, cached by ETag, 304 on If-None-Match", async () => {
      const f = files.find((x) => x.name === "htj2k_lossless_ct.dcm")!;
      const url = `${base}${instancePath(f.key)}/thumbnail?viewport=64,64&accept=image%2Fjpeg`;
      const first = await fetch(url, { headers: { accept: OHIF_ACCEPT } });
      assert.equal(first.status, 200);
      const body = new Uint8Array(await first.arrayBuffer());
      assert.deepEqual(imageSize(body), { width: 64, height: 64 });
      const etag = first.headers.get("etag")!;
      assert.match(etag, /^"[^"]+-[a-z0-9]+"$/);
      const before = observed.calls.length;
      const again = await fetch(url, { headers: { accept: OHIF_ACCEPT } });
      assert.deepEqual(new Uint8Array(await again.arrayBuffer()), body);
      const gets = observed.calls.slice(before).filter((c) => c.startsWith("get "));
      assert.deepEqual(gets, [], "the cached thumbnail needs no read of the object");
      const notModified = await fetch(url, { headers: { "if-none-match": etag } });
      assert.equal(notModified.status, 304);
      await notModified.body?.cancel();
      const defaultSize = await fetch(`${base}${instancePath(f.key)}/thumbnail`);
      assert.deepEqual(imageSize(new Uint8Array(await defaultSize.arrayBuffer())), {
        width: 256,
        height: 256,
      });
    });

    await t.step("series and study thumbnails use the middle instance with pixels (key order)", async () => {
      const mr = images.filter((f) => f.key.startsWith("1.3.6.1.4.1.5962.1.2.4.20040826185059.5457/"));
      if (mr.length > 0) {
        const [study, series] = mr[0].key.split("/");
        const keys = files.filter((f) => f.key.startsWith(`${study}/${series}/`)).map((f) => f.key).sort();
        const middle = keys[Math.floor((keys.length - 1) / 2)];
        const seriesThumb = await fetch(
          `${base}/aets/${AET}/studies/${study}/series/${series}/thumbnail?viewport=128,128`,
        );
        assert.equal(seriesThumb.status, 200);
        const instanceThumb = await fetch(`${base}${instancePath(middle)}/thumbnail?viewport=128,128`);
        assert.equal(instanceThumb.status, 200, middle);
        assert.deepEqual(
          new Uint8Array(await seriesThumb.arrayBuffer()),
          new Uint8Array(await instanceThumb.arrayBuffer()),
        );
      }
      // Study 2.25.8000 has four one-instance series: the first in key order is the representative.
      const study = await fetch(`${base}/aets/${AET}/studies/2.25.8000/rendered?accept=image/png`);
      const first = files.find((f) => f.key.startsWith("2.25.8000/2.25.8000.1/"))!;
      const direct = await fetch(`${base}${instancePath(first.key)}/rendered?accept=image/png`);
      assert.equal(study.status, 200);
      assert.deepEqual(new Uint8Array(await study.arrayBuffer()), new Uint8Array(await direct.arrayBuffer()));
    });

    await t.step("no pixel data (SR, ECG), undecodable data and bad parameters are clean 4xx", async () => {
      for (const name of ["test-SR.dcm", "waveform_ecg.dcm"]) {
        const noPixels = files.find((x) => x.name === name);
        if (!noPixels) continue;
        for (const kind of ["rendered", "thumbnail"]) {
          const answer: Response = await fetch(`${base}${instancePath(noPixels.key)}/${kind}`);
          assert.equal(answer.status, 404, `${name} ${kind}`);
          assert.match((await answer.json()).error, /has no pixel data/);
        }
        const [study, series] = noPixels.key.split("/");
        const seriesResponse = await fetch(`${base}/aets/${AET}/studies/${study}/series/${series}/thumbnail`);
        assert.equal(seriesResponse.status, 404);
        assert.match((await seriesResponse.json()).error, /no instance of .* has pixel data/);
      }
      const broken = files.find((x) => x.name === "JPEG2000-embedded-sequence-delimiter.dcm");
      if (broken) {
        const response = await fetch(`${base}${instancePath(broken.key)}/rendered`);
        assert.equal(response.status, 422);
        assert.match((await response.json()).error, /Cannot decode .*JPEG 2000/);
      }
      const f = files.find((x) => x.name === "htj2k_lossless_ct.dcm")!;
      for (
        const [query, status, pattern] of [
          ["window=abc", 400, /Invalid window/],
          ["window=40,0", 400, /Invalid window/],
          ["viewport=0,10", 400, /Invalid viewport/],
          ["viewport=64,64,500,0,10,10", 400, /outside the 128×128 image/],
          ["quality=101", 400, /Invalid quality/],
          ["accept=application/pdf", 406, /image\/jpeg or image\/png/],
        ] as const
      ) {
        const response = await fetch(`${base}${instancePath(f.key)}/rendered?${query}`);
        assert.equal(response.status, status, query);
        assert.match((await response.json()).error, pattern, query);
      }
      const missing = await fetch(
        `${base}/aets/${AET}/studies/2.25.1/series/2.25.2/instances/2.25.3/rendered`,
      );
      assert.equal(missing.status, 404);
      await missing.body?.cancel();
    });

    await t.step(
      "compressed instances read from the store transcode to Explicit VR Little Endian",
      async () => {
        const encode = transcodingEncoder(() => {
          throw new Error("fallback not expected");
        }, { pool });
        for (const f of images.filter((x) => /\.4\.|\.5$/.test(x.transferSyntax)).slice(0, 12)) {
          const opened = (await openInstance(observed, bucket, f.key))!;
          const body = encode(opened, { transferSyntax: "1.2.840.10008.1.2.1", convert: true }, bucket);
          const got = new Uint8Array(await new Response(body).arrayBuffer());
          assert.deepEqual(got, await decodeInstance(f.bytes, f.key, { pool }), f.name);
          const header = await loadHeader(observed, headers, bucket, opened.info);
          assert.equal(header.transferSyntaxUid, f.transferSyntax);
        }
        assert.equal(observed.openBodies(), 0, "every body read or released");
      },
    );
  } finally {
    pool.close();
    await server.close();
    await cleanup();
  }
}

onFolderAndS3("rendered and thumbnail resources end to end", suite);

Deno.test("createHandler() serves decoded frames, transcoded instances and rendered images", async (t) => {
  const wanted = [
    "MR_small_jp2klossless.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle_2frame.dcm",
    "test-SR.dcm",
  ];
  const files = (await pydicomCorpus()).filter((f) => wanted.includes(f.name));
  assert.equal(files.length, wanted.length, "tests/testdata/pydicom/MANIFEST.md lists every wanted file");
  const { MemoryStore } = await import("../../lib/store/memory_store.ts");
  const { closeDefaultPool } = await import("../../lib/imaging/pool.ts");
  const store = new MemoryStore();
  store.createBucket("pacs");
  for (const f of files) await store.put("pacs", f.key, f.bytes);
  const config = parseConfig({ AETS: "PACS=pacs" });
  const { handler } = testHandler({ store, config, capabilities: { reEncode: true, decode: true } });
  const get = (path: string, accept?: string) =>
    handler(new Request(`http://localhost${path}`, { headers: accept ? { accept } : {} }));
  const pathOf = (name: string) =>
    `/aets/PACS${instancePath(files.find((f) => f.name === name)!.key).slice(`/aets/${AET}`.length)}`;
  const partsOf = async (response: Response) =>
    parseMultipart(
      new Uint8Array(await response.arrayBuffer()),
      boundaryOf(response.headers.get("content-type")),
    ).parts;
  try {
    await t.step("rendered and thumbnail routes", async () => {
      const probe = await get(
        `${pathOf("SC_rgb_rle_2frame.dcm")}/frames/2/rendered?accept=image%2Fpng`,
        OHIF_ACCEPT,
      );
      assert.equal(probe.status, 200);
      assert.equal(probe.headers.get("content-type"), "image/png");
      await probe.body?.cancel();
      const sr = await get(`${pathOf("test-SR.dcm")}/thumbnail`);
      assert.equal(sr.status, 404);
      assert.match((await sr.json()).error, /no pixel data/);
    });
    await t.step("frames as application/octet-stream (no transfer-syntax) are decoded", async () => {
      const response = await get(`${pathOf("SC_rgb_rle_2frame.dcm")}/frames/1,2`, OHIF_ACCEPT);
      assert.equal(response.status, 200);
      const parts = await partsOf(response);
      assert.equal(parts.length, 2);
      assert.equal(
        parts[0].headers["content-type"],
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
      );
      assert.equal(parts[1].body.length, 100 * 100 * 3);
      const stored = await get(
        `${pathOf("MR_small_jp2klossless.dcm")}/frames/1`,
        `${OHIF_ACCEPT}; transfer-syntax=*`,
      );
      assert.match(
        (await partsOf(stored))[0].headers["content-type"],
        /^image\/jp2; transfer-syntax=1\.2\.840\.10008\.1\.2\.4\.90$/,
      );
    });
    await t.step(
      "instances: lossless → Explicit VR Little Endian, lossy → as stored with a Warning",
      async () => {
        const response = await get(
          pathOf("MR_small_jp2klossless.dcm"),
          'multipart/related; type="application/dicom"',
        );
        const [part] = await partsOf(response);
        assert.equal(part.headers["content-type"], "application/dicom; transfer-syntax=1.2.840.10008.1.2.1");
        const back = await parseObject(part.body, "decoded");
        assert.equal(back.transferSyntaxUid, "1.2.840.10008.1.2.1");
        assert.equal(back.pixelData?.encapsulated, false);
        const lossy = await get(pathOf("SC_rgb_jpeg_dcmtk.dcm"));
        assert.match(
          lossy.headers.get("warning") ?? "",
          /lossy transfer syntax 1\.2\.840\.10008\.1\.2\.4\.50/,
        );
        await lossy.body?.cancel();
        const forced = await get(
          pathOf("SC_rgb_jpeg_dcmtk.dcm"),
          'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        );
        const decoded = await parseObject((await partsOf(forced))[0].body, "forced");
        assert.equal(getNumber(decoded.dataset, 0x00280006), 0);
      },
    );
  } finally {
    closeDefaultPool();
  }
});
