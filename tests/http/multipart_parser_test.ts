import assert from "node:assert/strict";
import { multipartStream, type Part, randomBoundary } from "../../lib/http/multipart.ts";
import {
  type MultipartPart,
  parseMediaType,
  readMultipart,
  type ReadMultipartOptions,
} from "../../lib/http/multipart_parser.ts";
import { parseMultipart, readAll } from "../_multipart_parser.ts";
import { concatBytes } from "../../lib/util/bytes.ts";

const encoder = new TextEncoder();

/** A stream that delivers `bytes` in chunks of the given sizes (cycled), then ends or errors. */
function chunked(bytes: Uint8Array, sizes: number[], end?: Error): ReadableStream<Uint8Array> {
  let at = 0;
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) {
        if (end) controller.error(end);
        else controller.close();
        return;
      }
      const size = sizes[i++ % sizes.length];
      controller.enqueue(bytes.slice(at, at + size));
      at += size;
    },
  }, { highWaterMark: 0 });
}

function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

interface Read {
  headers: Record<string, string>;
  body: Uint8Array;
}

async function readParts(
  stream: ReadableStream<Uint8Array>,
  boundary: string,
  options?: ReadMultipartOptions,
): Promise<Read[]> {
  const out: Read[] = [];
  for await (const part of readMultipart(stream, boundary, options)) {
    out.push({ headers: Object.fromEntries(part.headers), body: await readAll(part.body) });
  }
  return out;
}

/** Bodies that contain near-misses of the delimiter: CR, CRLF, CRLF-, CRLF--b..., at every position. */
function trickyBodies(boundary: string): Uint8Array[] {
  const d = `\r\n--${boundary}`;
  const near: Uint8Array[] = [];
  for (let k = 1; k < d.length; k++) near.push(encoder.encode(`x${d.slice(0, k)}y`));
  near.push(encoder.encode(`${d.slice(0, -1)}`)); // ends with a near-delimiter
  near.push(encoder.encode("\r\r\n\r\n-\r\n--"));
  near.push(new Uint8Array(0));
  near.push(encoder.encode(`--${boundary}`)); // the dash-boundary without CRLF is data inside a part
  return near;
}

Deno.test("parseMediaType()", async (t) => {
  await t.step("reads quoted and unquoted parameters alike, names and types lower-cased", () => {
    const a = parseMediaType('Multipart/Related; Type="application/dicom"; boundary="a b;c"');
    assert.deepEqual(a, {
      type: "multipart",
      subtype: "related",
      params: { type: "application/dicom", boundary: "a b;c" },
    });
    const b = parseMediaType("multipart/related;type=application/dicom;boundary=xyz; transfer-syntax=*");
    assert.deepEqual(b.params, { type: "application/dicom", boundary: "xyz", "transfer-syntax": "*" });
  });

  await t.step("unescapes quoted pairs and skips empty parameters", () => {
    assert.deepEqual(parseMediaType('a/b;; x="q\\"uote"; ').params, { x: 'q"uote' });
  });

  await t.step("throws a SyntaxError for malformed values", () => {
    for (
      const bad of [
        "",
        "multipart",
        "multipart/",
        "/related",
        "a/b; =x",
        "a/b; x",
        'a/b; x="open',
        'a/b; x="v" junk',
      ]
    ) {
      assert.throws(() => parseMediaType(bad), SyntaxError, bad);
    }
  });
});

