/**
 * `deno task bench`: retrieval figures measured side by side in one run (PERF-NOTES.md style).
 *
 * - the 500-instance CT series (gen_dataset.py --preset bench) in Ceph RGW (started here when
 *   `radosgw` is installed; s3rver otherwise; or `BENCH_S3_ENDPOINT`, with `BENCH_BUCKET` to reuse
 *   an uploaded series),
 * - two direct baselines, each `S3_CONCURRENCY` objects in flight, each body read ahead as the server
 *   does and every byte consumed in key order: the AWS SDK's GetObject, and `S3Store.get` (the
 *   server's own S3 read path),
 * - through the server (a separate `deno run -P=bench-server` process): throughput, time to first byte,
 * - 4 clients streaming the series at once: total throughput and the server's peak RSS,
 * - the local-folder store, the same way,
 * - series metadata cold (no catalog: bytes read from S3 counted by a proxy) and warm, from the catalog's
 *   JSON, and frame latency on a 96-frame instance vs a direct ranged GET (`bench/_metadata.ts`).
 *
 * One warm-up of each, then `BENCH_ROUNDS` (default 5) rounds whose order alternates; figures are medians.
 * CPU time per process comes from /proc, so a slow run can be told apart from a busy machine ("other").
 * `BENCH_SKIP_LOCAL` skips the local folder, `BENCH_SKIP_METADATA` the metadata and frames; `BENCH_CEPHLAB_DIR` names an external lab Ceph's folder (for its CPU).
 * The server gets the `--v8-flags` of `deno task start`; `BENCH_SERVER_FLAGS` replaces them (e.g.
 * `BENCH_SERVER_FLAGS=--v8-flags=--max-semi-space-size=1`, or `BENCH_SERVER_FLAGS=` for none).
 * Prints the figures and the ratios against the targets; never asserts timings.
 */

import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { FetchHttpHandler } from "@smithy/fetch-http-handler";
import { DEFAULT_READ_AHEAD } from "../lib/objects/open_instance.ts";
import { S3Store } from "../lib/store/s3/s3_store.ts";
import {
  cpuSample,
  cpuSpent,
  directRun,
  mbps,
  memoryOf,
  resetPeak,
  type Run,
  run,
  summarize,
  timedFetch,
} from "./_util.ts";
import { benchMetadata } from "./_metadata.ts";
import { startS3, type TestS3 } from "../tests/_s3server.ts";

const CONCURRENCY = Number(Deno.env.get("S3_CONCURRENCY") ?? 8);
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 5);
const SERVER_FLAGS = (Deno.env.get("BENCH_SERVER_FLAGS") ?? await startTaskV8Flags()).split(/\s+/).filter((
  f,
) => f);
const REPO = new URL("../", import.meta.url).pathname;
const SHARED = new URL("../../shared/", import.meta.url).pathname;
const ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*';
const CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };

/** The `--v8-flags=…` of `deno task start`, so the server runs here as it is deployed. */
async function startTaskV8Flags(): Promise<string> {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const start = config.tasks?.start;
  const command: string = typeof start === "string" ? start : start?.command ?? "";
  return command.match(/--v8-flags=\S+/g)?.join(" ") ?? "";
}

