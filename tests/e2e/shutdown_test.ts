/**
 * Stopping `main.ts` the way Kubernetes, systemd and `docker stop` do (SIGTERM): it stops accepting, lets the
 * responses under way finish (a rolling restart must not cut a study retrieve short), closes its catalog and
 * exits 0; a client that stalls is given `SHUTDOWN_GRACE_MS`, no more.
 */

import assert from "node:assert/strict";
import { buildInstance } from "../_corpus.ts";

const STUDY = "2.25.7001";
const SERIES = "2.25.7001.1";
/** 32 MiB of pixel data: the response is still on its way when the signal comes. */
const PIXEL_BYTES = 32 * 1024 * 1024;

interface Running {
  child: Deno.ChildProcess;
  base: string;
  output: string[];
  pumps: Promise<unknown>;
  dir: string;
}

async function start(env: Record<string, string> = {}): Promise<Running> {
  const dir = await Deno.makeTempDir({ prefix: "shutdown-" });
  await Deno.mkdir(`${dir}/SHUT/${STUDY}/${SERIES}`, { recursive: true });
  for (const sop of ["2.25.7001.1.1", "2.25.7001.1.2"]) {
    const bytes = buildInstance({ study: STUDY, series: SERIES, sop, pixelBytes: PIXEL_BYTES });
    await Deno.writeFile(`${dir}/SHUT/${STUDY}/${SERIES}/${sop}.dcm`, bytes);
  }
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-net",
      "--allow-env",
      `--allow-read=${dir}`,
      `--allow-write=${dir}`,
      "--allow-sys=osRelease",
      "main.ts",
    ],
    cwd: new URL("../..", import.meta.url).pathname,
    env: {
      NO_COLOR: "1",
      PORT: String(port),
      HOSTNAME: "127.0.0.1",
      DATA_DIR: dir,
      CRAWL_INTERVAL: "0",
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) output.push(text);
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const base = `http://127.0.0.1:${port}`;
  const until = Date.now() + 30_000;
  for (;;) {
    const ready = await fetch(`${base}/readyz`).then(async (r) => (await r.json()).status, () => undefined);
    if (ready === "ready") break;
    if (Date.now() > until) throw new Error(`main.ts did not become ready:\n${output.join("")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, base, output, pumps, dir };
}

async function finish(running: Running): Promise<Deno.CommandStatus> {
  const status = await running.child.status;
  await running.pumps;
  await Deno.remove(running.dir, { recursive: true });
  return status;
}

const ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*';

Deno.test("SIGTERM: new connections are refused, the retrieve under way completes, exit 0", async () => {
  const running = await start();
  const client = Deno.createHttpClient({});
  try {
    const response = await fetch(`${running.base}/aets/SHUT/studies/${STUDY}`, {
      headers: { accept: ACCEPT },
      client,
    });
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    let received = (await reader.read()).value!.byteLength;
    running.child.kill("SIGTERM");
    const until = Date.now() + 5000;
    while (!running.output.join("").includes("SIGTERM: shutting down")) {
      assert.ok(Date.now() < until, `no shutdown line:\n${running.output.join("")}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await assert.rejects(fetch(`${running.base}/readyz`), "a new connection after SIGTERM is refused");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      received += value.byteLength;
    }
    assert.ok(received > 2 * PIXEL_BYTES, `the whole study arrived: ${received} bytes`);
    const status = await finish(running);
    const text = running.output.join("");
    assert.equal(status.code, 0, text);
    assert.match(text, /Stopped \(every request finished\)/);
  } finally {
    client.close();
    try {
      running.child.kill("SIGKILL");
    } catch {
      // it has exited, as it should
    }
  }
});

Deno.test("SIGTERM with a stalled client: exit 0 after SHUTDOWN_GRACE_MS", async () => {
  const running = await start({ SHUTDOWN_GRACE_MS: "500" });
  const client = Deno.createHttpClient({});
  try {
    const response = await fetch(`${running.base}/aets/SHUT/studies/${STUDY}`, {
      headers: { accept: ACCEPT },
      client,
    });
    const reader = response.body!.getReader();
    await reader.read(); // and no more: the client stalls
    const signalled = Date.now();
    running.child.kill("SIGTERM");
    const status = await finish(running);
    const text = running.output.join("");
    assert.equal(status.code, 0, text);
    assert.match(text, /Stopped \(the grace period ran out\)/);
    assert.ok(Date.now() - signalled < 10_000, "the grace period bounds the wait");
    await reader.cancel().catch(() => {});
  } finally {
    client.close();
    try {
      running.child.kill("SIGKILL");
    } catch {
      // it has exited, as it should
    }
  }
});
