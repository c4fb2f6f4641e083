/**
 * End to end through `Deno.serve`: metadata, bulk data, frames and re-encoding of every corpus
 * file, from a local folder and from a real S3 server. What the server serves from ranged reads
 * must equal what the same parser finds in the whole file; the parser itself is checked against
 * dcmtk and pydicom in part10/dicom_json/frames tests.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../../lib/config/config.ts";
import {
  type DicomJson,
  stringifyDicomJson,
  toDicomJson,
  toLittleEndian,
} from "../../lib/dicom/dicom_json.ts";
import { frameCount, planFrame } from "../../lib/dicom/frames.ts";
import { parseObject } from "../../lib/dicom/part10.ts";
import { buildInstance, builtCorpus, CORPUS_DIR, type CorpusFile, md5, pydicomCorpus } from "../_corpus.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { observe, onFolderAndS3, type SuiteBucket } from "../_stores.ts";
import { RE_ENCODABLE } from "../../lib/imaging/syntax_choice.ts";
import { testServer } from "../_server.ts";
import type { DicomDataset, DicomElement, Part10Header } from "../../lib/dicom/dataset.ts";

const AET = "PIX";

function instancePath(key: string): string {
  const [study, series, file] = key.split("/");
  return `/aets/${AET}/studies/${study}/series/${series}/instances/${file.slice(0, -4)}`;
}

/** Every BulkDataURI in a DICOM JSON object with the path of tags and item indexes that leads to it. */
function bulkUris(json: DicomJson, out: string[] = []): string[] {
  for (const attr of Object.values(json)) {
    if (attr.BulkDataURI) out.push(attr.BulkDataURI);
    if (attr.vr === "SQ" && Array.isArray(attr.Value)) {
      for (const item of attr.Value) bulkUris(item as DicomJson, out);
    }
  }
  return out;
}

function elementAt(dataset: DicomDataset, path: string): DicomElement {
  const parts = path.split("/");
  let ds = dataset;
  for (let i = 0; i < parts.length - 1; i += 2) {
    ds = ds.elements.get(parseInt(parts[i], 16))!.items![Number(parts[i + 1])];
  }
  return ds.elements.get(parseInt(parts.at(-1)!, 16))!;
}

/** Pixel Data declared longer than the file (MR_truncated.dcm): listed in metadata, its pixels unreadable. */
function cutShort(header: Part10Header, bytes: Uint8Array): boolean {
  const pixel = header.pixelData;
  return pixel !== undefined && pixel.length >= 0 && !header.deflated &&
    pixel.offset + pixel.length > bytes.length;
}

/** Reading the pixels of a cut-short object is a 502 naming it. */
async function shortRead(response: Response, key: string): Promise<void> {
  assert.equal(response.status, 502, key);
  assert.match((await response.json()).error, new RegExp(`Short read of ${key.replaceAll(".", "\\.")}`));
}

async function parts(response: Response): Promise<{ headers: Record<string, string>; body: Uint8Array }[]> {
  const bytes = new Uint8Array(await response.arrayBuffer());
  assert.equal(response.status, 200, new TextDecoder().decode(bytes.subarray(0, 300)));
  return parseMultipart(bytes, boundaryOf(response.headers.get("content-type"))).parts;
}

async function malformedFiles(): Promise<CorpusFile[]> {
  const names = [
    "MR_truncated.dcm",
    "rtplan_truncated.dcm",
    "badVR.dcm",
    "no_meta.dcm",
    "meta_missing_tsyntax.dcm",
  ];
  const out: CorpusFile[] = [];
  for (const [i, name] of names.entries()) {
    try {
      const bytes = await Deno.readFile(new URL(`files/${name}`, CORPUS_DIR));
      out.push({ key: `2.25.777/2.25.777.1/2.25.777.1.${i + 1}.dcm`, name, transferSyntax: "?", bytes });
    } catch { /* corpus absent */ }
  }
  return out;
}

