/**
 * Webhooks against a real local HTTP receiver (Deno.serve): CloudEvents 1.0 for STOW-RS and DELETE with a
 * verifiable X-Signature-256, retries after 500s, refusals not retried, a dead endpoint bounded by the queue
 * (drops counted and logged), and publishing that never waits for a receiver.
 */

import assert from "node:assert/strict";
import { createHmac, timingSafeEqual } from "node:crypto";
import type { ChangeFeedEntry } from "../../lib/catalog/catalog.ts";
import { type CloudEvent, WebhookDispatcher, type WebhookOutcome } from "../../lib/events/webhooks.ts";
import { generatedCorpus, STUDIES } from "../_qido_fixtures.ts";
import { routedServer } from "../dicomweb/_routed.ts";

const SECRET = "webhook-secret-0123456789";

interface Received {
  body: string;
  headers: Headers;
}

/** A receiver answering with `status()` (200 by default) and keeping every request. */
function receiver(status: () => number = () => 200) {
  const received: Received[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    received.push({ body: await request.text(), headers: request.headers });
    return new Response(null, { status: status() });
  });
  return { url: `http://127.0.0.1:${server.addr.port}/hook`, received, close: () => server.shutdown() };
}

/** What a receiver does: the HMAC-SHA256 of the raw body, compared in constant time. */
function verified(received: Received, secret: string): boolean {
  const header = received.headers.get("x-signature-256") ?? "";
  const expected = `sha256=${createHmac("sha256", secret).update(received.body).digest("hex")}`;
  return header.length === expected.length && timingSafeEqual(Buffer.from(header), Buffer.from(expected));
}

async function until(condition: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`Timed out after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const entry = (sequence: number, action: "create" | "delete" = "create"): ChangeFeedEntry => ({
  sequence,
  aet: "PACS",
  study: "1.2",
  series: "1.2.3",
  sop: `1.2.3.${sequence}`,
  action,
  time: Date.UTC(2026, 11, 5, 8, 0, 0),
  state: action === "create" ? "current" : "deleted",
});

Deno.test("webhooks: STOW-RS and DELETE arrive as signed CloudEvents", async () => {
  const hook = receiver();
  const deletes = receiver();
  const files = generatedCorpus([STUDIES[3]]);
  const server = await routedServer({
    aet: "HOOK",
    bucket: "hook",
    crawl: false,
    env: {
      PUBLIC_URL: "https://pacs.example.org/dicomweb",
      WEBHOOKS: JSON.stringify([
        { url: hook.url, secret: SECRET, events: ["*"] },
        { url: deletes.url, secret: "another-secret-0123456789", events: ["org.dicomweb.instance.deleted"] },
      ]),
    },
  });
  try {
    const boundary = "hookb";
    const enc = new TextEncoder();
    const parts: BlobPart[] = files.flatMap((f): BlobPart[] => [
      enc.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
      f.bytes as Uint8Array<ArrayBuffer>,
      enc.encode("\r\n"),
    ]);
    const body = new Blob([...parts, enc.encode(`--${boundary}--\r\n`)]);
    const stored = await server.fetch("/aets/HOOK/studies", {
      method: "POST",
      headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}` },
      body,
    });
    assert.equal(stored.status, 200);
    await until(() => hook.received.length === files.length);
    const events = hook.received.map((r) => JSON.parse(r.body) as CloudEvent);
    for (const [i, received] of hook.received.entries()) {
      assert.ok(verified(received, SECRET), "X-Signature-256 is the HMAC-SHA256 of the raw body");
      assert.ok(!verified(received, "wrong-secret-0123456789"));
      assert.match(received.headers.get("content-type")!, /^application\/cloudevents\+json/);
      const event = events[i];
      assert.equal(event.specversion, "1.0");
      assert.equal(event.type, "org.dicomweb.instance.created");
      assert.equal(event.source, "https://pacs.example.org/dicomweb/aets/HOOK");
      assert.equal(event.datacontenttype, "application/json");
      assert.match(event.time, /Z$/);
      assert.equal(event.id, `HOOK-${event.data.sequence}`);
      assert.equal(
        `${event.data.studyInstanceUid}/${event.data.seriesInstanceUid}/${event.data.sopInstanceUid}.dcm`,
        files.find((f) => f.key.endsWith(`/${event.data.sopInstanceUid}.dcm`))!.key,
      );
      assert.equal(
        event.subject,
        `studies/${event.data.studyInstanceUid}/series/${event.data.seriesInstanceUid}/instances/${event.data.sopInstanceUid}`,
      );
      assert.equal(event.data.aet, "HOOK");
    }
    assert.equal(new Set(events.map((e) => e.id)).size, events.length);
    assert.equal(deletes.received.length, 0, "the second webhook wants deletes only");

    const [study] = files[0].key.split("/");
    assert.equal((await server.fetch(`/aets/HOOK/studies/${study}`, { method: "DELETE" })).status, 204);
    await until(() => deletes.received.length === files.length && hook.received.length === 2 * files.length);
    const deleted = deletes.received.map((r) => JSON.parse(r.body) as CloudEvent);
    assert.ok(deleted.every((e) => e.type === "org.dicomweb.instance.deleted"));
    assert.ok(deletes.received.every((r) => verified(r, "another-secret-0123456789")));
  } finally {
    await server.close();
    await hook.close();
    await deletes.close();
  }
});

