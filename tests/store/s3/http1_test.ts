import assert from "node:assert/strict";
import { skipFor } from "../../_skip.ts";
import { createHash } from "node:crypto";
import { Http1Client } from "../../../lib/store/s3/http1.ts";
import { eventually } from "../../_stores.ts";
import { makeTestCertificates } from "../../_tls.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A request as a raw test server saw it. */
interface Seen {
  connection: number;
  head: string;
  body: Uint8Array;
}

/**
 * An HTTP/1.1 server on a raw socket, so the tests decide exactly what goes back: `answer` gets each request
 * and returns the text to write (then, with `thenClose`, closes the connection), `"close"` (close without
 * answering) or `"hang"` (never answer).
 */
type Reply = string | "close" | "hang" | { reply: string; thenClose: true };

function rawServer(answer: (seen: Seen, index: number) => Reply) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const seen: Seen[] = [];
  const conns = new Set<Deno.Conn>();
  let connections = 0;
  const serve = async (conn: Deno.Conn, connection: number) => {
    let buf = new Uint8Array(0);
    const more = async () => {
      const chunk = new Uint8Array(64 * 1024);
      const n = await conn.read(chunk);
      if (n === null) return false;
      const joined = new Uint8Array(buf.length + n);
      joined.set(buf);
      joined.set(chunk.subarray(0, n), buf.length);
      buf = joined;
      return true;
    };
    try {
      for (;;) {
        let end: number;
        while ((end = decoder.decode(buf).indexOf("\r\n\r\n")) < 0) if (!(await more())) return;
        const head = decoder.decode(buf.subarray(0, end));
        const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
        while (buf.length < end + 4 + length) if (!(await more())) return;
        const request = { connection, head, body: buf.slice(end + 4, end + 4 + length) };
        buf = buf.slice(end + 4 + length);
        seen.push(request);
        const reply = answer(request, seen.length - 1);
        if (reply === "hang") return await new Promise(() => {});
        if (reply === "close") return conn.close();
        const bytes = encoder.encode(typeof reply === "string" ? reply : reply.reply);
        for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
        if (typeof reply !== "string") return conn.close();
      }
    } catch { /* the client went away */ }
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      serve(conn, ++connections).finally(() => conns.delete(conn));
    }
  })();
  return {
    url: `http://127.0.0.1:${listener.addr.port}`,
    seen,
    connections: () => connections,
    /** Connections the client has not closed yet. */
    open: () => conns.size,
    async close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed */ }
      }
      await accepting.catch(() => {});
    },
  };
}

/** Reads up to the end of a request head (the body, if any, stays unread); `false` when the client closed first. */
async function readHead(conn: Deno.Conn): Promise<boolean> {
  const buf = new Uint8Array(65536);
  let text = "";
  while (!text.includes("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) return false;
    text += decoder.decode(buf.subarray(0, n));
  }
  return true;
}

const OK = 'HTTP/1.1 200 OK\r\netag: "abc"\r\ncontent-length: 0\r\n\r\n';

function md5(bytes: Uint8Array): string {
  return createHash("md5").update(bytes).digest("hex");
}

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65536)));
  return out;
}