async function dataset(): Promise<{ dir: string; keys: string[]; bytes: number }> {
  const dir = Deno.env.get("BENCH_DATA") ?? `${REPO}bench-data/bench`;
  try {
    await Deno.stat(`${dir}/index.json`);
  } catch {
    console.log(`generating the bench series into ${dir} (gen_dataset.py --preset bench)…`);
    await run([
      "/usr/bin/python3",
      `${SHARED}tools/gen_dataset.py`,
      "--preset",
      "bench",
      "--out",
      dir,
      "--force",
    ]);
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
  /** The S3 server's processes, when started here (their CPU time is reported). */
  pids: Record<string, number>;
  stop(): Promise<void>;
  handle?: TestS3;
}

async function s3Server(): Promise<S3Target> {
  const given = Deno.env.get("BENCH_S3_ENDPOINT");
  if (given) {
    // BENCH_CEPHLAB_DIR: the folder of a lab Ceph started with tools/ceph/start.sh, for its CPU time
    const lab = Deno.env.get("BENCH_CEPHLAB_DIR");
    return { endpoint: given, kind: "external", pids: lab ? await cephPids(lab) : {}, stop: async () => {} };
  }
  const hasCeph = await new Deno.Command("sh", { args: ["-c", "command -v radosgw"], stdout: "null" })
    .output();
  if (hasCeph.success) {
    const dir = await Deno.makeTempDir({ prefix: "bench-ceph-" });
    const env = { CEPHLAB_DIR: dir, MEMSTORE_BYTES: String(2 * 1024 ** 3) };
    console.log("starting Ceph RGW…");
    await run([`${SHARED}tools/ceph/start.sh`], env);
    return {
      endpoint: "http://127.0.0.1:7480",
      kind: "Ceph RGW",
      pids: await cephPids(dir),
      stop: async () => void await run([`${SHARED}tools/ceph/stop.sh`, "--clean"], env).catch(() => {}),
    };
  }
  const handle = await startS3();
  return { endpoint: handle.endpoint, kind: "s3rver", pids: {}, stop: () => handle.stop(), handle };
}

async function cephPids(dir: string): Promise<Record<string, number>> {
  const pids: Record<string, number> = {};
  for (const name of ["rgw", "osd.0"]) {
    pids[name] = Number((await Deno.readTextFile(`${dir}/run/${name}.pid`)).trim());
  }
  return pids;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

interface ServerProcess {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

async function startServer(env: Record<string, string>): Promise<ServerProcess> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-P=bench-server", ...SERVER_FLAGS, `${REPO}main.ts`],
    env: { AUDIT_LOG: "off", ...env, PORT: String(port), HOSTNAME: "127.0.0.1", NO_COLOR: "1" },
    cwd: REPO,
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0;; i++) {
    try {
      const r = await fetch(`${url}/healthz`);
      await r.body?.cancel();
      if (r.ok) break;
    } catch { /* not up yet */ }
    if (i === 200) throw new Error("the server did not start within 10 s");
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    pid: child.pid,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

type Measured = { run: Run; cpu: Record<string, number> };

/** Runs `task` and records the CPU each of `pids` spent meanwhile. */
async function measured(pids: Record<string, number | "self">, task: () => Promise<Run>): Promise<Measured> {
  const before = await cpuSample(pids);
  const result = await task();
  return { run: result, cpu: cpuSpent(before, await cpuSample(pids)) };
}

/** 4 clients streaming `url` at once, `times` times: total MB/s (median) and the server's peak RSS. */
async function fourClients(url: string, server: ServerProcess, times: number) {
  await resetPeak(server.pid);
  const rates: number[] = [];
  for (let i = 0; i < times; i++) {
    const t0 = performance.now();
    const runs = await Promise.all(Array.from({ length: 4 }, () => timedFetch(url, ACCEPT)));
    rates.push(mbps(runs.reduce((n, r) => n + r.bytes, 0), performance.now() - t0));
  }
  rates.sort((a, b) => a - b);
  return { rate: rates[Math.floor(rates.length / 2)], peak: (await memoryOf(server.pid)).peak };
}

function cpuText(cpu: Record<string, number>, names: string[]): string {
  return names.filter((n) => n in cpu).map((n) => `${n} ${cpu[n].toFixed(0)}`).join(", ") + " ms";
}

async function main() {
  const data = await dataset();
  const [study, series] = data.keys[0].split("/");
  console.log(
    `series: ${data.keys.length} instances, ${
      (data.bytes / 1e6).toFixed(1)
    } MB; S3_CONCURRENCY=${CONCURRENCY}` +
      `; ${ROUNDS} rounds${SERVER_FLAGS.length ? `; server flags: ${SERVER_FLAGS.join(" ")}` : ""}`,
  );
  const s3 = await s3Server();
  const given = Deno.env.get("BENCH_BUCKET");
  const bucket = given ?? `bench-${Date.now().toString(36)}`;
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: CREDENTIALS,
  });
  const sdk = new S3Client({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: CREDENTIALS,
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    requestHandler: new FetchHttpHandler(),
  });
  const lines: [string, string][] = [];
  const say = (name: string, value: string) => lines.push([name, value]);
  try {
    if (!given) {
      if (s3.handle) await s3.handle.createBucket(bucket);
      else {
        const { CreateBucketCommand } = await import("@aws-sdk/client-s3");
        await sdk.send(new CreateBucketCommand({ Bucket: bucket }));
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
    }

    const scratch = await Deno.makeTempDir({ prefix: "bench-server-" });
    const server = await startServer({
      CATALOG_PATH: `${scratch}/catalog.sqlite`, // not in the repository's ./data
      S3_ENDPOINT: s3.endpoint,
      AETS: `BENCH=${bucket}`,
      AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
      S3_CONCURRENCY: String(CONCURRENCY),
    });
    const seriesUrl = `${server.url}/aets/BENCH/studies/${study}/series/${series}`;
    const pids: Record<string, number | "self"> = { server: server.pid, client: "self", ...s3.pids };
    const options = { concurrency: CONCURRENCY, readAhead: DEFAULT_READ_AHEAD };
    const kinds = {
      sdk: () =>
        directRun(data.keys, async (key) => {
          const out = await sdk.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
          return out.Body as ReadableStream<Uint8Array>;
        }, options),
      store: () => directRun(data.keys, async (key) => (await store.get(bucket, key))!.body, options),
      server: async () => {
        const r = await timedFetch(seriesUrl, ACCEPT);
        if (r.bytes < data.bytes) {
          throw new Error(`the server sent ${r.bytes} bytes, expected more than ${data.bytes}`);
        }
        return r;
      },
    };
    const order = ["sdk", "store", "server"] as const;
    console.log("warming up…");
    for (const kind of order) await kinds[kind]();
    const results: Record<string, Measured[]> = { sdk: [], store: [], server: [] };
    await resetPeak(server.pid);
    for (let r = 0; r < ROUNDS; r++) {
      for (const kind of r % 2 === 0 ? order : [...order].reverse()) {
        results[kind].push(await measured(pids, kinds[kind]));
      }
    }
    const singlePeak = (await memoryOf(server.pid)).peak;
    const [d, f, s] = [summarize(results.sdk), summarize(results.store), summarize(results.server)];
    const busy = (m: ReturnType<typeof summarize>) => `other processes ${m.cpu.other.toFixed(0)} ms`;
    say(
      `direct S3, AWS SDK GetObject (${CONCURRENCY} in flight)`,
      `${mbps(data.bytes, d.ms).toFixed(0)} MB/s, first byte ${d.ttfb.toFixed(1)} ms; CPU per series: ` +
        `${cpuText(d.cpu, ["client", "rgw", "osd.0"])}; ${busy(d)}`,
    );
    say(
      `direct S3, S3Store.get (${CONCURRENCY} in flight)`,
      `${mbps(data.bytes, f.ms).toFixed(0)} MB/s, first byte ${f.ttfb.toFixed(1)} ms; CPU per series: ` +
        `${cpuText(f.cpu, ["client", "rgw", "osd.0"])}; ${busy(f)}`,
    );
    say(
      "through the server, 1 client",
      `${mbps(data.bytes, s.ms).toFixed(0)} MB/s, first byte ${s.ttfb.toFixed(1)} ms; CPU per series: ` +
        `${cpuText(s.cpu, ["server", "client", "rgw", "osd.0"])}; ${busy(s)}`,
    );
    say(
      "throughput ratio (target ≥ 90%)",
      `${(d.ms / s.ms * 100).toFixed(0)}% of direct AWS SDK, ${
        (f.ms / s.ms * 100).toFixed(0)
      }% of direct S3Store`,
    );
    say(
      "first byte delta (target ≤ +20 ms)",
      `${(s.ttfb - d.ttfb).toFixed(1)} ms vs direct AWS SDK, ${
        (s.ttfb - f.ttfb).toFixed(1)
      } ms vs direct S3Store` +
        " (the server lists the series first)",
    );
    say("server peak RSS, 1 client", `${singlePeak.toFixed(0)} MB`);
    const four = await fourClients(seriesUrl, server, 2);
    say("4 clients at once", `${four.rate.toFixed(0)} MB/s total`);
    say("server peak RSS, 4 clients (target < 150 MB)", `${four.peak.toFixed(0)} MB`);
    await new Promise((r) => setTimeout(r, 1000));
    say("server RSS 1 s later", `${(await memoryOf(server.pid)).rss.toFixed(0)} MB`);
    await server.stop();
    await Deno.remove(scratch, { recursive: true }).catch(() => {});

    if (Deno.env.get("BENCH_SKIP_METADATA") === undefined) {
      console.log("metadata and frames…");
      lines.push(
        ...await benchMetadata({
          endpoint: s3.endpoint,
          bucket,
          credentials: CREDENTIALS,
          study,
          series,
          instances: data.keys.length,
          seriesBytes: data.bytes,
          startServer,
          rounds: ROUNDS,
        }),
      );
    }

    if (Deno.env.get("BENCH_SKIP_LOCAL") === undefined) {
      const local = await Deno.makeTempDir({ prefix: "bench-local-" });
      try {
        await Deno.mkdir(`${local}/BENCH`);
        await run(["cp", "-r", `${data.dir}/${study}`, `${local}/BENCH/`]);
        const localServer = await startServer({ DATA_DIR: local });
        const url = `${localServer.url}/aets/BENCH/studies/${study}/series/${series}`;
        const localPids = { server: localServer.pid, client: "self" as const };
        await timedFetch(url, ACCEPT);
        await resetPeak(localServer.pid);
        const runs: Measured[] = [];
        for (let r = 0; r < ROUNDS; r++) runs.push(await measured(localPids, () => timedFetch(url, ACCEPT)));
        const l = summarize(runs);
        const localPeak = (await memoryOf(localServer.pid)).peak;
        const localFour = await fourClients(url, localServer, 2);
        say(
          "local folder, through the server",
          `${mbps(data.bytes, l.ms).toFixed(0)} MB/s, first byte ${l.ttfb.toFixed(1)} ms; CPU per series: ` +
            `${cpuText(l.cpu, ["server", "client"])}; peak RSS ${localPeak.toFixed(0)} MB`,
        );
        say(
          "local folder, 4 clients at once",
          `${localFour.rate.toFixed(0)} MB/s total, peak RSS ${localFour.peak.toFixed(0)} MB`,
        );
        await localServer.stop();
      } finally {
        await Deno.remove(local, { recursive: true });
      }
    }
  } finally {
    sdk.destroy();
    store.close();
    await s3.stop();
  }
  console.log(`\nretrieve benchmark (${s3.kind}, ${ROUNDS} rounds in alternating order, medians)`);
  for (const [name, value] of lines) console.log(`  ${name.padEnd(45)} ${value}`);
}

if (import.meta.main) await main();
