/**
 * `deno task bench`: retrieval figures measured side by side in one run (PERF-NOTES.md style).
 *
 * - the 500-instance CT series (gen_dataset.py --preset bench) in Ceph RGW (started here when
 *   `radosgw` is installed; s3rver otherwise; or `BENCH_S3_ENDPOINT`),
 * - direct: the same objects fetched with the AWS SDK, `S3_CONCURRENCY` in flight, in order,
 * - through the server (a separate `deno run` process): throughput, time to first byte,
 * - 4 clients streaming the series at once: the server's peak RSS,
 * - the local-folder store's throughput.
 *
 * Prints the figures and the ratios against the targets; never asserts timings.
 */

import { S3Store } from "../lib/s3_store.ts";
import { startS3, type TestS3 } from "./_s3server.ts";

const CONCURRENCY = Number(Deno.env.get("S3_CONCURRENCY") ?? 8);
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const REPO = new URL("../", import.meta.url).pathname;
const SHARED = new URL("../../shared/", import.meta.url).pathname;

function mbps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function run(cmd: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), env, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd.join(" ")} failed:\n${text}`);
  return text;
}

async function dataset(): Promise<{ dir: string; keys: string[]; bytes: number }> {
  const dir = Deno.env.get("BENCH_DATA") ?? `${REPO}bench-data/bench`;
  try {
    await Deno.stat(`${dir}/index.json`);
  } catch {
    console.log(`generating the bench series into ${dir} (gen_dataset.py --preset bench)…`);
    await run(["/usr/bin/python3", `${SHARED}tools/gen_dataset.py`, "--preset", "bench", "--out", dir, "--force"]);
  }
  const keys: string[] = [];
  let bytes = 0;
  const walk = async (path: string, prefix: string) => {
    for await (const entry of Deno.readDir(path)) {
      if (entry.isDirectory) await walk(`${path}/${entry.name}`, `${prefix}${entry.name}/`);
      else if (entry.name.endsWith(".dcm")) {
        keys.push(prefix + entry.name);
        bytes += (await Deno.stat(`${path}/${entry.name}`)).size;
      }
    }
  };
  await walk(dir, "");
  keys.sort();
  return { dir, keys, bytes };
}

interface S3Target {
  endpoint: string;
  kind: string;
  stop(): Promise<void>;
  handle?: TestS3;
}

async function s3Server(): Promise<S3Target> {
  const given = Deno.env.get("BENCH_S3_ENDPOINT");
  if (given) return { endpoint: given, kind: "external", stop: async () => {} };
  const hasCeph = await new Deno.Command("sh", { args: ["-c", "command -v radosgw"], stdout: "null" }).output();
  if (hasCeph.success) {
    const dir = await Deno.makeTempDir({ prefix: "bench-ceph-" });
    const env = { CEPHLAB_DIR: dir, MEMSTORE_BYTES: String(2 * 1024 ** 3) };
    console.log("starting Ceph RGW…");
    await run([`${SHARED}tools/ceph/start.sh`], env);
    return {
      endpoint: "http://127.0.0.1:7480",
      kind: "Ceph RGW",
      stop: async () => void await run([`${SHARED}tools/ceph/stop.sh`, "--clean"], env).catch(() => {}),
    };
  }
  const handle = await startS3();
  return { endpoint: handle.endpoint, kind: "s3rver", stop: () => handle.stop(), handle };
}

async function freePort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

interface ServerProcess {
  url: string;
  pid: number;
  peakRssMb(): Promise<number>;
  stop(): Promise<void>;
}

async function startServer(env: Record<string, string>): Promise<ServerProcess> {
  const port = await freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-P=bench-server", `${REPO}main.ts`],
    env: { ...env, PORT: String(port), HOSTNAME: "127.0.0.1", NO_COLOR: "1" },
    cwd: REPO,
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`${url}/healthz`);
      await r.body?.cancel();
      if (r.ok) break;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    pid: child.pid,
    async peakRssMb() {
      const status = await run(["cat", `/proc/${child.pid}/status`]); // Deno needs --allow-all to read /proc
      return Number(/VmHWM:\s+(\d+)/.exec(status)![1]) / 1024;
    },
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** Streams a URL to the end; returns total ms, ms to first body byte, and bytes. */
async function timedFetch(url: string, accept: string): Promise<{ ms: number; ttfb: number; bytes: number }> {
  const t0 = performance.now();
  const response = await fetch(url, { headers: { accept } });
  if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
  const reader = response.body!.getReader();
  let ttfb = -1;
  let bytes = 0;
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    if (ttfb < 0) ttfb = performance.now() - t0;
    bytes += value.byteLength;
  }
  return { ms: performance.now() - t0, ttfb, bytes };
}

/** The baseline: every object GET through the SDK, `CONCURRENCY` in flight, consumed in order. */
async function direct(store: S3Store, bucket: string, keys: string[]): Promise<{ ms: number; ttfb: number; bytes: number }> {
  const t0 = performance.now();
  let ttfb = -1;
  let bytes = 0;
  const queue: Promise<ReadableStream<Uint8Array>>[] = [];
  let next = 0;
  const fill = () => {
    while (queue.length < CONCURRENCY && next < keys.length) {
      const key = keys[next++];
      const p = store.get(bucket, key).then((o) => o!.body.pipeThrough(
        new TransformStream(undefined, new ByteLengthQueuingStrategy({ highWaterMark: 1 << 20 })),
      ));
      p.catch(() => {});
      queue.push(p);
    }
  };
  fill();
  while (queue.length > 0) {
    const body = await queue.shift()!;
    fill();
    for await (const chunk of body) {
      if (ttfb < 0) ttfb = performance.now() - t0;
      bytes += chunk.byteLength;
    }
  }
  return { ms: performance.now() - t0, ttfb, bytes };
}

async function main() {
  const data = await dataset();
  const [study, series] = data.keys[0].split("/");
  console.log(`series: ${data.keys.length} instances, ${(data.bytes / 1e6).toFixed(1)} MB; S3_CONCURRENCY=${CONCURRENCY}`);
  const s3 = await s3Server();
  const bucket = `bench-${Date.now().toString(36)}`;
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
  });
  const accept = 'multipart/related; type="application/dicom"; transfer-syntax=*';
  const results: Record<string, string> = {};
  try {
    if (s3.handle) await s3.handle.createBucket(bucket);
    else {
      const { S3Client, CreateBucketCommand } = await import("@aws-sdk/client-s3");
      const client = new S3Client({
        endpoint: s3.endpoint,
        region: "us-east-1",
        forcePathStyle: true,
        credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
      });
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    }
    console.log(`uploading to ${s3.kind} ${s3.endpoint} bucket ${bucket}…`);
    let i = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (i < data.keys.length) {
        const key = data.keys[i++];
        const bytes = await Deno.readFile(`${data.dir}/${key}`);
        await store.put(bucket, key, bytes, { size: bytes.length });
      }
    }));

    const server = await startServer({
      S3_ENDPOINT: s3.endpoint,
      AETS: `BENCH=${bucket}`,
      AWS_ACCESS_KEY_ID: "S3RVER",
      AWS_SECRET_ACCESS_KEY: "S3RVER",
      S3_CONCURRENCY: String(CONCURRENCY),
    });
    const seriesUrl = `${server.url}/aets/BENCH/studies/${study}/series/${series}`;
    const directRuns: { ms: number; ttfb: number }[] = [];
    const serverRuns: { ms: number; ttfb: number }[] = [];
    await timedFetch(seriesUrl, accept); // warm-up (connections, JIT)
    await direct(store, bucket, data.keys.slice(0, 50));
    for (let r = 0; r < ROUNDS; r++) {
      const d = await direct(store, bucket, data.keys);
      directRuns.push(d);
      const s = await timedFetch(seriesUrl, accept);
      if (s.bytes < data.bytes) throw new Error(`server sent ${s.bytes} bytes, expected more than ${data.bytes}`);
      serverRuns.push(s);
    }
    const directMs = median(directRuns.map((r) => r.ms));
    const serverMs = median(serverRuns.map((r) => r.ms));
    const directTtfb = median(directRuns.map((r) => r.ttfb));
    const serverTtfb = median(serverRuns.map((r) => r.ttfb));
    results["direct S3 (SDK)"] = `${mbps(data.bytes, directMs).toFixed(0)} MB/s, first byte ${directTtfb.toFixed(1)} ms`;
    results["through the server"] = `${mbps(data.bytes, serverMs).toFixed(0)} MB/s, first byte ${serverTtfb.toFixed(1)} ms`;
    results["throughput ratio"] = `${(directMs / serverMs * 100).toFixed(0)}% of direct (target ≥ 90%)`;
    results["first byte delta"] = `${(serverTtfb - directTtfb).toFixed(1)} ms (target ≤ +20 ms)`;

    const t0 = performance.now();
    const four = await Promise.all(Array.from({ length: 4 }, () => timedFetch(seriesUrl, accept)));
    const fourMs = performance.now() - t0;
    results["4 clients at once"] = `${mbps(four.reduce((n, r) => n + r.bytes, 0), fourMs).toFixed(0)} MB/s total`;
    results["server peak RSS"] = `${(await server.peakRssMb()).toFixed(0)} MB (target < 150 MB)`;
    await server.stop();

    const local = await Deno.makeTempDir({ prefix: "bench-local-" });
    try {
      await Deno.mkdir(`${local}/BENCH`);
      await run(["cp", "-r", `${data.dir}/${study}`, `${local}/BENCH/`]);
      const localServer = await startServer({ DATA_DIR: local });
      await timedFetch(`${localServer.url}/aets/BENCH/studies/${study}/series/${series}`, accept);
      const localRuns = [];
      for (let r = 0; r < ROUNDS; r++) {
        localRuns.push(await timedFetch(`${localServer.url}/aets/BENCH/studies/${study}/series/${series}`, accept));
      }
      const localMs = median(localRuns.map((r) => r.ms));
      results["local folder, through the server"] = `${mbps(data.bytes, localMs).toFixed(0)} MB/s, first byte ${median(localRuns.map((r) => r.ttfb)).toFixed(1)} ms, peak RSS ${(await localServer.peakRssMb()).toFixed(0)} MB`;
      await localServer.stop();
    } finally {
      await Deno.remove(local, { recursive: true });
    }
  } finally {
    await store.close?.();
    await s3.stop();
  }
  console.log(`\nretrieve benchmark (${s3.kind}, ${ROUNDS} rounds, medians)`);
  for (const [name, value] of Object.entries(results)) console.log(`  ${name.padEnd(34)} ${value}`);
}

if (import.meta.main) await main();
