/**
 * Pixel benchmark: `deno run -P=bench bench/render_bench.ts`. Prints figures, asserts nothing.
 *
 * - thumbnails/s of a 512×512 CT series through the HTTP handler (`registerRendered`, local-folder store,
 *   `viewport=256,256`, 8 clients): cold (decode + render + JPEG each time) and warm (the thumbnail cache);
 * - one 512×512 frame's stages on this thread (window + resize, JPEG with libjpeg-turbo vs jpeg-js, PNG);
 * - transcoding throughput of JPEG 2000 lossless (and HTJ2K) → Explicit VR Little Endian, MB/s of decoded
 *   Pixel Data, on the worker pool; the compressed series is made here with the OpenJPEG / OpenJPH encoders.
 *
 * Data: `BENCH_DATA` or bench-data/bench (500 CT instances), else a small series made by
 * ../shared/tools/gen_dataset.py. `BENCH_THUMBNAILS` (default 200) and `BENCH_TRANSCODE` (default 24) set counts.
 */

import process from "node:process";
import jpegJs from "jpeg-js";
import { encodeHtj2k } from "../lib/codecs/htj2k.ts";
import { encodeJ2k } from "../lib/codecs/j2k.ts";
import { decodeFrame } from "../lib/codecs/mod.ts";
import { CodecPool } from "../lib/imaging/pool.ts";
import { parseConfig } from "../lib/config/config.ts";
import { describeFrame } from "../lib/imaging/decode.ts";
import { FileStore } from "../lib/store/file_store.ts";
import { planFrame } from "../lib/dicom/frames.ts";
import { parseObject } from "../lib/dicom/part10.ts";
import { renderAttributes, toDisplay } from "../lib/imaging/render.ts";
import { createHandler } from "../lib/app/handler.ts";
import { assembleServices } from "../lib/app/open.ts";
import { decodeInstance, encapsulatedInstance } from "../lib/imaging/pixel_transcode.ts";
import { getNumber } from "../lib/dicom/dataset.ts";
import { applyViewport } from "../lib/imaging/resample.ts";
import { encodeJpeg, encodePng } from "../lib/imaging/encode.ts";

const REPO = new URL("../", import.meta.url).pathname;
const SHARED = new URL("../../shared/", import.meta.url).pathname;
const THUMBNAILS = Number(Deno.env.get("BENCH_THUMBNAILS") ?? 200);
const TRANSCODE = Number(Deno.env.get("BENCH_TRANSCODE") ?? 24);
const CLIENTS = 8;

async function dataset(): Promise<{ root: string; bucket: string; keys: string[] }> {
  let dir = Deno.env.get("BENCH_DATA") ?? `${REPO}bench-data/bench`;
  try {
    await Deno.stat(dir);
  } catch {
    dir = await Deno.makeTempDir({ prefix: "render-bench-" }) + "/bench";
    console.log(`no bench-data: generating a small series into ${dir}`);
    const out = await new Deno.Command("/usr/bin/python3", {
      args: [`${SHARED}tools/gen_dataset.py`, "--preset", "small", "--out", dir],
    }).output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  }
  const keys: string[] = [];
  const walk = async (path: string, prefix: string) => {
    for await (const entry of Deno.readDir(path)) {
      if (entry.isDirectory) await walk(`${path}/${entry.name}`, `${prefix}${entry.name}/`);
      else if (entry.name.endsWith(".dcm")) keys.push(prefix + entry.name);
    }
  };
  await walk(dir, "");
  keys.sort();
  const parts = dir.replace(/\/+$/, "").split("/");
  return { root: parts.slice(0, -1).join("/"), bucket: parts.at(-1)!, keys };
}

function time<T>(f: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  return f().then((v) => [v, performance.now() - t0]);
}

/** CPU milliseconds (user + system, all threads) used by this process while `f` runs: load-independent. */
async function cpu<T>(f: () => Promise<T>): Promise<[T, number, number]> {
  const before = process.cpuUsage();
  const [value, ms] = await time(f);
  const used = process.cpuUsage(before);
  return [value, ms, (used.user + used.system) / 1000];
}

