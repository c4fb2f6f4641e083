/**
 * The store read budget (`REQUEST_READ_BUDGET_MB`): a store wrapper that caps the bytes one request may have
 * open from the store at once, per request through `AsyncLocalStorage`.
 *
 * @module
 */

import { AsyncLocalStorage } from "node:async_hooks";
import type { GetOptions, ObjectBody, ObjectStore } from "./store.ts";
import { OutOfRangeError } from "../util/errors.ts";
import { readInContext } from "../util/streams.ts";

interface Budget {
  max: number;
  open: number;
  waiting: { bytes: number; grant: () => void }[];
}

/**
 * Caps the bytes one request may have open from the store at once. {@linkcode ReadBudget.store} wraps the
 * shared store; {@linkcode ReadBudget.scope} runs a request's handler (and later its body) with a budget of
 * its own. A `get` counts the bytes it asks for (its range, or the object's size) until its body ends or is
 * cancelled; one that would go over waits for earlier ones to finish, except that a request with nothing
 * open always proceeds, and a wait longer than `maxWaitMs` (default 10 s) proceeds anyway, so a request that
 * reads a header range while the same object streams cannot deadlock on itself. Reads outside a scope
 * (background work such as crawls) are not counted. Whole-object reads are counted once the store says how
 * long they are (no extra HEAD); ranged reads before they are sent. A body read through its reader costs one
 * promise reaction per read (no stream layer), and the response costs no context switch per chunk.
 *
 * @example
 * ```ts ignore
 * const budget = new ReadBudget(256 * 1024 * 1024);
 * const store = budget.store(new S3Store(...));           // main.ts
 * response = await budget.scope(() => dispatch(request)); // app.ts
 * ```
 */
export class ReadBudget {
  /** The bytes one request may have open (0: no limit). */
  readonly maxBytes: number;
  /** Longest a read waits for budget before it proceeds anyway (a request never deadlocks on itself). */
  readonly maxWaitMs: number;
  readonly #context = new AsyncLocalStorage<Budget>();

  /** `maxBytes` = 0 turns the budget off (the wrapped store passes through). */
  constructor(maxBytes: number, options: { maxWaitMs?: number } = {}) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
      throw new OutOfRangeError(`Invalid read budget: ${maxBytes}`);
    }
    this.maxBytes = maxBytes;
    this.maxWaitMs = options.maxWaitMs ?? 10_000;
  }

  /**
   * Runs `handler` under a fresh budget; the body of the response it returns keeps that budget as it is
   * pulled (the HTTP server pulls it from outside the handler's async context).
   */
  async scope(handler: () => Promise<Response> | Response): Promise<Response> {
    if (this.maxBytes === 0) return await handler();
    const budget: Budget = { max: this.maxBytes, open: 0, waiting: [] };
    return await this.#context.run(budget, async () => {
      const response = await handler();
      if (response.body === null) return response;
      return new Response(readInContext(response.body), {
        status: response.status,
        statusText: response.statusText,
        headers: response.headers,
      });
    });
  }

  /** Bytes open in the current scope (for tests and diagnostics); 0 outside a scope. */
  openBytes(): number {
    return this.#context.getStore()?.open ?? 0;
  }

  /** `store` with every `get` inside a {@linkcode ReadBudget.scope} counted against that scope's budget. */
  store(store: ObjectStore): ObjectStore {
    if (this.maxBytes === 0) return store;
    const context = this.#context;
    const maxWait = this.maxWaitMs;
    const get = async (bucket: string, key: string, options?: GetOptions): Promise<ObjectBody | null> => {
      const budget = context.getStore();
      if (budget === undefined) return await store.get(bucket, key, options);
      // A range with an end is counted before it is asked for; a whole object once its length is known
      // (a HEAD first would cost a round trip per object).
      const range = options?.range;
      let want = range?.end !== undefined ? range.end - range.start + 1 : 0;
      if (want > 0) await take(budget, want, maxWait, options?.signal);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        give(budget, want);
      };
      let object: ObjectBody | null;
      try {
        object = await store.get(bucket, key, options);
        if (object !== null && want === 0) {
          want = object.length;
          try {
            await take(budget, want, maxWait, options?.signal);
          } catch (error) {
            want = 0;
            await object.body.cancel().catch(() => {});
            throw error;
          }
        }
      } catch (error) {
        release();
        throw error;
      }
      if (object === null) {
        release();
        return null;
      }
      // A body is read through its reader (openInstance) or by `new Response(body)`; either way one promise
      // reaction per read and no byte-stream layer (a range through one cost a 512 KiB frame ~1.2 ms of CPU).
      return { ...object, body: new ReleasingBody(object.body, release) };
    };
    return {
      get kind() {
        return store.kind;
      },
      get location() {
        return store.location;
      },
      listBuckets: (options) => store.listBuckets(options),
      list: (bucket, prefix, options) => store.list(bucket, prefix, options),
      head: (bucket, key, options) => store.head(bucket, key, options),
      get,
      put: (bucket, key, body, options) => store.put(bucket, key, body, options),
      delete: (bucket, key, options) => store.delete(bucket, key, options),
      check: (bucket, options) => store.check(bucket, options),
      close: () => store.close?.(),
    };
  }
}

