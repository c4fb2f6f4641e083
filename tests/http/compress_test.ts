import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { acceptsGzip, compressible, gzipResponse, keptResponse } from "../../lib/http/compress.ts";

const json = JSON.stringify(
  Array.from({ length: 200 }, (_, i) => ({ "00080018": { vr: "UI", Value: [`1.2.${i}`] } })),
);
const request = (acceptEncoding?: string) =>
  new Request("http://localhost/x", { headers: acceptEncoding ? { "accept-encoding": acceptEncoding } : {} });
/** The head of a GET / answer, read from a raw connection (fetch would undo the gzip). */
async function rawHead(port: number, header: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(
      new TextEncoder().encode(`GET / HTTP/1.1\r\nhost: x\r\n${header}\r\nconnection: close\r\n\r\n`),
    );
    let text = "";
    const buffer = new Uint8Array(65536);
    while (!text.includes("\r\n\r\n")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += new TextDecoder("latin1").decode(buffer.subarray(0, n));
    }
    return text.split("\r\n\r\n")[0].toLowerCase().replaceAll("\r\n", "\n");
  } finally {
    conn.close();
  }
}

const gunzip = async (response: Response) => new TextDecoder().decode(gunzipSync(await response.bytes()));

Deno.test("acceptsGzip() reads Accept-Encoding with its qualities", () => {
  const cases: [string | null, boolean][] = [
    [null, false],
    ["", false],
    ["gzip", true],
    ["gzip, deflate, br, zstd", true], // what browsers send
    ["GZIP;q=0.5", true],
    ["x-gzip", true],
    ["br", false],
    ["gzip;q=0", false],
    ["gzip;q=0.0, br", false],
    ["*", true],
    ["*;q=0", false],
    ["br, *;q=0.1", true],
    ["gzip;q=0, *", false], // gzip named: its own quality counts
    ["identity", false],
  ];
  for (const [header, expected] of cases) assert.equal(acceptsGzip(header), expected, String(header));
});

Deno.test("compressible() takes JSON, XML and text types, not binary or multipart", () => {
  for (
    const type of [
      "application/dicom+json; charset=utf-8",
      "application/json",
      "application/dicom+xml",
      "text/plain; version=0.0.4",
    ]
  ) {
    assert.ok(compressible(type), type);
  }
  for (
    const type of [
      null,
      "application/dicom",
      'multipart/related; type="application/dicom+xml"',
      "image/jpeg",
      "application/octet-stream",
      "text/event-stream",
    ]
  ) {
    assert.ok(!compressible(type), String(type));
  }
});

