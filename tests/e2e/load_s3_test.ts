/**
 * Load: 200 concurrent clients on loopback against the server over a real S3 (s3rver, or `TEST_S3_ENDPOINT`),
 * with token authentication and the per-client limiter on, mixing series and instance metadata, frames,
 * instance retrieval, and QIDO-RS search and STOW-RS store when they are routed, for a fixed number of
 * requests. Zero errors; prints p50/p99 per kind and the peak RSS. No timing is asserted.
 *
 * `LOAD_REQUESTS` (default 1200) and `LOAD_CLIENTS` (default 200) change the run.
 */

import assert from "node:assert/strict";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { buildInstance } from "../_corpus.ts";
import { securedHandler } from "../_jwks.ts";
import { memoryCatalog } from "../_server.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { startS3 } from "../_s3server.ts";
import { makeToken } from "../../lib/security/passwords.ts";
import { concatBytes } from "../../lib/util/bytes.ts";

const REQUESTS = Number(Deno.env.get("LOAD_REQUESTS") ?? 1200);
const CLIENTS = Number(Deno.env.get("LOAD_CLIENTS") ?? 200);
const AET = "LOAD";
const DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*';
const OCTET = 'multipart/related; type="application/octet-stream"; transfer-syntax=*';

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

Deno.test(`load: ${CLIENTS} concurrent clients, ${REQUESTS} mixed requests against S3, zero errors`, async () => {
  const s3 = await startS3();
  const bucket = s3.uniqueBucket("load");
  const store = new S3Store({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    maxConcurrency: 50,
  });
  const catalog = await memoryCatalog();
  let server: Deno.HttpServer<Deno.NetAddr> | undefined;
  try {
    await s3.createBucket(bucket);
    // 3 series × 8 instances of 64 KiB, and a 16-frame instance for frame requests.
    const study = "2.25.7001";
    const objects = new Map<string, Uint8Array>();
    for (let s = 1; s <= 3; s++) {
      for (let i = 1; i <= 8; i++) {
        const series = `${study}.${s}`;
        const sop = `${series}.${i}`;
        objects.set(
          `${study}/${series}/${sop}.dcm`,
          buildInstance({ study, series, sop, pixelBytes: 64 * 1024 }),
        );
      }
    }
    const multi = { study, series: `${study}.9`, sop: `${study}.9.1` };
    objects.set(
      `${study}/${multi.series}/${multi.sop}.dcm`,
      buildInstance({ ...multi, frames: 16, pixelBytes: 32 * 1024 }),
    );
    for (const [key, bytes] of objects) await store.put(bucket, key, bytes, { size: bytes.length });

    const tokens = await Promise.all([1, 2, 3, 4].map(() => makeToken()));
    const { handler } = securedHandler(store, {
      AETS: `${AET}=${bucket}`,
      AUTH: "token",
      AUTH_TOKENS: tokens.map((t, i) => `viewer${i}:${t.sha256}`).join(","),
      AUTH_GRANTS: "*:read:* *:write:*",
      CLIENT_CONCURRENCY: "64",
      CRAWL_INTERVAL: "0",
    }, { catalog, freeSentChunks: true });
    server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
    const base = `http://127.0.0.1:${server.addr.port}/aets/${AET}`;
    const auth = (n: number) => ({ authorization: `Bearer ${tokens[n % tokens.length].token}` });

    // Which optional routes exist right now?
    const qidoProbe = await fetch(`${base}/studies?limit=1`, { headers: auth(0) });
    await qidoProbe.body?.cancel();
    const stowProbe = await fetch(`${base}/studies`, { method: "POST", headers: auth(0) });
    await stowProbe.body?.cancel();
    const qido = qidoProbe.status === 200;
    const stow = stowProbe.status !== 405 && stowProbe.status !== 404;
    console.log(
      `routes: QIDO-RS ${qido ? "on" : `off (${qidoProbe.status})`}, STOW-RS ${
        stow ? "on" : `off (${stowProbe.status})`
      }`,
    );

    type Kind = "series-metadata" | "instance-metadata" | "frames" | "instance" | "search" | "store";
    const kinds: Kind[] = [
      "series-metadata",
      "instance-metadata",
      "frames",
      "frames",
      "instance",
      "instance",
    ];
    if (qido) kinds.push("search");
    if (stow) kinds.push("store");
    const keys = [...objects.keys()].filter((k) => !k.includes(`/${multi.series}/`));
    const latencies = new Map<Kind, number[]>();
    const errors: string[] = [];
    let next = 0;
    let stored = 0;
    let peakRss = Deno.memoryUsage().rss;
    const sampler = setInterval(() => (peakRss = Math.max(peakRss, Deno.memoryUsage().rss)), 50);

    const one = async (n: number, client: number): Promise<void> => {
      const kind = kinds[n % kinds.length];
      const key = keys[(n * 7 + client) % keys.length];
      const [, series, file] = key.split("/");
      const sop = file.slice(0, -4);
      const started = performance.now();
      let url: string;
      const init: RequestInit = { headers: auth(client) };
      switch (kind) {
        case "series-metadata":
          url = `${base}/studies/${study}/series/${series}/metadata`;
          break;
        case "instance-metadata":
          url = `${base}/studies/${study}/series/${series}/instances/${sop}/metadata`;
          break;
        case "frames":
          url = `${base}/studies/${study}/series/${multi.series}/instances/${multi.sop}/frames/${
            1 + (n % 16)
          }`;
          init.headers = { ...auth(client), accept: OCTET };
          break;
        case "instance":
          url = `${base}/studies/${study}/series/${series}/instances/${sop}`;
          init.headers = { ...auth(client), accept: DICOM };
          break;
        case "search":
          url = `${base}/studies/${study}/series?limit=10`;
          break;
        case "store": {
          const uids = { study: "2.25.7002", series: "2.25.7002.1", sop: `2.25.7002.1.${n}` };
          const boundary = `load-${n}`;
          const body = concatBytes([
            new TextEncoder().encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
            buildInstance({ ...uids, pixelBytes: 8 * 1024 }),
            new TextEncoder().encode(`\r\n--${boundary}--\r\n`),
          ]);
          url = `${base}/studies`;
          init.method = "POST";
          init.body = body as Uint8Array<ArrayBuffer>;
          init.headers = {
            ...auth(client),
            "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
          };
          break;
        }
      }
      try {
        const response = await fetch(url, init);
        const bytes = new Uint8Array(await response.arrayBuffer());
        if (response.status !== 200) {
          errors.push(
            `${kind} ${url}: ${response.status} ${new TextDecoder().decode(bytes.subarray(0, 200))}`,
          );
          return;
        }
        if (kind === "instance") {
          const parts = parseMultipart(bytes, boundaryOf(response.headers.get("content-type"))).parts;
          const expected = objects.get(key)!;
          if (
            parts.length !== 1 || parts[0].body.length !== expected.length ||
            parts[0].body[200] !== expected[200]
          ) {
            errors.push(`${kind} ${url}: wrong bytes`);
          }
        } else if (kind.endsWith("metadata") || kind === "search") {
          const json = JSON.parse(new TextDecoder().decode(bytes));
          if (!Array.isArray(json) || json.length === 0) errors.push(`${kind} ${url}: ${json}`);
        } else if (kind === "frames" && bytes.length < 32 * 1024) {
          errors.push(`${kind} ${url}: ${bytes.length} bytes`);
        } else if (kind === "store") stored++;
        latencies.set(kind, [...(latencies.get(kind) ?? []), performance.now() - started]);
      } catch (error) {
        errors.push(`${kind} ${url}: ${(error as Error).message}`);
      }
    };

    const started = performance.now();
    await Promise.all(Array.from({ length: CLIENTS }, async (_, client) => {
      for (;;) {
        const n = next++;
        if (n >= REQUESTS) return;
        await one(n, client);
      }
    }));
    const seconds = (performance.now() - started) / 1000;
    clearInterval(sampler);

    const all = [...latencies.values()].flat().sort((a, b) => a - b);
    for (const [kind, list] of [...latencies].sort()) {
      list.sort((a, b) => a - b);
      console.log(
        `  ${kind.padEnd(18)} ${String(list.length).padStart(5)} req  p50 ${
          percentile(list, 50).toFixed(1).padStart(7)
        } ms  p99 ${percentile(list, 99).toFixed(1).padStart(7)} ms`,
      );
    }
    console.log(
      `load summary: ${REQUESTS} requests from ${CLIENTS} concurrent clients in ${seconds.toFixed(1)} s ` +
        `(${(REQUESTS / seconds).toFixed(0)} req/s), p50 ${percentile(all, 50).toFixed(1)} ms, p99 ${
          percentile(all, 99).toFixed(1)
        } ms, ` +
        `peak RSS ${
          (peakRss / 1024 / 1024).toFixed(0)
        } MiB (server and clients in one process), ${errors.length} failures`,
    );
    for (const e of errors.slice(0, 10)) console.log(`  ${e}`);
    assert.deepEqual(errors.slice(0, 10), [], `${errors.length} requests failed`);
    assert.ok(peakRss < 2 * 1024 ** 3, `RSS reached ${(peakRss / 1024 / 1024).toFixed(0)} MiB`);
    if (stow) assert.ok(stored > 0);
  } finally {
    await server?.shutdown();
    await (catalog as { close?(): unknown } | undefined)?.close?.();
    store.close();
    await s3.stop();
  }
});
