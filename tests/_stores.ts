/** Store wrappers for tests: observe calls and open bodies, inject failures. */

import type { GetOptions, ObjectBody, ObjectStore } from "../lib/store/store.ts";

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

/** Resolves once `condition()` holds, or rejects after `ms`. */
export async function eventually(condition: () => boolean, ms = 5_000, what = "condition"): Promise<void> {
  const until = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
