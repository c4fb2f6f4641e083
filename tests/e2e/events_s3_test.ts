/**
 * The catalog follows the bucket live, end to end over HTTP: objects written and deleted directly in the bucket
 * (not through the server) show in QIDO, metadata and the change feed once their event arrives at
 * `POST /admin/events?token=EVENTS_TOKEN`.
 *
 * Against Ceph RGW (TEST_S3_ENDPOINT, as .ci/run's Ceph pass sets it) RGW itself pushes the events: the test
 * creates an RGW topic with an HTTP `push-endpoint` (RGW's SNS-compatible CreateTopic, signed SigV4 with the
 * project's signer) and the bucket's notification configuration, then PutObject/DeleteObject with the AWS SDK.
 * RGW sends a notification before it answers the write, so the catalog is up to date when the SDK call returns.
 * Against s3rver (no notifications) the test posts the payloads RGW sent when they were captured
 * (tests/testdata/events/), with the bucket and key of the object written.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  DeleteObjectCommand,
  PutBucketNotificationConfigurationCommand,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { FetchHttpHandler } from "@smithy/fetch-http-handler";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { SigV4Signer } from "../../lib/store/s3/sigv4.ts";
import { generatedCorpus, STUDIES } from "../_qido_fixtures.ts";
import { startS3, type TestS3 } from "../_s3server.ts";
import { memoryCatalog, testServer } from "../_server.ts";

const AET = "LIVE";
const TOKEN = "live-events-token-0123456789abcdef";
const CAPTURED = new URL("../testdata/events/", import.meta.url);

/** RGW's SNS-compatible API: one signed form POST to the S3 endpoint; the response XML, or undefined when refused. */
async function rgwSns(s3: TestS3, form: Record<string, string>): Promise<string | undefined> {
  const endpoint = new URL(s3.endpoint);
  const body = new URLSearchParams(form).toString();
  const headers = new SigV4Signer(s3.region, "sns").sign(
    {
      method: "POST",
      host: endpoint.host,
      path: "/",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      payloadHash: createHash("sha256").update(body).digest("hex"),
    },
    { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    new Date(),
  );
  const response = await fetch(`${s3.endpoint}/`, { method: "POST", headers, body });
  const text = await response.text();
  return response.ok ? text : undefined;
}

Deno.test({
  name: "bucket events: a direct PutObject/DeleteObject shows in QIDO, metadata and the change feed",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const s3 = await startS3();
    const bucket = s3.uniqueBucket("events");
    await s3.createBucket(bucket);
    const store = new S3Store({
      endpoint: s3.endpoint,
      region: s3.region,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    const client = new S3Client({
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
      requestHandler: new FetchHttpHandler(),
    });
    const catalog = await memoryCatalog();
    const server = testServer({
      store,
      config: { AETS: `${AET}=${bucket}`, EVENTS_TOKEN: TOKEN, CRAWL_INTERVAL: "0" },
      catalog,
    });
    let topicArn: string | undefined;
    try {
      const pushEndpoint = `${server.url}/admin/events?token=${TOKEN}`;
      if (s3.kind === "external") {
        const created = await rgwSns(s3, {
          Action: "CreateTopic",
          Name: `dicomweb-${bucket}`,
          "Attributes.entry.1.key": "push-endpoint",
          "Attributes.entry.1.value": pushEndpoint,
        });
        topicArn = created && /<TopicArn>([^<]+)<\/TopicArn>/.exec(created)?.[1];
        assert.ok(topicArn, `${s3.endpoint} refused RGW's CreateTopic: is TEST_S3_ENDPOINT a Ceph RGW?`);
        await client.send(
          new PutBucketNotificationConfigurationCommand({
            Bucket: bucket,
            NotificationConfiguration: {
              TopicConfigurations: [{
                Id: "dicomweb",
                TopicArn: topicArn,
                Events: ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
              }],
            },
          }),
        );
      }
      const live = topicArn !== undefined;
      /** What the sender (RGW itself, or this test with RGW's captured payload) does after a write. */
      const notify = async (kind: "put" | "delete", key: string) => {
        if (live) return;
        const body = JSON.parse(await Deno.readTextFile(new URL(`ceph_${kind}.json`, CAPTURED)));
        body.Records[0].s3.bucket.name = bucket;
        body.Records[0].s3.object.key = key;
        const response = await fetch(pushEndpoint, { method: "POST", body: JSON.stringify(body) });
        assert.equal(response.status, 200, await response.text());
      };
      const get = async (path: string) => {
        const response = await fetch(`${server.url}${path}`);
        const text = await response.text();
        return { status: response.status, body: text === "" ? undefined : JSON.parse(text) };
      };
      const files = generatedCorpus([STUDIES[2]]);
      const [study, series] = files[0].key.split("/");
      const sops = files.map((f) => f.key.split("/")[2].slice(0, -4));
      const instances = async () =>
        ((await get(`/aets/${AET}/studies/${study}/instances`)).body ?? []).length;

      await t.step(
        `PutObject (${live ? "RGW pushes the events" : "captured RGW payloads posted"})`,
        async () => {
          const started = performance.now();
          for (const f of files) {
            await client.send(new PutObjectCommand({ Bucket: bucket, Key: f.key, Body: f.bytes }));
            await notify("put", f.key);
          }
          let count = 0;
          await eventuallyAsync(async () => (count = await instances()) === files.length, 10_000);
          const ms = performance.now() - started;
          console.log(
            `  ${files.length} objects written and searchable in ${ms.toFixed(0)} ms (${
              live ? "live" : "posted"
            })`,
          );
          assert.equal(count, files.length);
          const metadata = await get(`/aets/${AET}/studies/${study}/series/${series}/metadata`);
          assert.equal(metadata.status, 200);
          const feed = await get(`/aets/${AET}/changefeed?includemetadata=false`);
          assert.deepEqual(
            feed.body.map((e: { SopInstanceUid: string; Action: string }) =>
              `${e.Action} ${e.SopInstanceUid}`
            ).sort(),
            sops.map((sop) => `create ${sop}`).sort(),
          );
        },
      );

      await t.step("DeleteObject: gone from QIDO and metadata, a delete in the change feed", async () => {
        const [gone, ...kept] = files;
        await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: gone.key }));
        await notify("delete", gone.key);
        await eventuallyAsync(async () => await instances() === kept.length, 10_000);
        const sop = sops[0];
        const metadata = await get(
          `/aets/${AET}/studies/${study}/series/${series}/instances/${sop}/metadata`,
        );
        assert.equal(metadata.status, 404);
        const latest = await get(`/aets/${AET}/changefeed/latest`);
        assert.deepEqual([latest.body.Action, latest.body.SopInstanceUid, latest.body.State], [
          "delete",
          sop,
          "deleted",
        ]);
      });
    } finally {
      if (topicArn !== undefined) {
        await client.send(
          new PutBucketNotificationConfigurationCommand({ Bucket: bucket, NotificationConfiguration: {} }),
        ).catch(() => {});
        await rgwSns(s3, { Action: "DeleteTopic", TopicArn: topicArn }).catch(() => {});
      }
      await server.close();
      await catalog.close();
      client.destroy();
      await store.close?.();
      await s3.stop();
    }
  },
});

/** Resolves once `condition()` resolves true, or rejects after `ms`. */
async function eventuallyAsync(condition: () => Promise<boolean>, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!await condition()) {
    if (Date.now() > until) throw new Error(`Timed out after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
