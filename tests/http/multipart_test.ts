import assert from "node:assert/strict";
import { multipartStream, type Part, randomBoundary } from "../../lib/http/multipart.ts";
import { parseMultipart, readAll } from "../_multipart_parser.ts";

const encoder = new TextEncoder();

async function* from(parts: Part[]): AsyncGenerator<Part> {
  for (const part of parts) yield part;
}

/** A stream that delivers `bytes` in chunks of `size`. */
function chunked(bytes: Uint8Array, size: number): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
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

async function roundTrip(parts: Part[], boundary = randomBoundary(), chunkSize?: number) {
  const bytes = await readAll(multipartStream(from(parts), boundary, { chunkSize }));
  return { bytes, parsed: parseMultipart(bytes, boundary) };
}

Deno.test("randomBoundary()", async (t) => {
  await t.step("is fresh on every call", () => {
    const seen = new Set<string>();
    for (let i = 0; i < 1000; i++) seen.add(randomBoundary());
    assert.equal(seen.size, 1000);
  });

  await t.step("is 1-70 characters from the RFC 2046 bchars set, not ending in a space", () => {
    for (let i = 0; i < 100; i++) {
      const b = randomBoundary();
      assert.ok(b.length >= 1 && b.length <= 70, b);
      assert.match(b, /^[0-9A-Za-z'()+_,\-./:=? ]*[0-9A-Za-z'()+_,\-./:=?]$/);
    }
  });

  await t.step("can be used unquoted in a Content-Type parameter (token characters only)", () => {
    assert.match(randomBoundary(), /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/);
  });
});