Deno.test("Http1Client sends whole bodies over kept-alive connections", async (t) => {
  await t.step(
    "bodies arrive byte-exact with the headers given; one connection serves them in turn",
    async () => {
      const server = rawServer(() => OK);
      const client = new Http1Client();
      try {
        const bodies = [randomBytes(600_000), new Uint8Array(0), randomBytes(1)];
        for (const body of bodies) {
          const response = await client.request({
            method: "PUT",
            url: new URL(`${server.url}/bucket/a%20b/c.dcm?x=1`),
            headers: { "x-amz-content-sha256": "abc", "content-type": "application/dicom" },
            body,
          });
          assert.equal(response.status, 200);
          assert.equal(response.headers.get("etag"), '"abc"');
          assert.equal(response.body.byteLength, 0);
        }
        assert.equal(server.seen.length, 3);
        assert.equal(server.connections(), 1);
        server.seen.forEach((seen, i) => {
          assert.equal(md5(seen.body), md5(bodies[i]));
          assert.match(seen.head, /^PUT \/bucket\/a%20b\/c\.dcm\?x=1 HTTP\/1\.1\r\n/);
          assert.match(seen.head, new RegExp(`\r\nhost: 127\\.0\\.0\\.1:\\d+\r\n`));
          assert.match(seen.head, /\r\nx-amz-content-sha256: abc\r\n/);
          assert.match(seen.head, new RegExp(`\r\ncontent-length: ${bodies[i].byteLength}(\r\n|$)`));
        });
      } finally {
        client.close();
        await server.close();
      }
    },
  );

  await t.step("requests at once take connections of their own, each body intact", async () => {
    const server = rawServer(() => OK);
    const client = new Http1Client();
    try {
      const bodies = Array.from({ length: 8 }, () => randomBytes(300_000));
      await Promise.all(
        bodies.map((body, i) =>
          client.request({ method: "PUT", url: new URL(`${server.url}/b/${i}`), headers: {}, body })
        ),
      );
      assert.equal(server.seen.length, 8);
      for (const seen of server.seen) {
        const i = Number(/^PUT \/b\/(\d+)/.exec(seen.head)![1]);
        assert.equal(md5(seen.body), md5(bodies[i]));
      }
      assert.equal(server.connections(), 8);
      // and they are reused afterwards
      await client.request({
        method: "PUT",
        url: new URL(`${server.url}/b/9`),
        headers: {},
        body: bodies[0],
      });
      assert.equal(server.connections(), 8);
    } finally {
      client.close();
      await server.close();
    }
  });

  await t.step("answers: error bodies by length, chunked, up to the end, after 100 Continue", async () => {
    const xml = "<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>";
    const answers = [
      `HTTP/1.1 503 Slow Down\r\ncontent-type: application/xml\r\ncontent-length: ${xml.length}\r\n\r\n${xml}`,
      `HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n5\r\n<Erro\r\n${
        (xml.length - 5).toString(16)
      }\r\n${xml.slice(5)}\r\n0\r\nx-trailer: 1\r\n\r\n`,
      "HTTP/1.1 100 Continue\r\n\r\n" + OK,
      `HTTP/1.0 500 Internal\r\n\r\n${xml}`,
      OK,
    ];
    const server = rawServer((_, i) => i === 3 ? { reply: answers[i], thenClose: true } : answers[i]);
    const client = new Http1Client();
    try {
      const send = () =>
        client.request({
          method: "PUT",
          url: new URL(`${server.url}/k`),
          headers: {},
          body: randomBytes(10),
        });
      let response = await send();
      assert.equal(response.status, 503);
      assert.equal(decoder.decode(response.body), xml);
      response = await send();
      assert.equal(response.status, 400);
      assert.equal(decoder.decode(response.body), xml);
      response = await send();
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("etag"), '"abc"');
      assert.equal(server.connections(), 1);
      // HTTP/1.0 without a length: the body runs to the end of the connection, which is not reused
      response = await send();
      assert.equal(response.status, 500);
      assert.equal(decoder.decode(response.body), xml);
      // the next request goes on a new connection
      assert.equal((await send()).status, 200);
      assert.equal(server.connections(), 2);
    } finally {
      client.close();
      await server.close();
    }
  });

  await t.step(
    "a kept-alive connection the server closed meanwhile is replaced without an error",
    async () => {
      // each connection is closed after its first answer, as by a server whose idle timeout passed
      const server = rawServer(() => ({ reply: OK, thenClose: true }));
      const client = new Http1Client();
      try {
        const bodies = [randomBytes(100), randomBytes(200_000), randomBytes(300)];
        for (const [i, body] of bodies.entries()) {
          if (i > 0) await new Promise((r) => setTimeout(r, 20)); // the close has reached the client
          const response = await client.request({
            method: "PUT",
            url: new URL(`${server.url}/k${i}`),
            headers: {},
            body,
          });
          assert.equal(response.status, 200);
        }
        assert.equal(server.connections(), 3);
        assert.deepEqual(server.seen.map((seen) => md5(seen.body)), bodies.map(md5));
      } finally {
        client.close();
        await server.close();
      }
    },
  );

  await t.step(
    "an answer sent before the body was read (403) is the answer, not a network error",
    async () => {
      // the server answers once it has the head, stops reading, and closes
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const serving = (async () => {
        const conn = await listener.accept();
        await readHead(conn);
        const xml = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        await conn.write(
          encoder.encode(`HTTP/1.1 403 Forbidden\r\ncontent-length: ${xml.length}\r\n\r\n${xml}`),
        );
        await new Promise((r) => setTimeout(r, 100));
        // closed with the body unread: the client's write fails (reset) after the answer arrived
        conn.close();
      })();
      const client = new Http1Client();
      try {
        const response = await client.request({
          method: "PUT",
          url: new URL(`http://127.0.0.1:${listener.addr.port}/k`),
          headers: {},
          body: randomBytes(32 * 1024 * 1024),
        });
        assert.equal(response.status, 403);
        assert.match(decoder.decode(response.body), /AccessDenied/);
      } finally {
        client.close();
        await serving;
        listener.close();
      }
    },
  );

  await t.step(
    "idle connections are closed once older than idleMs, and a 408 on one is not an answer",
    async () => {
      const server = rawServer(() => OK);
      const client = new Http1Client({ idleMs: 50 });
      try {
        const send = () =>
          client.request({
            method: "PUT",
            url: new URL(`${server.url}/k`),
            headers: {},
            body: randomBytes(10),
          });
        assert.equal((await send()).status, 200);
        assert.equal(server.open(), 1);
        await eventually(() => server.open() === 0, 2000, "the idle connection to be closed");
      } finally {
        client.close();
        await server.close();
      }
      // a server that says 408 on the idle connection, then closes it
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      let accepted = 0;
      const serving = (async () => {
        for await (const conn of listener) {
          accepted++;
          (async () => {
            if (!(await readHead(conn))) return;
            await conn.write(encoder.encode(OK));
            await new Promise((r) => setTimeout(r, 20));
            await conn.write(
              encoder.encode(
                "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
              ),
            );
          })().catch(() => {});
        }
      })();
      const patient = new Http1Client({ idleMs: 60_000 });
      try {
        const url = new URL(`http://127.0.0.1:${listener.addr.port}/k`);
        assert.equal(
          (await patient.request({ method: "PUT", url, headers: {}, body: randomBytes(10) })).status,
          200,
        );
        await new Promise((r) => setTimeout(r, 60)); // the 408 is waiting on the pooled connection
        assert.equal(
          (await patient.request({ method: "PUT", url, headers: {}, body: randomBytes(10) })).status,
          200,
        );
        assert.equal(accepted, 2);
      } finally {
        patient.close();
        listener.close();
        await serving.catch(() => {});
      }
    },
  );

  await t.step("an aborted request closes its connection and rejects with the reason", async () => {
    const server = rawServer(() => "hang");
    const client = new Http1Client();
    try {
      const abort = new AbortController();
      const sending = client.request({
        method: "PUT",
        url: new URL(`${server.url}/k`),
        headers: {},
        body: randomBytes(1000),
        signal: abort.signal,
      });
      // abort once the server has the request (a fixed wait lost the race on a loaded machine)
      for (let i = 0; i < 500 && server.seen.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      const reason = new DOMException("No answer within 50 ms", "TimeoutError");
      abort.abort(reason);
      await assert.rejects(sending, (error) => error === reason);
      assert.equal(server.seen.length, 1);
    } finally {
      client.close();
      await server.close();
    }
  });

  await t.step("https: the body goes through TLS to a server the CA vouches for, and only then", async () => {
    const dir = await Deno.makeTempDir({ prefix: "http1-tls-" });
    try {
      if (!(await makeTestCertificates(dir))) {
        skipFor(t.name, "openssl", "apt-get install openssl");
        return;
      }
      const seen: string[] = [];
      const server = Deno.serve({
        port: 0,
        hostname: "127.0.0.1",
        cert: await Deno.readTextFile(`${dir}/cert.pem`),
        key: await Deno.readTextFile(`${dir}/key.pem`),
        onListen() {},
      }, async (request) => {
        seen.push(md5(new Uint8Array(await request.arrayBuffer())));
        return new Response(null, { headers: { etag: '"tls"' } });
      });
      const client = new Http1Client({ caCerts: [await Deno.readTextFile(`${dir}/ca.pem`)] });
      try {
        const body = randomBytes(700_000);
        const url = new URL(`https://localhost:${server.addr.port}/b/k`);
        for (let i = 0; i < 2; i++) {
          const response = await client.request({ method: "PUT", url, headers: {}, body });
          assert.equal(response.status, 200);
          assert.equal(response.headers.get("etag"), '"tls"');
        }
        assert.deepEqual(seen, [md5(body), md5(body)]);
        const untrusting = new Http1Client();
        await assert.rejects(
          untrusting.request({ method: "PUT", url, headers: {}, body: randomBytes(10) }),
          TypeError,
          "a certificate from an unknown CA is refused",
        );
        untrusting.close();
      } finally {
        client.close();
        await server.shutdown();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  await t.step("an abort while the connection is still being made rejects at once", async () => {
    // a host that drops the SYN: the connect stays pending (for minutes, with a real one)
    let late: ((conn: Deno.Conn) => void) | undefined;
    const client = new Http1Client({ connect: () => new Promise((resolve) => late = resolve) });
    const abort = new AbortController();
    const sending = client.request({
      method: "PUT",
      url: new URL("http://192.0.2.1/k"),
      headers: {},
      body: randomBytes(10),
      signal: abort.signal,
    });
    const reason = new DOMException("No answer within 60000 ms", "TimeoutError");
    setTimeout(() => abort.abort(reason), 20);
    await assert.rejects(sending, (error) => error === reason);
    // a connection that comes after all is closed, not pooled
    const server = rawServer(() => OK);
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(server.url).port) });
      late!(conn);
      await new Promise((r) => setTimeout(r, 10));
      await assert.rejects(conn.write(new Uint8Array(1)), Deno.errors.BadResource);
    } finally {
      client.close();
      await server.close();
    }
  });

  await t.step(
    "a head that arrives a few bytes at a time is read whole; a bare CR or 64 KiB of head is refused",
    async () => {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const replies = [
        'HTTP/1.1 200 OK\r\nx-a: 1\r\netag: "e"\r\ncontent-length: 5\r\n\r\nhello',
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx-a: 1\rx-b: 2\r\ncontent-length: 0\r\n\r\n",
        `HTTP/1.1 200 OK\r\nx-big: ${"a".repeat(70 * 1024)}\r\ncontent-length: 0\r\n\r\n`,
      ];
      const serving = (async () => {
        let i = 0;
        for await (const conn of listener) {
          const reply = encoder.encode(replies[i++]);
          (async () => {
            try {
              await readHead(conn);
              // in pieces of 1 to 7 bytes, each written on its own
              for (let at = 0, n = 1; at < reply.length && at < 200; at += n, n = n % 7 + 1) {
                await conn.write(reply.subarray(at, Math.min(at + n, 200)));
                await new Promise((r) => setTimeout(r, 1));
              }
              if (reply.length > 200) await conn.write(reply.subarray(200));
            } catch { /* the client went away */ }
            conn.close();
          })();
        }
      })();
      const client = new Http1Client();
      try {
        const url = new URL(`http://127.0.0.1:${listener.addr.port}/k`);
        const first = await client.request({ method: "GET", url, headers: {} });
        assert.equal(first.status, 200);
        assert.equal(first.headers.get("x-a"), "1");
        assert.equal(first.headers.get("etag"), '"e"');
        assert.equal(decoder.decode(first.body), "hello");
        assert.equal((await client.request({ method: "GET", url, headers: {} })).status, 204);
        await assert.rejects(client.request({ method: "GET", url, headers: {} }), /bare CR/);
        await assert.rejects(client.request({ method: "GET", url, headers: {} }), /exceeds 64 KiB/);
      } finally {
        client.close();
        listener.close();
        await serving.catch(() => {});
      }
    },
  );

  await t.step("failures are TypeErrors naming the request, as fetch's are", async () => {
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = probe.addr.port;
    probe.close();
    const client = new Http1Client();
    await assert.rejects(
      client.request({
        method: "PUT",
        url: new URL(`http://127.0.0.1:${port}/k`),
        headers: {},
        body: randomBytes(5),
      }),
      (error) =>
        error instanceof TypeError && error.message.includes(`PUT http://127.0.0.1:${port}/k failed`),
    );
    for (
      const reply of [
        "close",
        "SSH-2.0-OpenSSH\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
      ]
    ) {
      const server = rawServer(() => reply === "close" ? "close" : { reply, thenClose: true });
      try {
        await assert.rejects(
          client.request({
            method: "PUT",
            url: new URL(`${server.url}/k`),
            headers: {},
            body: randomBytes(5),
          }),
          (error) => error instanceof TypeError,
        );
      } finally {
        await server.close();
      }
    }
    client.close();
  });
});

