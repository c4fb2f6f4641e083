/**
 * The metadata and frame part of `deno task bench` (issue #3's targets): series metadata cold and warm with
 * the bytes the server read from S3, counted by a TCP proxy between the server and the S3 server, and frame
 * latency on a 96-frame 512×512 instance against a direct signed ranged GET of the same bytes by the same client
 * (`fetch` in this process) and, when `startFloor` is given, the floor server relaying that ranged GET. The
 * targets are timed without gzip (`Accept-Encoding: identity`); warm metadata is also timed with gzip.
 *
 * @module
 */

import { S3Store } from "../lib/store/s3/s3_store.ts";
import { SigV4Signer } from "../lib/store/s3/sigv4.ts";
import { drain, median } from "./_util.ts";
import { buildInstance } from "../tests/_corpus.ts";

/** A TCP proxy to `target` that counts the bytes coming back from it. */
export interface CountingProxy {
  endpoint: string;
  /** Bytes sent by the S3 server so far (headers included). */
  received(): number;
  close(): void;
}

/** Starts a {@linkcode CountingProxy} on a free loopback port (SigV4 stays valid: Host is the proxy's). */
export function countingProxy(target: URL): CountingProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let received = 0;
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const client of listener) {
      conns.add(client);
      (async () => {
        let upstream: Deno.Conn | undefined;
        try {
          upstream = await Deno.connect({ hostname: target.hostname, port: Number(target.port || 80) });
          conns.add(upstream);
          const counter = new TransformStream<Uint8Array, Uint8Array>({
            transform(chunk, controller) {
              received += chunk.byteLength;
              controller.enqueue(chunk);
            },
          });
          await Promise.all([
            client.readable.pipeTo(upstream.writable),
            upstream.readable.pipeThrough(counter).pipeTo(client.writable),
          ]);
        } catch {
          /* a side closed */
        } finally {
          for (const conn of [client, upstream]) {
            if (conn === undefined) continue;
            conns.delete(conn);
            try {
              conn.close();
            } catch { /* already closed */ }
          }
        }
      })();
    }
  })().catch(() => {});
  return {
    endpoint: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    received: () => received,
    close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* already closed */ }
      }
    },
  };
}

/** How the bench starts a server process (see `bench/retrieve_bench.ts`). */
export type StartServer = (env: Record<string, string>) => Promise<{ url: string; stop(): Promise<void> }>;

export interface MetadataBenchInput {
  endpoint: string;
  bucket: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** The series' study and series UIDs, its instance count and total bytes. */
  study: string;
  series: string;
  instances: number;
  seriesBytes: number;
  startServer: StartServer;
  /** Starts `bench/_floor_server.ts` (its `/object/{key}` relays one ranged GET): the frame's floor. */
  startFloor?: StartServer;
  rounds: number;
}

const signer = new SigV4Signer("us-east-1", "s3");
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const FRAMES = 96;
const FRAME_BYTES = 512 * 512 * 2;
const CINE = { study: "2.25.9696", series: "2.25.9696.1", sop: "2.25.9696.1.1" };

/** `[name, figure, target, met]` for the bench's report. */
export type MetadataLine = [string, string, string?, boolean?];

