/**
 * Measuring helpers for `bench/retrieve_bench.ts`: timed HTTP reads, in-order direct reads with read-ahead,
 * per-process CPU time and peak RSS from `/proc` (read with `cat`: Deno asks for --allow-all to read
 * `/proc` itself), medians.
 *
 * @module
 */

/** One timed transfer. */
export interface Run {
  /** Milliseconds from the request to the last byte. */
  ms: number;
  /** Milliseconds from the request to the first body byte. */
  ttfb: number;
  bytes: number;
}

/** MB/s (10^6 bytes). */
export function mbps(bytes: number, ms: number): number {
  return bytes / 1e6 / (ms / 1000);
}

/** The median (the upper one of an even count). */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Runs a command; its output, or an error with the output when it fails. */
export async function run(cmd: string[], env: Record<string, string> = {}): Promise<string> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), env, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd.join(" ")} failed:\n${text}`);
  return text;
}

/**
 * Reads a `fetch` response's body to the end with a reader, counting bytes (and keeping them when `keep`).
 * Deno 2.9's `Response.arrayBuffer()` on a `fetch` body costs far more than the transfer (1.7 MB from a
 * loopback `Deno.serve`: 12-23 ms against 1-2 ms read chunk by chunk, measured), so a bench that used it
 * timed its own client.
 */
export async function drain(response: Response, keep = false): Promise<{ bytes: number; body: Uint8Array }> {
  const parts: Uint8Array[] = [];
  let bytes = 0;
  if (response.body !== null) {
    for await (const chunk of response.body) {
      bytes += chunk.byteLength;
      if (keep) parts.push(chunk);
    }
  }
  if (!keep) return { bytes, body: new Uint8Array(0) };
  const body = new Uint8Array(bytes);
  let at = 0;
  for (const part of parts) {
    body.set(part, at);
    at += part.byteLength;
  }
  return { bytes, body };
}

/** Streams `url` to the end. */
export async function timedFetch(url: string, accept: string): Promise<Run> {
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

/**
 * The direct baseline: `open(key)` for every key with `concurrency` opens in flight, each body read
 * ahead into up to `readAhead` bytes (as the server does) and consumed in key order, every byte.
 */
export async function directRun(
  keys: string[],
  open: (key: string) => Promise<ReadableStream<Uint8Array>>,
  options: { concurrency: number; readAhead: number },
): Promise<Run> {
  const t0 = performance.now();
  let ttfb = -1;
  let bytes = 0;
  const queue: Promise<AsyncIterator<Uint8Array>>[] = [];
  let next = 0;
  const fill = () => {
    while (queue.length < options.concurrency && next < keys.length) {
      const opened = open(keys[next++]).then((body) => readAhead(body, options.readAhead));
      opened.catch(() => {});
      queue.push(opened);
    }
  };
  fill();
  while (queue.length > 0) {
    const chunks = await queue.shift()!;
    fill();
    while (true) {
      const { value, done } = await chunks.next();
      if (done) break;
      if (ttfb < 0) ttfb = performance.now() - t0;
      bytes += value.byteLength;
    }
  }
  return { ms: performance.now() - t0, ttfb, bytes };
}

/** Reads `body` into a queue of up to `limit` bytes ahead of the consumer. */
function readAhead(body: ReadableStream<Uint8Array>, limit: number): AsyncIterator<Uint8Array> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let buffered = 0;
  let ended = false;
  let failure: { error: unknown } | undefined;
  let pumping = false;
  let wake: (() => void) | undefined;
  const pump = () => {
    // a flag, not the loop's promise: a loop that ends at once would clear it before `??=` stored it
    if (pumping) return;
    pumping = true;
    (async () => {
      try {
        while (!ended && buffered < limit) {
          const { value, done } = await reader.read();
          if (done) ended = true;
          else {
            chunks.push(value);
            buffered += value.byteLength;
          }
          wake?.();
        }
      } catch (error) {
        failure = { error };
        ended = true;
        wake?.();
      } finally {
        pumping = false;
      }
    })();
  };
  pump();
  return {
    async next(): Promise<IteratorResult<Uint8Array>> {
      while (chunks.length === 0 && !ended) await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
      if (chunks.length === 0) {
        if (failure) throw failure.error;
        return { value: undefined, done: true };
      }
      const value = chunks.shift()!;
      buffered -= value.byteLength;
      if (!ended) pump();
      return { value, done: false };
    },
  };
}

/** CPU milliseconds (user + system) of each pid, and of the whole machine (all cores). */
export interface CpuSample {
  pids: Record<string, number>;
  machine: number;
}

/** Reads the CPU time of `pids` ("self" for this process) and of the machine. */
export async function cpuSample(pids: Record<string, number | "self">): Promise<CpuSample> {
  const names = Object.keys(pids);
  const self = Deno.pid;
  const text = await run([
    "cat",
    ...names.map((n) => `/proc/${pids[n] === "self" ? self : pids[n]}/stat`),
    "/proc/stat",
  ]);
  const lines = text.split("\n");
  const out: Record<string, number> = {};
  names.forEach((name, i) => {
    const line = lines[i];
    const fields = line.slice(line.lastIndexOf(")") + 2).split(" ");
    out[name] = (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, 100 ticks/s
  });
  const total = lines[names.length].trim().split(/\s+/).slice(1).map(Number);
  // user nice system irq softirq steal
  const machine = (total[0] + total[1] + total[2] + total[5] + total[6] + total[7]) * 10;
  return { pids: out, machine };
}

/** CPU ms spent between two samples, per pid, plus `other`: the rest of the machine. */
export function cpuSpent(before: CpuSample, after: CpuSample): Record<string, number> {
  const spent: Record<string, number> = {};
  let ours = 0;
  for (const name of Object.keys(before.pids)) {
    spent[name] = after.pids[name] - before.pids[name];
    ours += spent[name];
  }
  spent.other = Math.max(0, after.machine - before.machine - ours);
  return spent;
}

/** Current and peak resident set size of `pid`, in MB (MiB). */
export async function memoryOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await run(["cat", `/proc/${pid}/status`]);
  const kb = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)![1]);
  return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
}

/** Resets the peak RSS (VmHWM) of `pid` to its current RSS (Linux `clear_refs`). */
export async function resetPeak(pid: number): Promise<void> {
  await run(["sh", "-c", `echo 5 > /proc/${pid}/clear_refs`]);
}

/** Per-field medians of runs with CPU figures. */
export function summarize(runs: { run: Run; cpu: Record<string, number> }[]) {
  const cpu: Record<string, number> = {};
  for (const name of Object.keys(runs[0]?.cpu ?? {})) cpu[name] = median(runs.map((r) => r.cpu[name]));
  return {
    ms: median(runs.map((r) => r.run.ms)),
    ttfb: median(runs.map((r) => r.run.ttfb)),
    bytes: runs[0]?.run.bytes ?? 0,
    cpu,
  };
}

/** What `curl` measured for a batch of transfers. */
export interface CurlRun extends Run {
  /** Transfers that did not answer 2xx. */
  failed: number;
  /** CPU time the curl process spent (user + system, ms): what receiving the bytes costs a lean client. */
  cpuMs: number;
}

/**
 * Fetches `urls` with one `curl` process, `parallel` transfers at once over kept-alive connections (curl's
 * multi interface), every body to /dev/null: the client side costs little CPU, so it shows what the other end
 * delivers. `ttfb` is the first transfer's first byte (a series' first byte); `sigv4` signs each request for
 * S3.
 */
export async function curlParallel(
  urls: string[],
  options: { parallel: number; headers?: Record<string, string>; sigv4?: { key: string; secret: string } },
): Promise<CurlRun> {
  const config = await Deno.makeTempFile({ prefix: "bench-curl-", suffix: ".cfg" });
  try {
    await Deno.writeTextFile(
      config,
      urls.map((u) => `url = "${u}"\noutput = "/dev/null"\n`).join(""),
    );
    const args = [
      "-s",
      "-Z",
      "--parallel-immediate",
      "--parallel-max",
      String(options.parallel),
      "-w",
      "%{urlnum} %{http_code} %{time_starttransfer} %{size_download}\\n",
    ];
    for (const [name, value] of Object.entries(options.headers ?? {})) args.push("-H", `${name}: ${value}`);
    if (options.sigv4) {
      // curl 7.88 signs no payload hash, which RGW and S3 require
      args.push("--aws-sigv4", "aws:amz:us-east-1:s3", "-u", `${options.sigv4.key}:${options.sigv4.secret}`);
      args.push("-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD");
    }
    args.push("-K", config);
    const t0 = performance.now();
    // curl under a shell that prints its child's CPU time (cutime + cstime of /proc/$$/stat, in ticks of
    // 10 ms) once curl is done
    const script =
      'curl "$@"; s=$?; read -r -a f < /proc/$$/stat; echo "cpu $((f[15] + f[16]))" >&2; exit $s';
    const out = await new Deno.Command("bash", {
      args: ["-c", script, "curl", ...args],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const ms = performance.now() - t0;
    const stderr = new TextDecoder().decode(out.stderr);
    if (!out.success) throw new Error(`curl failed: ${stderr}`);
    const cpuMs = Number(/^cpu (\d+)$/m.exec(stderr)?.[1] ?? NaN) * 10;
    let bytes = 0;
    let failed = 0;
    let ttfb = Infinity;
    for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
      if (line === "") continue;
      const [num, code, start, size] = line.split(" ");
      if (!code.startsWith("2")) failed++;
      if (num === "0") ttfb = Number(start) * 1000;
      bytes += Number(size);
    }
    return { ms, ttfb, bytes, failed, cpuMs };
  } finally {
    await Deno.remove(config).catch(() => {});
  }
}

/** A TCP proxy that holds every request for a while, as a distant S3 would answer later. */
export interface DelayProxy {
  endpoint: string;
  close(): void;
}

/**
 * Starts a {@linkcode DelayProxy} to `target` on a free loopback port: each chunk the client sends (a
 * request's head: GETs have no body) goes on after `delayMs`, in order, so every request is answered
 * `delayMs` later; answers come back as they are, in 256 KiB reads. SigV4 stays valid: Host is the proxy's.
 */
export function delayProxy(target: URL, delayMs: number): DelayProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.TcpConn>();
  const closeAll = (...list: (Deno.TcpConn | undefined)[]) => {
    for (const conn of list) {
      if (conn === undefined) continue;
      conns.delete(conn);
      try {
        conn.close();
      } catch { /* closed already */ }
    }
  };
  const copy = async (from: Deno.Conn, to: Deno.Conn, delay: number) => {
    const buffer = new Uint8Array(256 * 1024);
    for (;;) {
      const n = await from.read(buffer);
      if (n === null) break;
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      for (let at = 0; at < n;) at += await to.write(buffer.subarray(at, n));
    }
  };
  (async () => {
    for await (const client of listener) {
      conns.add(client);
      client.setNoDelay(true);
      (async () => {
        let upstream: Deno.TcpConn | undefined;
        try {
          upstream = await Deno.connect({ hostname: target.hostname, port: Number(target.port || 80) });
          upstream.setNoDelay(true);
          conns.add(upstream);
          await Promise.race([copy(client, upstream, delayMs), copy(upstream, client, 0)]);
        } catch {
          /* a side closed */
        } finally {
          closeAll(client, upstream);
        }
      })();
    }
  })().catch(() => {});
  return {
    endpoint: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    close() {
      listener.close();
      closeAll(...conns);
    },
  };
}
