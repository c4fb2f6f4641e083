import assert from "node:assert/strict";
import { S3Client } from "@aws-sdk/client-s3";
import { createHash } from "node:crypto";
import { SigV4Signer } from "../../../lib/store/s3/sigv4.ts";
import { escapeSegment, resolveRoute } from "../../../lib/store/s3/s3_routing.ts";

const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** The SDK's own signature of the same request, the reference. */
async function sdkSignature(
  client: S3Client,
  bucket: string,
  request: { method: string; key: string; query: Record<string, string>; headers: Record<string, string> },
  date: Date,
) {
  const route = (await resolveRoute(client, bucket))!;
  const url = new URL(route.base);
  url.pathname = url.pathname.replace(/\/$/, "") + "/" + request.key.split("/").map(escapeSegment).join("/");
  const signed = await route.signer.sign({
    method: request.method,
    protocol: url.protocol,
    hostname: url.hostname,
    port: url.port ? Number(url.port) : undefined,
    path: url.pathname,
    query: request.query,
    headers: { ...request.headers, host: url.host },
  }, { signingRegion: route.region, signingService: route.service, signingDate: date });
  return { route, url, headers: signed.headers };
}

Deno.test("SigV4Signer signs as the AWS SDK does", async (t) => {
  const date = new Date("2026-12-05T07:31:24.123Z");
  const cases: {
    name: string;
    method: string;
    key: string;
    query: Record<string, string>;
    headers: Record<string, string>;
  }[] = [
    { name: "a GET", method: "GET", key: "1.2.3/4.5/6.7.dcm", query: {}, headers: {} },
    {
      name: "a ranged GET of a key with spaces and unicode",
      method: "GET",
      key: "a b/ü+é(1)*!'.dcm",
      query: {},
      headers: { range: "bytes=0-16383" },
    },
    {
      name: "a listing with a query in no particular order",
      method: "GET",
      key: "",
      query: { "list-type": "2", prefix: "1.2.3/a b/", "max-keys": "32", "continuation-token": "x/y+z==" },
      headers: {},
    },
    {
      name: "a PUT with a content type",
      method: "PUT",
      key: "k.dcm",
      query: {},
      headers: { "content-type": "application/dicom" },
    },
  ];
  for (
    const credentials of [
      { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY" },
      { accessKeyId: "ASIA", secretAccessKey: "secret", sessionToken: "token/with+chars=" },
    ]
  ) {
    for (const endpoint of ["http://127.0.0.1:7480", "https://s3.example.com"]) {
      const client = new S3Client({ endpoint, region: "eu-central-1", forcePathStyle: true, credentials });
      try {
        for (const c of cases) {
          await t.step(
            `${c.name} (${endpoint}${credentials.sessionToken ? ", session token" : ""})`,
            async () => {
              const payloadHash = c.method === "PUT" ? createHashHex("body") : EMPTY_SHA256;
              const headers = { ...c.headers, "x-amz-content-sha256": payloadHash };
              const reference = await sdkSignature(client, "bucket", { ...c, headers }, date);
              const encodedQuery = Object.entries(c.query).map(([n, v]) =>
                [escapeSegment(n), escapeSegment(v)] as [string, string]
              );
              const ours = new SigV4Signer(reference.route.region, reference.route.service).sign(
                {
                  method: c.method,
                  host: reference.url.host,
                  path: reference.url.pathname,
                  query: encodedQuery,
                  headers: c.headers,
                  payloadHash,
                },
                credentials,
                date,
              );
              assert.equal(ours.authorization, reference.headers.authorization);
              assert.equal(ours["x-amz-date"], reference.headers["x-amz-date"]);
              assert.equal(ours["x-amz-security-token"], reference.headers["x-amz-security-token"]);
            },
          );
        }
      } finally {
        client.destroy();
      }
    }
  }
});

Deno.test("SigV4Signer derives a new signing key on a new day", () => {
  const signer = new SigV4Signer("us-east-1", "s3");
  const credentials = { accessKeyId: "A", secretAccessKey: "S" };
  const input = { method: "GET", host: "h", path: "/b/k", payloadHash: EMPTY_SHA256 };
  const day1 = signer.sign(input, credentials, new Date("2026-12-05T23:59:59Z")).authorization;
  const day2 = signer.sign(input, credentials, new Date("2026-12-06T00:00:00Z")).authorization;
  assert.match(day1, /Credential=A\/20261205\/us-east-1\/s3\/aws4_request/);
  assert.match(day2, /Credential=A\/20261206\/us-east-1\/s3\/aws4_request/);
  // the same day again gives the same signature as a fresh signer (the cached key is that day's)
  assert.equal(
    signer.sign(input, credentials, new Date("2026-12-05T23:59:59Z")).authorization,
    new SigV4Signer("us-east-1", "s3").sign(input, credentials, new Date("2026-12-05T23:59:59Z"))
      .authorization,
  );
});

function createHashHex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
