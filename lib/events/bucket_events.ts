/**
 * `POST /admin/events`: S3 event notifications, so the catalog follows the bucket within a second of a write
 * or a delete made by anyone (a pipeline, `aws s3 cp`, replication), not only at the next crawl.
 *
 * Accepted bodies: the S3 event structure (`{"Records": [...]}`) as Ceph RGW and MinIO push it over HTTP, and
 * Amazon SNS deliveries (an HTTP subscription of the topic AWS S3 notifies): a `SubscriptionConfirmation` is
 * confirmed by GETting its `SubscribeURL` (only an https URL on an `amazonaws.com` host), a `Notification`
 * carries the S3 event in `Message`; both are believed only with a valid SNS signature (sns.ts).
 *
 * Each object named is decided by a HEAD in the bucket, not by the event's name or order (senders re-deliver,
 * reorder, and Ceph's sequencer does not sort by time): there → its header is read and filed (a new version
 * gets a change feed `create`; the same version again changes nothing); not there → the catalog forgets it (a
 * `delete` when the feed had announced it). The bucket maps to the AETs configured for it (`AETS`).
 *
 * Answers: 200 with counts for accepted, duplicate, stale and out-of-layout records (a key outside
 * `{study}/{series}/{sop}.dcm`, or a bucket no AET serves, is ignored with a log line); 400 for a body that is
 * not JSON or a record without a bucket or key; 403 for an SNS message whose signature does not check; 502/503
 * only when the bucket itself cannot be asked (the sender retries). Who may post: see `EVENTS_TOKEN`
 * (security/request_guard.ts).
 *
 * @module
 */

import { HttpError } from "../http/errors.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import type { Services } from "../dicomweb/services.ts";
import { MalformedError } from "../util/errors.ts";
import { parseS3Event, type S3EventRecord } from "./s3_events.ts";
import { isSnsMessage, type SnsMessage, SnsSignatureError, SnsVerifier } from "./sns.ts";

/** The largest notification body read (SNS messages are at most 256 KiB; S3 batches are small). */
const MAX_BODY = 4 * 1024 * 1024;

/** Options for {@linkcode bucketEventsHandler}. */
export interface BucketEventsOptions {
  /** Checks SNS signatures (default: a verifier fetching certificates from AWS). */
  sns?: SnsVerifier;
  /** Confirms SNS subscriptions (default: `fetch`). */
  confirm?: (url: URL) => Promise<Response>;
}

/** What one notification did. */
export interface EventOutcome {
  /** Records in the notification. */
  records: number;
  /** Objects found and filed (new or unchanged). */
  indexed: number;
  /** Objects not in the bucket, forgotten (or never known). */
  removed: number;
  /** Records ignored: a bucket no AET serves, a key outside the layout, an object that is not DICOM. */
  ignored: number;
}

/** The `POST /admin/events` handler over `services`. */
export function bucketEventsHandler(services: Services, options: BucketEventsOptions = {}): Handler {
  const sns = options.sns ?? new SnsVerifier();
  const confirm = options.confirm ??
    ((url: URL) => fetch(url, { signal: AbortSignal.timeout(10_000) }));
  return (ctx) => handle(services, ctx, sns, confirm);
}

