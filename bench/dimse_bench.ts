/**
 * DIMSE benchmark: `deno run -P=bench bench/dimse_bench.ts`.
 *
 * - the 500-instance CT series (gen_dataset.py --preset bench),
 * - S3: Ceph RGW started here when `radosgw` is installed (ports of its own), s3rver otherwise, or
 *   `BENCH_S3_ENDPOINT`,
 * - the server in a separate process (this file with `--serve`: configuration, store, catalog, HTTP handler and
 *   the DIMSE service, wired as main.ts wires them), `-P=bench-server` and the `--v8-flags` of `deno task start`,
 * - store: dcmtk `storescu` of the series on 4 associations at once (a quarter each) vs STOW-RS of the same files
 *   in 4 requests at once; the bucket is emptied between runs;
 * - retrieve: C-MOVE of the series to a dcmtk `storescp` (`--ignore`: received, not written) vs WADO-RS of the
 *   series read to its end;
 * - the server's peak RSS (VmHWM) during the DIMSE stores and during the C-MOVEs.
 *
 * Prints figures and ratios; never asserts.
 */

import { S3Store } from "../lib/store/s3/s3_store.ts";
import { BENCH_CREDENTIALS, benchS3, benchSeriesDir, createBenchBucket } from "./_s3.ts";
import { mbps, median, memoryOf, resetPeak, run } from "./_util.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const ASSOCIATIONS = 4;
const REPO = new URL("../", import.meta.url).pathname;
const CREDENTIALS = BENCH_CREDENTIALS;
/**
 * dcmtk leaves Nagle's algorithm on unless TCP_NODELAY=1: its small C-STORE-RSP then waits for our delayed ACK,
 * 40 ms per instance (storescu to storescp alone: 49 ms per 526 KB instance, 3 ms with it).
 */
const DCMTK_ENV = { TCP_NODELAY: "1" };

if (import.meta.main && Deno.args[0] === "--serve") await serve();
else if (import.meta.main) await main();

/** The server process: what main.ts runs, plus `startDimse` (the lead wires the same into main.ts). */
async function serve(): Promise<void> {
  const { loadConfig } = await import("../lib/config/config.ts");
  const { assembleServices, openCatalog, openStore } = await import("../lib/app/open.ts");
  const { createHandler } = await import("../lib/app/handler.ts");
  const { completeServices } = await import("../lib/dicomweb/services.ts");
  const { parseDimseSettings } = await import("../lib/dimse/dimse_settings.ts");
  const { startDimse } = await import("../lib/dimse/server.ts");
  const config = await loadConfig();
  const store = await openStore(config);
  const catalog = await openCatalog(config);
  const log = (line: string) => console.error(line);
  const services = completeServices(assembleServices(config, store, { catalog, log }), log);
  const problems: string[] = [];
  const settings = parseDimseSettings(Deno.env.toObject(), problems, config);
  if (!settings || problems.length > 0) throw new Error(`DIMSE settings: ${problems.join("; ")}`);
  await startDimse(services, settings, { log });
  Deno.serve(
    { port: config.port, hostname: config.hostname, onListen() {} },
    createHandler(services, { log }),
  );
}

async function startTaskV8Flags(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const command: string = config.tasks?.start?.command ?? config.tasks?.start ?? "";
  return command.match(/--v8-flags=\S+/g) ?? [];
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

interface Series {
  dir: string;
  files: { key: string; path: string; bytes: Uint8Array }[];
  bytes: number;
  study: string;
  series: string;
}

async function benchSeries(): Promise<Series> {
  const dir = await benchSeriesDir();
  const files: Series["files"] = [];
  const walk = async (path: string, prefix: string) => {
    for await (const entry of Deno.readDir(path)) {
      if (entry.isDirectory) await walk(`${path}/${entry.name}`, `${prefix}${entry.name}/`);
      else if (entry.name.endsWith(".dcm")) {
        const full = `${path}/${entry.name}`;
        files.push({ key: prefix + entry.name, path: full, bytes: await Deno.readFile(full) });
      }
    }
  };
  await walk(dir, "");
  files.sort((a, b) => (a.key < b.key ? -1 : 1));
  const [study, series] = files[0].key.split("/");
  return { dir, files, bytes: files.reduce((n, f) => n + f.bytes.length, 0), study, series };
}

async function empty(store: S3Store, bucket: string): Promise<void> {
  const keys = (await Array.fromAsync(store.list(bucket, ""))).map((o) => o.key);
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < keys.length) await store.delete(bucket, keys[next++]);
  }));
}