function take(budget: Budget, bytes: number, maxWaitMs: number, signal?: AbortSignal): Promise<void> {
  if (budget.open === 0 || (budget.waiting.length === 0 && budget.open + bytes <= budget.max)) {
    budget.open += bytes;
    return Promise.resolve();
  }
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const leave = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      const i = budget.waiting.indexOf(entry);
      if (i >= 0) budget.waiting.splice(i, 1);
    };
    const entry = {
      bytes,
      grant: () => {
        leave();
        budget.open += bytes;
        resolve();
      },
    };
    const onAbort = () => {
      leave();
      reject(signal!.reason);
    };
    // Past the wait limit the read goes ahead over budget (e.g. a header read while the same object streams).
    const timer = setTimeout(entry.grant, maxWaitMs);
    signal?.addEventListener("abort", onAbort, { once: true });
    budget.waiting.push(entry);
  });
}

function give(budget: Budget, bytes: number): void {
  budget.open -= bytes;
  while (budget.waiting.length > 0) {
    const next = budget.waiting[0];
    if (budget.open !== 0 && budget.open + next.bytes > budget.max) break;
    next.grant(); // removes itself from the queue
  }
}

/**
 * A body that calls `release` once when it ends, fails or is cancelled, at the cost of one
 * promise reaction per read and no stream layer: {@linkcode ReleasingBody.getReader} (how `openInstance` reads
 * a whole object) hands out the store's own reader with its `read` and `cancel` watched, so a byte stream stays
 * one (BYOB reads land in the reader's buffer). What reads the stream without `getReader` — `new Response(body)`,
 * `pipeTo`, `for await` — reads this stream itself: a layer that takes the store's reader on its first pull.
 */
class ReleasingBody extends ReadableStream<Uint8Array> {
  readonly #store: ReadableStream<Uint8Array>;
  readonly #release: () => void;

  constructor(store: ReadableStream<Uint8Array>, release: () => void) {
    let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
    super({
      async pull(controller) {
        try {
          reader ??= store.getReader();
          const { value, done } = await reader.read();
          if (done) {
            release();
            controller.close();
          } else controller.enqueue(value);
        } catch (error) {
          release();
          throw error;
        }
      },
      async cancel(reason) {
        release();
        await (reader ?? store).cancel(reason);
      },
    }, { highWaterMark: 0 });
    this.#store = store;
    this.#release = release;
  }

  /** Locked while this stream or the store's is being read. */
  override get locked(): boolean {
    return super.locked || this.#store.locked;
  }

  /** The store's own reader, watched (this stream's when it is already being read, which refuses). */
  override getReader(options: { mode: "byob" }): ReadableStreamBYOBReader;
  override getReader(options?: { mode?: undefined }): ReadableStreamDefaultReader<Uint8Array>;
  override getReader(
    options?: { mode?: "byob" },
  ): ReadableStreamDefaultReader<Uint8Array> | ReadableStreamBYOBReader {
    if (super.locked) return super.getReader(options as { mode: "byob" });
    const reader = this.#store.getReader(options as { mode: "byob" }) as
      | ReadableStreamDefaultReader<Uint8Array>
      | ReadableStreamBYOBReader;
    const release = this.#release;
    const read = reader.read as (...args: unknown[]) => Promise<ReadableStreamReadResult<Uint8Array>>;
    const cancel = reader.cancel;
    const ended = (result: ReadableStreamReadResult<Uint8Array>) => {
      if (result.done) release();
      return result;
    };
    const failed = (error: unknown): never => {
      release();
      throw error;
    };
    (reader as { read: unknown }).read = (...args: unknown[]) => read.apply(reader, args).then(ended, failed);
    reader.cancel = (reason?: unknown) => {
      release();
      return cancel.call(reader, reason);
    };
    return reader;
  }

  /** Cancels the store's stream (refused while either is being read, as any stream's `cancel`). */
  override cancel(reason?: unknown): Promise<void> {
    if (super.locked) return super.cancel(reason);
    if (this.#store.locked) {
      return Promise.reject(new TypeError("Cannot cancel a stream that is being read: cancel its reader"));
    }
    this.#release();
    return this.#store.cancel(reason);
  }
}