async function readBody(request: Request): Promise<string> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > MAX_BODY) {
    await request.body?.cancel();
    throw new HttpError(413, `An event notification of ${declared} bytes is larger than ${MAX_BODY}`);
  }
  if (request.body === null) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of request.body) {
    size += chunk.byteLength;
    if (size > MAX_BODY) throw new HttpError(413, `An event notification larger than ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.byteLength;
  }
  return new TextDecoder().decode(all);
}

function log(services: Services, line: string): void {
  (services.log ?? console.log)(`events: ${line}`);
}

async function handle(
  services: Services,
  ctx: RouteContext,
  sns: SnsVerifier,
  confirm: (url: URL) => Promise<Response>,
): Promise<Response> {
  const text = await readBody(ctx.request);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new HttpError(
      400,
      'The event notification is not JSON: send the S3 event structure ({"Records": [...]}) or an SNS message',
    );
  }
  const outcome = isSnsMessage(body)
    ? await snsDelivery(services, body, sns, confirm)
    : await notification(services, body);
  return new Response(JSON.stringify(outcome), { headers: { "content-type": "application/json" } });
}

async function snsDelivery(
  services: Services,
  message: SnsMessage,
  sns: SnsVerifier,
  confirm: (url: URL) => Promise<Response>,
): Promise<EventOutcome> {
  try {
    await sns.verify(message);
  } catch (error) {
    if (error instanceof SnsSignatureError) throw new HttpError(403, error.message);
    throw error;
  }
  const none: EventOutcome = { records: 0, indexed: 0, removed: 0, ignored: 0 };
  switch (message.Type) {
    case "SubscriptionConfirmation": {
      let url: URL | undefined;
      try {
        url = new URL(message.SubscribeURL ?? "");
      } catch {
        // refused below
      }
      if (url === undefined || url.protocol !== "https:" || !/(^|\.)amazonaws\.com$/.test(url.hostname)) {
        throw new HttpError(
          400,
          `SubscribeURL ${
            JSON.stringify(message.SubscribeURL)
          } is not an https URL on amazonaws.com: not confirmed`,
        );
      }
      const response = await confirm(url);
      await response.body?.cancel();
      if (!response.ok) {
        throw new HttpError(
          502,
          `Confirming the SNS subscription to ${message.TopicArn}: ${url.host} answered ${response.status}`,
        );
      }
      log(services, `confirmed the SNS subscription to ${message.TopicArn}`);
      return none;
    }
    case "UnsubscribeConfirmation":
      log(services, `SNS unsubscribed this endpoint from ${message.TopicArn}`);
      return none;
    case "Notification": {
      let inner: unknown;
      try {
        inner = JSON.parse(message.Message);
      } catch {
        throw new HttpError(
          400,
          `The SNS notification ${message.MessageId} does not carry an S3 event (not JSON)`,
        );
      }
      return await notification(services, inner);
    }
    default:
      throw new HttpError(400, `SNS message type ${JSON.stringify(message.Type)} is not known`);
  }
}

async function notification(services: Services, body: unknown): Promise<EventOutcome> {
  let records: S3EventRecord[];
  try {
    records = parseS3Event(body);
  } catch (error) {
    if (error instanceof MalformedError) throw new HttpError(400, error.message);
    throw error;
  }
  const outcome: EventOutcome = { records: records.length, indexed: 0, removed: 0, ignored: 0 };
  const entries = await services.aets.entries();
  // one decision per object, however many records name it (AWS batches; senders repeat)
  const seen = new Set<string>();
  for (const record of records) {
    const aets = entries.filter(([, bucket]) => bucket === record.bucket).map(([aet]) => aet);
    if (aets.length === 0) {
      log(
        services,
        `bucket ${record.bucket} is not served by any AET (see AETS): ${record.eventName} ignored`,
      );
      outcome.ignored++;
      continue;
    }
    if (record.key === undefined) {
      log(
        services,
        `${record.bucket}/${record.rawKey} is outside the {study}/{series}/{sop}.dcm layout: ${record.eventName} ignored`,
      );
      outcome.ignored++;
      continue;
    }
    const id = `${record.bucket}\0${record.key}`;
    if (seen.has(id)) continue;
    seen.add(id);
    const info = await services.store.head(record.bucket, record.key);
    services.headerCache.forget(record.bucket, record.key);
    for (const aet of aets) {
      if (services.catalog === undefined) continue;
      if (info === null) {
        await services.catalog.removeInstances(aet, [record.key]);
        continue;
      }
      const filed = services.crawler === undefined
        ? "ignored"
        : await services.crawler.index(aet, record.bucket, info);
      if (filed === "failed") outcome.ignored++;
    }
    if (info === null) outcome.removed++;
    else outcome.indexed++;
  }
  return outcome;
}