Deno.test("multipartStream()", async (t) => {
  await t.step("writes parts that an independent RFC 2046 parser reads back byte-exact", async () => {
    const bodies = [
      encoder.encode("hello"),
      encoder.encode("--not-a-boundary\r\n--\r\n\r\n--"),
      encoder.encode("\r\n\r\n"),
      encoder.encode("--"),
      randomBytes(10_000, 7),
      new Uint8Array([0x0d]),
      new Uint8Array([0x0a, 0x2d, 0x2d]),
    ];
    const { bytes, parsed } = await roundTrip(bodies.map((body, i) => ({
      headers: { "Content-Type": "application/dicom", "Content-ID": `<${i}>` },
      body,
    })));
    assert.equal(parsed.preamble.length, 0, "no preamble");
    assert.equal(parsed.epilogue.length, 0, "no epilogue");
    assert.equal(parsed.parts.length, bodies.length);
    parsed.parts.forEach((part, i) => {
      assert.deepEqual(part.body, bodies[i], `part ${i}`);
      assert.equal(part.headers["content-type"], "application/dicom");
      assert.equal(part.headers["content-id"], `<${i}>`);
    });
    // The body ends with the close delimiter and a CRLF.
    assert.ok(new TextDecoder().decode(bytes.subarray(-100)).endsWith("--\r\n"));
  });

  await t.step("writes headers as given, in order, and nothing else", async () => {
    const boundary = "b";
    const text = await new Response(multipartStream(
      from([
        {
          headers: { "Content-Type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "X-A": "1" },
          body: encoder.encode("AB"),
        },
      ]),
      boundary,
    )).text();
    assert.equal(
      text,
      "--b\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\nX-A: 1\r\n\r\nAB\r\n--b--\r\n",
    );
  });

  await t.step("keeps empty bodies (Uint8Array and stream) as empty parts", async () => {
    const empty = new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    const { parsed } = await roundTrip([
      { headers: { "X-N": "1" }, body: new Uint8Array(0) },
      { headers: { "X-N": "2" }, body: empty },
      { headers: { "X-N": "3" }, body: encoder.encode("x") },
    ]);
    assert.deepEqual(parsed.parts.map((p) => p.headers["x-n"]), ["1", "2", "3"]);
    assert.deepEqual(parsed.parts.map((p) => p.body.length), [0, 0, 1]);
  });

  await t.step("keeps a part whose stream yields empty chunks", async () => {
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new Uint8Array(0));
        c.enqueue(encoder.encode("ab"));
        c.enqueue(new Uint8Array(0));
        c.close();
      },
    });
    const { parsed } = await roundTrip([{ headers: {}, body: stream }]);
    assert.equal(parsed.parts.length, 1);
    assert.deepEqual(parsed.parts[0].body, encoder.encode("ab"));
  });

  await t.step("writes only the close delimiter for zero parts", async () => {
    const text = await new Response(multipartStream(from([]), "zzz")).text();
    assert.equal(text, "--zzz--\r\n");
    assert.equal(parseMultipart(encoder.encode(text), "zzz").parts.length, 0);
  });

  await t.step("streams many parts in order", async () => {
    const parts: Part[] = [];
    for (let i = 0; i < 300; i++) {
      const body = randomBytes(i * 13, i + 1);
      parts.push({ headers: { "Content-Location": `/p/${i}` }, body: i % 2 ? chunked(body, 97) : body });
    }
    const expected = Array.from({ length: 300 }, (_, i) => randomBytes(i * 13, i + 1));
    for (const chunkSize of [undefined, 1, 1000]) {
      const fresh = parts.map((p, i) => ({ ...p, body: i % 2 ? chunked(expected[i], 97) : expected[i] }));
      const { parsed } = await roundTrip(fresh, randomBoundary(), chunkSize);
      assert.equal(parsed.parts.length, 300);
      parsed.parts.forEach((p, i) => {
        assert.equal(p.headers["content-location"], `/p/${i}`);
        assert.deepEqual(p.body, expected[i], `part ${i} with chunkSize ${chunkSize}`);
      });
    }
  });

  await t.step("passes large stream chunks through byte-exact", async () => {
    const big = randomBytes(3 * 1024 * 1024 + 5, 99);
    const { parsed } = await roundTrip([{ headers: { "X": "y" }, body: chunked(big, 700_000) }]);
    assert.deepEqual(parsed.parts[0].body, big);
  });

  await t.step("uses the boundary it is given, repeated in every delimiter", async () => {
    const boundary = randomBoundary();
    const { bytes } = await roundTrip([
      { headers: {}, body: encoder.encode("a") },
      { headers: {}, body: encoder.encode("b") },
    ], boundary);
    const text = new TextDecoder().decode(bytes);
    assert.equal(text.split(`--${boundary}`).length - 1, 3);
  });

  await t.step("reads a part body only as the consumer pulls (backpressure)", async () => {
    let pulls = 0;
    const endless = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulls++;
        controller.enqueue(new Uint8Array(64 * 1024));
      },
    }, { highWaterMark: 0 });
    const stream = multipartStream(from([{ headers: {}, body: endless }]), "b", { chunkSize: 128 * 1024 });
    const reader = stream.getReader();
    await reader.read();
    await reader.read();
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(pulls <= 6, `pulled ${pulls} chunks for two reads`);
    await reader.cancel();
  });

  await t.step(
    "errors the whole stream when a part body errors (never a well-formed short body)",
    async () => {
      let finalized = false;
      async function* parts(): AsyncGenerator<Part> {
        try {
          yield { headers: {}, body: encoder.encode("first") };
          yield {
            headers: {},
            body: new ReadableStream({
              start(c) {
                c.enqueue(encoder.encode("partial"));
              },
              pull(c) {
                c.error(new Error("disk on fire"));
              },
            }),
          };
          yield { headers: {}, body: encoder.encode("never") };
        } finally {
          finalized = true;
        }
      }
      await assert.rejects(readAll(multipartStream(parts(), "b")), /disk on fire/);
      assert.equal(finalized, true, "the part source is closed");
    },
  );

  await t.step("errors the whole stream when the part source throws", async () => {
    async function* parts(): AsyncGenerator<Part> {
      yield { headers: {}, body: encoder.encode("first") };
      throw new Error("listing failed");
    }
    const onCancel: unknown[] = [];
    await assert.rejects(
      readAll(multipartStream(parts(), "b", { onCancel: (r) => onCancel.push(r) })),
      /listing failed/,
    );
    assert.equal(onCancel.length, 1, "upstream reads are aborted once");
  });

  await t.step("cancel() calls onCancel and cancels the part reader and the source", async () => {
    const cancelled: unknown[] = [];
    let finalized = false;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        c.enqueue(new Uint8Array(1024));
      },
      cancel(reason) {
        cancelled.push(reason);
      },
    }, { highWaterMark: 0 });
    async function* parts(): AsyncGenerator<Part> {
      try {
        yield { headers: {}, body };
        yield { headers: {}, body: encoder.encode("never") };
      } finally {
        finalized = true;
      }
    }
    const onCancel: unknown[] = [];
    const stream = multipartStream(parts(), "b", { onCancel: (r) => onCancel.push(r) });
    const reader = stream.getReader();
    await reader.read();
    await reader.read();
    await reader.cancel("client gone");
    assert.deepEqual(onCancel, ["client gone"]);
    assert.deepEqual(cancelled, ["client gone"]);
    assert.equal(finalized, true);
  });

  await t.step("cancel() while a part read is pending calls onCancel exactly once", async () => {
    let release: (() => void) | undefined;
    const sourceCancelled: unknown[] = [];
    const slow = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(encoder.encode("x"));
      },
      pull() {
        // Never delivers: the read stays pending until cancelled.
        return new Promise<void>((resolve) => release = resolve);
      },
      cancel(reason) {
        sourceCancelled.push(reason);
        release?.();
      },
    });
    const onCancel: unknown[] = [];
    const stream = multipartStream(from([{ headers: {}, body: slow }]), "b", {
      onCancel: (r) => onCancel.push(r),
    });
    const reader = stream.getReader();
    await reader.read(); // head + "x"
    const pending = reader.read(); // waits on the slow body
    await new Promise((r) => setTimeout(r, 10));
    await reader.cancel("client gone");
    const result = await pending;
    assert.equal(result.done, true);
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(sourceCancelled, ["client gone"]);
    assert.deepEqual(onCancel, ["client gone"], "onCancel is documented as called once");
  });

  await t.step(
    "cancel() while the next part is still being opened returns at once and calls onCancel once",
    async () => {
      let opened: (() => void) | undefined;
      let finalized = false;
      async function* parts(): AsyncGenerator<Part> {
        try {
          yield { headers: {}, body: encoder.encode("first") };
          // the next object is slow to open (e.g. a store that does not answer)
          await new Promise<void>((resolve) => opened = resolve);
          yield { headers: {}, body: encoder.encode("second") };
        } finally {
          finalized = true;
        }
      }
      const onCancel: unknown[] = [];
      const stream = multipartStream(parts(), "b", { onCancel: (r) => onCancel.push(r) });
      const reader = stream.getReader();
      let text = "";
      while (!text.includes("first")) text += new TextDecoder().decode((await reader.read()).value);
      const pending = reader.read(); // waits for the second part
      while (opened === undefined) await new Promise((r) => setTimeout(r, 1));
      const cancelled = await Promise.race([
        reader.cancel("client gone").then(() => true),
        new Promise((r) => setTimeout(() => r(false), 1000)),
      ]);
      assert.equal(cancelled, true, "cancel() does not wait for the pending open");
      assert.equal((await pending).done, true);
      assert.deepEqual(onCancel, ["client gone"]);
      opened(); // the open completes late: the source is then closed, nothing more is written
      await new Promise((r) => setTimeout(r, 10));
      assert.equal(finalized, true);
    },
  );

  await t.step(
    "the first chunk goes out before the first part body is complete (fast first byte)",
    async () => {
      let secondChunk: (() => void) | undefined;
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(encoder.encode("head"));
        },
        pull(c) {
          return new Promise<void>((resolve) => {
            secondChunk = () => {
              c.enqueue(encoder.encode("tail"));
              c.close();
              resolve();
            };
          });
        },
      });
      const reader = multipartStream(from([{ headers: {}, body }]), "b").getReader();
      // The first read resolves while the body is still open (its pull is blocked).
      const first = await reader.read();
      assert.equal(first.done, false);
      assert.match(new TextDecoder().decode(first.value!), /^--b\r\n/);
      const rest: Uint8Array[] = [first.value!];
      const reading = (async () => {
        while (true) {
          const { value, done } = await reader.read();
          if (done) break;
          rest.push(value);
        }
      })();
      while (secondChunk === undefined) await new Promise((r) => setTimeout(r, 1));
      secondChunk();
      await reading;
      const text = rest.map((c) => new TextDecoder().decode(c)).join("");
      assert.equal(text, "--b\r\n\r\nheadtail\r\n--b--\r\n");
    },
  );
});