/** Runs the metadata and frame measurements; returns `[name, value]` lines for the bench's report. */
export async function benchMetadata(input: MetadataBenchInput): Promise<MetadataLine[]> {
  const lines: MetadataLine[] = [];
  const store = new S3Store({
    endpoint: input.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: input.credentials,
  });
  const cine = buildInstance({ ...CINE, pixelBytes: FRAME_BYTES, frames: FRAMES });
  const cineKey = `${CINE.study}/${CINE.series}/${CINE.sop}.dcm`;
  await store.put(input.bucket, cineKey, cine, { size: cine.byteLength });
  const pixelStart = cine.byteLength - FRAMES * FRAME_BYTES;

  // Twice on a fresh server without a catalog (metadata comes from the objects' headers): through a counting
  // proxy for the bytes read from S3, then straight to S3 for the times (the proxy adds latency).
  const proxy = countingProxy(new URL(input.endpoint));
  let counted: Pass, timed: Pass;
  try {
    counted = await pass(input, proxy.endpoint, () => proxy.received(), { store, cineKey, pixelStart });
  } finally {
    proxy.close();
  }
  const floor = await input.startFloor?.({
    S3_ENDPOINT: input.endpoint,
    BUCKET: input.bucket,
    AWS_ACCESS_KEY_ID: input.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: input.credentials.secretAccessKey,
  });
  try {
    timed = await pass(input, input.endpoint, () => 0, { store, cineKey, pixelStart }, floor?.url);
  } finally {
    store.close();
    await floor?.stop();
  }
  const running = await coldOnRunningServer(input);
  const share = counted.cold.s3 / input.seriesBytes * 100;
  lines.push([
    `series metadata, first request of a fresh server process (no catalog, JIT cold)`,
    `${timed.cold.ms.toFixed(0)} ms; read from S3 ${(counted.cold.s3 / 1e6).toFixed(2)} MB = ${
      share.toFixed(2)
    }% of the series' ${(input.seriesBytes / 1e6).toFixed(0)} MB`,
  ]);
  lines.push([
    `series metadata, cold caches on a running server (${input.instances} instances, no catalog)`,
    `${
      running.toFixed(0)
    } ms (median of ${input.rounds}; HEADER_CACHE_MB=0, so every request reads every header)`,
    "≤ 700 ms, < 5% read",
    running <= 700 && share < 5,
  ]);
  const warm = median(timed.warm);
  lines.push([
    "series metadata, warm (header cache)",
    `${warm.toFixed(1)} ms; read from S3 ${counted.warmS3} bytes (the series listing)`,
    "≤ 20 ms",
    warm <= 20,
  ]);
  lines.push([
    "series metadata, warm, Accept-Encoding: gzip (as browsers ask)",
    `${median(timed.warmGzip.ms).toFixed(1)} ms on loopback, the client inflating; ${
      (timed.warmGzip.wire / 1e3).toFixed(0)
    } KB sent for ${(timed.warmGzip.bytes / 1e6).toFixed(2)} MB of JSON`,
  ]);
  lines.push([
    `frame of a ${FRAMES}-frame 512×512 instance, first`,
    `${timed.first.ms.toFixed(1)} ms (header + frame: ${(counted.first.s3 / 1e3).toFixed(0)} KB from S3)`,
  ]);
  const [frame, direct] = [median(timed.frames), median(timed.direct)];
  lines.push([
    "frame, warm (frames 1, 48, 96)",
    `${frame.toFixed(1)} ms vs direct ranged GET ${direct.toFixed(1)} ms: +${
      (frame - direct).toFixed(1)
    } ms; ${(median(counted.frameS3) / 1e3).toFixed(0)} KB from S3 per frame (${
      FRAME_BYTES / 1e3
    } KB of pixels)${
      timed.floor.length > 0
        ? `; the floor server relaying the same ranged GET ${median(timed.floor).toFixed(1)} ms (+${
          (median(timed.floor) - direct).toFixed(1)
        })`
        : ""
    }`,
    "≤ direct + 2 ms",
    frame <= direct + 2,
  ]);

  // With the catalog: series metadata is one query of cached JSON.
  const scratch = await Deno.makeTempDir({ prefix: "bench-catalog-" });
  const indexed = await input.startServer({
    CATALOG_PATH: `${scratch}/catalog.sqlite`,
    S3_ENDPOINT: input.endpoint,
    AETS: `BENCH=${input.bucket}`,
    AWS_ACCESS_KEY_ID: input.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: input.credentials.secretAccessKey,
  });
  try {
    const statusUrl = `${indexed.url}/admin/index`;
    for (let i = 0;; i++) {
      const status = await (await fetch(statusUrl)).json();
      const aet = status.aets?.find((a: { aet: string }) => a.aet === "BENCH");
      // listing and series pass done, and every instance header read (the cached JSON)
      if (aet?.completeAt !== undefined && aet.pending === 0) break;
      if (i > 600) throw new Error(`the crawl did not finish in 60 s: ${JSON.stringify(status)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const url = `${indexed.url}/aets/BENCH/studies/${input.study}/series/${input.series}/metadata`;
    const times: number[] = [];
    for (let i = 0; i <= input.rounds; i++) {
      const t0 = performance.now();
      const response = await fetch(url, {
        headers: { accept: "application/dicom+json", "accept-encoding": "identity" },
      });
      await drain(response);
      if (i > 0) times.push(performance.now() - t0);
    }
    lines.push(["series metadata from the catalog's JSON", `${median(times).toFixed(1)} ms`]);
  } finally {
    await indexed.stop();
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
  return lines;
}

/**
 * Series metadata with nothing cached, on a server that has run before (its code compiled by the JIT): a server
 * without header cache (`HEADER_CACHE_MB=0`, which also turns off the response cache) answers one request to
 * warm up, then `rounds` more, each reading every instance's header from S3. The median.
 */
async function coldOnRunningServer(input: MetadataBenchInput): Promise<number> {
  const server = await input.startServer({
    CATALOG_PATH: "off",
    HEADER_CACHE_MB: "0",
    S3_ENDPOINT: input.endpoint,
    AETS: `BENCH=${input.bucket}`,
    AWS_ACCESS_KEY_ID: input.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: input.credentials.secretAccessKey,
  });
  try {
    const url = `${server.url}/aets/BENCH/studies/${input.study}/series/${input.series}/metadata`;
    const times: number[] = [];
    for (let i = 0; i <= input.rounds; i++) {
      const t0 = performance.now();
      const response = await fetch(url, {
        headers: { accept: "application/dicom+json", "accept-encoding": "identity" },
      });
      const { body } = await drain(response, true);
      if (i > 0) times.push(performance.now() - t0);
      const count = JSON.parse(new TextDecoder().decode(body)).length;
      if (count !== input.instances) {
        throw new Error(`metadata has ${count} instances, not ${input.instances}`);
      }
    }
    return median(times);
  } finally {
    await server.stop();
  }
}

interface Pass {
  cold: { ms: number; s3: number };
  warm: number[];
  /** Warm again, asking for gzip: times, the bytes sent and the JSON's bytes. */
  warmGzip: { ms: number[]; wire: number; bytes: number };
  warmS3: number;
  first: { ms: number; s3: number };
  frames: number[];
  frameS3: number[];
  /** The floor server's time for the same frames (empty without it). */
  floor: number[];
  direct: number[];
}

/** Cold and warm series metadata and frame reads on a fresh catalog-less server whose S3 is `endpoint`. */
async function pass(
  input: MetadataBenchInput,
  endpoint: string,
  received: () => number,
  cine: { store: S3Store; cineKey: string; pixelStart: number },
  floorUrl?: string,
): Promise<Pass> {
  const server = await input.startServer({
    CATALOG_PATH: "off",
    S3_ENDPOINT: endpoint,
    AETS: `BENCH=${input.bucket}`,
    AWS_ACCESS_KEY_ID: input.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: input.credentials.secretAccessKey,
  });
  try {
    const base = `${server.url}/aets/BENCH/studies`;
    const metadataUrl = `${base}/${input.study}/series/${input.series}/metadata`;
    // `keep`: the body is kept (joined into one buffer, a copy the timing then includes); frames are only
    // counted, as the direct ranged GETs they are compared with are. The targets are timed without gzip
    // (`identity`, as before the server compressed; on loopback the client's inflating costs more than the
    // bytes saved); `gzip` (what browsers ask) is timed beside them, with the bytes on the wire.
    const timed = async (url: string, accept: string, keep = true, encoding = "identity") => {
      const before = received();
      const t0 = performance.now();
      const response = await fetch(url, { headers: { accept, "accept-encoding": encoding } });
      const { body, bytes } = await drain(response, keep);
      const ms = performance.now() - t0;
      if (!response.ok) throw new Error(`${url}: ${response.status} ${new TextDecoder().decode(body)}`);
      const wire = Number(response.headers.get("content-length") ?? bytes);
      return { ms, body, bytes, wire, s3: received() - before };
    };
    const json = "application/dicom+json";
    const cold = await timed(metadataUrl, json);
    const count = JSON.parse(new TextDecoder().decode(cold.body)).length;
    if (count !== input.instances) throw new Error(`metadata has ${count} instances, not ${input.instances}`);
    // warm: one request to settle (the first answer from the kept response runs code the cold one did not),
    // then three per round, the figure being their median
    await timed(metadataUrl, json);
    const warm = [];
    for (let i = 0; i < 3 * input.rounds; i++) warm.push(await timed(metadataUrl, json));
    await timed(metadataUrl, json, false, "gzip"); // the kept response's gzip is made once
    const warmGzip = [];
    for (let i = 0; i < 3 * input.rounds; i++) warmGzip.push(await timed(metadataUrl, json, false, "gzip"));

    // Frames: the first request reads the header, later ones only their frame's bytes.
    const frameUrl = (n: number) =>
      `${base}/${CINE.study}/series/${CINE.series}/instances/${CINE.sop}/frames/${n}`;
    const octets = 'multipart/related; type="application/octet-stream"; transfer-syntax=*';
    const first = await timed(frameUrl(48), octets);
    if (first.body.byteLength < FRAME_BYTES) throw new Error(`frame 48 has ${first.body.byteLength} bytes`);
    // warm: the frame path run until the JIT has compiled it (24 requests, not timed), then four times three
    // frames per round, each beside a direct ranged GET of the same bytes
    for (let i = 0; i < 24; i++) await timed(frameUrl(1 + (i * 37) % FRAMES), octets, false);
    const frames: number[] = [];
    const frameS3: number[] = [];
    const direct: number[] = [];
    const floor: number[] = [];
    for (let i = 0; i < 4 * input.rounds; i++) {
      for (const n of [1, 48, 96]) {
        const r = await timed(frameUrl(n), octets, false);
        if (r.bytes < FRAME_BYTES) throw new Error(`frame ${n} has ${r.bytes} bytes`);
        frames.push(r.ms);
        frameS3.push(r.s3);
        const start = cine.pixelStart + (n - 1) * FRAME_BYTES;
        // the same client (this process's fetch) as for the server: a signed ranged GET of the frame's bytes
        const url = new URL(`/${input.bucket}/${cine.cineKey}`, input.endpoint);
        const headers = signer.sign(
          {
            method: "GET",
            host: url.host,
            path: url.pathname,
            headers: { range: `bytes=${start}-${start + FRAME_BYTES - 1}` },
            payloadHash: EMPTY_SHA256,
          },
          input.credentials,
          new Date(),
        );
        const t0 = performance.now();
        const response = await fetch(url, { headers });
        const { bytes } = await drain(response);
        direct.push(performance.now() - t0);
        if (response.status !== 206 || bytes !== FRAME_BYTES) {
          throw new Error(`direct ranged GET: ${response.status}, ${bytes} bytes`);
        }
        if (floorUrl !== undefined) {
          // the least a Deno server does for it: the same ranged GET relayed as one part
          const range = `bytes=${start}-${start + FRAME_BYTES - 1}`;
          const t1 = performance.now();
          const relayed = await fetch(`${floorUrl}/object/${cine.cineKey}`, { headers: { range } });
          const got = await drain(relayed);
          floor.push(performance.now() - t1);
          if (!relayed.ok || got.bytes < FRAME_BYTES) throw new Error(`floor frame: ${relayed.status}`);
        }
      }
    }
    return {
      cold: { ms: cold.ms, s3: cold.s3 },
      warm: warm.map((w) => w.ms),
      warmGzip: { ms: warmGzip.map((w) => w.ms), wire: warmGzip[0].wire, bytes: warmGzip[0].bytes },
      warmS3: median(warm.map((w) => w.s3)),
      first: { ms: first.ms, s3: first.s3 },
      frames,
      frameS3,
      direct,
      floor,
    };
  } finally {
    await server.stop();
  }
}
