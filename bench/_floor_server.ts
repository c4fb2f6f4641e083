/**
 * The runtime's floor for `deno task bench`: the least a Deno server can do to stream a series out of S3 as
 * one multipart response. It knows the keys (no listing), signs each GET with the project's SigV4 signer,
 * sends it over the project's HTTP/1.1 client (kept-alive sockets), keeps `S3_CONCURRENCY` GETs ahead and
 * enqueues each body's chunks as they come, in key order: no File Meta, no read budget, no logging.
 * `/object/{key}` is the same for one object (one signed GET, its `Range` passed on): the floor of a
 * one-instance retrieve and of a frame read as one span, sent as one part with its `Content-Length`.
 *
 * Run as its own process: `deno run -P=bench-server bench/_floor_server.ts` with `PORT`, `S3_ENDPOINT`,
 * `BUCKET`, `KEYS_FILE` (one key a line), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `S3_CONCURRENCY`.
 *
 * @module
 */

import { Http1Client } from "../lib/store/s3/http1.ts";
import { SigV4Signer } from "../lib/store/s3/sigv4.ts";

const env = (name: string) => Deno.env.get(name) ?? "";
const endpoint = new URL(env("S3_ENDPOINT"));
const bucket = env("BUCKET");
// the series' keys (none: only `/object/{key}` is served)
const keys = env("KEYS_FILE")
  ? (await Deno.readTextFile(env("KEYS_FILE"))).split("\n").filter((k) => k !== "")
  : [];
const concurrency = Number(env("S3_CONCURRENCY") || 8);
const credentials = { accessKeyId: env("AWS_ACCESS_KEY_ID"), secretAccessKey: env("AWS_SECRET_ACCESS_KEY") };
const client = new Http1Client();
const signer = new SigV4Signer("us-east-1", "s3");
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const encoder = new TextEncoder();

function open(key: string, range?: string) {
  const path = `/${bucket}/${key}`;
  const headers = signer.sign(
    {
      method: "GET",
      host: endpoint.host,
      path,
      headers: range ? { range } : undefined,
      payloadHash: EMPTY_SHA256,
    },
    credentials,
    new Date(),
  );
  return client.stream({ method: "GET", url: new URL(path, endpoint), headers }).then((r) => {
    if ((r.status !== 200 && r.status !== 206) || r.body === null) throw new Error(`GET ${key}: ${r.status}`);
    return { body: r.body, length: Number(r.headers.get("content-length")) };
  });
}

const get = (key: string) => open(key).then((r) => r.body);
const boundary = "floor-boundary";

/** One object (or the range the request asks for) as a one-part multipart body with its length. */
async function object(key: string, range: string | null): Promise<Response> {
  const { body, length } = await open(key, range ?? undefined);
  const head = encoder.encode(`--${boundary}\r\nContent-Type: application/octet-stream\r\n\r\n`);
  const tail = encoder.encode(`\r\n--${boundary}--\r\n`);
  const reader = body.getReader();
  let sent = false;
  const out = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!sent) {
        sent = true;
        return controller.enqueue(head);
      }
      const { value, done } = await reader.read();
      if (!done) return controller.enqueue(value);
      controller.enqueue(tail);
      controller.close();
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
  return new Response(out, {
    headers: {
      "content-type": `multipart/related; type="application/octet-stream"; boundary=${boundary}`,
      "content-length": String(head.byteLength + length + tail.byteLength),
    },
  });
}

Deno.serve({ port: Number(env("PORT")), hostname: "127.0.0.1", onListen() {} }, (request) => {
  const { pathname } = new URL(request.url);
  if (pathname === "/healthz") return new Response("ok");
  if (pathname.startsWith("/object/")) {
    return object(decodeURIComponent(pathname.slice("/object/".length)), request.headers.get("range"));
  }
  const queue: Promise<ReadableStream<Uint8Array>>[] = [];
  let next = 0;
  const fill = () => {
    while (queue.length < concurrency && next < keys.length) {
      const opened = get(keys[next++]);
      opened.catch(() => {});
      queue.push(opened);
    }
  };
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        if (!reader) {
          fill();
          const opened = queue.shift();
          if (!opened) {
            controller.enqueue(encoder.encode(`--${boundary}--\r\n`));
            return controller.close();
          }
          reader = (await opened).getReader();
          controller.enqueue(encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`));
        }
        const { value, done } = await reader.read();
        if (!done) return controller.enqueue(value);
        reader = undefined;
        controller.enqueue(encoder.encode("\r\n"));
      }
    },
  }, { highWaterMark: 0 });
  return new Response(body, { headers: { "content-type": `multipart/related; boundary=${boundary}` } });
});
