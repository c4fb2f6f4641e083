/**
 * STOW-RS end to end over HTTP into a real S3 server (s3rver here; Ceph RGW in CI via TEST_S3_ENDPOINT): the
 * corpus and a multipart-upload-sized instance stored and read back byte-exact (WADO-RS and a raw S3 GET),
 * searchable at once, and the faults that must leave no object and no upload behind: a client that goes away,
 * a body that breaks on its way to S3, and S3 itself unreachable in the middle of an upload.
 */

import assert from "node:assert/strict";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { FetchHttpHandler } from "@smithy/fetch-http-handler";
import { AetRegistry } from "../../lib/objects/aets.ts";
import { parseConfig } from "../../lib/config/config.ts";
import { openCrawler } from "../../lib/app/open.ts";
import { memoryCatalog, testHandler, type TestServerOptions } from "../_server.ts";
import { freedByLedgers } from "../../lib/util/handoff.ts";
import { readHeader } from "../../lib/dicom/part10.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import type { ObjectStore } from "../../lib/store/store.ts";
import { buildInstance, CORPUS_DIR, md5, pydicomCorpus } from "../_corpus.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";
import { startS3, type TestS3 } from "../_s3server.ts";
import { delegating, eventually } from "../_stores.ts";
import { documentText, headerJson } from "../../lib/catalog/documents.ts";
import { FAILURE } from "../../lib/dicomweb/stow_response.ts";
import { concatBytes } from "../../lib/util/bytes.ts";

const AET = "STOWE2E";
const MIB = 1024 * 1024;
const DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*';
const encoder = new TextEncoder();

interface Server {
  url: string;
  /** Resolves when every request handled so far has finished (its handler promise settled). */
  settled(): Promise<void>;
  close(): Promise<void>;
}

function serve(options: TestServerOptions): Server {
  const app = testHandler({ ...options, handler: { log: () => {} } }).handler;
  const pending = new Set<Promise<unknown>>();
  const handler = (request: Request) => {
    const run = app(request);
    pending.add(run);
    run.finally(() => pending.delete(run)).catch(() => {});
    return run;
  };
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
  return {
    url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`,
    settled: async () => void await Promise.allSettled([...pending]),
    close: () => server.shutdown(),
  };
}

function part(bytes: Uint8Array, boundary: string): Uint8Array[] {
  return [
    encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
    bytes,
    encoder.encode("\r\n"),
  ];
}

async function postStow(
  url: string,
  files: Uint8Array[],
): Promise<{ status: number; json: Record<string, { Value?: Record<string, { Value?: unknown[] }>[] }> }> {
  const boundary = `e2e-${crypto.randomUUID()}`;
  const bytes = concatBytes([
    ...files.flatMap((f) => part(f, boundary)),
    encoder.encode(`--${boundary}--\r\n`),
  ]);
  // streamed (chunked) request body, as a client uploading a large study does
  let at = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(at, at + 256 * 1024));
      at += 256 * 1024;
    },
  });
  const response = await fetch(url, {
    method: "POST",
    body,
    headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}` },
  });
  return { status: response.status, json: await response.json() };
}

const sops = (json: Record<string, { Value?: Record<string, { Value?: unknown[] }>[] }>, tag: string) =>
  (json[tag]?.Value ?? []).map((item) => item["00081155"]?.Value?.[0] as string);
const reasons = (json: Record<string, { Value?: Record<string, { Value?: unknown[] }>[] }>) =>
  (json["00081198"]?.Value ?? []).map((item) => item["00081197"]?.Value?.[0] as number);

/** A store wrapper: `put` of keys matching `when` calls `hook` with the body (to break it), `settled` after. */
function hooked(store: ObjectStore, hooks: {
  body?: (key: string, body: ReadableStream<Uint8Array>) => ReadableStream<Uint8Array>;
  settled?: (key: string, ok: boolean) => void;
}): ObjectStore {
  return delegating(store, {
    async put(bucket, key, body, options) {
      const given = body instanceof Uint8Array || !hooks.body ? body : hooks.body(key, body);
      try {
        const info = await store.put(bucket, key, given, options);
        hooks.settled?.(key, true);
        return info;
      } catch (error) {
        hooks.settled?.(key, false);
        throw error;
      }
    },
  });
}

