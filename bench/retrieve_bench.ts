/**
 * `deno task bench`: every target of issue #19 side by side with its baseline, in one run (PERF-NOTES.md).
 *
 * - the 500-instance CT series (gen_dataset.py --preset bench) in Ceph RGW (started here when `radosgw` is
 *   installed; s3rver otherwise; or `BENCH_S3_ENDPOINT`, with `BENCH_BUCKET` to reuse an uploaded series and
 *   `BENCH_CEPHLAB_DIR` naming that lab Ceph's folder for its CPU),
 * - S3 series, alternating: curl with 16 GETs in parallel on the same objects (the store's floor),
 *   `S3Store.get` with `S3_CONCURRENCY` in flight read in key order (the server's own read path), and the
 *   server (a separate `deno run -P=bench-server` process): throughput, first byte, server CPU per GB
 *   (utime + stime from /proc), 4 clients at once with the server's peak RSS, at `S3_CONCURRENCY` and 16;
 *   and the runtime's floor (`bench/_floor_server.ts`, keys known, the same GETs with nothing else), so the
 *   server's CPU per GB reads against what Deno itself needs on this machine in this run,
 * - one 526 KB instance with 8 connections (curl): the server against a direct signed GET and against the
 *   floor server relaying that one GET (`/object/{key}`),
 * - simulated cloud latency: the server's S3 traffic through a proxy that holds each request
 *   `BENCH_DELAY_MS` (20), against the same proxy without delay, then at `S3_CONCURRENCY` 16 (and 32),
 * - series metadata cold (no catalog: bytes read from S3 counted by a proxy) and warm, from the catalog's
 *   JSON, and frame latency on a 96-frame instance vs a direct ranged GET and the floor server relaying it
 *   (`bench/_metadata.ts`),
 * - local folder mode against Debian's Orthanc on its own disk (started here when installed; the report says
 *   so when it is not): series throughput and CPU per GB, one instance with 8 connections.
 *
 * One warm-up of each, then `BENCH_ROUNDS` (default 5) rounds whose order alternates; figures are medians.
 * CPU time per process comes from /proc, so a slow run can be told apart from a busy machine ("other").
 * `BENCH_SKIP_LOCAL`, `BENCH_SKIP_METADATA`, `BENCH_SKIP_DELAY` skip parts; `BENCH_SINGLE_REQUESTS` (1000)
 * sets the requests per single-instance run. The server gets the `--v8-flags` of `deno task start`;
 * `BENCH_SERVER_FLAGS` replaces them (`BENCH_SERVER_FLAGS=` for none).
 * Prints the figures and each target's ratio, met or missed; never asserts timings.
 */

import { DEFAULT_READ_AHEAD } from "../lib/objects/open_instance.ts";
import { S3Store } from "../lib/store/s3/s3_store.ts";
import {
  cpuSample,
  cpuSpent,
  curlParallel,
  type CurlRun,
  delayProxy,
  directRun,
  mbps,
  median,
  memoryOf,
  resetPeak,
  type Run,
  run,
  summarize,
  timedFetch,
} from "./_util.ts";
import { benchMetadata } from "./_metadata.ts";
import { BENCH_CREDENTIALS, type BenchS3, benchSeriesDir, createBenchBucket } from "./_s3.ts";
import { orthancMissing, type OrthancPeer, startOrthancPeer } from "./_orthanc_peer.ts";
import { startS3 } from "../tests/_s3server.ts";

const CONCURRENCY = Number(Deno.env.get("S3_CONCURRENCY") ?? 8);
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 5);
const SERVER_FLAGS = (Deno.env.get("BENCH_SERVER_FLAGS") ?? await startTaskV8Flags()).split(/\s+/).filter((
  f,
) => f);
const REPO = new URL("../", import.meta.url).pathname;
const SHARED = new URL("../../shared/", import.meta.url).pathname;
const ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*';

/** The `--v8-flags=…` of `deno task start`, so the server runs here as it is deployed. */
async function startTaskV8Flags(): Promise<string> {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const start = config.tasks?.start;
  const command: string = typeof start === "string" ? start : start?.command ?? "";
  return command.match(/--v8-flags=\S+/g)?.join(" ") ?? "";
}