Deno.test("readMultipart()", async (t) => {
  await t.step(
    "reads what lib/http/multipart.ts writes, at every chunking, like the test parser",
    async () => {
      const boundary = randomBoundary();
      const parts: Part[] = trickyBodies(boundary).map((body, i) => ({
        headers: { "Content-Type": "application/dicom", "X-Index": String(i) },
        body,
      }));
      parts.push({ headers: { "Content-Type": "application/dicom" }, body: randomBytes(70_000, 7) });
      const bytes = await readAll(multipartStream(
        (async function* () {
          yield* parts;
        })(),
        boundary,
      ));
      const expected = parseMultipart(bytes, boundary).parts;
      for (const sizes of [[1], [2], [3], [7, 1], [boundary.length + 3], [4096], [65536], [bytes.length]]) {
        const got = await readParts(chunked(bytes, sizes), boundary);
        assert.equal(got.length, expected.length, `chunks ${sizes}`);
        for (const [i, p] of got.entries()) {
          assert.deepEqual(p.body, expected[i].body, `part ${i + 1}, chunks ${sizes}`);
          assert.deepEqual(p.headers, expected[i].headers);
        }
      }
    },
  );

  await t.step(
    "handles a preamble, transport padding, a part without headers, folded headers and an epilogue",
    async () => {
      const text =
        "preamble\r\n--b  \t\r\nContent-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n\r\none" +
        "\r\n--b\r\n\r\ntwo\r\n--b--\r\nepilogue --b\r\n";
      for (const sizes of [[1], [5], [1000]]) {
        const got = await readParts(chunked(encoder.encode(text), sizes), "b");
        assert.equal(got.length, 2);
        assert.equal(new TextDecoder().decode(got[0].body), "one");
        assert.equal(
          got[0].headers["content-type"],
          "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        );
        assert.deepEqual(got[1].headers, {});
        assert.equal(new TextDecoder().decode(got[1].body), "two");
      }
    },
  );

  await t.step("skips a body that is not read or is cancelled half way", async () => {
    const boundary = "sep";
    const bodies = [randomBytes(100_000, 1), randomBytes(100_000, 2), encoder.encode("last")];
    const bytes = concatBytes([
      ...bodies.flatMap((
        b,
      ) => [
        encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
        b,
        encoder.encode("\r\n"),
      ]),
      encoder.encode(`--${boundary}--`),
    ]);
    const seen: string[] = [];
    for await (const part of readMultipart(chunked(bytes, [3000]), boundary)) {
      if (part.index === 1) continue; // never read
      if (part.index === 2) {
        const reader = part.body.getReader();
        await reader.read();
        await reader.cancel();
        continue;
      }
      seen.push(new TextDecoder().decode(await readAll(part.body)));
    }
    assert.deepEqual(seen, ["last"]);
  });

  await t.step("a body without its closing delimiter errors, and so does the iteration", async () => {
    const bytes = encoder.encode("--b\r\n\r\nwhole\r\n--b\r\n\r\ncut sho");
    const iterator = readMultipart(chunked(bytes, [4]), "b");
    const first = await iterator.next();
    assert.equal(new TextDecoder().decode(await readAll((first.value as MultipartPart).body)), "whole");
    const second = await iterator.next();
    await assert.rejects(readAll((second.value as MultipartPart).body), /ends inside part 2/);
    await assert.rejects(iterator.next(), SyntaxError);
  });

  await t.step("an error of the source errors the part being read and the iteration", async () => {
    const gone = new Error("connection reset");
    const bytes = concatBytes([encoder.encode("--b\r\n\r\n"), randomBytes(50_000, 3)]);
    const iterator = readMultipart(chunked(bytes, [1000], gone), "b");
    const part = (await iterator.next()).value as MultipartPart;
    await assert.rejects(readAll(part.body), /connection reset/);
    await assert.rejects(iterator.next(), /connection reset/);
  });

  await t.step(
    "rejects a body whose boundary never occurs, bad headers, oversized headers, a bad boundary",
    async () => {
      await assert.rejects(readParts(chunked(encoder.encode("no parts here"), [3]), "b"), /never occurs/);
      await assert.rejects(
        readParts(chunked(encoder.encode("--b\r\nno colon\r\n\r\nx\r\n--b--"), [3]), "b"),
        /bad header line/,
      );
      const long = encoder.encode(`--b\r\nX: ${"a".repeat(20_000)}\r\n\r\nx\r\n--b--`);
      await assert.rejects(readParts(chunked(long, [1000]), "b"), /exceed/);
    },
  );

  await t.step(
    "allows up to 1024 bytes of transport padding after a boundary, however the bytes arrive",
    async () => {
      // Found by `deno task fuzz` (tests/testdata/fuzz/multipart-seed1440884934-input61865.bin): padding over
      // the limit was refused when it came in pieces but accepted when its CRLF was in the same chunk.
      const body = (spaces: number) => encoder.encode(`--b${" ".repeat(spaces)}\r\n\r\nx\r\n--b--\r\n`);
      for (const sizes of [[1], [100], [5000]]) {
        assert.equal((await readParts(chunked(body(1024), sizes), "b")).length, 1, `chunks of ${sizes}`);
        await assert.rejects(
          readParts(chunked(body(1025), sizes), "b"),
          /too much padding/,
          `chunks of ${sizes}`,
        );
      }
    },
  );

  await t.step(
    "applies maxHeaderBytes however the bytes arrive: a block over it in one chunk is refused too",
    async () => {
      // Found by `deno task fuzz` (tests/testdata/fuzz/multipart-seed7-input2759.bin): a header block over
      // the limit was refused when it came in pieces but read when the whole block was in one chunk.
      const headers = `Content-Type: ${"x/".padEnd(40, "y")}\r\n\r\n`; // the block, its blank line included
      const body = encoder.encode(`--b\r\n${headers}body\r\n--b--\r\n`);
      for (const sizes of [[1], [7], [64], [body.length]]) {
        await assert.rejects(
          readParts(chunked(body, sizes), "b", { maxHeaderBytes: headers.length - 1 }),
          new RegExp(`the headers of part 1 exceed ${headers.length - 1} bytes`),
          `chunks of ${sizes}`,
        );
        const [part] = await readParts(chunked(body, sizes), "b", { maxHeaderBytes: headers.length });
        assert.equal(new TextDecoder().decode(part.body), "body", `chunks of ${sizes}`);
      }
      await assert.rejects(
        readParts(chunked(encoder.encode("--b\r\nX: 1\r\n"), [3]), "b"),
        /inside the headers/,
      );
      await assert.rejects(
        readParts(chunked(encoder.encode("--bjunk\r\n\r\nx\r\n--b--"), [3]), "b"),
        /not followed by CRLF/,
      );
      await assert.rejects(
        readParts(chunked(encoder.encode("x"), [1]), "x".repeat(201)),
        /Invalid multipart boundary/,
      );
      // zero parts is well-formed
      assert.deepEqual(await readParts(chunked(encoder.encode("--b--\r\n"), [2]), "b"), []);
    },
  );

  await t.step("passes a large part through in chunks no bigger than the source's", async () => {
    const boundary = randomBoundary();
    const size = 32 * 1024 * 1024;
    const head = encoder.encode(`--${boundary}\r\n\r\n`);
    const tail = encoder.encode(`\r\n--${boundary}--\r\n`);
    const chunk = randomBytes(64 * 1024, 9);
    let sent = -1;
    const source = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent < 0) controller.enqueue(head);
        else if (sent < size) controller.enqueue(chunk);
        else if (sent === size) controller.enqueue(tail);
        else return controller.close();
        sent = sent < 0 ? 0 : sent + chunk.length;
      },
    }, { highWaterMark: 0 });
    let total = 0;
    let largest = 0;
    for await (const part of readMultipart(source, boundary)) {
      for await (const piece of part.body) {
        total += piece.byteLength;
        largest = Math.max(largest, piece.byteLength);
      }
    }
    assert.equal(total, size);
    assert.ok(largest <= chunk.length + boundary.length + 4, `largest chunk ${largest}`);
  });
});
