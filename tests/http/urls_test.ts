import assert from "node:assert/strict";
import { publicBase } from "../../lib/http/urls.ts";

function request(headers: Record<string, string> = {}, url = "http://127.0.0.1:8080/aets"): Request {
  return new Request(url, { headers });
}

const NO_BASE = { basePath: "" };

Deno.test("publicBase()", async (t) => {
  await t.step("uses the request URL when there are no headers", () => {
    assert.equal(publicBase(request(), NO_BASE), "http://127.0.0.1:8080");
    assert.equal(publicBase(request({}, "https://pacs.example.org/x"), NO_BASE), "https://pacs.example.org");
  });

  await t.step("appends the base path", () => {
    assert.equal(publicBase(request(), { basePath: "/dicomweb" }), "http://127.0.0.1:8080/dicomweb");
  });

  await t.step("PUBLIC_URL wins over every header", () => {
    const req = request({
      host: "internal:8080",
      forwarded: "proto=https;host=proxy.example.org",
      "x-forwarded-host": "other.example.org",
      "x-forwarded-proto": "https",
    });
    assert.equal(
      publicBase(req, { publicUrl: "https://pacs.example.org/dicomweb", basePath: "/dicomweb" }),
      "https://pacs.example.org/dicomweb",
    );
  });

  await t.step("Host keeps its port", () => {
    assert.equal(publicBase(request({ host: "pacs.local:9000" }), NO_BASE), "http://pacs.local:9000");
    assert.equal(publicBase(request({ host: "pacs.local" }), NO_BASE), "http://pacs.local");
    assert.equal(publicBase(request({ host: "[::1]:8080" }), NO_BASE), "http://[::1]:8080");
  });

  await t.step("reads proto and host from Forwarded (quoted or not, first element only)", () => {
    assert.equal(
      publicBase(request({ forwarded: "for=192.0.2.60;proto=https;host=pacs.example.org" }), NO_BASE),
      "https://pacs.example.org",
    );
    assert.equal(
      publicBase(
        request({ forwarded: 'for="[2001:db8::1]";Proto=HTTPS;Host="pacs.example.org:8443"' }),
        NO_BASE,
      ),
      "https://pacs.example.org:8443",
    );
    assert.equal(
      publicBase(
        request({ forwarded: "proto=https;host=first.example.org, proto=http;host=second.example.org" }),
        NO_BASE,
      ),
      "https://first.example.org",
    );
  });

  await t.step("Forwarded with only proto keeps the Host header", () => {
    assert.equal(
      publicBase(request({ host: "pacs.local:9000", forwarded: "proto=https" }), NO_BASE),
      "https://pacs.local:9000",
    );
  });

  await t.step("reads X-Forwarded-Host, X-Forwarded-Proto and X-Forwarded-Port", () => {
    assert.equal(
      publicBase(request({ "x-forwarded-host": "pacs.example.org", "x-forwarded-proto": "https" }), NO_BASE),
      "https://pacs.example.org",
    );
    assert.equal(
      publicBase(
        request({
          "x-forwarded-host": "pacs.example.org",
          "x-forwarded-proto": "https",
          "x-forwarded-port": "8443",
        }),
        NO_BASE,
      ),
      "https://pacs.example.org:8443",
    );
    // A host that already has a port keeps it.
    assert.equal(
      publicBase(
        request({ "x-forwarded-host": "pacs.example.org:9443", "x-forwarded-port": "8443" }),
        NO_BASE,
      ),
      "http://pacs.example.org:9443",
    );
    // Lists: the first (client-nearest) value.
    assert.equal(
      publicBase(
        request({ "x-forwarded-host": "a.example.org, b.example.org", "x-forwarded-proto": "https, http" }),
        NO_BASE,
      ),
      "https://a.example.org",
    );
  });

  await t.step("X-Forwarded-Proto alone keeps the Host header", () => {
    assert.equal(
      publicBase(request({ host: "pacs.example.org", "x-forwarded-proto": "https" }), { basePath: "/dw" }),
      "https://pacs.example.org/dw",
    );
  });

  await t.step("ignores a garbage Host header", () => {
    for (const host of ["evil.example/path", "a b", "x@y", "pacs:port", "pacs:123456", "<script>"]) {
      assert.equal(publicBase(request({ host }), NO_BASE), "http://127.0.0.1:8080", host);
    }
  });

  await t.step("ignores garbage forwarded hosts and protocols", () => {
    assert.equal(publicBase(request({ "x-forwarded-host": "evil/x" }), NO_BASE), "http://127.0.0.1:8080");
    assert.equal(publicBase(request({ forwarded: 'host="a b"' }), NO_BASE), "http://127.0.0.1:8080");
    assert.equal(
      publicBase(request({ "x-forwarded-proto": "javascript" }), NO_BASE),
      "http://127.0.0.1:8080",
    );
    assert.equal(publicBase(request({ forwarded: "proto=ftp" }), NO_BASE), "http://127.0.0.1:8080");
    assert.equal(
      publicBase(request({ "x-forwarded-host": "pacs.example.org", "x-forwarded-port": "x1" }), NO_BASE),
      "http://pacs.example.org",
    );
  });
});