/** A TCP relay to S3 that can drop every connection and refuse new ones (S3 unreachable), then come back. */
class Relay {
  #listener: Deno.Listener;
  #conns = new Set<Deno.Conn>();
  #down = false;
  #target: { hostname: string; port: number };
  /** Bytes sent towards S3 since the start. */
  sent = 0;

  constructor(endpoint: string) {
    const url = new URL(endpoint);
    this.#target = { hostname: url.hostname, port: Number(url.port || 80) };
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#accept();
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.#listener.addr as Deno.NetAddr).port}`;
  }

  async #accept() {
    for await (const conn of this.#listener) {
      if (this.#down) {
        conn.close();
        continue;
      }
      let upstream: Deno.Conn;
      try {
        upstream = await Deno.connect(this.#target);
      } catch {
        conn.close();
        continue;
      }
      this.#conns.add(conn);
      this.#conns.add(upstream);
      const count = new TransformStream<Uint8Array, Uint8Array>({
        transform: (chunk, controller) => {
          this.sent += chunk.byteLength;
          controller.enqueue(chunk);
        },
      });
      const close = () => {
        for (const c of [conn, upstream]) {
          if (this.#conns.delete(c)) {
            try {
              c.close();
            } catch { /* closed */ }
          }
        }
      };
      conn.readable.pipeThrough(count).pipeTo(upstream.writable).catch(() => {}).finally(close);
      upstream.readable.pipeTo(conn.writable).catch(() => {}).finally(close);
    }
  }

  /** Drops every open connection and refuses new ones. */
  cut(): void {
    this.#down = true;
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    this.#conns.clear();
  }

  restore(): void {
    this.#down = false;
  }

  close(): void {
    this.cut();
    this.#listener.close();
  }
}

function s3Store(s3: TestS3, endpoint = s3.endpoint): S3Store {
  return new S3Store({
    endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    partSize: 5 * MIB,
    maxAttempts: 2,
    requestTimeout: 10_000,
  });
}

function rawClient(s3: TestS3): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestHandler: new FetchHttpHandler(),
  });
}

async function listKeys(store: ObjectStore, bucket: string): Promise<string[]> {
  return (await Array.fromAsync(store.list(bucket, ""))).map((o) => o.key).sort();
}

async function setup(
  s3: TestS3,
  hint: string,
  wrap: (store: ObjectStore) => ObjectStore = (s) => s,
  endpoint?: string,
) {
  const bucket = s3.uniqueBucket(hint);
  await s3.createBucket(bucket);
  const direct = s3Store(s3);
  const store = endpoint ? s3Store(s3, endpoint) : direct;
  const config = parseConfig({ PORT: "0", AETS: `${AET}=${bucket}` });
  const aets = new AetRegistry(store, { configured: config.aets });
  const catalog = await memoryCatalog({ bulkDataThreshold: config.bulkDataThreshold });
  // the crawler reads the bucket directly, as main.ts's does
  const crawler = openCrawler(config, { store: direct, aets, catalog, log: () => {} });
  const server = serve({
    config,
    store: wrap(store),
    aets,
    capabilities: { reEncode: false },
    catalog,
    crawler,
  });
  return {
    bucket,
    direct,
    catalog,
    server,
    config,
    aets,
    crawler,
    async close() {
      await server.close();
      await crawler.stop();
      await catalog.close();
      store.close();
      if (direct !== store) direct.close();
    },
  };
}

const big = (sop: string, bytes: number) =>
  buildInstance({ study: "2.25.600", series: "2.25.600.1", sop, pixelBytes: bytes });
const keyOf = (sop: string) => `2.25.600/2.25.600.1/${sop}.dcm`;