async function thumbnails(data: Awaited<ReturnType<typeof dataset>>, pool: CodecPool) {
  const store = new FileStore(data.root);
  const config = parseConfig({ AETS: `BENCH=${data.bucket}` });
  const handler = createHandler(assembleServices(config, store, { capabilities: { reEncode: true } }), {
    log: () => {},
    rendered: { pool, thumbnailCacheBytes: 64 * 1024 * 1024 },
  });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
  const base = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}/aets/BENCH`;
  const keys = data.keys.slice(0, THUMBNAILS);
  const fetchAll = async () => {
    let next = 0;
    let bytes = 0;
    await Promise.all(Array.from({ length: CLIENTS }, async () => {
      while (next < keys.length) {
        const [study, series, file] = keys[next++].split("/");
        const response = await fetch(
          `${base}/studies/${study}/series/${series}/instances/${
            file.slice(0, -4)
          }/thumbnail?viewport=256,256&accept=image%2Fjpeg`,
          { headers: { accept: 'multipart/related; type="application/octet-stream"' } },
        );
        if (response.status !== 200) throw new Error(`${response.status}: ${await response.text()}`);
        const size = (await response.arrayBuffer()).byteLength;
        bytes += size;
      }
    }));
    return bytes;
  };
  // Warm-up: workers started, codecs compiled (one request).
  const [s, se, f] = data.keys[0].split("/");
  await (await fetch(`${base}/studies/${s}/series/${se}/instances/${f.slice(0, -4)}/rendered?viewport=8,8`))
    .arrayBuffer();
  const [bytes, cold, coldCpu] = await cpu(fetchAll);
  const [, warm, warmCpu] = await cpu(fetchAll);
  await server.shutdown();
  console.log(
    `thumbnails (${keys.length} × 512×512 CT → 256×256 JPEG, ${CLIENTS} clients, pool of ${pool.size} workers):`,
  );
  const cores = navigator.hardwareConcurrency;
  const perCold = coldCpu / keys.length;
  console.log(
    `  cold: ${(keys.length / cold * 1000).toFixed(1)} thumbnails/s (${
      (cold / keys.length).toFixed(1)
    } ms each, ` +
      `${(bytes / keys.length / 1024).toFixed(1)} KiB average); CPU ${perCold.toFixed(1)} ms/thumbnail → ` +
      `${(cores * 1000 / perCold).toFixed(0)} thumbnails/s on ${cores} idle cores`,
  );
  console.log(
    `  warm (cached): ${(keys.length / warm * 1000).toFixed(1)} thumbnails/s; CPU ${
      (warmCpu / keys.length).toFixed(2)
    } ms/thumbnail`,
  );
}

async function stages(path: string) {
  const bytes = await Deno.readFile(path);
  const header = await parseObject(bytes, path);
  const plan = planFrame(header, 1);
  const r = plan.ranges[0];
  const frame = await decodeFrame(
    header.transferSyntaxUid,
    bytes.slice(r.offset, r.offset + r.length),
    describeFrame(header),
  );
  const attrs = renderAttributes(header);
  const n = 50;
  const measure = async (what: string, f: () => unknown) => {
    await f();
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await f();
    console.log(`  ${what}: ${((performance.now() - t0) / n).toFixed(2)} ms`);
  };
  console.log("one 512×512 16-bit frame on this thread:");
  const display = toDisplay(frame, attrs, { mediaType: "image/jpeg" });
  await measure("window/level (LUT) 512×512", () => toDisplay(frame, attrs, { mediaType: "image/jpeg" }));
  const thumb = applyViewport(display, { width: 256, height: 256 });
  await measure(
    "resize to 256×256 (area average)",
    () => applyViewport(display, { width: 256, height: 256 }),
  );
  await measure("JPEG 256×256 q90, libjpeg-turbo WASM", () => encodeJpeg(thumb, 90));
  const rgba = new Uint8Array(256 * 256 * 4);
  for (let i = 0; i < 256 * 256; i++) rgba.fill(thumb.pixels[i], i * 4, i * 4 + 3), rgba[i * 4 + 3] = 255;
  await measure(
    "JPEG 256×256 q90, jpeg-js",
    () => jpegJs.encode({ data: rgba, width: 256, height: 256 }, 90),
  );
  await measure("JPEG 512×512 q90, libjpeg-turbo WASM", () => encodeJpeg(display, 90));
  await measure("PNG 256×256 (CompressionStream)", () => encodePng(thumb));
}

async function transcoding(data: Awaited<ReturnType<typeof dataset>>, pool: CodecPool) {
  const sources = data.keys.slice(0, TRANSCODE);
  const j2k: Uint8Array[] = [];
  const htj2k: Uint8Array[] = [];
  let pixelBytes = 0;
  for (const key of sources) {
    const bytes = await Deno.readFile(`${data.root}/${data.bucket}/${key}`);
    const header = await parseObject(bytes, key, { bulkThreshold: Infinity, textBulkThreshold: Infinity });
    const plan = planFrame(header, 1);
    const r = plan.ranges[0];
    const pixels = bytes.slice(r.offset, r.offset + r.length);
    pixelBytes += pixels.length;
    const layout = {
      width: getNumber(header.dataset, 0x00280011)!,
      height: getNumber(header.dataset, 0x00280010)!,
      components: 1,
      bitsPerSample: getNumber(header.dataset, 0x00280101)!,
      signed: getNumber(header.dataset, 0x00280103) === 1,
    };
    j2k.push(encapsulatedInstance(header, [await encodeJ2k(pixels, layout)], "1.2.840.10008.1.2.4.90"));
    htj2k.push(encapsulatedInstance(header, [await encodeHtj2k(pixels, layout)], "1.2.840.10008.1.2.4.201"));
  }
  for (
    const [name, series] of [["JPEG 2000 lossless (.90)", j2k], ["HTJ2K lossless (.201)", htj2k]] as const
  ) {
    await decodeInstance(series[0], "warm-up", { pool });
    const compressed = series.reduce((n, b) => n + b.length, 0);
    let next = 0;
    let out = 0;
    const [, ms, cpuMs] = await cpu(() =>
      Promise.all(Array.from({ length: Math.max(1, pool.size) * 2 }, async () => {
        while (next < series.length) {
          const i = next++;
          const decoded = await decodeInstance(series[i], `bench ${i}`, { pool });
          out += decoded.length;
        }
      }))
    );
    console.log(
      `transcode ${name} → ELE, ${series.length} instances: ${
        (pixelBytes / 1e6 / (ms / 1000)).toFixed(1)
      } MB/s of pixel data ` +
        `(${(series.length / ms * 1000).toFixed(1)} instances/s; in ${
          (compressed / 1e6).toFixed(1)
        } MB, out ${(out / 1e6).toFixed(1)} MB, ` +
        `ratio ${(pixelBytes / compressed).toFixed(2)}:1); CPU ${
          (cpuMs / series.length).toFixed(1)
        } ms/instance → ` +
        `${
          (pixelBytes / 1e6 / (cpuMs / 1000) * navigator.hardwareConcurrency).toFixed(1)
        } MB/s on ${navigator.hardwareConcurrency} idle cores`,
    );
  }
}

if (import.meta.main) {
  const data = await dataset();
  const load = (() => {
    try {
      return Deno.loadavg().map((n) => n.toFixed(2)).join(" ");
    } catch {
      return "?";
    }
  })();
  console.log(
    `series: ${data.keys.length} instances under ${data.root}/${data.bucket}; ${navigator.hardwareConcurrency} cores, ` +
      `load average ${load}`,
  );
  const pool = new CodecPool();
  try {
    await thumbnails(data, pool);
    await thumbnails(data, new CodecPool({ size: 0 })).catch((e) => console.log("inline run failed:", e));
    await stages(`${data.root}/${data.bucket}/${data.keys[0]}`);
    await transcoding(data, pool);
  } finally {
    pool.close();
  }
}
