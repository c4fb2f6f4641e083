/**
 * `POST /admin/events` over a memory store and the catalog: who may post (EVENTS_TOKEN as bearer or ?token=,
 * with AUTH none and with tokens; the admin grant), 400s, and each object decided by a HEAD: a direct put or
 * delete followed by its event shows in QIDO, metadata and the change feed; duplicates, stale re-deliveries,
 * keys outside the layout and unserved buckets are a 2xx. SNS deliveries: a signed notification, a
 * subscription confirmation (only to amazonaws.com), a bad signature refused.
 */

import assert from "node:assert/strict";
import { SnsSignatureError, SnsVerifier } from "../../lib/events/sns.ts";
import { makeToken } from "../../lib/security/passwords.ts";
import { generatedCorpus, STUDIES } from "../_qido_fixtures.ts";
import { routedServer } from "../dicomweb/_routed.ts";

const AET = "EVT";
const BUCKET = "evt";
const TOKEN = "0123456789abcdef0123456789abcdef";
const CEPH_PUT = JSON.parse(
  await Deno.readTextFile(new URL("../testdata/events/ceph_put.json", import.meta.url)),
);
const CEPH_DELETE = JSON.parse(
  await Deno.readTextFile(new URL("../testdata/events/ceph_delete.json", import.meta.url)),
);

/** The captured Ceph payload about `key` in `bucket`. */
function ceph(template: typeof CEPH_PUT, bucket: string, key: string) {
  const body = structuredClone(template);
  body.Records[0].s3.bucket.name = bucket;
  body.Records[0].s3.object.key = key;
  return body;
}

Deno.test("POST /admin/events: who may post", async (t) => {
  await t.step(
    "EVENTS_TOKEN with AUTH none: missing or wrong refused, bearer or ?token= accepted",
    async () => {
      const server = await routedServer({ aet: AET, bucket: BUCKET, env: { EVENTS_TOKEN: TOKEN } });
      try {
        const post = (query: string, headers: Record<string, string> = {}) =>
          server.fetch(`/admin/events${query}`, {
            method: "POST",
            headers,
            body: JSON.stringify({ Records: [] }),
          });
        const missing = await post("");
        assert.equal(missing.status, 401);
        assert.match((await missing.json()).error, /EVENTS_TOKEN/);
        assert.equal((await post("?token=wrong-token-0123456789")).status, 401);
        assert.equal((await post("", { authorization: "Bearer wrong-token-0123456789" })).status, 401);
        assert.equal((await post(`?token=${TOKEN}`)).status, 200);
        assert.equal((await post("", { authorization: `Bearer ${TOKEN}` })).status, 200);
        // the token opens nothing else
        assert.equal(
          (await server.fetch(`/admin/index?token=${TOKEN}`)).status,
          200,
          "AUTH none: /admin is open",
        );
      } finally {
        await server.close();
      }
    },
  );
  await t.step("with tokens: the admin grant, or EVENTS_TOKEN; a reader is refused", async () => {
    const admin = await makeToken();
    const reader = await makeToken();
    const server = await routedServer({
      aet: AET,
      bucket: BUCKET,
      env: {
        EVENTS_TOKEN: TOKEN,
        AUTH: "token",
        AUTH_TOKENS: `admin:${admin.sha256},reader:${reader.sha256}`,
        AUTH_GRANTS: `admin:*:* reader:read:*`,
      },
    });
    try {
      const post = (query: string, headers: Record<string, string> = {}) =>
        server.fetch(`/admin/events${query}`, {
          method: "POST",
          headers,
          body: JSON.stringify({ Records: [] }),
        });
      assert.equal((await post("", { authorization: `Bearer ${admin.token}` })).status, 200);
      assert.equal((await post("", { authorization: `Bearer ${reader.token}` })).status, 403);
      assert.equal((await post(`?token=${TOKEN}`)).status, 200);
      assert.equal(
        (await post(`?token=nope-nope-nope-nope`, { authorization: `Bearer ${admin.token}` })).status,
        401,
      );
      assert.equal((await post("")).status, 401);
      // EVENTS_TOKEN is no key to anything else
      assert.equal(
        (await server.fetch(`/aets/${AET}/studies`, { headers: { authorization: `Bearer ${TOKEN}` } }))
          .status,
        401,
      );
      assert.equal((await server.fetch(`/admin/index?token=${TOKEN}`)).status, 401);
    } finally {
      await server.close();
    }
  });
});

