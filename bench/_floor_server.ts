/**
 * The runtime's floor for `deno task bench`: the least a Deno server can do to stream a series out of S3 as
 * one multipart response. It knows the keys (no listing), signs each GET with the project's SigV4 signer,
 * sends it over the project's HTTP/1.1 client (kept-alive sockets), keeps `S3_CONCURRENCY` GETs ahead and
 * enqueues each body's chunks as they come, in key order: no File Meta, no read budget, no logging.
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
const keys = (await Deno.readTextFile(env("KEYS_FILE"))).split("\n").filter((k) => k !== "");
const concurrency = Number(env("S3_CONCURRENCY") || 8);
const credentials = { accessKeyId: env("AWS_ACCESS_KEY_ID"), secretAccessKey: env("AWS_SECRET_ACCESS_KEY") };
const client = new Http1Client();
const signer = new SigV4Signer("us-east-1", "s3");
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const encoder = new TextEncoder();

function get(key: string): Promise<ReadableStream<Uint8Array>> {
  const path = `/${bucket}/${key}`;
  const headers = signer.sign(
    { method: "GET", host: endpoint.host, path, payloadHash: EMPTY_SHA256 },
    credentials,
    new Date(),
  );
  return client.stream({ method: "GET", url: new URL(path, endpoint), headers }).then((r) => {
    if (r.status !== 200 || r.body === null) throw new Error(`GET ${key}: ${r.status}`);
    return r.body;
  });
}

Deno.serve({ port: Number(env("PORT")), hostname: "127.0.0.1", onListen() {} }, (request) => {
  if (new URL(request.url).pathname === "/healthz") return new Response("ok");
  const boundary = "floor-boundary";
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