Deno.test("gzipResponse()", async (t) => {
  const jsonResponse = (body: BodyInit = json, headers: Record<string, string> = {}) =>
    new Response(body, { headers: { "content-type": "application/dicom+json; charset=utf-8", ...headers } });

  const chunks = (...parts: string[]) =>
    new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = parts.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(next));
      },
    });

  await t.step(
    "gzips a JSON answer of one chunk whole; Deno.serve sends it with its Content-Length",
    async () => {
      const response = await gzipResponse(request("gzip, deflate, br"), jsonResponse());
      assert.equal(response.headers.get("content-encoding"), "gzip");
      assert.equal(response.headers.get("vary"), "Accept-Encoding");
      assert.equal(await gunzip(response), json);
      // on the wire: one body of known length, not chunked
      const server = Deno.serve(
        { port: 0, hostname: "127.0.0.1", onListen() {} },
        (r) => gzipResponse(r, jsonResponse()),
      );
      try {
        const head = await rawHead(server.addr.port, "accept-encoding: gzip");
        assert.match(head, /^content-encoding: gzip$/m);
        assert.match(head, /^content-length: \d+$/m);
        assert.doesNotMatch(head, /transfer-encoding/i);
      } finally {
        await server.shutdown();
      }
    },
  );

  await t.step("gzips a body of many chunks as it streams, without a length", async () => {
    const parts = [json.slice(0, 100), json.slice(100, 5000), json.slice(5000)];
    const response = await gzipResponse(request("gzip"), jsonResponse(chunks(...parts)));
    assert.equal(response.headers.get("content-encoding"), "gzip");
    assert.equal(response.headers.get("content-length"), null);
    assert.equal(await gunzip(response), json);
  });

  await t.step(
    "keeps the status: a long 404 is gzipped, a short one sent as it is",
    async () => {
      const type = { "content-type": "application/json" };
      const long = await gzipResponse(request("gzip"), new Response(json, { status: 404, headers: type }));
      assert.equal(long.status, 404);
      assert.equal(await gunzip(long), json);
      const error = '{"error":"x"}';
      const short = await gzipResponse(
        request("gzip"),
        new Response(chunks(error), { status: 404, headers: type }),
      );
      assert.equal(short.status, 404);
      assert.equal(short.headers.get("content-encoding"), null);
      assert.equal(await short.text(), error);
    },
  );

  await t.step("a strong ETag becomes weak on the gzipped body", async () => {
    const response = await gzipResponse(request("gzip"), jsonResponse(json, { etag: '"abc"' }));
    assert.equal(response.headers.get("etag"), 'W/"abc"');
  });

  await t.step("leaves the body alone for a client that does not accept gzip, and says Vary", async () => {
    for (const accept of [undefined, "br", "gzip;q=0"]) {
      const response = await gzipResponse(request(accept), jsonResponse());
      assert.equal(response.headers.get("content-encoding"), null, String(accept));
      assert.equal(response.headers.get("vary"), "Accept-Encoding");
      assert.equal(await response.text(), json);
    }
  });

  await t.step("leaves short text, binary answers and answers already encoded alone", async () => {
    const short = await gzipResponse(request("gzip"), jsonResponse("[]", { "content-length": "2" }));
    assert.equal(short.headers.get("content-encoding"), null);
    assert.equal(await short.text(), "[]");
    const binary = new Response(new Uint8Array(4096), { headers: { "content-type": "application/dicom" } });
    assert.equal(await gzipResponse(request("gzip"), binary), binary);
    const encoded = jsonResponse(json, { "content-encoding": "gzip", vary: "Accept-Encoding" });
    const kept = await gzipResponse(request("gzip"), encoded);
    assert.equal(kept.headers.get("content-encoding"), "gzip");
    assert.equal(kept.headers.get("vary"), "Accept-Encoding", "Vary not said twice");
    assert.equal(await kept.text(), json, "not gzipped twice");
  });

  await t.step(
    "a body that fails fails the gzipped body: the answer is cut off, not ended as complete",
    async () => {
      let sent = false;
      const failing = new ReadableStream<Uint8Array>({
        pull(controller) {
          if (!sent) {
            sent = true;
            return controller.enqueue(new TextEncoder().encode(json));
          }
          controller.error(new Error("the store went away"));
        },
      });
      const response = await gzipResponse(request("gzip"), jsonResponse(failing));
      await assert.rejects(response.bytes());
      const early = new ReadableStream<Uint8Array>({
        pull: (controller) => controller.error(new Error("gone")),
      });
      await assert.rejects((await gzipResponse(request("gzip"), jsonResponse(early))).bytes());
    },
  );
});

Deno.test("keptResponse() gzips kept bytes once for clients that accept it", async () => {
  const bytes = new TextEncoder().encode(json);
  const plain = await keptResponse(
    request(),
    bytes,
    new Headers({ "content-type": "application/dicom+json" }),
  );
  assert.equal(plain.headers.get("content-encoding"), null);
  assert.equal(plain.headers.get("content-length"), String(bytes.byteLength));
  assert.equal(plain.headers.get("vary"), "Accept-Encoding");
  assert.equal(await plain.text(), json);
  const zipped = await keptResponse(
    request("gzip"),
    bytes,
    new Headers({ "content-type": "application/dicom+json" }),
  );
  assert.equal(zipped.headers.get("content-encoding"), "gzip");
  const body = await zipped.bytes();
  assert.equal(zipped.headers.get("content-length"), String(body.byteLength));
  assert.ok(body.byteLength < bytes.byteLength / 4, `${body.byteLength} of ${bytes.byteLength} bytes`);
  assert.equal(new TextDecoder().decode(gunzipSync(body)), json);
  const again = await (await keptResponse(request("gzip"), bytes, new Headers())).bytes();
  assert.deepEqual(again, body, "the same gzip again");
});