Deno.test("STOW-RS end to end into S3", async (t) => {
  const s3 = await startS3();
  try {
    await t.step(
      "the corpus and a 12 MiB instance: byte-exact through WADO-RS and a raw GET, searchable at once",
      async () => {
        const env = await setup(s3, "stow");
        try {
          await env.crawler.crawl(AET, { waitForInstances: true }); // the empty bucket, as the server does at start
          const corpus = await pydicomCorpus();
          const valid = corpus.filter((f) => !["MR_truncated.dcm", "rtplan_truncated.dcm"].includes(f.name));
          const unkeyed: Uint8Array[] = [];
          try {
            for await (const entry of Deno.readDir(new URL("files/", CORPUS_DIR))) {
              if (!corpus.some((f) => f.name === entry.name)) {
                unkeyed.push(await Deno.readFile(new URL(`files/${entry.name}`, CORPUS_DIR)));
              }
            }
          } catch (error) {
            if (!(error instanceof Deno.errors.NotFound)) throw error;
          }
          const large = big("2.25.600.1.1", 12 * MIB);
          const files = [...corpus.map((f) => f.bytes), ...unkeyed, large];
          const freedBefore = freedByLedgers();
          const { status, json } = await postStow(`${env.server.url}/aets/${AET}/studies`, files);
          // the request's buffers were freed as its parts were copied or written (checked byte-exact below)
          assert.ok(freedByLedgers() > freedBefore, "no request buffer was freed");
          const expectedKeys = [...valid.map((f) => f.key), keyOf("2.25.600.1.1")].sort();
          assert.equal(status, files.length > expectedKeys.length ? 202 : 200);
          assert.equal(sops(json, "00081199").length, expectedKeys.length);
          assert.equal(reasons(json).length, files.length - expectedKeys.length);
          assert.ok(reasons(json).every((r) => r === FAILURE.cannotUnderstand));
          assert.deepEqual(
            await listKeys(env.direct, env.bucket),
            expectedKeys,
            "nothing extra, nothing missing",
          );
          // in the catalog before the response: no crawl ran since
          const [status0] = await env.catalog.status(AET);
          assert.equal(status0.indexed, expectedKeys.length);
          // what the catalog recorded is what the files say, read again from the original bytes
          for (const file of valid) {
            const [study, series, name] = file.key.split("/");
            const recorded = (await env.catalog.instanceMetadata(AET, study, series))
              .find((i) => i.sop === name.slice(0, -4));
            const header = await readHeader(
              {
                name: file.name,
                size: file.bytes.length,
                read: (s, e) => Promise.resolve(file.bytes.slice(s, e)),
              },
              { bulkThreshold: env.config.bulkDataThreshold, maxInflatedBytes: 256 * MIB },
            );
            assert.equal(
              recorded?.json,
              documentText(headerJson(header, env.config.bulkDataThreshold)),
              `${file.name} in the catalog`,
            );
          }
          const raw = rawClient(s3);
          try {
            for (
              const [key, bytes] of [
                ...valid.map((f) => [f.key, f.bytes] as const),
                [keyOf("2.25.600.1.1"), large] as const,
              ]
            ) {
              const [study, series, file] = key.split("/");
              const response = await fetch(
                `${env.server.url}/aets/${AET}/studies/${study}/series/${series}/instances/${
                  file.slice(0, -4)
                }`,
                {
                  headers: { accept: DICOM_ACCEPT },
                },
              );
              assert.equal(response.status, 200, key);
              const body = new Uint8Array(await response.arrayBuffer());
              const parts = parseMultipart(body, boundaryOf(response.headers.get("content-type"))).parts;
              assert.equal(await md5(parts[0].body), await md5(bytes), `${key} through WADO-RS`);
              const object = await raw.send(new GetObjectCommand({ Bucket: env.bucket, Key: key }));
              const stored = await object.Body!.transformToByteArray();
              assert.equal(
                await md5(stored),
                await md5(bytes),
                `${key} as S3 holds it (no aws-chunked framing)`,
              );
            }
          } finally {
            raw.destroy();
          }
          const qido = await fetch(`${env.server.url}/aets/${AET}/studies/2.25.600/instances`, {
            headers: { accept: "application/dicom+json" },
          });
          assert.equal(qido.status, 200);
          const found = (await qido.json()) as Record<string, { Value: string[] }>[];
          assert.deepEqual(found.map((i) => i["00080018"].Value[0]), ["2.25.600.1.1"]);
          assert.equal(await s3.pendingUploads(env.bucket) ?? 0, 0);
        } finally {
          await env.close();
        }
      },
    );

    await t.step(
      "a client that goes away half way through a large part leaves no object and no upload",
      async () => {
        const env = await setup(s3, "stow-abort");
        try {
          const boundary = "abort-boundary";
          const first = big("2.25.600.1.2", 100_000);
          const second = big("2.25.600.1.3", 14 * MIB);
          const head = concatBytes([...part(first, boundary), ...part(second, boundary)]);
          const half = head.length - 6 * MIB;
          const controller = new AbortController();
          let sent = 0;
          const body = new ReadableStream<Uint8Array>({
            async pull(c) {
              if (sent >= half) {
                await new Promise((r) => setTimeout(r, 300)); // the server is uploading what it got
                controller.abort();
                return;
              }
              const end = Math.min(sent + 512 * 1024, half);
              c.enqueue(head.slice(sent, end));
              sent = end;
            },
          });
          await assert.rejects(
            fetch(`${env.server.url}/aets/${AET}/studies`, {
              method: "POST",
              body,
              signal: controller.signal,
              headers: {
                "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
              },
            }).then((r) => r.arrayBuffer()),
          );
          await env.server.settled();
          assert.deepEqual(await listKeys(env.direct, env.bucket), [keyOf("2.25.600.1.2")]);
          const pending = await s3.pendingUploads(env.bucket);
          assert.ok(pending === undefined || pending === 0, `${pending} multipart uploads left behind`);
        } finally {
          await env.close();
        }
      },
    );

    await t.step(
      "a body that breaks on its way to S3 aborts the multipart upload; the other parts are stored",
      async () => {
        let broke = false;
        const env = await setup(s3, "stow-break", (store) =>
          hooked(store, {
            body: (key, body) => {
              if (key !== keyOf("2.25.600.1.5")) return body;
              let seen = 0;
              return body.pipeThrough(
                new TransformStream({
                  transform(chunk, controller) {
                    seen += chunk.byteLength;
                    if (seen > 7 * MIB) {
                      broke = true;
                      controller.error(new Error("injected: body broken"));
                    } else controller.enqueue(chunk);
                  },
                }),
              );
            },
          }));
        try {
          const files = [big("2.25.600.1.4", 1000), big("2.25.600.1.5", 12 * MIB), big("2.25.600.1.6", 1000)];
          const { status, json } = await postStow(`${env.server.url}/aets/${AET}/studies`, files);
          assert.ok(broke);
          assert.equal(status, 202);
          assert.deepEqual(sops(json, "00081199"), ["2.25.600.1.4", "2.25.600.1.6"]);
          assert.deepEqual(reasons(json), [FAILURE.processing]);
          assert.deepEqual(await listKeys(env.direct, env.bucket), [
            keyOf("2.25.600.1.4"),
            keyOf("2.25.600.1.6"),
          ]);
          const pending = await s3.pendingUploads(env.bucket);
          assert.ok(pending === undefined || pending === 0, `${pending} multipart uploads left behind`);
        } finally {
          await env.close();
        }
      },
    );

    await t.step(
      "S3 refusing the abort of a failed upload for a while: the abort is tried again until it goes through",
      async () => {
        // AbortMultipartUpload answered 503 three times: more than the SDK's own retries (maxAttempts 2)
        const aborts: number[] = [];
        const original = globalThis.fetch;
        globalThis.fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
          const request = input instanceof Request ? input : undefined;
          const method = request?.method ?? init?.method ?? "GET";
          const url = new URL(request?.url ?? String(input));
          if (method !== "DELETE" || !url.searchParams.has("uploadId")) return original(input, init);
          if (aborts.length < 3) {
            aborts.push(503);
            return new Response(
              "<Error><Code>ServiceUnavailable</Code><Message>injected: try again</Message></Error>",
              { status: 503, headers: { "content-type": "application/xml" } },
            );
          }
          const response = await original(input, init);
          aborts.push(response.status);
          return response;
        }) as typeof fetch;
        const env = await setup(s3, "stow-abort-retry", (store) =>
          hooked(store, {
            body: (key, body) => {
              if (key !== keyOf("2.25.600.1.11")) return body;
              let seen = 0;
              return body.pipeThrough(
                new TransformStream({
                  transform(chunk, controller) {
                    seen += chunk.byteLength;
                    if (seen > 7 * MIB) controller.error(new Error("injected: body broken"));
                    else controller.enqueue(chunk);
                  },
                }),
              );
            },
          }));
        try {
          const files = [big("2.25.600.1.10", 1000), big("2.25.600.1.11", 12 * MIB)];
          const { status, json } = await postStow(`${env.server.url}/aets/${AET}/studies`, files);
          assert.equal(status, 202);
          assert.deepEqual(sops(json, "00081199"), ["2.25.600.1.10"]);
          assert.deepEqual(reasons(json), [FAILURE.processing]);
          // s3rver answers 405 (it has no AbortMultipartUpload), which is not tried again; Ceph 204
          assert.deepEqual(aborts.slice(0, 3), [503, 503, 503]);
          assert.equal(aborts.length, 4, `abort attempts: ${aborts}`);
          assert.ok(aborts[3] === 405 || (aborts[3] >= 200 && aborts[3] < 300), `the last abort: ${aborts}`);
          assert.deepEqual(await listKeys(env.direct, env.bucket), [keyOf("2.25.600.1.10")]);
          const pending = await s3.pendingUploads(env.bucket);
          assert.ok(pending === undefined || pending === 0, `${pending} multipart uploads left behind`);
        } finally {
          globalThis.fetch = original;
          await env.close();
        }
      },
    );

    await t.step(
      "S3 unreachable in the middle of an upload: that part fails, nothing partial; the next is stored",
      async () => {
        const relay = new Relay(s3.endpoint);
        // S3 comes back once the first abort of the upload (the SDK's two tries) failed: a later one goes through
        const aborts: (number | "unreachable")[] = [];
        const original = globalThis.fetch;
        globalThis.fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
          const request = input instanceof Request ? input : undefined;
          const method = request?.method ?? init?.method ?? "GET";
          if (method !== "DELETE" || !new URL(request?.url ?? String(input)).searchParams.has("uploadId")) {
            return original(input, init);
          }
          try {
            const response = await original(input, init);
            aborts.push(response.status);
            return response;
          } catch (error) {
            aborts.push("unreachable");
            if (aborts.length === 2) relay.restore();
            throw error;
          }
        }) as typeof fetch;
        let failedPut: () => void = () => {};
        const putFailed = new Promise<void>((resolve) => failedPut = resolve);
        const env = await setup(s3, "stow-outage", (store) =>
          hooked(store, {
            settled: (key, ok) => {
              if (key === keyOf("2.25.600.1.8") && !ok) failedPut();
            },
          }), relay.endpoint);
        try {
          const boundary = "outage-boundary";
          const before = concatBytes([
            ...part(big("2.25.600.1.7", 1000), boundary),
            ...part(big("2.25.600.1.8", 16 * MIB), boundary),
          ]);
          const after = concatBytes([
            ...part(big("2.25.600.1.9", 1000), boundary),
            encoder.encode(`--${boundary}--\r\n`),
          ]);
          let stage = 0;
          let at = 0;
          const body = new ReadableStream<Uint8Array>({
            async pull(c) {
              if (stage === 0) {
                if (at < before.length) {
                  c.enqueue(before.slice(at, at + 256 * 1024));
                  at += 256 * 1024;
                  return;
                }
                stage = 1;
                // S3 goes away once the upload of the large part is under way, and comes back (above)
                await eventually(() => relay.sent > 7 * MIB, 15_000, "the upload to be under way");
                relay.cut();
                await putFailed;
                relay.restore();
                c.enqueue(after);
                return;
              }
              c.close();
            },
          });
          const response = await fetch(`${env.server.url}/aets/${AET}/studies`, {
            method: "POST",
            body,
            headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}` },
          });
          const json = await response.json();
          assert.equal(response.status, 202);
          assert.deepEqual(sops(json, "00081199"), ["2.25.600.1.7", "2.25.600.1.9"]);
          assert.deepEqual(reasons(json), [FAILURE.processing]);
          assert.deepEqual(sops(json, "00081198"), ["2.25.600.1.8"]);
          assert.deepEqual(await listKeys(env.direct, env.bucket), [
            keyOf("2.25.600.1.7"),
            keyOf("2.25.600.1.9"),
          ]);
          // the abort failed while S3 was unreachable and was tried again once it was back (s3rver: 405, it
          // has no AbortMultipartUpload), so no incomplete upload remains
          assert.deepEqual(aborts.slice(0, 2), ["unreachable", "unreachable"]);
          const last = aborts.at(-1);
          assert.ok(
            last === 405 || (typeof last === "number" && last >= 200 && last < 300),
            `aborts: ${aborts}`,
          );
          const pending = await s3.pendingUploads(env.bucket);
          assert.ok(pending === undefined || pending === 0, `${pending} multipart uploads left behind`);
        } finally {
          globalThis.fetch = original;
          await env.close();
          relay.close();
        }
      },
    );
  } finally {
    await s3.stop();
  }
});
