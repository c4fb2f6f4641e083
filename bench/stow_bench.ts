/**
 * STOW-RS benchmark: `deno run -P=bench bench/stow_bench.ts`.
 *
 * - the 500-instance CT series (gen_dataset.py --preset bench) as the payload,
 * - S3: Ceph RGW started here when `radosgw` is installed (its own ports), s3rver otherwise, or `BENCH_S3_ENDPOINT`,
 * - two direct baselines, `S3_CONCURRENCY` in flight: every file PutObject through the AWS SDK's
 *   `client.send`, and through `S3Store.put` (the server's own S3 write path, which signs a plain `fetch`),
 * - through the server (`deno run -P=bench-server main.ts`, a separate process): the same files in one
 *   STOW-RS request, and in `S3_CONCURRENCY` requests at once; the bucket is emptied between runs,
 * - `BENCH_CHUNKED=1`: also 100 instances sent with Transfer-Encoding: chunked (see {@linkcode stow}),
 * - the server's peak RSS (VmHWM) after everything, 4 clients at once included.
 *
 * The server gets the `--v8-flags` of `deno task start`, as `bench/retrieve_bench.ts` gives it, so it runs as it is
 * deployed; `BENCH_SERVER_FLAGS` replaces them (`BENCH_SERVER_FLAGS=` for none).
 *
 * Prints the figures and the ratios against the targets (≥ 80% of direct, peak RSS < 200 MB), against
 * both baselines (as `bench/retrieve_bench.ts` does); never asserts.
 */

import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { FetchHttpHandler } from "@smithy/fetch-http-handler";
import { S3Store } from "../lib/store/s3/s3_store.ts";
import { BENCH_CREDENTIALS, type BenchS3, benchS3, benchSeriesDir, createBenchBucket } from "./_s3.ts";

const CONCURRENCY = Number(Deno.env.get("S3_CONCURRENCY") ?? 8);
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 5);
const SERVER_FLAGS = (Deno.env.get("BENCH_SERVER_FLAGS") ?? await startTaskV8Flags()).split(/\s+/)
  .filter((f) => f);
const REPO = new URL("../", import.meta.url).pathname;
const CREDENTIALS = BENCH_CREDENTIALS;
const encoder = new TextEncoder();

/** The `--v8-flags=…` of `deno task start`. */
async function startTaskV8Flags(): Promise<string> {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const start = config.tasks?.start;
  const command: string = typeof start === "string" ? start : start?.command ?? "";
  return command.match(/--v8-flags=\S+/g)?.join(" ") ?? "";
}

function mbps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function run(cmd: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), env, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd.join(" ")} failed:\n${text}`);
  return text;
}

interface Dataset {
  files: { key: string; bytes: Uint8Array }[];
  bytes: number;
}

async function dataset(): Promise<Dataset> {
  const dir = await benchSeriesDir();
  const files: Dataset["files"] = [];
  const walk = async (path: string, prefix: string) => {
    for await (const entry of Deno.readDir(path)) {
      if (entry.isDirectory) await walk(`${path}/${entry.name}`, `${prefix}${entry.name}/`);
      else if (entry.name.endsWith(".dcm")) {
        files.push({ key: prefix + entry.name, bytes: await Deno.readFile(`${path}/${entry.name}`) });
      }
    }
  };
  await walk(dir, "");
  files.sort((a, b) => (a.key < b.key ? -1 : 1));
  return { files, bytes: files.reduce((n, f) => n + f.bytes.length, 0) };
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

interface ServerProcess {
  url: string;
  peakRssMb(): Promise<number>;
  /** CPU seconds (user + system) used so far. */
  cpuSeconds(): Promise<number>;
  stop(): Promise<void>;
}

async function startServer(script: string[], env: Record<string, string>): Promise<ServerProcess> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-P=bench-server", ...SERVER_FLAGS, ...script],
    env: { ...env, PORT: String(port), HOSTNAME: "127.0.0.1", NO_COLOR: "1" },
    cwd: REPO,
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 400; i++) {
    try {
      const r = await fetch(`${url}/healthz`);
      await r.body?.cancel();
      if (r.ok) break;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    async peakRssMb() {
      const status = await run(["cat", `/proc/${child.pid}/status`]);
      return Number(/VmHWM:\s+(\d+)/.exec(status)![1]) / 1024;
    },
    async cpuSeconds() {
      const fields = (await run(["cat", `/proc/${child.pid}/stat`])).split(") ")[1].split(" ");
      return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks
    },
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** CPU seconds this process used so far (through `cat`: Deno needs --allow-all to read /proc). */
async function ownCpuSeconds(): Promise<number> {
  const fields = (await run(["cat", `/proc/${Deno.pid}/stat`])).split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * One STOW-RS request with `files` as parts. The body is a Blob (sent with Content-Length, as dicomweb-client
 * and curl --data-binary send it); with `chunked` it is a stream (Transfer-Encoding: chunked), which Deno
 * 2.9's HTTP/1 server handles slowly whenever the handler cannot read as fast as the client sends.
 */
async function stow(
  url: string,
  files: Dataset["files"],
  chunked = false,
): Promise<{ ms: number; stored: number; status: number }> {
  const boundary = `bench-${crypto.randomUUID()}`;
  const head = encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`);
  const crlf = encoder.encode("\r\n");
  const pieces = [...files.flatMap((f) => [head, f.bytes, crlf]), encoder.encode(`--${boundary}--\r\n`)];
  let body: BodyInit;
  if (chunked) {
    let i = 0;
    body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (i >= pieces.length) return controller.close();
        controller.enqueue(pieces[i++]);
      },
    }, { highWaterMark: 0 });
  } else body = new Blob(pieces as BlobPart[]);
  const t0 = performance.now();
  const response = await fetch(url, {
    method: "POST",
    body,
    headers: {
      "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
      accept: "application/dicom+json",
    },
  });
  const json = await response.json();
  const ms = performance.now() - t0;
  return { ms, stored: json["00081199"]?.Value?.length ?? 0, status: response.status };
}

