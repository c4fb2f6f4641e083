/** Store wrappers for tests: observe calls and open bodies, inject failures. */

import { FileStore } from "../lib/store/file_store.ts";
import { S3Store } from "../lib/store/s3/s3_store.ts";
import type { GetOptions, ObjectBody, ObjectStore } from "../lib/store/store.ts";
import { startS3 } from "./_s3server.ts";

/** A store that records calls and counts bodies that are still open. */
export interface ObservedStore extends ObjectStore {
  calls: string[];
  /** Bodies handed out and not yet finished, errored or cancelled. */
  openBodies(): number;
}

/** Options for {@linkcode observe}. */
export interface ObserveOptions {
  /** Make the body of this key error after this many bytes. */
  failBody?: { key: string; afterBytes: number };
}

/** Wraps `store` to record calls and track open bodies. */
export function observe(store: ObjectStore, options: ObserveOptions = {}): ObservedStore {
  const calls: string[] = [];
  let open = 0;
  const wrapBody = (key: string, object: ObjectBody): ObjectBody => {
    open++;
    let closed = false;
    const close = () => {
      if (!closed) {
        closed = true;
        open--;
      }
    };
    const reader = object.body.getReader();
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { value, done } = await reader.read();
          if (done) {
            close();
            controller.close();
            return;
          }
          const fail = options.failBody;
          if (fail && fail.key === key && sent + value.byteLength > fail.afterBytes) {
            close();
            await reader.cancel();
            controller.error(new Error(`injected failure reading ${key}`));
            return;
          }
          sent += value.byteLength;
          controller.enqueue(value);
        } catch (error) {
          close();
          throw error;
        }
      },
      async cancel(reason) {
        close();
        await reader.cancel(reason);
      },
    });
    return { ...object, body };
  };
  return {
    kind: store.kind,
    location: store.location,
    calls,
    openBodies: () => open,
    listBuckets: (o) => (calls.push("listBuckets"), store.listBuckets(o)),
    list: (bucket, prefix, o) => (calls.push(`list ${prefix}`), store.list(bucket, prefix, o)),
    head: (bucket, key, o) => (calls.push(`head ${key}`), store.head(bucket, key, o)),
    async get(bucket: string, key: string, o?: GetOptions) {
      calls.push(o?.range ? `get ${key} ${o.range.start}-${o.range.end ?? ""}` : `get ${key}`);
      const object = await store.get(bucket, key, o);
      return object && wrapBody(key, object);
    },
    put: (bucket, key, body, o) => (calls.push(`put ${key}`), store.put(bucket, key, body, o)),
    delete: (bucket, key, o) => (calls.push(`delete ${key}`), store.delete(bucket, key, o)),
    check: (bucket, o) => (calls.push("check"), store.check(bucket, o)),
  };
}

/** `inner` with every call passed on, but for `overrides`. */
export function delegating(inner: ObjectStore, overrides: Partial<ObjectStore> = {}): ObjectStore {
  return {
    kind: inner.kind,
    location: inner.location,
    listBuckets: (o) => inner.listBuckets(o),
    list: (b, p, o) => inner.list(b, p, o),
    head: (b, k, o) => inner.head(b, k, o),
    get: (b, k, o) => inner.get(b, k, o),
    put: (b, k, body, o) => inner.put(b, k, body, o),
    delete: (b, k, o) => inner.delete(b, k, o),
    check: (b, o) => inner.check(b, o),
    ...overrides,
  };
}

/**
 * `bytes` as a byte stream (`type: "bytes"`, as `fetch` and S3 bodies are), at most `piece` bytes a read;
 * with `failAt`, a read from that offset on errors ("connection reset").
 */
export function byteStream(
  bytes: Uint8Array,
  piece: number,
  options: { failAt?: number; autoAllocateChunkSize?: number } = {},
): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: options.autoAllocateChunkSize,
    pull(controller) {
      if (options.failAt !== undefined && at >= options.failAt) throw new Error("connection reset");
      const request = controller.byobRequest!;
      const view = new Uint8Array(request.view!.buffer, request.view!.byteOffset, request.view!.byteLength);
      const n = Math.min(view.byteLength, piece, bytes.byteLength - at);
      view.set(bytes.subarray(at, at + n));
      at += n;
      request.respond(n);
      if (at === bytes.byteLength) controller.close();
    },
  });
}

/** Resolves once `condition()` holds, or rejects after `ms`. */
export async function eventually(condition: () => boolean, ms = 5_000, what = "condition"): Promise<void> {
  const until = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** An empty bucket of a store for one suite, and how to remove it. */
export interface SuiteBucket {
  store: ObjectStore;
  bucket: string;
  cleanup(): Promise<void>;
}

/**
 * Registers `suite` twice: on a local folder (`FileStore`) and on S3 (s3rver, or the server of
 * `TEST_S3_ENDPOINT`), each run with an empty bucket of its own.
 */
export function onFolderAndS3(
  name: string,
  suite: (t: Deno.TestContext, make: () => Promise<SuiteBucket>) => Promise<void>,
): void {
  Deno.test(`${name} from a local folder`, async (t) => {
    await suite(t, async () => {
      const root = await Deno.makeTempDir({ prefix: "dicomweb-suite-" });
      await Deno.mkdir(`${root}/suite`);
      return {
        store: new FileStore(root),
        bucket: "suite",
        cleanup: () => Deno.remove(root, { recursive: true }),
      };
    });
  });
  Deno.test(`${name} from S3`, async (t) => {
    const s3 = await startS3();
    try {
      await suite(t, async () => {
        const bucket = s3.uniqueBucket("suite");
        await s3.createBucket(bucket);
        const store = new S3Store({
          endpoint: s3.endpoint,
          region: s3.region,
          credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
        });
        return { store, bucket, cleanup: async () => await store.close?.() };
      });
    } finally {
      await s3.stop();
    }
  });
}
