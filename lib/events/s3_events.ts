/**
 * The S3 event notification structure (AWS's `Records[]`, which Ceph RGW and MinIO push over HTTP too), taken
 * apart as each sender spells it:
 *
 * - AWS URL-encodes the key (spaces as `+`) and batches several records per message;
 * - MinIO prefixes event names with `s3:` (`s3:ObjectCreated:Put`) and encodes `/` as `%2F`;
 * - Ceph RGW sends the key raw (a `+` or `%` in it is itself) and a `sequencer` that does not sort by time.
 *
 * So a key has candidates (decoded and raw) and the server keeps the one that fits its layout; and the event
 * name only says a record is about an object: whether it is there is decided by a HEAD of the object, never
 * by the order or the name of the events (see bucket_events.ts).
 *
 * @module
 */

import { parseInstanceKey } from "../dicom/uid.ts";
import { MalformedError } from "../util/errors.ts";

/** One record of a notification: which object, and what the sender says happened. */
export interface S3EventRecord {
  /** `ObjectCreated:Put`, `ObjectRemoved:Delete`, ... (without MinIO's `s3:` prefix). */
  eventName: string;
  /** The bucket. */
  bucket: string;
  /** The key as sent. */
  rawKey: string;
  /** The key: the first candidate in the `{study}/{series}/{sop}.dcm` layout, else undefined. */
  key?: string;
  /** The object's size, when sent. */
  size?: number;
  /** The object's ETag, when sent (quotes stripped). */
  etag?: string;
  /** The sender's `sequencer`, when sent (logged only: Ceph's does not sort by time). */
  sequencer?: string;
}

/** The keys a sent key may stand for: decoded (AWS, MinIO) and as sent (Ceph), in that order, distinct. */
export function keyCandidates(sent: string): string[] {
  const out: string[] = [];
  try {
    out.push(decodeURIComponent(sent.replaceAll("+", " ")));
  } catch {
    // not URL-encoded (a raw "%"): only the raw key
  }
  try {
    out.push(decodeURIComponent(sent));
  } catch {
    // as above
  }
  out.push(sent);
  return [...new Set(out)];
}

/**
 * The records of a notification body (`{"Records": [...]}`), each with its key candidates resolved against the
 * layout; an S3 test event (`{"Event": "s3:TestEvent"}`, sent when a configuration is saved) has none. Throws a
 * `MalformedError` (400) for a body that is not a notification, or a record without an event name, bucket or
 * key, naming which one.
 *
 * @example
 * ```ts
 * import { parseS3Event } from "./s3_events.ts";
 * const [record] = parseS3Event({
 *   Records: [{ eventName: "s3:ObjectCreated:Put", s3: { bucket: { name: "pacs" }, object: { key: "1.2%2F1.2.3%2F1.2.3.4.dcm" } } }],
 * });
 * record.key; // "1.2/1.2.3/1.2.3.4.dcm"
 * ```
 */
export function parseS3Event(body: unknown): S3EventRecord[] {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new MalformedError(`Not an S3 event notification: expected a JSON object with "Records"`);
  }
  const object = body as Record<string, unknown>;
  if (object.Records === undefined && typeof object.Event === "string" && /TestEvent$/.test(object.Event)) {
    return [];
  }
  if (!Array.isArray(object.Records)) {
    throw new MalformedError(
      `Not an S3 event notification: "Records" is missing or not an array (send the S3 event structure: ` +
        `{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]})`,
    );
  }
  return object.Records.map((record: unknown, i: number): S3EventRecord => {
    const r = (typeof record === "object" && record !== null ? record : {}) as Record<string, unknown>;
    const s3 = (typeof r.s3 === "object" && r.s3 !== null ? r.s3 : {}) as Record<string, unknown>;
    const bucket = (s3.bucket as Record<string, unknown> | undefined)?.name;
    const o = (typeof s3.object === "object" && s3.object !== null ? s3.object : {}) as Record<
      string,
      unknown
    >;
    const eventName = typeof r.eventName === "string" ? r.eventName.replace(/^s3:/, "") : undefined;
    if (eventName === undefined || !/^Object(Created|Removed)/.test(eventName)) {
      throw new MalformedError(
        `Records[${i}] has no ObjectCreated:* or ObjectRemoved:* eventName (${JSON.stringify(r.eventName)})`,
      );
    }
    if (typeof bucket !== "string" || bucket === "") {
      throw new MalformedError(`Records[${i}] names no bucket (s3.bucket.name)`);
    }
    if (typeof o.key !== "string" || o.key === "") {
      throw new MalformedError(`Records[${i}] names no object key (s3.object.key)`);
    }
    const etag = typeof o.eTag === "string" ? o.eTag : typeof o.etag === "string" ? o.etag : undefined;
    return {
      eventName,
      bucket,
      rawKey: o.key,
      key: keyCandidates(o.key).find((key) => parseInstanceKey(key) !== null),
      size: typeof o.size === "number" ? o.size : undefined,
      etag: etag?.replaceAll('"', ""),
      sequencer: typeof o.sequencer === "string" ? o.sequencer : undefined,
    };
  });
}