Deno.test("webhooks: retried after 500s, refusals dropped, a dead endpoint bounded", async (t) => {
  const counted: WebhookOutcome[] = [];
  const logs: string[] = [];

  await t.step("a receiver answering 500 twice gets the event on the third attempt, in order", async () => {
    let calls = 0;
    const hook = receiver(() => ++calls <= 2 ? 500 : 200);
    const dispatcher = new WebhookDispatcher({
      webhooks: [{ url: hook.url, secret: SECRET, events: ["*"] }],
      base: "http://127.0.0.1:8080",
      retryDelaysMs: [50, 50, 50],
      count: (o) => counted.push(o),
      log: (line) => logs.push(line),
    });
    try {
      dispatcher.publish([entry(1), entry(2)]);
      await until(() => dispatcher.delivered === 2);
      assert.deepEqual(hook.received.map((r) => JSON.parse(r.body).id), [
        "PACS-1",
        "PACS-1",
        "PACS-1",
        "PACS-2",
      ]);
      assert.ok(hook.received.every((r) => verified(r, SECRET)));
      assert.deepEqual(counted, ["retried", "retried", "delivered", "delivered"]);
    } finally {
      dispatcher.close();
      await hook.close();
    }
  });

  await t.step("a 4xx is not retried; retries run out: failed, counted, logged", async () => {
    counted.length = 0;
    const refusing = receiver(() => 400);
    const failing = receiver(() => 503);
    const dispatcher = new WebhookDispatcher({
      webhooks: [
        { url: refusing.url, secret: SECRET, events: ["*"] },
        { url: failing.url, secret: SECRET, events: ["org.dicomweb.instance.deleted"] },
      ],
      base: "http://127.0.0.1:8080",
      retryDelaysMs: [20, 20],
      count: (o) => counted.push(o),
      log: (line) => logs.push(line),
    });
    try {
      dispatcher.publish([entry(3, "delete")]);
      await until(() => dispatcher.dropped === 2);
      assert.equal(refusing.received.length, 1);
      assert.equal(failing.received.length, 3, "the first attempt and two retries");
      assert.ok(logs.some((l) => /PACS-3 .* dropped: it answered 400 \(not retried\)/.test(l)));
      assert.ok(logs.some((l) => /PACS-3 .* dropped: it answered 503, after 2 retries/.test(l)));
      assert.equal(counted.filter((o) => o === "failed").length, 2);
    } finally {
      dispatcher.close();
      await refusing.close();
      await failing.close();
    }
  });

  await t.step(
    "a dead endpoint: publish returns at once, the queue stays bounded, drops counted",
    async () => {
      counted.length = 0;
      const dead = receiver();
      const url = dead.url;
      await dead.close(); // nothing listens there any more
      const dispatcher = new WebhookDispatcher({
        webhooks: [{ url, secret: SECRET, events: ["*"] }],
        base: "http://127.0.0.1:8080",
        queueSize: 5,
        retryDelaysMs: [60_000],
        count: (o) => counted.push(o),
        log: (line) => logs.push(line),
      });
      try {
        const entries = Array.from({ length: 20 }, (_, i) => entry(100 + i));
        dispatcher.publish(entries); // synchronous: nothing waits for the receiver
        assert.ok(dispatcher.pending <= 5);
        assert.equal(dispatcher.dropped, 15);
        assert.equal(counted.filter((o) => o === "dropped").length, 15);
        assert.ok(logs.some((l) => /PACS-119 .* dropped: the queue holds 5 events already/.test(l)));
        await until(() => counted.includes("retried"));
      } finally {
        dispatcher.close();
      }
    },
  );
});
