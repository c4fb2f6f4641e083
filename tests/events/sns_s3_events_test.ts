/**
 * The S3 event structure as Ceph RGW (captured), MinIO and AWS spell it, and SNS signature checks with a
 * certificate and key made by `openssl` here (SignatureVersion 1 and 2, tampering, certificate URLs).
 */

import assert from "node:assert/strict";
import { keyCandidates, parseS3Event } from "../../lib/events/s3_events.ts";
import {
  checkSigningCertUrl,
  type SnsMessage,
  SnsSignatureError,
  snsStringToSign,
  SnsVerifier,
} from "../../lib/events/sns.ts";
import { MalformedError } from "../../lib/util/errors.ts";
import { hasCommand } from "../_dicom_fixtures.ts";
import { skipFor } from "../_skip.ts";

const DATA = new URL("../testdata/events/", import.meta.url);
const KEY = "1.2.3/1.2.3.4/1.2.3.4.5.dcm";

Deno.test("parseS3Event(): each sender's spelling", async (t) => {
  await t.step("Ceph RGW (captured): raw keys, a '+' is a '+'", async () => {
    const body = JSON.parse(await Deno.readTextFile(new URL("ceph_put.json", DATA)));
    const [record] = parseS3Event(body);
    assert.equal(record.eventName, "ObjectCreated:Put");
    assert.equal(record.bucket, "probe");
    assert.equal(record.rawKey, "a b/c+d.dcm");
    assert.equal(record.key, undefined, "outside the layout");
    assert.equal(record.etag, "5289df737df57326fcdd22597afb1fac");
    assert.equal(record.sequencer, "96C3136BAEDA7C01");
    assert.ok(keyCandidates("a b/c+d.dcm").includes("a b/c+d.dcm"));
    body.Records[0].s3.object.key = KEY;
    assert.equal(parseS3Event(body)[0].key, KEY);
  });
  await t.step("MinIO: s3: prefix and %2F", () => {
    const [record] = parseS3Event({
      EventName: "s3:ObjectRemoved:Delete",
      Key: `pacs/${KEY}`,
      Records: [{
        eventName: "s3:ObjectRemoved:Delete",
        s3: { bucket: { name: "pacs" }, object: { key: encodeURIComponent(KEY), sequencer: "17A" } },
      }],
    });
    assert.equal(record.eventName, "ObjectRemoved:Delete");
    assert.equal(record.key, KEY);
  });
  await t.step("AWS: several records, keys URL-encoded with + for spaces", () => {
    const records = parseS3Event({
      Records: [
        {
          eventName: "ObjectCreated:Put",
          s3: { bucket: { name: "b" }, object: { key: KEY, size: 10, eTag: '"x"' } },
        },
        {
          eventName: "ObjectRemoved:DeleteMarkerCreated",
          s3: { bucket: { name: "b" }, object: { key: "my+file.txt" } },
        },
      ],
    });
    assert.equal(records.length, 2);
    assert.equal(records[0].etag, "x");
    assert.equal(records[0].size, 10);
    assert.deepEqual(keyCandidates("my+file.txt"), ["my file.txt", "my+file.txt"]);
    assert.deepEqual(keyCandidates("100%"), ["100%"]);
  });
  await t.step("test events have no records; other bodies are malformed, naming what is missing", () => {
    assert.deepEqual(parseS3Event({ Service: "Amazon S3", Event: "s3:TestEvent", Bucket: "b" }), []);
    for (
      const [body, message] of [
        [[], /JSON object/],
        [{ foo: 1 }, /Records/],
        [
          { Records: [{ eventName: "ObjectCreated:Put", s3: { object: { key: KEY } } }] },
          /Records\[0\] names no bucket/,
        ],
        [
          { Records: [{ eventName: "ObjectCreated:Put", s3: { bucket: { name: "b" }, object: {} } }] },
          /no object key/,
        ],
        [
          { Records: [{ eventName: "Nope", s3: { bucket: { name: "b" }, object: { key: KEY } } }] },
          /eventName/,
        ],
      ] as const
    ) {
      assert.throws(() => parseS3Event(body), (e) => e instanceof MalformedError && message.test(e.message));
    }
  });
});