Deno.test("POST /admin/events: the catalog follows the bucket by HEAD", async (t) => {
  const [one, two] = generatedCorpus([STUDIES[0]]);
  const server = await routedServer({ aet: AET, bucket: BUCKET });
  const post = async (body: unknown) => {
    const response = await server.fetch("/admin/events", { method: "POST", body: JSON.stringify(body) });
    const text = await response.text();
    return { status: response.status, body: text.startsWith("{") ? JSON.parse(text) : text };
  };
  const [study, series, file] = one.key.split("/");
  const sop = file.slice(0, -4);
  const found = async () =>
    (await (await server.fetch(`/aets/${AET}/instances?SOPInstanceUID=${sop}`)).json() as unknown[]).length;
  try {
    await t.step("a put, then its event: QIDO, metadata and the change feed have it", async () => {
      await server.store.put(BUCKET, one.key, one.bytes);
      assert.equal(await found(), 0, "not crawled: unknown before the event");
      const response = await post(ceph(CEPH_PUT, BUCKET, one.key));
      assert.equal(response.status, 200);
      assert.deepEqual(response.body, { records: 1, indexed: 1, removed: 0, ignored: 0 });
      assert.equal(await found(), 1);
      const metadata = await server.fetch(`/aets/${AET}/studies/${study}/series/${series}/metadata`);
      assert.equal(metadata.status, 200);
      const latest = await (await server.fetch(`/aets/${AET}/changefeed/latest`)).json();
      assert.equal(latest.SopInstanceUid, sop);
      assert.equal(latest.Action, "create");
    });
    await t.step("the same event again (a duplicate): 200, no new entry", async () => {
      const before = (await (await server.fetch(`/aets/${AET}/changefeed`)).json()).length;
      assert.equal((await post(ceph(CEPH_PUT, BUCKET, one.key))).status, 200);
      assert.equal((await (await server.fetch(`/aets/${AET}/changefeed`)).json()).length, before);
    });
    await t.step("a delete, then its event: gone everywhere", async () => {
      await server.store.delete(BUCKET, one.key);
      const response = await post(ceph(CEPH_DELETE, BUCKET, one.key));
      assert.deepEqual(response.body, { records: 1, indexed: 0, removed: 1, ignored: 0 });
      assert.equal(await found(), 0);
      assert.equal(
        (await server.fetch(`/aets/${AET}/studies/${study}/series/${series}/metadata`)).status,
        404,
      );
      const latest = await (await server.fetch(`/aets/${AET}/changefeed/latest`)).json();
      assert.deepEqual([latest.SopInstanceUid, latest.Action, latest.State], [sop, "delete", "deleted"]);
    });
    await t.step("stale and reordered: a create event for an object gone is a removal; 2xx", async () => {
      const response = await post(ceph(CEPH_PUT, BUCKET, one.key));
      assert.equal(response.status, 200);
      assert.equal(await found(), 0);
      // a delete event arriving after the object was written again: the object stays
      await server.store.put(BUCKET, two.key, two.bytes);
      const late = await post(ceph(CEPH_DELETE, BUCKET, two.key));
      assert.deepEqual(late.body, { records: 1, indexed: 1, removed: 0, ignored: 0 });
    });
    await t.step("AWS batches, MinIO's spelling: decided once per object", async () => {
      await server.store.put(BUCKET, one.key, one.bytes);
      const response = await post({
        Records: [
          {
            eventName: "s3:ObjectCreated:Put",
            s3: { bucket: { name: BUCKET }, object: { key: encodeURIComponent(one.key) } },
          },
          { eventName: "ObjectCreated:Put", s3: { bucket: { name: BUCKET }, object: { key: one.key } } },
          { eventName: "ObjectRemoved:Delete", s3: { bucket: { name: BUCKET }, object: { key: two.key } } },
        ],
      });
      assert.deepEqual(response.body, { records: 3, indexed: 2, removed: 0, ignored: 0 });
      assert.equal(await found(), 1);
    });
    await t.step("outside the layout, an unserved bucket, a test event: 2xx, logged", async () => {
      const response = await post({
        Records: [
          ceph(CEPH_PUT, BUCKET, "a b/c+d.dcm").Records[0],
          ceph(CEPH_PUT, "other-bucket", one.key).Records[0],
        ],
      });
      assert.deepEqual(response.body, { records: 2, indexed: 0, removed: 0, ignored: 2 });
      assert.ok(server.logs.some((line) => /a b\/c\+d\.dcm is outside the .* layout/.test(line)));
      assert.ok(server.logs.some((line) => /bucket other-bucket is not served by any AET/.test(line)));
      assert.equal((await post({ Service: "Amazon S3", Event: "s3:TestEvent" })).status, 200);
    });
    await t.step("not JSON, no Records, a record without bucket or key: 400", async () => {
      const bad = await server.fetch("/admin/events", { method: "POST", body: "Records=1" });
      assert.equal(bad.status, 400);
      assert.match((await bad.json()).error, /not JSON/);
      assert.equal((await post({})).status, 400);
      assert.equal(
        (await post({ Records: [{ eventName: "ObjectCreated:Put", s3: { object: { key: "k" } } }] })).status,
        400,
      );
      assert.equal(
        (await post({ Records: [{ eventName: "ObjectCreated:Put", s3: { bucket: { name: BUCKET } } }] }))
          .status,
        400,
      );
    });
  } finally {
    await server.close();
  }
});