/** A baseline: `put` of every file, `CONCURRENCY` in flight. */
async function direct(
  put: (key: string, bytes: Uint8Array) => Promise<unknown>,
  files: Dataset["files"],
): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < files.length) {
      const f = files[next++];
      await put(f.key, f.bytes);
    }
  }));
  return performance.now() - t0;
}

/** PutObject through the AWS SDK's `client.send`, set up as `S3Store` sets up its client. */
function sdkPut(
  s3: BenchS3,
  bucket: string,
): { put: (key: string, bytes: Uint8Array) => Promise<unknown>; close(): void } {
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: CREDENTIALS,
    maxAttempts: 3,
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    requestHandler: new FetchHttpHandler(),
  });
  return {
    put: (key, bytes) =>
      client.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: bytes,
          ContentLength: bytes.byteLength,
          ContentType: "application/dicom",
        }),
      ),
    close: () => client.destroy(),
  };
}

async function empty(store: S3Store, bucket: string): Promise<void> {
  const keys = (await Array.fromAsync(store.list(bucket, ""))).map((o) => o.key);
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < keys.length) await store.delete(bucket, keys[next++]);
  }));
}

async function loadAverage(): Promise<string> {
  return (await run(["cat", "/proc/loadavg"])).split(" ").slice(0, 3).join(" ");
}