async function openssl(args: string[], input?: Uint8Array): Promise<Uint8Array> {
  const child = new Deno.Command("openssl", {
    args,
    stdin: input ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  })
    .spawn();
  if (input) {
    const writer = child.stdin.getWriter();
    await writer.write(input);
    await writer.close();
  }
  const out = await child.output();
  if (!out.success) throw new Error(`openssl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return out.stdout;
}

Deno.test({
  name: "SnsVerifier: SNS signatures with a certificate and key made by openssl",
  ignore: !hasCommand("openssl") && skipFor("the SNS signature test", "openssl", "apt-get install openssl"),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "sns-" });
    try {
      await openssl([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
        "-days",
        "1",
        "-subj",
        "/CN=sns.us-east-1.amazonaws.com",
      ]);
      const pem = await Deno.readTextFile(`${dir}/cert.pem`);
      const certUrl = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem";
      let fetched = 0;
      const verifier = new SnsVerifier({
        fetchCertificate: (url) => {
          fetched++;
          assert.equal(url.href, certUrl);
          return Promise.resolve(pem);
        },
      });
      const sign = async (message: Omit<SnsMessage, "Signature">, version: "1" | "2") => {
        const data = new TextEncoder().encode(snsStringToSign({ ...message, Signature: "" }));
        const signature = await openssl([
          "dgst",
          version === "1" ? "-sha1" : "-sha256",
          "-sign",
          `${dir}/key.pem`,
        ], data);
        return { ...message, Signature: btoa(String.fromCharCode(...signature)) } as SnsMessage;
      };
      const base = {
        Type: "Notification",
        MessageId: "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        TopicArn: "arn:aws:sns:us-east-1:123456789012:dicom-events",
        Message: JSON.stringify({ Records: [] }),
        Timestamp: "2026-12-05T08:00:00.000Z",
        SigningCertURL: certUrl,
      };

      await t.step("SignatureVersion 1 (SHA-1) and 2 (SHA-256), with and without Subject", async () => {
        await verifier.verify(await sign({ ...base, SignatureVersion: "1" }, "1"));
        await verifier.verify(
          await sign({ ...base, SignatureVersion: "2", Subject: "Amazon S3 Notification" }, "2"),
        );
        const confirmation = {
          ...base,
          Type: "SubscriptionConfirmation",
          SubscribeURL: "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=abc",
          Token: "abc",
          SignatureVersion: "2",
        };
        await verifier.verify(await sign(confirmation, "2"));
        assert.equal(fetched, 1, "the certificate is fetched once and cached");
      });

      await t.step("a changed field, the other hash, or another version is refused", async () => {
        const signed = await sign({ ...base, SignatureVersion: "2" }, "2");
        await assert.rejects(
          () => verifier.verify({ ...signed, Message: '{"Records":[1]}' }),
          SnsSignatureError,
        );
        await assert.rejects(() => verifier.verify({ ...signed, SignatureVersion: "1" }), SnsSignatureError);
        await assert.rejects(() => verifier.verify({ ...signed, SignatureVersion: "3" }), /not 1 or 2/);
        await assert.rejects(() => verifier.verify({ ...signed, Signature: "!!" }), SnsSignatureError);
      });

      await t.step("certificates only from https://sns.<region>.amazonaws.com/", async () => {
        for (
          const url of [
            "http://sns.us-east-1.amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
            "https://evil.example/sns.us-east-1.amazonaws.com/cert.pem",
            "https://s3.us-east-1.amazonaws.com/cert.pem",
            "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
            "not a url",
          ]
        ) {
          assert.throws(() => checkSigningCertUrl(url), SnsSignatureError, url);
          const signed = await sign({ ...base, SigningCertURL: url, SignatureVersion: "2" }, "2");
          await assert.rejects(() => verifier.verify(signed), SnsSignatureError);
        }
        assert.equal(fetched, 1, "nothing else was fetched");
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