async function dataset(): Promise<{ dir: string; keys: string[]; bytes: number }> {
  const dir = await benchSeriesDir();
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

interface S3Target extends BenchS3 {
  /** The S3 server's processes, when started here (their CPU time is reported). */
  pids: Record<string, number>;
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

async function startServer(
  env: Record<string, string>,
  script = `${REPO}main.ts`,
): Promise<ServerProcess> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-P=bench-server", ...SERVER_FLAGS, script],
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
async function fourClients(url: string, pid: number, times: number, accept = ACCEPT) {
  await resetPeak(pid);
  const rates: number[] = [];
  for (let i = 0; i < times; i++) {
    const t0 = performance.now();
    const runs = await Promise.all(Array.from({ length: 4 }, () => timedFetch(url, accept)));
    rates.push(mbps(runs.reduce((n, r) => n + r.bytes, 0), performance.now() - t0));
  }
  return { rate: median(rates), peak: (await memoryOf(pid)).peak };
}

/** Runs each of `kinds` `rounds` times, the order reversed every other round; results per kind. */
async function alternate(
  kinds: Record<string, () => Promise<Measured>>,
  rounds: number,
): Promise<Record<string, Measured[]>> {
  const names = Object.keys(kinds);
  const results: Record<string, Measured[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < rounds; r++) {
    for (const name of r % 2 === 0 ? names : [...names].reverse()) results[name].push(await kinds[name]());
  }
  return results;
}

function cpuText(cpu: Record<string, number>, names: string[]): string {
  return names.filter((n) => n in cpu).map((n) => `${n} ${cpu[n].toFixed(0)}`).join(", ") + " ms";
}

/** One line of the report: a figure, and the target it is held against when there is one. */
interface Line {
  name: string;
  value: string;
  target?: string;
  met?: boolean;
}

/** CPU seconds per GB (10^9 bytes) of `ms` CPU milliseconds spent serving `bytes`. */
function perGb(ms: number, bytes: number): number {
  return ms / 1000 / (bytes / 1e9);
}

const SINGLE_REQUESTS = Number(Deno.env.get("BENCH_SINGLE_REQUESTS") ?? 1000);
const DELAY_MS = Number(Deno.env.get("BENCH_DELAY_MS") ?? 20);

async function main() {
  const data = await dataset();
  const [study, series] = data.keys[0].split("/");
  const firstSop = data.keys[0].split("/")[2].replace(/\.dcm$/, "");
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
    credentials: BENCH_CREDENTIALS,
  });
  const lines: Line[] = [];
  const say = (name: string, value: string, target?: string, met?: boolean) =>
    lines.push({ name, value, target, met });
  const gb = data.bytes / 1e9;
  try {
    if (!given) {
      await createBenchBucket(s3, bucket);
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
    const objectUrl = (endpoint: string, key: string) => `${endpoint}/${bucket}/${key}`;
    const directUrls = data.keys.map((k) => objectUrl(s3.endpoint, k));
    const sigv4 = { key: BENCH_CREDENTIALS.accessKeyId, secret: BENCH_CREDENTIALS.secretAccessKey };

    const scratch = await Deno.makeTempDir({ prefix: "bench-server-" });
    const serverEnv = (endpoint: string, concurrency: number, name: string) => ({
      CATALOG_PATH: `${scratch}/${name}.sqlite`, // not in the repository's ./data
      S3_ENDPOINT: endpoint,
      AETS: `BENCH=${bucket}`,
      AWS_ACCESS_KEY_ID: BENCH_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: BENCH_CREDENTIALS.secretAccessKey,
      S3_CONCURRENCY: String(concurrency),
    });
    const server = await startServer(serverEnv(s3.endpoint, CONCURRENCY, "main"));
    const keysFile = `${scratch}/keys.txt`;
    await Deno.writeTextFile(keysFile, data.keys.join("\n"));
    const floor = await startServer({
      ...serverEnv(s3.endpoint, CONCURRENCY, "floor"),
      BUCKET: bucket,
      KEYS_FILE: keysFile,
    }, `${REPO}bench/_floor_server.ts`);
    const seriesPath = `/aets/BENCH/studies/${study}/series/${series}`;
    const seriesUrl = `${server.url}${seriesPath}`;
    const instanceUrl = `${seriesUrl}/instances/${firstSop}`;
    const pids: Record<string, number | "self"> = { server: server.pid, client: "self", ...s3.pids };
    const options = { concurrency: CONCURRENCY, readAhead: DEFAULT_READ_AHEAD };
    const checked = async (url: string) => {
      const r = await timedFetch(url, ACCEPT);
      if (r.bytes < data.bytes) {
        throw new Error(`${url} sent ${r.bytes} bytes, expected more than ${data.bytes}`);
      }
      return r;
    };
    const curl16 = async () => {
      const r = await curlParallel(directUrls, { parallel: 16, sigv4 });
      if (r.failed > 0 || r.bytes !== data.bytes) {
        throw new Error(`curl: ${r.failed} failed, ${r.bytes} bytes`);
      }
      return r;
    };
    const kinds = {
      curl: () => measured(pids, curl16),
      store: () =>
        measured(
          pids,
          () => directRun(data.keys, async (key) => (await store.get(bucket, key))!.body, options),
        ),
      server: () => measured(pids, () => checked(seriesUrl)),
      floor: () => measured({ ...pids, server: floor.pid }, () => checked(floor.url)),
    };
    console.log("S3 series: warming up…");
    for (const kind of Object.values(kinds)) await kind();
    await resetPeak(server.pid);
    const results = await alternate(kinds, ROUNDS);
    const singlePeak = (await memoryOf(server.pid)).peak;
    const [c, f, s] = [summarize(results.curl), summarize(results.store), summarize(results.server)];
    const fl = summarize(results.floor);
    const busy = (m: ReturnType<typeof summarize>) => `other processes ${m.cpu.other.toFixed(0)} ms`;
    say(
      "S3: curl, 16 GETs in parallel (the store's floor)",
      `${mbps(data.bytes, c.ms).toFixed(0)} MB/s, first byte ${c.ttfb.toFixed(1)} ms; CPU: ${
        cpuText(c.cpu, ["rgw", "osd.0"])
      }`,
    );
    say(
      `S3: S3Store.get, ${CONCURRENCY} in flight, in key order`,
      `${mbps(data.bytes, f.ms).toFixed(0)} MB/s, first byte ${f.ttfb.toFixed(1)} ms; client CPU ${
        perGb(f.cpu.client, data.bytes).toFixed(2)
      } s/GB; ${cpuText(f.cpu, ["rgw", "osd.0"])}`,
    );
    say(
      "S3: through the server, 1 client",
      `${mbps(data.bytes, s.ms).toFixed(0)} MB/s, first byte ${s.ttfb.toFixed(1)} ms; CPU per series: ` +
        `${cpuText(s.cpu, ["server", "client", "rgw", "osd.0"])}; ${busy(s)}; peak RSS ${
          singlePeak.toFixed(0)
        } MB`,
    );
    const floorGb = perGb(fl.cpu.server, data.bytes);
    say(
      "S3: the floor (bench/_floor_server.ts: keys known, signed GETs, 8 ahead)",
      `${mbps(data.bytes, fl.ms).toFixed(0)} MB/s, first byte ${fl.ttfb.toFixed(1)} ms; CPU ${
        floorGb.toFixed(2)
      } s/GB`,
    );
    const cpuGb = perGb(s.cpu.server, data.bytes);
    // what only receiving the bytes costs a lean C client on this machine in this run (the server receives
    // them and sends them on)
    const curlGb = perGb(median(results.curl.map((m) => (m.run as CurlRun).cpuMs)), data.bytes);
    say(
      "S3 series: server CPU per GB",
      `${cpuGb.toFixed(2)} s/GB = ${(cpuGb / floorGb).toFixed(2)}× the floor's in this run; curl only ` +
        `receiving the series spends ${curlGb.toFixed(2)} s/GB (${(cpuGb / curlGb).toFixed(2)}×)`,
      "≤ 0.9 s/GB",
      cpuGb <= 0.9,
    );
    const thr = c.ms / s.ms;
    say(
      "S3 series: throughput vs curl 16-way",
      `${thr.toFixed(2)}× (${(f.ms / s.ms).toFixed(2)}× of S3Store.get direct)`,
      "≥ 0.85×",
      thr >= 0.85,
    );
    const ttfbDelta = s.ttfb - c.ttfb;
    say(
      "S3 series: first byte vs curl's",
      `${s.ttfb.toFixed(1)} ms vs ${c.ttfb.toFixed(1)} ms: ${ttfbDelta >= 0 ? "+" : ""}${
        ttfbDelta.toFixed(1)
      } ms`,
      "≤ +8 ms",
      ttfbDelta <= 8,
    );
    const four8 = await fourClients(seriesUrl, server.pid, 2);
    say(
      `S3: 4 clients at once, S3_CONCURRENCY=${CONCURRENCY}`,
      `${four8.rate.toFixed(0)} MB/s total; peak RSS ${four8.peak.toFixed(0)} MB`,
      "< 150 MB",
      four8.peak < 150,
    );

    // single instance, 8 connections: curl against the store, the floor server (the same one GET relayed with
    // nothing else) and the server
    const singleKinds = {
      direct: () =>
        measured(pids, () =>
          curlParallel(Array(SINGLE_REQUESTS).fill(objectUrl(s3.endpoint, data.keys[0])), {
            parallel: 8,
            sigv4,
          })),
      floor: () =>
        measured(
          { ...pids, server: floor.pid },
          () =>
            curlParallel(Array(SINGLE_REQUESTS).fill(`${floor.url}/object/${data.keys[0]}`), {
              parallel: 8,
            }),
        ),
      server: () =>
        measured(
          pids,
          () =>
            curlParallel(Array(SINGLE_REQUESTS).fill(instanceUrl), {
              parallel: 8,
              headers: { accept: ACCEPT },
            }),
        ),
    };
    for (const kind of Object.values(singleKinds)) await kind();
    const single = await alternate(singleKinds, 3);
    await floor.stop();
    const rps = (m: Measured[]) => median(m.map((x) => SINGLE_REQUESTS / (x.run.ms / 1000)));
    const perRequest = (m: Measured[]) => median(m.map((x) => x.cpu.server)) / SINGLE_REQUESTS;
    const [sd, sf, ss] = [rps(single.direct), rps(single.floor), rps(single.server)];
    say(
      "S3 single instance (526 KB), 8 connections",
      `server ${ss.toFixed(0)} req/s vs direct GET ${sd.toFixed(0)} req/s: ${
        (ss / sd).toFixed(2)
      }×; the floor ` +
        `server ${sf.toFixed(0)} req/s = ${(sf / sd).toFixed(2)}× direct (server ${
          (ss / sf).toFixed(2)
        }× the ` +
        `floor); CPU per request: server ${perRequest(single.server).toFixed(2)} ms, floor ${
          perRequest(single.floor).toFixed(2)
        } ms`,
      "≥ 0.85×",
      ss / sd >= 0.85,
    );
    await server.stop();

    // S3_CONCURRENCY 16: 1 client, then 4
    {
      const server16 = await startServer(serverEnv(s3.endpoint, 16, "c16"));
      const url = `${server16.url}${seriesPath}`;
      await checked(url);
      const runs: Measured[] = [];
      for (let r = 0; r < 3; r++) runs.push(await measured({ server: server16.pid }, () => checked(url)));
      const m = summarize(runs);
      const four16 = await fourClients(url, server16.pid, 2);
      say(
        "S3: S3_CONCURRENCY=16, 1 client",
        `${mbps(data.bytes, m.ms).toFixed(0)} MB/s, server CPU ${
          perGb(m.cpu.server, data.bytes).toFixed(2)
        } s/GB`,
      );
      say(
        "S3: 4 clients at once, S3_CONCURRENCY=16",
        `${four16.rate.toFixed(0)} MB/s total; peak RSS ${four16.peak.toFixed(0)} MB`,
        "< 150 MB",
        four16.peak < 150,
      );
      await server16.stop();
    }

    // simulated cloud latency: the server's S3 requests through a proxy that delays each by DELAY_MS
    if (Deno.env.get("BENCH_SKIP_DELAY") === undefined) {
      const target = new URL(s3.endpoint);
      const near = delayProxy(target, 0);
      const far = delayProxy(target, DELAY_MS);
      try {
        const nearServer = await startServer(serverEnv(near.endpoint, CONCURRENCY, "near"));
        const farServer = await startServer(serverEnv(far.endpoint, CONCURRENCY, "far"));
        const nearUrl = `${nearServer.url}${seriesPath}`;
        const farUrl = `${farServer.url}${seriesPath}`;
        await checked(nearUrl);
        await checked(farUrl);
        await resetPeak(farServer.pid);
        const delayed = await alternate({
          near: () => measured({ server: nearServer.pid }, () => checked(nearUrl)),
          far: () => measured({ server: farServer.pid }, () => checked(farUrl)),
        }, 3);
        const farPeak = (await memoryOf(farServer.pid)).peak;
        const [n, d] = [summarize(delayed.near), summarize(delayed.far)];
        const ratio = n.ms / d.ms;
        say(
          `S3 +${DELAY_MS} ms per request (proxy), S3_CONCURRENCY=${CONCURRENCY}`,
          `${mbps(data.bytes, d.ms).toFixed(0)} MB/s vs ${
            mbps(data.bytes, n.ms).toFixed(0)
          } MB/s through the same proxy without delay: ${ratio.toFixed(2)}×; first byte ${
            d.ttfb.toFixed(0)
          } ms; peak RSS ${farPeak.toFixed(0)} MB`,
          "≥ 0.8×",
          ratio >= 0.8,
        );
        await nearServer.stop();
        await farServer.stop();
        for (const more of [16, 32]) {
          if (ratio >= 0.8 && more > 16) break;
          const moreServer = await startServer(serverEnv(far.endpoint, more, `far${more}`));
          const url = `${moreServer.url}${seriesPath}`;
          await checked(url);
          await resetPeak(moreServer.pid);
          const runs: Run[] = [];
          for (let r = 0; r < 3; r++) runs.push(await checked(url));
          const ms = median(runs.map((r) => r.ms));
          say(
            `S3 +${DELAY_MS} ms per request, S3_CONCURRENCY=${more}`,
            `${mbps(data.bytes, ms).toFixed(0)} MB/s: ${(n.ms / ms).toFixed(2)}× of no delay; peak RSS ${
              (await memoryOf(moreServer.pid)).peak.toFixed(0)
            } MB`,
          );
          await moreServer.stop();
        }
      } finally {
        near.close();
        far.close();
      }
    }
    await Deno.remove(scratch, { recursive: true }).catch(() => {});

    if (Deno.env.get("BENCH_SKIP_METADATA") === undefined) {
      console.log("metadata and frames…");
      lines.push(
        ...(await benchMetadata({
          endpoint: s3.endpoint,
          bucket,
          credentials: BENCH_CREDENTIALS,
          study,
          series,
          instances: data.keys.length,
          seriesBytes: data.bytes,
          startServer,
          startFloor: (env) => startServer(env, `${REPO}bench/_floor_server.ts`),
          rounds: ROUNDS,
        })).map(([name, value, target, met]) => ({ name, value, target, met })),
      );
    }

    if (Deno.env.get("BENCH_SKIP_LOCAL") === undefined) await local(data, study, series, firstSop, say);
  } finally {
    store.close();
    await s3.stop();
  }
  console.log(
    `\nretrieve benchmark (${s3.kind}, ${data.keys.length} × ${
      (data.bytes / data.keys.length / 1e3).toFixed(0)
    } KB = ${(gb * 1000).toFixed(0)} MB; ${ROUNDS} rounds in alternating order, medians)`,
  );
  for (const line of lines) {
    const verdict = line.target === undefined
      ? ""
      : `  [target ${line.target}: ${line.met ? "met" : "MISSED"}]`;
    console.log(`  ${line.name.padEnd(52)} ${line.value}${verdict}`);
  }
}

/** Local folder mode against Debian's Orthanc on its own disk, alternating. */
async function local(
  data: { dir: string; keys: string[]; bytes: number },
  study: string,
  series: string,
  sop: string,
  say: (name: string, value: string, target?: string, met?: boolean) => void,
) {
  const folder = await Deno.makeTempDir({ prefix: "bench-local-" });
  try {
    await Deno.mkdir(`${folder}/BENCH`);
    await run(["cp", "-r", `${data.dir}/${study}`, `${folder}/BENCH/`]);
    const server = await startServer({ DATA_DIR: folder });
    const url = `${server.url}/aets/BENCH/studies/${study}/series/${series}`;
    const missing = await orthancMissing();
    let orthanc: OrthancPeer | undefined;
    if (missing) say("Orthanc (local peer)", `not run: ${missing}`);
    else {
      console.log("storing the series into Orthanc…");
      orthanc = await startOrthancPeer(data.keys.map((k) => `${data.dir}/${k}`));
    }
    try {
      const orthancUrl = orthanc && `${orthanc.url}/dicom-web/studies/${study}/series/${series}`;
      const kinds: Record<string, () => Promise<Measured>> = {
        server: () => measured({ server: server.pid, client: "self" }, () => timedFetch(url, ACCEPT)),
      };
      if (orthanc) {
        kinds.orthanc = () => measured({ server: orthanc.pid }, () => timedFetch(orthancUrl!, ACCEPT));
      }
      for (const kind of Object.values(kinds)) await kind();
      await resetPeak(server.pid);
      const results = await alternate(kinds, ROUNDS);
      const l = summarize(results.server);
      const localPeak = (await memoryOf(server.pid)).peak;
      const localFour = await fourClients(url, server.pid, 2);
      const lCpu = perGb(l.cpu.server, data.bytes);
      say(
        "local folder: through the server, 1 client",
        `${mbps(data.bytes, l.ms).toFixed(0)} MB/s, first byte ${l.ttfb.toFixed(1)} ms; server CPU ${
          lCpu.toFixed(2)
        } s/GB; peak RSS ${localPeak.toFixed(0)} MB`,
      );
      say(
        "local folder: 4 clients at once",
        `${localFour.rate.toFixed(0)} MB/s total, peak RSS ${localFour.peak.toFixed(0)} MB`,
      );
      const singleUrl = `${url}/instances/${sop}`;
      const single = async (u: string, pid: number) =>
        await measured(
          { server: pid },
          () => curlParallel(Array(SINGLE_REQUESTS).fill(u), { parallel: 8, headers: { accept: ACCEPT } }),
        );
      const rps = (m: Measured[]) => median(m.map((x) => SINGLE_REQUESTS / (x.run.ms / 1000)));
      if (orthanc) {
        const o = summarize(results.orthanc);
        const oCpu = perGb(o.cpu.server, data.bytes);
        say(
          `local folder: ${orthanc.version}, its own disk`,
          `${mbps(data.bytes, o.ms).toFixed(0)} MB/s, first byte ${o.ttfb.toFixed(1)} ms; CPU ${
            oCpu.toFixed(2)
          } s/GB; peak RSS ${(await memoryOf(orthanc.pid)).peak.toFixed(0)} MB`,
        );
        say("local folder: CPU per GB vs Orthanc", `${(lCpu / oCpu).toFixed(2)}×`, "≤ 1×", lCpu <= oCpu);
        say(
          "local folder: throughput vs Orthanc",
          `${(o.ms / l.ms).toFixed(2)}×`,
          "≥ 1.3×",
          o.ms / l.ms >= 1.3,
        );
        const orthancSingle = `${orthanc.url}/dicom-web/studies/${study}/series/${series}/instances/${sop}`;
        const singles = await alternate({
          server: () => single(singleUrl, server.pid),
          orthanc: () => single(orthancSingle, orthanc!.pid),
        }, 3);
        const [a, b] = [rps(singles.server), rps(singles.orthanc)];
        // the one curl client shares the 2 cores: when both answer alike, CPU per request tells them apart
        const perRequest = (m: Measured[]) => median(m.map((x) => x.cpu.server / SINGLE_REQUESTS));
        say(
          "local folder: single instance, 8 connections",
          `server ${a.toFixed(0)} req/s vs Orthanc ${b.toFixed(0)} req/s: ${
            (a / b).toFixed(2)
          }×; CPU per request ${perRequest(singles.server).toFixed(2)} vs ${
            perRequest(singles.orthanc).toFixed(2)
          } ms (the rest of the machine, curl included: ${
            median(singles.server.map((x) => x.cpu.other / SINGLE_REQUESTS)).toFixed(2)
          } vs ${median(singles.orthanc.map((x) => x.cpu.other / SINGLE_REQUESTS)).toFixed(2)} ms)`,
          "≥ 1.3×",
          a / b >= 1.3,
        );
      } else {
        const singles = await alternate({ server: () => single(singleUrl, server.pid) }, 3);
        say("local folder: single instance, 8 connections", `server ${rps(singles.server).toFixed(0)} req/s`);
      }
    } finally {
      await orthanc?.stop();
      await server.stop();
    }
  } finally {
    await Deno.remove(folder, { recursive: true });
  }
}

if (import.meta.main) await main();