async function main() {
  const loadBefore = await loadAverage();
  const data = await dataset();
  console.log(
    `series: ${data.files.length} instances, ${
      (data.bytes / 1e6).toFixed(1)
    } MB; S3_CONCURRENCY=${CONCURRENCY}`,
  );
  const s3 = await benchS3({ prefix: "stow-bench", rgw: 7530, mon: 3340, monV1: 6829 });
  const bucket = `stow-bench-${Date.now().toString(36)}`;
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: CREDENTIALS,
  });
  const results: Record<string, string> = {};
  const cleanups: (() => Promise<void>)[] = [];
  try {
    await createBenchBucket(s3, bucket);
    const catalogDir = await Deno.makeTempDir({ prefix: "stow-bench-catalog-" });
    cleanups.push(() => Deno.remove(catalogDir, { recursive: true }));
    const env = {
      // each stored instance is recorded in the catalog before the response, as in production
      CATALOG_PATH: `${catalogDir}/catalog.sqlite`,
      CRAWL_INTERVAL: "0",
      S3_ENDPOINT: s3.endpoint,
      AETS: `BENCH=${bucket}`,
      AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
      S3_CONCURRENCY: String(CONCURRENCY),
    };
    const server = await startServer([`${REPO}main.ts`], env);
    const url = `${server.url}/aets/BENCH/studies`;
    const sdk = sdkPut(s3, bucket);
    cleanups.push(() => Promise.resolve(sdk.close()));
    const storePut = (key: string, bytes: Uint8Array) =>
      store.put(bucket, key, bytes, { size: bytes.length, contentType: "application/dicom" });
    console.log("warming up…");
    // warm-up: connections, JIT
    await direct(sdk.put, data.files.slice(0, 40));
    await direct(storePut, data.files.slice(0, 40));
    await stow(url, data.files.slice(0, 40));
    await empty(store, bucket);

    const directRuns: number[] = [];
    const storeRuns: number[] = [];
    const oneRuns: number[] = [];
    const manyRuns: number[] = [];
    const directCpu: number[] = [];
    const storeCpu: number[] = [];
    const serverCpu: number[] = [];
    const serverManyCpu: number[] = [];
    const clientCpu: number[] = [];
    const clientManyCpu: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      console.log(`round ${r + 1} of ${ROUNDS}…`);
      let c0 = await ownCpuSeconds();
      directRuns.push(await direct(sdk.put, data.files));
      directCpu.push(await ownCpuSeconds() - c0);
      await empty(store, bucket);
      c0 = await ownCpuSeconds();
      storeRuns.push(await direct(storePut, data.files));
      storeCpu.push(await ownCpuSeconds() - c0);
      await empty(store, bucket);
      let s0 = await server.cpuSeconds();
      c0 = await ownCpuSeconds();
      const one = await stow(url, data.files);
      serverCpu.push(await server.cpuSeconds() - s0);
      clientCpu.push(await ownCpuSeconds() - c0);
      if (one.stored !== data.files.length || one.status !== 200) {
        throw new Error(`STOW stored ${one.stored} of ${data.files.length} (HTTP ${one.status})`);
      }
      oneRuns.push(one.ms);
      await empty(store, bucket);
      s0 = await server.cpuSeconds();
      c0 = await ownCpuSeconds();
      const t0 = performance.now();
      const slices = Array.from(
        { length: CONCURRENCY },
        (_, k) => data.files.filter((_, i) => i % CONCURRENCY === k),
      );
      const many = await Promise.all(slices.map((files) => stow(url, files)));
      manyRuns.push(performance.now() - t0);
      serverManyCpu.push(await server.cpuSeconds() - s0);
      clientManyCpu.push(await ownCpuSeconds() - c0);
      if (many.reduce((n, m) => n + m.stored, 0) !== data.files.length) {
        throw new Error("parallel STOW lost instances");
      }
      await empty(store, bucket);
    }
    const directMs = median(directRuns);
    const storeMs = median(storeRuns);
    const oneMs = median(oneRuns);
    const manyMs = median(manyRuns);
    const ratios = (ms: number) =>
      `${(directMs / ms * 100).toFixed(0)}% of direct AWS SDK, ${
        (storeMs / ms * 100).toFixed(0)
      }% of direct S3Store (target ≥ 80%)`;
    results["direct PutObject (AWS SDK)"] = `${mbps(data.bytes, directMs).toFixed(0)} MB/s (${
      directMs.toFixed(0)
    } ms, ${CONCURRENCY} in flight)`;
    results["direct S3Store.put"] = `${mbps(data.bytes, storeMs).toFixed(0)} MB/s (${storeMs.toFixed(0)} ms)`;
    results["STOW, 1 request"] = `${mbps(data.bytes, oneMs).toFixed(0)} MB/s (${oneMs.toFixed(0)} ms), ${
      ratios(oneMs)
    }`;
    results["each round: SDK / S3Store / 1 / many"] = directRuns
      .map((d, i) =>
        `${d.toFixed(0)}/${storeRuns[i].toFixed(0)}/${oneRuns[i].toFixed(0)}/${manyRuns[i].toFixed(0)} ms`
      )
      .join(", ");
    results["CPU for the series"] = `direct AWS SDK ${median(directCpu).toFixed(2)} s, direct S3Store ${
      median(storeCpu).toFixed(2)
    } s (client process); STOW: server ${median(serverCpu).toFixed(2)} s, client ${
      median(clientCpu).toFixed(2)
    } s (1 request), server ${median(serverManyCpu).toFixed(2)} s, client ${
      median(clientManyCpu).toFixed(2)
    } s (${CONCURRENCY} requests)`;
    results[`STOW, ${CONCURRENCY} requests at once`] = `${mbps(data.bytes, manyMs).toFixed(0)} MB/s (${
      manyMs.toFixed(0)
    } ms), ${ratios(manyMs)}`;

    const t0 = performance.now();
    const four = await Promise.all(Array.from({ length: 4 }, () => stow(url, data.files)));
    const fourMs = performance.now() - t0;
    results["4 clients, whole series each"] = `${mbps(data.bytes * 4, fourMs).toFixed(0)} MB/s total (${
      four.map((f) => f.status).join(",")
    })`;
    results["server peak RSS"] = `${(await server.peakRssMb()).toFixed(0)} MB (target < 200 MB)`;
    if (Deno.env.get("BENCH_CHUNKED")) {
      await empty(store, bucket);
      const part = data.files.slice(0, 100);
      const s0 = await server.cpuSeconds();
      const chunked = await stow(url, part, true);
      results["chunked body, 100 instances"] = `${
        mbps(part.reduce((n, f) => n + f.bytes.length, 0), chunked.ms).toFixed(0)
      } MB/s ` +
        `(${chunked.ms.toFixed(0)} ms, server CPU ${
          (await server.cpuSeconds() - s0).toFixed(1)
        } s), peak RSS now ${(await server.peakRssMb()).toFixed(0)} MB`;
    }
    await server.stop();
    await empty(store, bucket);
  } finally {
    store.close();
    await s3.stop();
    for (const cleanup of cleanups) await cleanup().catch(() => {});
  }
  console.log(
    `\nSTOW-RS benchmark (${s3.kind}, ${ROUNDS} rounds, medians; load average at the start ${loadBefore}, ` +
      `now ${await loadAverage()})`,
  );
  console.log(`  server flags: ${SERVER_FLAGS.join(" ") || "(none)"}`);
  for (const [name, value] of Object.entries(results)) console.log(`  ${name.padEnd(32)} ${value}`);
}

if (import.meta.main) await main();