/** `n` random ASCII letters (the raw test server writes text). */
function randomText(n: number): string {
  const bytes = randomBytes(n);
  let out = "";
  for (let i = 0; i < n; i += 8192) {
    out += String.fromCharCode(...bytes.subarray(i, i + 8192).map((b) => 97 + (b % 26)));
  }
  return out;
}

/** The body as text, its MD5 and length in a short string (so a failed comparison prints little). */
async function readAll(body: ReadableStream<Uint8Array> | null): Promise<string> {
  const text = body === null ? "" : await new Response(body).text();
  return `${text.length} bytes, md5 ${md5(encoder.encode(text))}`;
}

function summary(text: string): string {
  return `${text.length} bytes, md5 ${md5(encoder.encode(text))}`;
}

Deno.test("Http1Client streams answers", async (t) => {
  await t.step(
    "a body by length, chunked or up to the end streams byte-exact; the connection is reused",
    async () => {
      const big = randomText(700_000);
      const answers = [
        `HTTP/1.1 200 OK\r\ncontent-length: ${big.length}\r\netag: "e1"\r\n\r\n${big}`,
        `HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n${big.slice(0, 3)}\r\n${
          (big.length - 3).toString(16)
        }\r\n${big.slice(3)}\r\n0\r\n\r\n`,
        "HTTP/1.1 204 No Content\r\n\r\n",
        `HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n`,
        `HTTP/1.0 200 OK\r\n\r\n${big}`,
      ];
      const server = rawServer((_, i) => i >= 4 ? { reply: answers[4], thenClose: true } : answers[i]);
      const client = new Http1Client();
      try {
        const get = () =>
          client.stream({ method: "GET", url: new URL(`${server.url}/b/k`), headers: { a: "1" } });
        let response = await get();
        assert.equal(response.status, 200);
        assert.equal(response.headers.get("etag"), '"e1"');
        assert.equal(await readAll(response.body), summary(big));
        assert.equal(await readAll((await get()).body), summary(big));
        response = await get();
        assert.equal(response.status, 204);
        assert.equal(response.body, null);
        assert.equal((await get()).body, null);
        assert.equal(server.connections(), 1);
        // no length: the body runs to the end of the connection, which is not reused
        assert.equal(await readAll((await get()).body), summary(big));
        assert.equal(await readAll((await get()).body), summary(big));
        assert.equal(server.connections(), 2);
        // a GET carries no body and no Content-Length
        assert.doesNotMatch(server.seen[0].head, /content-length/i);
        assert.match(server.seen[0].head, /^GET \/b\/k HTTP\/1\.1\r\nhost: [^\r]+\r\na: 1$/);
      } finally {
        client.close();
        await server.close();
      }
    },
  );

  await t.step("a BYOB reader gets the bytes read into its own buffer", async () => {
    const text = randomText(300_000);
    const server = rawServer(() => `HTTP/1.1 200 OK\r\ncontent-length: ${text.length}\r\n\r\n${text}`);
    const client = new Http1Client();
    try {
      const response = await client.stream({ method: "GET", url: new URL(`${server.url}/k`), headers: {} });
      const reader = response.body!.getReader({ mode: "byob" });
      let buffer = new Uint8Array(text.length);
      let filled = 0;
      while (filled < buffer.byteLength) {
        const { value, done } = await reader.read(buffer.subarray(filled));
        assert.equal(done, false);
        assert.equal(value!.byteOffset, filled); // in place: the view handed back is of the same memory
        filled += value!.byteLength;
        buffer = new Uint8Array(value!.buffer);
      }
      assert.equal((await reader.read(new Uint8Array(16))).done, true);
      assert.equal(decoder.decode(buffer), text);
    } finally {
      client.close();
      await server.close();
    }
  });

  await t.step(
    "a default reader of a short body gets buffers the size of the body, not of a whole chunk",
    async () => {
      // a header's ranged GET is a few KiB: a fresh 256 KiB buffer per answer cost more than the request itself
      const text = randomText(3_000);
      const server = rawServer(() =>
        `HTTP/1.1 206 Partial Content\r\ncontent-length: ${text.length}\r\n\r\n${text}`
      );
      const client = new Http1Client();
      try {
        const response = await client.stream({ method: "GET", url: new URL(`${server.url}/k`), headers: {} });
        const reader = response.body!.getReader();
        let read = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          assert.ok(value.buffer.byteLength <= text.length, `a ${value.buffer.byteLength}-byte buffer`);
          read += decoder.decode(value);
        }
        assert.equal(read, text);
      } finally {
        client.close();
        await server.close();
      }
    },
  );

  await t.step("cancelling a body, or aborting its request, closes the connection", async () => {
    const text = randomText(4_000_000);
    const server = rawServer(() => `HTTP/1.1 200 OK\r\ncontent-length: ${text.length}\r\n\r\n${text}`);
    const client = new Http1Client();
    try {
      const url = new URL(`${server.url}/k`);
      let response = await client.stream({ method: "GET", url, headers: {} });
      let reader = response.body!.getReader();
      await reader.read();
      await reader.cancel();
      await eventually(() => server.open() === 0);
      const abort = new AbortController();
      response = await client.stream({ method: "GET", url, headers: {}, signal: abort.signal });
      reader = response.body!.getReader();
      await reader.read();
      abort.abort(new Error("stop"));
      await assert.rejects(
        (async () => {
          while (!(await reader.read()).done) { /* the rest, until the abort errors it */ }
        })(),
        /stop/,
      );
      await eventually(() => server.open() === 0);
      // a whole body read afterwards comes on a new connection
      const again = await client.stream({ method: "GET", url, headers: {} });
      assert.equal(await readAll(again.body), summary(text));
      assert.equal(server.connections(), 3);
    } finally {
      client.close();
      await server.close();
    }
  });

  await t.step("a connection that closes inside the body errors the stream", async () => {
    const server = rawServer(() => ({
      reply: "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nshort",
      thenClose: true,
    }));
    const client = new Http1Client();
    try {
      const response = await client.stream({ method: "GET", url: new URL(`${server.url}/k`), headers: {} });
      await assert.rejects(readAll(response.body), /closed inside the body/);
    } finally {
      client.close();
      await server.close();
    }
  });
});
