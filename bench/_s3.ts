/**
 * What the S3 benchmarks share: the S3 server they run against (`BENCH_S3_ENDPOINT`, else a Ceph RGW started
 * here on ports of the benchmark's own when `radosgw` is installed, else s3rver), its buckets, and the bench
 * series on disk (`gen_dataset.py --preset bench`, generated once into `bench-data/bench`).
 *
 * @module
 */

import { startS3, type TestS3 } from "../tests/_s3server.ts";
import { run } from "./_util.ts";

const REPO = new URL("../", import.meta.url).pathname;
const SHARED = new URL("../../shared/", import.meta.url).pathname;

/** The credentials the benchmarks' S3 servers accept (s3rver's, and the Ceph script's user). */
export const BENCH_CREDENTIALS = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };

/** The S3 server a benchmark runs against. */
export interface BenchS3 {
  endpoint: string;
  /** "external", "Ceph RGW" or "s3rver". */
  kind: string;
  /** s3rver's handle (creates buckets itself). */
  handle?: TestS3;
  stop(): Promise<void>;
}

/** Ports of a benchmark's own Ceph cluster, so benchmarks can run side by side. */
export interface CephPorts {
  /** Temporary folder prefix. */
  prefix: string;
  /** RGW's port (`BENCH_RGW_PORT` overrides it). */
  rgw: number;
  mon: number;
  monV1: number;
}

/** `BENCH_S3_ENDPOINT`, else a Ceph RGW on `ports` when `radosgw` is installed, else s3rver. */
export async function benchS3(ports: CephPorts): Promise<BenchS3> {
  const given = Deno.env.get("BENCH_S3_ENDPOINT");
  if (given) return { endpoint: given, kind: "external", stop: async () => {} };
  const hasCeph = await new Deno.Command("sh", { args: ["-c", "command -v radosgw"], stdout: "null" })
    .output();
  if (!hasCeph.success) {
    const handle = await startS3();
    return { endpoint: handle.endpoint, kind: "s3rver", handle, stop: () => handle.stop() };
  }
  const dir = await Deno.makeTempDir({ prefix: `${ports.prefix}-ceph-` });
  const port = Deno.env.get("BENCH_RGW_PORT") ?? String(ports.rgw);
  const env = {
    CEPHLAB_DIR: dir,
    MEMSTORE_BYTES: String(3 * 1024 ** 3),
    RGW_PORT: port,
    MON_PORT: String(ports.mon),
    MON_PORT_V1: String(ports.monV1),
  };
  console.log("starting Ceph RGW…");
  await run([`${SHARED}tools/ceph/start.sh`], env);
  return {
    endpoint: `http://127.0.0.1:${port}`,
    kind: "Ceph RGW",
    stop: async () => {
      await run([`${SHARED}tools/ceph/stop.sh`, "--clean"], env).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** Creates `bucket` on `s3`. */
export async function createBenchBucket(s3: BenchS3, bucket: string): Promise<void> {
  if (s3.handle) return await s3.handle.createBucket(bucket);
  const { S3Client, CreateBucketCommand } = await import("@aws-sdk/client-s3");
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: BENCH_CREDENTIALS,
  });
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  client.destroy();
}

/** The bench series' folder (`BENCH_DATA`, else `bench-data/bench`), generated when missing. */
export async function benchSeriesDir(): Promise<string> {
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
  return dir;
}
