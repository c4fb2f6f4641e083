/**
 * Faults, on loopback: S3 killed mid-request and restarted on the same port and folder (s3rver), S3 cut off
 * and back (a TCP proxy in front of it), S3 answering slowly (the proxy trickles bytes), and clients that
 * disconnect mid-response. The server keeps serving, `/readyz` says 503 while S3 is away and 200 after, no
 * store body, limiter slot or socket is left behind, and every stored object comes back byte-exact.
 *
 * With `TEST_S3_ENDPOINT` (Ceph RGW in CI) the kill/restart step is skipped; the proxy steps still run.
 */

import assert from "node:assert/strict";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { buildInstance, md5 } from "../_corpus.ts";
import { securedHandler } from "../_jwks.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { startS3 } from "../_s3server.ts";
import { eventually, observe } from "../_stores.ts";

const AET = "FAULTS";
const DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*';
const S3RVER_BIN = new URL("../../tools/node_modules/s3rver/bin/s3rver.js", import.meta.url);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------
// s3rver on a fixed folder and port, so it can be killed and started again with the same data

interface FixedS3rver {
  port: number;
  kill(): Promise<void>;
}

async function startS3rver(dir: string, port: number, bucket: string): Promise<FixedS3rver> {
  try {
    await Deno.stat(S3RVER_BIN);
  } catch {
    await (await startS3()).stop(); // installs tools/node_modules the way the other tests do
  }
  const child = new Deno.Command("node", {
    args: [
      "--openssl-legacy-provider",
      S3RVER_BIN.pathname,
      "--directory",
      dir,
      "--address",
      "127.0.0.1",
      "--port",
      String(port),
      "--silent",
      "--configure-bucket",
      bucket,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const timeout = setTimeout(() => child.kill("SIGKILL"), 20_000);
  let found: number | undefined;
  while (found === undefined) {
    const { value, done } = await lines.read();
    if (done) break;
    text += value;
    const m = /listening on [^\s:]+:(\d+)/.exec(text);
    if (m) found = Number(m[1]);
  }
  clearTimeout(timeout);
  const drained = (async () => {
    while (!(await lines.read()).done);
  })().catch(() => {});
  if (found === undefined) {
    await child.status;
    throw new Error(`s3rver did not start on port ${port}: ${text}`);
  }
  return {
    port: found,
    async kill() {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
      await child.status;
      await drained;
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// A TCP proxy that can be stopped, started again on its port, and slowed down

class TcpProxy {
  readonly #upstream: { hostname: string; port: number };
  #listener?: Deno.Listener;
  #conns = new Set<Deno.Conn>();
  #tasks = new Set<Promise<void>>();
  #accepting?: Promise<void>;
  port = 0;
  /** Milliseconds to wait before each piece of up to `pieceBytes` sent towards the client. */
  delayMs = 0;
  pieceBytes = 16 * 1024;
  connections = 0;

  constructor(upstream: { hostname: string; port: number }) {
    this.#upstream = upstream;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  start(): void {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: this.port });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    const listener = this.#listener;
    this.#accepting = (async () => {
      for await (const client of listener) {
        this.connections++;
        this.#track(this.#serve(client));
      }
    })().catch(() => {});
  }

  /** Closes the listener and cuts every connection (S3 "goes away"). */
  async stop(): Promise<void> {
    this.#listener?.close();
    this.#listener = undefined;
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch {
        // closed already
      }
    }
    this.#conns.clear();
    await this.#accepting;
    await Promise.all([...this.#tasks]);
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
  }

  async #serve(client: Deno.Conn): Promise<void> {
    let upstream: Deno.Conn;
    try {
      upstream = await Deno.connect(this.#upstream);
    } catch {
      client.close();
      return;
    }
    this.#conns.add(client);
    this.#conns.add(upstream);
    const close = () => {
      for (const c of [client, upstream]) {
        this.#conns.delete(c);
        try {
          c.close();
        } catch {
          // closed already
        }
      }
    };
    const pump = async (from: Deno.Conn, to: Deno.Conn, slow: boolean) => {
      const buffer = new Uint8Array(64 * 1024);
      try {
        for (;;) {
          const n = await from.read(buffer);
          if (n === null) break;
          for (let at = 0; at < n;) {
            const end = slow && this.delayMs > 0 ? Math.min(n, at + this.pieceBytes) : n;
            if (slow && this.delayMs > 0) await sleep(this.delayMs);
            let written = at;
            while (written < end) written += await to.write(buffer.subarray(written, end));
            at = end;
          }
        }
      } catch {
        // either side went away
      } finally {
        close();
      }
    };
    await Promise.all([pump(client, upstream, false), pump(upstream, client, true)]);
  }
}

// ---------------------------------------------------------------------------------------------------

/** Sockets this process has open (Linux: `ls -l /proc/PID/fd`; Deno itself needs --allow-all for /proc/self/fd), or -1. */
async function openSockets(): Promise<number> {
  try {
    const out = await new Deno.Command("ls", {
      args: ["-l", `/proc/${Deno.pid}/fd`],
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!out.success) return -1;
    return new TextDecoder().decode(out.stdout).split("\n").filter((line) => line.includes("socket:")).length;
  } catch {
    return -1;
  }
}

Deno.test("faults: S3 killed, cut off and slow; clients gone mid-response; the server keeps serving", async (t) => {
  const external = Deno.env.get("TEST_S3_ENDPOINT") !== undefined;
  const socketsBefore = await openSockets();
  const dir = await Deno.makeTempDir({ prefix: "faults-s3rver-" });
  let bucket = "faults";
  let s3rver: FixedS3rver | undefined;
  let externalS3: Awaited<ReturnType<typeof startS3>> | undefined;
  let upstreamPort: number;
  let credentials = { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" };
  if (external) {
    externalS3 = await startS3();
    bucket = externalS3.uniqueBucket("faults");
    await externalS3.createBucket(bucket);
    upstreamPort = Number(new URL(externalS3.endpoint).port || 80);
    credentials = { accessKeyId: externalS3.accessKeyId, secretAccessKey: externalS3.secretAccessKey };
  } else {
    s3rver = await startS3rver(dir, 0, bucket);
    upstreamPort = s3rver.port;
  }
  const upstreamHost = external ? new URL(externalS3!.endpoint).hostname : "127.0.0.1";
  const proxy = new TcpProxy({ hostname: upstreamHost, port: upstreamPort });
  proxy.start();
  const store = new S3Store({
    endpoint: proxy.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials,
    requestTimeout: 15_000,
  });
  const observed = observe(store);
  const { handler } = securedHandler(observed, {
    AETS: `${AET}=${bucket}`,
    RESPONSE_TIMEOUT_MS: "20000",
  });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
  const base = `http://127.0.0.1:${server.addr.port}`;
  let faults = 0;
  let requests = 0;
  const failures: string[] = [];
  const get = async (path: string, init: RequestInit = {}) => {
    requests++;
    const response = await fetch(base + path, init);
    const bytes = new Uint8Array(await response.arrayBuffer());
    return { status: response.status, bytes, headers: response.headers };
  };
  const readyz = async () => (await get("/readyz")).status;

  // 24 × 1 MiB (a response that is still streaming when S3 goes away) and a few small ones.
  const objects = new Map<string, Uint8Array>();
  const big = "2.25.8001";
  for (let i = 1; i <= 24; i++) {
    objects.set(
      `${big}/${big}.1/${big}.1.${i}.dcm`,
      buildInstance({ study: big, series: `${big}.1`, sop: `${big}.1.${i}`, pixelBytes: 1 << 20 }),
    );
  }
  const small = "2.25.8002";
  for (let i = 1; i <= 4; i++) {
    objects.set(
      `${small}/${small}.1/${small}.1.${i}.dcm`,
      buildInstance({ study: small, series: `${small}.1`, sop: `${small}.1.${i}`, pixelBytes: 4096 }),
    );
  }
  const verifyAll = async () => {
    for (const [key, bytes] of objects) {
      const [study, series, file] = key.split("/");
      const response = await get(
        `/aets/${AET}/studies/${study}/series/${series}/instances/${file.slice(0, -4)}`,
        { headers: { accept: DICOM } },
      );
      assert.equal(
        response.status,
        200,
        `${key}: ${new TextDecoder().decode(response.bytes.subarray(0, 200))}`,
      );
      const parts = parseMultipart(response.bytes, boundaryOf(response.headers.get("content-type"))).parts;
      assert.equal(await md5(parts[0].body), await md5(bytes), `${key} byte-exact`);
    }
  };

  try {
    for (const [key, bytes] of objects) await store.put(bucket, key, bytes, { size: bytes.length });

    await t.step("baseline: ready, every object byte-exact", async () => {
      assert.equal(await readyz(), 200);
      await verifyAll();
    });

    await t.step({
      name:
        "s3rver killed mid-response: truncated transfer, 503 while down, back on the same port and folder",
      ignore: external,
      fn: async () => {
        const response = await fetch(`${base}/aets/${AET}/studies/${big}`, { headers: { accept: DICOM } });
        requests++;
        assert.equal(response.status, 200);
        const reader = response.body!.getReader();
        let got = 0;
        while (got < 2 << 20) got += (await reader.read()).value?.byteLength ?? 0;
        await s3rver!.kill();
        faults++;
        let ended = false;
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) {
              ended = true;
              break;
            }
            got += value.byteLength;
          }
        } catch {
          // the documented outcome: the connection is aborted, never a well-formed short body
        }
        if (ended) assert.ok(got > 24 << 20, `a body that ends must be whole (got ${got} bytes)`);
        assert.equal((await get("/healthz")).status, 200, "alive while S3 is down");
        let ready = 0;
        const until = Date.now() + 30_000;
        while ((ready = await readyz()) !== 503 && Date.now() < until) await sleep(200);
        assert.equal(ready, 503, "/readyz reports S3 down");
        const body = JSON.parse(new TextDecoder().decode((await get("/readyz")).bytes));
        assert.equal(body.status, "unavailable");
        const meta = await get(`/aets/${AET}/studies/${small}/metadata`);
        assert.ok(meta.status === 503 || meta.status === 502, `a read while S3 is down: ${meta.status}`);
        assert.match(JSON.parse(new TextDecoder().decode(meta.bytes)).error, /.+/);
        s3rver = await startS3rver(dir, upstreamPort, bucket);
        assert.equal(s3rver.port, upstreamPort);
        const back = Date.now() + 30_000;
        while ((ready = await readyz()) !== 200 && Date.now() < back) await sleep(200);
        assert.equal(ready, 200, "/readyz recovers");
        await verifyAll();
      },
    });

    await t.step("S3 cut off at the network (proxy down) and back on the same port", async () => {
      await proxy.stop();
      faults++;
      let ready = 0;
      const until = Date.now() + 30_000;
      while ((ready = await readyz()) !== 503 && Date.now() < until) await sleep(200);
      assert.equal(ready, 503);
      assert.equal((await get("/healthz")).status, 200);
      proxy.start();
      const back = Date.now() + 30_000;
      while ((ready = await readyz()) !== 200 && Date.now() < back) await sleep(200);
      assert.equal(ready, 200);
      await verifyAll();
    });

    await t.step(
      "S3 slow: requests still complete; a short RESPONSE_TIMEOUT_MS answers 504, the server stays up",
      async () => {
        proxy.delayMs = 5;
        faults++;
        const started = performance.now();
        const meta = await get(`/aets/${AET}/studies/${small}/metadata`);
        assert.equal(meta.status, 200);
        const study = await get(`/aets/${AET}/studies/${big}/series/${big}.1/instances/${big}.1.1`, {
          headers: { accept: DICOM },
        });
        assert.equal(study.status, 200);
        console.log(
          `slow S3 (${proxy.delayMs} ms per ${proxy.pieceBytes / 1024} KiB): metadata + 1 MiB instance in ${
            (performance.now() - started).toFixed(0)
          } ms`,
        );
        proxy.delayMs = 400;
        const impatient =
          securedHandler(observed, { AETS: `${AET}=${bucket}`, RESPONSE_TIMEOUT_MS: "150" }).handler;
        requests++;
        const timedOut = await impatient(
          new Request(`${base}/aets/${AET}/studies/${big}/series/${big}.1/instances/${big}.1.2/metadata`),
        );
        assert.equal(timedOut.status, 504);
        assert.match((await timedOut.json()).error, /Timed out after 150 ms/);
        assert.equal((await get("/healthz")).status, 200);
        proxy.delayMs = 0;
        await eventually(
          () => observed.openBodies() === 0,
          30_000,
          "the late response's reads to be released",
        );
      },
    );

    await t.step(
      "20 clients disconnect mid-response from a slow S3: reads, slots and sockets are released",
      async () => {
        proxy.delayMs = 2;
        faults++;
        const aborted = await Promise.all(Array.from({ length: 20 }, async () => {
          const controller = new AbortController();
          requests++;
          const response = await fetch(`${base}/aets/${AET}/studies/${big}`, {
            headers: { accept: DICOM },
            signal: controller.signal,
          });
          const reader = response.body!.getReader();
          await reader.read();
          controller.abort();
          await reader.cancel().catch(() => {});
          return response.status;
        }));
        assert.deepEqual([...new Set(aborted)], [200]);
        await eventually(() => observed.openBodies() === 0, 30_000, "store bodies to be released");
        proxy.delayMs = 0;
        assert.equal((await get(`/aets/${AET}/studies/${small}/metadata`)).status, 200, "still serving");
      },
    );

    await t.step("no stored data lost", async () => {
      await verifyAll();
    });
  } catch (error) {
    failures.push((error as Error).message);
    throw error;
  } finally {
    await server.shutdown();
    store.close();
    await proxy.stop();
    await s3rver?.kill();
    await externalS3?.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    // Closed connections take a moment to go away on a loaded machine: wait up to 5 s for them.
    let socketsAfter = await openSockets();
    for (let i = 0; i < 50 && socketsBefore >= 0 && socketsAfter > socketsBefore + 2; i++) {
      await sleep(100);
      socketsAfter = await openSockets();
    }
    console.log(
      `faults summary: ${faults} faults injected, ${requests} requests, ${proxy.connections} S3 connections through the proxy, ` +
        `sockets ${socketsBefore} before / ${socketsAfter} after, RSS ${
          (Deno.memoryUsage().rss / 1024 / 1024).toFixed(0)
        } MiB, ` +
        `${failures.length} failures`,
    );
    if (socketsBefore >= 0 && failures.length === 0) {
      assert.ok(
        socketsAfter <= socketsBefore + 2,
        `sockets left open: ${socketsBefore} before, ${socketsAfter} after`,
      );
    }
  }
});