function quarters<T>(items: T[]): T[][] {
  return Array.from({ length: ASSOCIATIONS }, (_, k) => items.filter((_, i) => i % ASSOCIATIONS === k));
}

/** storescu of the series on ASSOCIATIONS associations at once; ms. */
async function storeDimse(port: number, series: Series): Promise<number> {
  const t0 = performance.now();
  await Promise.all(
    quarters(series.files).map((files) =>
      run([
        "storescu",
        "-R",
        "-xe",
        "-aet",
        "BENCHSCU",
        "-aec",
        "BENCH",
        "127.0.0.1",
        String(port),
        ...files.map((f) => f.path),
      ], DCMTK_ENV)
    ),
  );
  return performance.now() - t0;
}

/** STOW-RS of the series in ASSOCIATIONS requests at once; ms. */
async function storeStow(url: string, series: Series): Promise<number> {
  const encoder = new TextEncoder();
  const t0 = performance.now();
  await Promise.all(
    quarters(series.files).map(async (files) => {
      const boundary = `bench-${crypto.randomUUID()}`;
      const head = encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`);
      const crlf = encoder.encode("\r\n");
      const body = new Blob(
        [...files.flatMap((f) => [head, f.bytes, crlf]), encoder.encode(`--${boundary}--\r\n`)] as BlobPart[],
      );
      const response = await fetch(`${url}/aets/BENCH/studies`, {
        method: "POST",
        body,
        headers: {
          "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
          accept: "application/dicom+json",
        },
      });
      await response.body?.cancel();
      if (response.status !== 200) throw new Error(`STOW-RS answered ${response.status}`);
    }),
  );
  return performance.now() - t0;
}

/** C-MOVE of the series to the storescp; ms. */
async function moveDimse(port: number, series: Series): Promise<number> {
  const t0 = performance.now();
  const out = await run([
    "movescu",
    "-S",
    "-aet",
    "BENCHSCU",
    "-aec",
    "BENCH",
    "-aem",
    "DEST",
    "-k",
    "QueryRetrieveLevel=SERIES",
    "-k",
    `StudyInstanceUID=${series.study}`,
    "-k",
    `SeriesInstanceUID=${series.series}`,
    "127.0.0.1",
    String(port),
  ], DCMTK_ENV);
  if (/Failed|Warning|error/i.test(out)) throw new Error(`movescu: ${out}`);
  return performance.now() - t0;
}

/** WADO-RS of the series, read to its end; ms. */
async function retrieveWado(url: string, series: Series): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  const response = await fetch(`${url}/aets/BENCH/studies/${series.study}/series/${series.series}`, {
    headers: { accept: 'multipart/related; type="application/dicom"; transfer-syntax=*' },
  });
  let bytes = 0;
  for await (const chunk of response.body!) bytes += chunk.byteLength;
  return { ms: performance.now() - t0, bytes };
}

async function main(): Promise<void> {
  const series = await benchSeries();
  console.log(`series: ${series.files.length} instances, ${(series.bytes / 1e6).toFixed(1)} MB`);
  const s3 = await benchS3({ prefix: "dimse-bench", rgw: 7550, mon: 3360, monV1: 6849 });
  const bucket = `dimse-bench-${Date.now().toString(36)}`;
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: CREDENTIALS,
  });
  const catalogDir = await Deno.makeTempDir({ prefix: "dimse-bench-catalog-" });
  const storescpPort = freePort();
  const storescp = new Deno.Command("storescp", {
    args: ["-aet", "DEST", "--ignore", "+xa", String(storescpPort)],
    env: DCMTK_ENV,
    stdout: "null",
    stderr: "null",
  }).spawn();
  let server: Deno.ChildProcess | undefined;
  try {
    await createBenchBucket(s3, bucket);
    const httpPort = freePort();
    const dimsePort = freePort();
    server = new Deno.Command(Deno.execPath(), {
      args: ["run", "-P=bench-server", ...await startTaskV8Flags(), `${REPO}bench/dimse_bench.ts`, "--serve"],
      env: {
        NO_COLOR: "1",
        PORT: String(httpPort),
        HOSTNAME: "127.0.0.1",
        CATALOG_PATH: `${catalogDir}/catalog.sqlite`,
        CRAWL_INTERVAL: "0",
        S3_ENDPOINT: s3.endpoint,
        AETS: `BENCH=${bucket}`,
        AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
        DIMSE_PORT: String(dimsePort),
        DIMSE_ALLOW_ANY: "true",
        DIMSE_PEERS: `DEST@127.0.0.1:${storescpPort}`,
      },
      cwd: REPO,
      stdout: "null",
      stderr: "inherit",
    }).spawn();
    const url = `http://127.0.0.1:${httpPort}`;
    for (let i = 0; i < 400; i++) {
      try {
        const r = await fetch(`${url}/healthz`);
        await r.body?.cancel();
        if (r.ok) break;
      } catch { /* not up yet */ }
      await new Promise((r) => setTimeout(r, 50));
    }
    console.log("warming up…");
    // (emptied in between: our File Meta differs from the files', so STOW would find a conflict)
    await storeDimse(dimsePort, { ...series, files: series.files.slice(0, 40) });
    await empty(store, bucket);
    await storeStow(url, { ...series, files: series.files.slice(0, 40) });
    await empty(store, bucket);

    const dimseStore: number[] = [];
    const stowStore: number[] = [];
    const moves: number[] = [];
    const wados: number[] = [];
    let storePeak = 0;
    let movePeak = 0;
    for (let r = 0; r < ROUNDS; r++) {
      console.log(`round ${r + 1} of ${ROUNDS}…`);
      stowStore.push(await storeStow(url, series));
      await empty(store, bucket);
      await resetPeak(server.pid);
      dimseStore.push(await storeDimse(dimsePort, series));
      storePeak = Math.max(storePeak, (await memoryOf(server.pid)).peak);
      const stored = (await Array.fromAsync(store.list(bucket, ""))).length;
      if (stored !== series.files.length) throw new Error(`DIMSE stored ${stored} of ${series.files.length}`);
      const wado = await retrieveWado(url, series);
      if (wado.bytes < series.bytes) throw new Error(`WADO-RS sent ${wado.bytes} bytes`);
      wados.push(wado.ms);
      await resetPeak(server.pid);
      moves.push(await moveDimse(dimsePort, series));
      movePeak = Math.max(movePeak, (await memoryOf(server.pid)).peak);
      await empty(store, bucket);
    }
    const rate = (ms: number) => `${mbps(series.bytes, ms).toFixed(0)} MB/s (${ms.toFixed(0)} ms)`;
    const [d, s, m, w] = [median(dimseStore), median(stowStore), median(moves), median(wados)];
    console.log(
      `\nS3: ${s3.kind}; ${ROUNDS} rounds, medians; ${ASSOCIATIONS} associations / requests at once`,
    );
    console.log(
      `store   DIMSE storescu: ${rate(d)}; STOW-RS: ${rate(s)}; DIMSE/STOW throughput ${
        (s / d * 100).toFixed(0)
      }%`,
    );
    console.log(
      `retrieve C-MOVE to storescp: ${rate(m)}; WADO-RS: ${rate(w)}; C-MOVE/WADO throughput ${
        (w / m * 100).toFixed(0)
      }%`,
    );
    console.log(
      `server peak RSS: ${storePeak.toFixed(0)} MB during DIMSE stores, ${
        movePeak.toFixed(0)
      } MB during C-MOVEs`,
    );
    console.log(
      `each round store DIMSE/STOW: ${
        dimseStore.map((x, i) => `${x.toFixed(0)}/${stowStore[i].toFixed(0)}`).join(", ")
      } ms`,
    );
    console.log(
      `each round retrieve C-MOVE/WADO: ${
        moves.map((x, i) => `${x.toFixed(0)}/${wados[i].toFixed(0)}`).join(", ")
      } ms`,
    );
  } finally {
    server?.kill("SIGTERM");
    await server?.status;
    storescp.kill("SIGTERM");
    await storescp.status;
    await empty(store, bucket).catch(() => {});
    await s3.stop();
    await Deno.remove(catalogDir, { recursive: true }).catch(() => {});
  }
}
