/**
 * Import benchmark (issue #15): `deno run -P=bench bench/import_bench.ts`.
 *
 * The 500-instance CT series (`gen_dataset.py --preset bench`, a folder on disk) goes into Ceph RGW (started here
 * when `radosgw` is installed, on ports of its own; s3rver otherwise; `BENCH_S3_ENDPOINT` for another) two ways,
 * alternating, `BENCH_ROUNDS` times (default 3), each into a new bucket:
 *
 * - direct: every file read from disk and PutObject with the server's own S3 writer (`S3Store.put`),
 *   `S3_CONCURRENCY` (8) in flight — the floor;
 * - `deno task import FOLDER --aet BENCH` as its own process, with the task's permissions and the same
 *   concurrency, recording into a SQLite catalog as it does by default: the same files walked, parsed, checked,
 *   written and catalogued.
 *
 * Prints the medians, the throughput ratio (target ≥ 0.8) and the importer's peak RSS (`/usr/bin/time`'s
 * maximum resident set size); never asserts.
 */

import { S3Store } from "../lib/store/s3/s3_store.ts";
import { BENCH_CREDENTIALS, type BenchS3, benchS3, benchSeriesDir, createBenchBucket } from "./_s3.ts";
import { mbps, median } from "./_util.ts";

const CONCURRENCY = Number(Deno.env.get("S3_CONCURRENCY") ?? 8);
const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const REPO = new URL("../", import.meta.url).pathname;
const CREDENTIALS = BENCH_CREDENTIALS;

/** The bench series on disk: its folder and files (paths relative to it). */
async function dataset(): Promise<{ dir: string; folders: string[]; files: string[]; bytes: number }> {
  const dir = await benchSeriesDir();
  const files: string[] = [];
  let bytes = 0;
  const walk = async (path: string) => {
    for await (const entry of Deno.readDir(path)) {
      const full = `${path}/${entry.name}`;
      if (entry.isDirectory) await walk(full);
      else if (entry.name.endsWith(".dcm")) {
        files.push(full);
        bytes += (await Deno.stat(full)).size;
      }
    }
  };
  await walk(dir);
  // the study folders (the generator's index files beside them are not DICOM)
  const folders: string[] = [];
  for await (const entry of Deno.readDir(dir)) if (entry.isDirectory) folders.push(`${dir}/${entry.name}`);
  return { dir, folders, files: files.sort(), bytes };
}

/** Every file read from disk and put with `S3Store.put`, `CONCURRENCY` at once; milliseconds. */
async function direct(store: S3Store, bucket: string, files: string[], dir: string): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const path = files[next++];
      const bytes = await Deno.readFile(path);
      await store.put(bucket, path.slice(dir.length + 1), bytes, {
        size: bytes.length,
        contentType: "application/dicom",
      });
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return performance.now() - t0;
}

/** `deno task import` of the folder as its own process: milliseconds and peak RSS (MB). */
async function importRun(
  s3: BenchS3,
  bucket: string,
  folders: string[],
): Promise<{ ms: number; peakMb: number; last: string }> {
  const catalogDir = await Deno.makeTempDir({ prefix: "import-bench-catalog-" });
  try {
    const t0 = performance.now();
    const out = await new Deno.Command("/usr/bin/time", {
      args: [
        "-f",
        "maxrss_kb=%M",
        Deno.execPath(),
        "run", // the import task's permissions (deno.json), with the catalog's temporary folder writable too
        "--allow-env",
        "--allow-net",
        "--allow-sys=osRelease",
        "--allow-read",
        `--allow-write=./data,${catalogDir}`,
        "lib/cli/import.ts",
        ...folders,
        "--aet",
        "BENCH",
      ],
      cwd: REPO,
      env: {
        NO_COLOR: "1",
        S3_ENDPOINT: s3.endpoint,
        AWS_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
        AETS: `BENCH=${bucket}`,
        S3_CONCURRENCY: String(CONCURRENCY),
        CATALOG_PATH: `${catalogDir}/catalog.sqlite`,
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const ms = performance.now() - t0;
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    if (!out.success) throw new Error(`deno task import failed:\n${text}`);
    const peakKb = Number(/maxrss_kb=(\d+)/.exec(text)?.[1] ?? NaN);
    const last = text.split("\n").filter((l) => l.startsWith("imported ")).at(-1) ?? "(no summary line)";
    return { ms, peakMb: peakKb / 1024, last };
  } finally {
    await Deno.remove(catalogDir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  const data = await dataset();
  console.log(
    `series: ${data.files.length} instances, ${
      (data.bytes / 1e6).toFixed(1)
    } MB; S3_CONCURRENCY=${CONCURRENCY}`,
  );
  const s3 = await benchS3({ prefix: "import-bench", rgw: 7550, mon: 3350, monV1: 6839 });
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: CREDENTIALS,
  });
  try {
    const bucketName = (what: string, round: number) =>
      `import-bench-${what}-${round}-${Date.now().toString(36)}`;
    // warm-up: the page cache holds the files for both ways; connections and JIT
    const warm = bucketName("warm", 0);
    await createBenchBucket(s3, warm);
    await direct(store, warm, data.files, data.dir);
    const directMs: number[] = [];
    const importMs: number[] = [];
    const startMs: number[] = [];
    const peaks: number[] = [];
    // the process's own start-up and set-up (Deno, the catalog, the S3 client): an import of an empty folder
    const empty = await Deno.makeTempDir({ prefix: "import-bench-empty-" });
    for (let round = 1; round <= ROUNDS; round++) {
      const a = bucketName("direct", round);
      await createBenchBucket(s3, a);
      directMs.push(await direct(store, a, data.files, data.dir));
      const b = bucketName("import", round);
      await createBenchBucket(s3, b);
      const result = await importRun(s3, b, data.folders);
      importMs.push(result.ms);
      peaks.push(result.peakMb);
      startMs.push((await importRun(s3, b, [empty])).ms);
      console.log(
        `round ${round}: direct ${mbps(data.bytes, directMs.at(-1)!).toFixed(0)} MB/s, import ${
          mbps(data.bytes, result.ms).toFixed(0)
        } MB/s (${result.last}), import peak RSS ${result.peakMb.toFixed(0)} MB, start-up ${
          startMs.at(-1)!.toFixed(0)
        } ms`,
      );
    }
    await Deno.remove(empty);
    const d = mbps(data.bytes, median(directMs));
    const i = mbps(data.bytes, median(importMs));
    console.log(`\n${s3.kind}, medians of ${ROUNDS}:`);
    console.log(`  direct PutObject (S3Store.put, ${CONCURRENCY} in flight): ${d.toFixed(0)} MB/s`);
    const w = mbps(data.bytes, median(importMs) - median(startMs));
    console.log(`  deno task import (process start included):              ${i.toFixed(0)} MB/s`);
    console.log(
      `  deno task import without its start-up (${median(startMs).toFixed(0)} ms, an empty folder): ${
        w.toFixed(0)
      } MB/s`,
    );
    console.log(
      `  ratio ${(i / d).toFixed(2)} with start-up, ${(w / d).toFixed(2)} without (target ≥ 0.80) ${
        w / d >= 0.8 ? "✓" : "✗"
      }; importer peak RSS ${median(peaks).toFixed(0)} MB (max ${Math.max(...peaks).toFixed(0)} MB)`,
    );
  } finally {
    await s3.stop();
  }
}