async function suite(
  t: Deno.TestContext,
  make: () => Promise<SuiteBucket>,
) {
  const multiframe: CorpusFile = {
    key: "2.25.300/2.25.300.1/2.25.300.1.1.dcm",
    name: "built 96-frame cine",
    transferSyntax: "1.2.840.10008.1.2.1",
    bytes: buildInstance({
      study: "2.25.300",
      series: "2.25.300.1",
      sop: "2.25.300.1.1",
      frames: 96,
      pixelBytes: 64 * 64 * 2,
    }),
  };
  const all = [...await pydicomCorpus(), ...builtCorpus(), multiframe];
  const broken = await malformedFiles();
  const full = new Map<string, Part10Header>();
  const files: CorpusFile[] = [];
  for (const f of all) {
    try {
      full.set(f.key, await parseObject(f.bytes, f.name, { bulkThreshold: 1024 }));
      files.push(f);
    } catch {
      broken.push(f); // malformed files of the corpus: the server must fail cleanly on them
    }
  }
  const { store, bucket, cleanup } = await make();
  for (const f of [...files, ...broken]) await store.put(bucket, f.key, f.bytes, { size: f.bytes.length });
  const observed = observe(store);
  const config = parseConfig({ AETS: `${AET}=${bucket}` });
  const server = testServer({
    store: observed,
    config,
    capabilities: { reEncode: true },
    handler: { log: () => {} },
  });
  const base = server.url;
  try {
    await t.step(`metadata of every instance (${files.length}) equals a whole-file parse`, async () => {
      for (const f of files) {
        const url = base + instancePath(f.key);
        const response = await fetch(`${url}/metadata`, { headers: { accept: "application/dicom+json" } });
        const text = await response.text();
        assert.equal(response.status, 200, `${f.name}: ${text.slice(0, 200)}`);
        assert.match(response.headers.get("content-type")!, /^application\/dicom\+json/);
        const expected = toDicomJson(full.get(f.key)!, {
          bulkDataUri: (path, el) =>
            el.bytes && el.bytes.byteLength <= 1024 && path !== "7FE00010"
              ? undefined
              : `${url}/bulkdata/${path}`,
        });
        assert.equal(text.trim(), `[${stringifyDicomJson(expected)}]`, f.name);
      }
    });

    await t.step("every BulkDataURI answers with the value's bytes, and honours Range", async () => {
      let checked = 0;
      for (const f of files) {
        const url = base + instancePath(f.key);
        const [json] = await (await fetch(`${url}/metadata`)).json() as DicomJson[];
        const loaded = await parseObject(f.bytes, f.name, {
          bulkThreshold: Infinity,
          textBulkThreshold: Infinity,
        });
        for (const uri of bulkUris(json)) {
          const path = uri.slice(`${url}/bulkdata/`.length);
          const header = full.get(f.key)!;
          if (path === "7FE00010" && cutShort(header, f.bytes)) {
            await shortRead(await fetch(uri, { headers: { accept: "application/octet-stream" } }), f.key);
            continue;
          }
          if (path === "7FE00010" && header.pixelData?.encapsulated) {
            const got = await parts(await fetch(uri));
            assert.equal(got.length, frameCount(header), `${f.name}: one part per frame`);
            continue;
          }
          const el = path === "7FE00010" && !elementAt(loaded.dataset, path)?.bytes
            ? undefined
            : elementAt(loaded.dataset, path);
          const value = el?.bytes ??
            f.bytes.subarray(header.pixelData!.offset, header.pixelData!.offset + header.pixelData!.length);
          const expected = toLittleEndian(value, el?.vr ?? header.pixelData!.vr, header.littleEndian);
          const single = await fetch(uri, { headers: { accept: "application/octet-stream" } });
          assert.equal(single.status, 200, `${f.name} ${path}`);
          assert.equal(
            await md5(new Uint8Array(await single.arrayBuffer())),
            await md5(expected),
            `${f.name} ${path}`,
          );
          const multi = await parts(await fetch(uri));
          assert.equal(await md5(multi[0].body), await md5(expected), `${f.name} ${path} (multipart)`);
          const ranged = await fetch(uri, {
            headers: { accept: "application/octet-stream", range: "bytes=2-9" },
          });
          assert.equal(ranged.status, 206, `${f.name} ${path} (${expected.length} bytes)`);
          assert.equal(ranged.headers.get("content-range"), `bytes 2-9/${expected.length}`);
          assert.deepEqual(new Uint8Array(await ranged.arrayBuffer()), expected.subarray(2, 10));
          checked++;
        }
      }
      assert.ok(checked > 0 || files.length < 20, "bulk data was exercised");
    });

    await t.step("frames: every frame of every image, stored bytes, one ranged read each", async () => {
      for (const f of files) {
        const header = full.get(f.key)!;
        if (!header.pixelData) continue;
        let count: number;
        try {
          count = frameCount(header);
          planFrame(header, 1);
        } catch {
          continue; // frames this file cannot be split into are covered by frames_test
        }
        const list = Array.from({ length: count }, (_, i) => i + 1).join(",");
        const response = await fetch(`${base}${instancePath(f.key)}/frames/${list}`, {
          headers: { accept: "multipart/related; type=application/octet-stream; transfer-syntax=*" },
        });
        if (cutShort(header, f.bytes)) {
          await shortRead(response, f.key);
          continue;
        }
        const got = await parts(response);
        assert.equal(got.length, count, f.name);
        for (let n = 1; n <= count; n++) {
          const plan = planFrame(header, n);
          const raw = new Uint8Array(plan.ranges.reduce((s, r) => s + r.length, 0));
          let at = 0;
          for (const r of plan.ranges) {
            raw.set((header.inflated ?? f.bytes).subarray(r.offset, r.offset + r.length), at);
            at += r.length;
          }
          const expected = plan.extract ? plan.extract(raw) : raw;
          assert.equal(await md5(got[n - 1].body), await md5(expected), `${f.name} frame ${n}`);
          assert.match(
            got[n - 1].headers["content-type"],
            new RegExp(`^${plan.mediaType.replace("/", "\\/")}; transfer-syntax=`),
          );
        }
      }
    });

    await t.step("frame 50 of a 96-frame cine is one small ranged read", async () => {
      const before = observed.calls.length;
      const url = `${base}${instancePath(multiframe.key)}/frames/50`;
      const response = await fetch(url, { headers: { accept: "application/octet-stream" } });
      assert.equal(response.status, 200);
      assert.equal((await response.arrayBuffer()).byteLength, 64 * 64 * 2);
      const gets = observed.calls.slice(before).filter((c) => c.startsWith("get "));
      assert.equal(gets.length, 1, `one GET (header cached): ${gets}`);
      assert.match(gets[0], / \d+-\d+$/, "a ranged GET");
    });

    await t.step("a warm frame is one ranged GET and no HEAD; a replaced object is read afresh", async () => {
      const url = `${base}${instancePath(multiframe.key)}/frames/2`;
      const frame = async () => {
        const response = await fetch(url, { headers: { accept: "application/octet-stream" } });
        assert.equal(response.status, 200);
        return new Uint8Array(await response.arrayBuffer());
      };
      await frame();
      const before = observed.calls.length;
      const old = await frame();
      const warm = observed.calls.slice(before);
      assert.deepEqual(warm.filter((c) => !c.startsWith("get ")), [], `only GETs: ${warm}`);
      assert.equal(warm.length, 1, `${warm}`);
      // Replaced by another tool with different pixels and a longer header (frame offsets move).
      const replacement = buildInstance({
        study: "2.25.300",
        series: "2.25.300.1",
        sop: "2.25.300.1.1",
        frames: 96,
        pixelBytes: 64 * 64 * 2,
        patientName: "Replaced^With^A^Longer^Name^Than^Before",
      });
      const header = await parseObject(replacement, "replacement", { bulkThreshold: 1024 });
      const plan = planFrame(header, 2);
      const expected = replacement.subarray(
        plan.ranges[0].offset,
        plan.ranges[0].offset + plan.ranges[0].length,
      );
      expected.fill(0x5a); // new pixels in frame 2
      assert.notDeepEqual(expected, old);
      await store.put(bucket, multiframe.key, replacement);
      try {
        assert.deepEqual(await frame(), expected, "the new object's frame, not the old header's offsets");
        assert.deepEqual(await frame(), expected);
      } finally {
        await store.put(bucket, multiframe.key, multiframe.bytes);
      }
      assert.deepEqual(await frame(), old);
    });

    await t.step("frame errors: 0, past the end, not a number, no pixel data", async () => {
      const url = base + instancePath(multiframe.key);
      for (
        const [path, status, message] of [
          ["frames/0", 400, /out of range: this instance has frames 1-96/],
          ["frames/97", 400, /out of range: this instance has frames 1-96/],
          ["frames/1,x", 400, /Invalid frame list/],
        ] as const
      ) {
        const response = await fetch(`${url}/${path}`);
        assert.equal(response.status, status, path);
        assert.match((await response.json()).error, message);
      }
      const sr = files.find((f) => f.name === "test-SR.dcm");
      if (sr) {
        const response = await fetch(`${base}${instancePath(sr.key)}/frames/1`);
        assert.equal(response.status, 404);
        assert.match((await response.json()).error, /no pixel data/);
      }
    });

    await t.step("a second series metadata request reads nothing from the store", async () => {
      const [study, series] = multiframe.key.split("/");
      const first = await fetch(`${base}/aets/${AET}/studies/2.25.100/series/2.25.100.1/metadata`);
      assert.equal(first.status, 200);
      await first.arrayBuffer();
      const before = observed.calls.length;
      const again = await fetch(`${base}/aets/${AET}/studies/2.25.100/series/2.25.100.1/metadata`);
      assert.equal((await again.json()).length, 3);
      assert.deepEqual(observed.calls.slice(before).filter((c) => c.startsWith("get ")), []);
      assert.ok(study && series);
    });

    await t.step(
      "ILE, EBE and deflated instances come out as Explicit VR Little Endian with equal values",
      async () => {
        for (const f of files.filter((f) => RE_ENCODABLE.has(f.transferSyntax))) {
          const response = await fetch(base + instancePath(f.key), {
            headers: { accept: 'multipart/related; type="application/dicom"' },
          });
          const [part] = await parts(response);
          assert.equal(
            part.headers["content-type"],
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
            f.name,
          );
          const back = await parseObject(part.body, f.name, {
            bulkThreshold: Infinity,
            textBulkThreshold: Infinity,
          });
          const source = await parseObject(f.bytes, f.name, {
            bulkThreshold: Infinity,
            textBulkThreshold: Infinity,
          });
          assert.equal(back.transferSyntaxUid, "1.2.840.10008.1.2.1");
          assert.equal(
            stringifyDicomJson(toDicomJson(back)),
            stringifyDicomJson(toDicomJson(source)),
            f.name,
          );
        }
      },
    );

    await t.step(
      "compressed instances without a transfer-syntax go out as stored, with a Warning",
      async () => {
        const jpeg = files.find((f) => f.transferSyntax.startsWith("1.2.840.10008.1.2.4."));
        if (!jpeg) return;
        const response = await fetch(base + instancePath(jpeg.key));
        assert.match(
          response.headers.get("warning") ?? "",
          /^299 .* "instance sent in its stored transfer syntax/,
        );
        const [part] = await parts(response);
        assert.equal(await md5(part.body), await md5(jpeg.bytes));
      },
    );

    await t.step("malformed objects give a clear error and the server keeps serving", async () => {
      for (const f of broken) {
        const response = await fetch(`${base}${instancePath(f.key)}/metadata`);
        const text = await response.text();
        assert.ok(response.status === 200 || (response.status >= 400 && response.status < 600), f.name);
        if (response.status !== 200) assert.match(JSON.parse(text).error, /./, f.name);
      }
      const health = await fetch(`${base}/healthz`);
      assert.equal(health.status, 200);
      await health.body?.cancel();
    });
  } finally {
    await server.close();
    await cleanup();
  }
}

onFolderAndS3("metadata, bulkdata and frames end to end", suite);