Deno.test("POST /admin/events: SNS deliveries are verified; confirmations only to amazonaws.com", async () => {
  const [one] = generatedCorpus([STUDIES[1]]);
  const confirmed: string[] = [];
  let verify = true;
  const sns = new SnsVerifier({ fetchCertificate: () => Promise.reject(new Error("not used")) });
  // the real check is tested in sns_s3_events_test.ts; here: what the handler does with its answer
  sns.verify = () => verify ? Promise.resolve() : Promise.reject(new SnsSignatureError("bad signature"));
  const server = await routedServer({
    aet: AET,
    bucket: BUCKET,
    routes: {
      events: {
        sns,
        confirm: (url) => {
          confirmed.push(url.href);
          return Promise.resolve(new Response("<ConfirmSubscriptionResponse/>"));
        },
      },
    },
  });
  const message = (type: string, extra: Record<string, string>) => ({
    Type: type,
    MessageId: "m1",
    TopicArn: "arn:aws:sns:eu-west-1:123456789012:dicom",
    Message: "",
    Timestamp: "2026-12-05T08:00:00.000Z",
    SignatureVersion: "2",
    Signature: "c2ln",
    SigningCertURL: "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
    ...extra,
  });
  const post = (body: unknown) =>
    server.fetch("/admin/events", {
      method: "POST",
      headers: { "x-amz-sns-message-type": (body as { Type: string }).Type },
      body: JSON.stringify(body),
    });
  try {
    const url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t";
    assert.equal(
      (await post(message("SubscriptionConfirmation", { SubscribeURL: url, Token: "t" }))).status,
      200,
    );
    assert.deepEqual(confirmed, [url]);
    const evil = await post(
      message("SubscriptionConfirmation", { SubscribeURL: "https://evil.example/x", Token: "t" }),
    );
    assert.equal(evil.status, 400);
    assert.equal(
      (await post(
        message("SubscriptionConfirmation", {
          SubscribeURL: "http://sns.eu-west-1.amazonaws.com/",
          Token: "t",
        }),
      )).status,
      400,
    );
    assert.equal(confirmed.length, 1);

    await server.store.put(BUCKET, one.key, one.bytes);
    const s3Event = {
      Records: [{
        eventName: "ObjectCreated:Put",
        s3: { bucket: { name: BUCKET }, object: { key: one.key } },
      }],
    };
    const note = await post(
      message("Notification", { Message: JSON.stringify(s3Event), Subject: "Amazon S3 Notification" }),
    );
    assert.equal(note.status, 200);
    assert.deepEqual(await note.json(), { records: 1, indexed: 1, removed: 0, ignored: 0 });
    verify = false;
    const forged = await post(message("Notification", { Message: JSON.stringify(s3Event) }));
    assert.equal(forged.status, 403);
    assert.match((await forged.json()).error, /bad signature/);
  } finally {
    await server.close();
  }
});
