/**
 * A real S3 server for tests: s3rver (started here, under Node.js) or, when `TEST_S3_ENDPOINT` is set,
 * an external server such as Ceph RGW (see ../shared/tools/ceph).
 *
 * Always stop it in a `finally`:
 * ```ts ignore
 * const s3 = await startS3();
 * try { ... } finally { await s3.stop(); }
 * ```
 *
 * @module
 */

import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  S3Client,
} from "@aws-sdk/client-s3";
import { FetchHttpHandler } from "@smithy/fetch-http-handler";

/** A running S3 server. */
export interface TestS3 {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  kind: "s3rver" | "external";
  /** Creates a bucket (names are free to choose; see {@linkcode TestS3.uniqueBucket}). */
  createBucket(name: string): Promise<void>;
  /** Multipart uploads begun and neither completed nor aborted; `undefined` where the server cannot say (s3rver). */
  pendingUploads(bucket: string): Promise<number | undefined>;
  /** A bucket name no other test run uses (external servers outlive test runs). */
  uniqueBucket(hint?: string): string;
  /** Empties and deletes the buckets this handle created, then stops s3rver (if started) and removes its folder. */
  stop(): Promise<void>;
}

const TOOLS = new URL("../tools/", import.meta.url);
const S3RVER_BIN = new URL("node_modules/s3rver/bin/s3rver.js", TOOLS);

/** Starts s3rver on a free port, or connects to `TEST_S3_ENDPOINT`. */
export async function startS3(): Promise<TestS3> {
  const external = Deno.env.get("TEST_S3_ENDPOINT");
  const region = "us-east-1";
  let endpoint: string;
  let accessKeyId = "S3RVER";
  let secretAccessKey = "S3RVER";
  let shutdown = () => Promise.resolve();
  if (external) {
    endpoint = external.replace(/\/+$/, "");
    accessKeyId = Deno.env.get("TEST_S3_ACCESS_KEY") ?? accessKeyId;
    secretAccessKey = Deno.env.get("TEST_S3_SECRET_KEY") ?? secretAccessKey;
  } else {
    const server = await startS3rver();
    endpoint = server.endpoint;
    shutdown = server.stop;
  }
  const client = new S3Client({
    endpoint,
    region,
    forcePathStyle: true,
    credentials: { accessKeyId, secretAccessKey },
    requestHandler: new FetchHttpHandler(),
  });
  const created: string[] = [];
  const run = crypto.randomUUID().slice(0, 8);
  let counter = 0;
  return {
    endpoint,
    accessKeyId,
    secretAccessKey,
    region,
    kind: external ? "external" : "s3rver",
    async createBucket(name) {
      await client.send(new CreateBucketCommand({ Bucket: name }));
      created.push(name);
    },
    async pendingUploads(bucket) {
      try {
        const out = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
        return out.Uploads?.length ?? 0;
      } catch (error) {
        if ((error as Error).name === "NotImplemented") return undefined;
        throw error;
      }
    },
    uniqueBucket(hint = "test") {
      return `${hint}-${run}-${++counter}`.toLowerCase();
    },
    async stop() {
      try {
        if (external) {
          for (const bucket of created) await emptyAndDelete(client, bucket).catch(() => {});
        }
      } finally {
        client.destroy();
        await shutdown();
      }
    },
  };
}

async function emptyAndDelete(client: S3Client, bucket: string): Promise<void> {
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    for (const item of page.Contents ?? []) {
      await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: item.Key }));
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

async function startS3rver(): Promise<{ endpoint: string; stop(): Promise<void> }> {
  await ensureS3rver();
  const dir = await Deno.makeTempDir({ prefix: "s3rver-" });
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("node", {
      args: [
        "--openssl-legacy-provider",
        S3RVER_BIN.pathname,
        "--directory",
        dir,
        "--address",
        "127.0.0.1",
        "--port",
        "0",
        "--silent",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    if (error instanceof Deno.errors.NotFound) {
      throw new Error(
        "Cannot start s3rver: `node` is not on PATH (s3rver runs under Node.js; install Node.js 18+)",
      );
    }
    throw error;
  }
  const stderr = collect(child.stderr);
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await child.status;
    await stderr;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    const port = await readPort(child.stdout, AbortSignal.timeout(20_000));
    const endpoint = `http://127.0.0.1:${port}`;
    await waitForHttp(endpoint, AbortSignal.timeout(20_000));
    return { endpoint, stop };
  } catch (error) {
    await stop();
    throw new Error(`Cannot start s3rver: ${(error as Error).message}\n${await stderr}`, { cause: error });
  }
}

/** Installs the pinned Node.js tools when a fresh clone has not yet. */
async function ensureS3rver(): Promise<void> {
  try {
    await Deno.stat(S3RVER_BIN);
    return;
  } catch {
    // not installed
  }
  console.error("tools/node_modules/s3rver is missing: running npm ci --prefix tools --no-audit --no-fund");
  const out = await new Deno.Command("npm", {
    args: ["ci", "--prefix", TOOLS.pathname, "--no-audit", "--no-fund"],
    stdout: "inherit",
    stderr: "inherit",
  }).output().catch((error) => {
    throw new Error("Cannot install s3rver: `npm` is not on PATH (install Node.js 18+)", { cause: error });
  });
  if (!out.success) throw new Error(`npm ci --prefix tools failed with exit code ${out.code}`);
}

/** Reads s3rver's "S3rver listening on 127.0.0.1:PORT" line; keeps draining stdout after it. */
async function readPort(stdout: ReadableStream<Uint8Array>, signal: AbortSignal): Promise<number> {
  const lines = stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const onAbort = () => void lines.cancel().catch(() => {});
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    while (true) {
      const { done, value } = await lines.read();
      if (done) throw new Error(signal.aborted ? "timed out waiting for its port" : "it exited");
      text += value;
      const match = /listening on [^\s:]+:(\d+)/.exec(text);
      if (match) {
        signal.removeEventListener("abort", onAbort);
        // drain the rest so the child never blocks on a full pipe
        (async () => {
          while (!(await lines.read()).done);
        })().catch(() => {});
        return Number(match[1]);
      }
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

async function waitForHttp(endpoint: string, signal: AbortSignal): Promise<void> {
  while (true) {
    try {
      const response = await fetch(endpoint, { signal });
      await response.body?.cancel();
      return;
    } catch (error) {
      if (signal.aborted) throw new Error(`no answer from ${endpoint}`, { cause: error });
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) text += chunk;
  return text;
}
