/**
 * Webhooks (`WEBHOOKS`): every change feed entry this process writes is POSTed to each webhook that wants its
 * type, as a CloudEvents 1.0 structured-mode JSON event:
 *
 * ```json
 * {"specversion": "1.0", "id": "PACS-42", "source": "https://pacs.example.org/dicomweb/aets/PACS",
 *  "type": "org.dicomweb.instance.created", "time": "2026-12-05T08:00:00.000Z",
 *  "subject": "studies/1.2/series/1.2.3/instances/1.2.3.4", "datacontenttype": "application/json",
 *  "data": {"aet": "PACS", "studyInstanceUid": "1.2", "seriesInstanceUid": "1.2.3", "sopInstanceUid": "1.2.3.4",
 *           "sequence": 42}}
 * ```
 *
 * `type` is `org.dicomweb.instance.created` or `org.dicomweb.instance.deleted`; `id` is unique per event
 * (`AET-Sequence`, the change feed's Sequence), so a receiver can drop a repeated delivery.
 *
 * Each request carries `X-Signature-256: sha256=<hex>`, the HMAC-SHA256 of the raw request body with the
 * webhook's `secret` (as GitHub signs its webhooks): the receiver computes it over the bytes it received and
 * compares in constant time before trusting anything in the body.
 *
 * Delivery never blocks the request that caused it: events wait in a bounded queue per webhook (default 10,000)
 * and one sender per webhook posts them in order. A 2xx delivers; a network error, a timeout (10 s), 408, 429
 * or a 5xx is retried after 1 s, 5 s, 25 s, 2 min and 10 min, then the event is dropped; another 4xx drops it at
 * once. A full queue drops the new event. Every drop is counted (`count`, `/metrics`
 * `dicomweb_webhook_events_total{outcome="dropped"|"failed"}`) and logged.
 *
 * @module
 */

import { createHmac } from "node:crypto";
import type { ChangeFeedEntry } from "../catalog/catalog.ts";
import type { WebhookConfig } from "../config/config.ts";

/** The header carrying the body's HMAC-SHA256: `sha256=<hex>`. */
export const SIGNATURE_HEADER = "X-Signature-256";

/** What happened to one event for one webhook (for `/metrics`). */
export type WebhookOutcome = "delivered" | "retried" | "failed" | "dropped";

/** Options for {@linkcode WebhookDispatcher}. */
export interface WebhookDispatcherOptions {
  /** The webhooks (`WEBHOOKS`). */
  webhooks: WebhookConfig[];
  /** The server's public base URL (`PUBLIC_URL` with `BASE_PATH`): the events' `source` is `{base}/aets/{aet}`. */
  base: string;
  /** Events queued per webhook before new ones are dropped (default 10,000). */
  queueSize?: number;
  /** Milliseconds before each retry (default 1 s, 5 s, 25 s, 2 min, 10 min). */
  retryDelaysMs?: number[];
  /** The longest one delivery may take (default 10 s). */
  timeoutMs?: number;
  /** Counts outcomes (the server wires `/metrics`). */
  count?: (outcome: WebhookOutcome) => void;
  /** Where drops and failures are logged. */
  log?: (line: string) => void;
  /** The HTTP client (default `fetch`). */
  fetch?: typeof fetch;
}

/** A CloudEvents 1.0 event as sent. */
export interface CloudEvent {
  /** `1.0`. */
  specversion: "1.0";
  /** `AET-Sequence`. */
  id: string;
  /** `{base}/aets/{aet}`. */
  source: string;
  /** `org.dicomweb.instance.created` or `.deleted`. */
  type: string;
  /** When the change was recorded (ISO 8601 UTC). */
  time: string;
  /** `studies/{study}/series/{series}/instances/{sop}`. */
  subject: string;
  /** `application/json`. */
  datacontenttype: "application/json";
  /** What changed. */
  data: {
    aet: string;
    studyInstanceUid: string;
    seriesInstanceUid: string;
    sopInstanceUid: string;
    sequence: number;
  };
}

/** The CloudEvent of a change feed entry. */
export function cloudEvent(entry: ChangeFeedEntry, base: string): CloudEvent {
  return {
    specversion: "1.0",
    id: `${entry.aet}-${entry.sequence}`,
    source: `${base}/aets/${entry.aet}`,
    type: entry.action === "create" ? "org.dicomweb.instance.created" : "org.dicomweb.instance.deleted",
    time: new Date(entry.time).toISOString(),
    subject: `studies/${entry.study}/series/${entry.series}/instances/${entry.sop}`,
    datacontenttype: "application/json",
    data: {
      aet: entry.aet,
      studyInstanceUid: entry.study,
      seriesInstanceUid: entry.series,
      sopInstanceUid: entry.sop,
      sequence: entry.sequence,
    },
  };
}

/** The `X-Signature-256` value of `body` under `secret`. */
export function signatureOf(body: string, secret: string): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}

/** One webhook's queue and sender. */
class Target {
  readonly queue: CloudEvent[] = [];
  sending = false;
  timer?: ReturnType<typeof setTimeout>;
  wake?: () => void;
  constructor(readonly config: WebhookConfig) {}
  wants(type: string): boolean {
    return this.config.events.includes("*") || this.config.events.includes(type);
  }
}

/** Queues and sends the events of every webhook (see the module doc). */
export class WebhookDispatcher {
  readonly #targets: Target[];
  readonly #options: WebhookDispatcherOptions;
  readonly #fetch: typeof fetch;
  readonly #delays: number[];
  readonly #queueSize: number;
  #closed = false;
  /** Events dropped (queue full, or retries exhausted, or refused). */
  dropped = 0;
  /** Events delivered. */
  delivered = 0;

  /** A dispatcher for `options.webhooks`; nothing is sent until {@linkcode WebhookDispatcher.publish}. */
  constructor(options: WebhookDispatcherOptions) {
    this.#options = options;
    this.#targets = options.webhooks.map((config) => new Target(config));
    this.#fetch = options.fetch ?? fetch;
    this.#delays = options.retryDelaysMs ?? [1_000, 5_000, 25_000, 120_000, 600_000];
    this.#queueSize = options.queueSize ?? 10_000;
  }

  /** Events waiting, over all webhooks. */
  get pending(): number {
    return this.#targets.reduce((n, t) => n + t.queue.length, 0);
  }

  /** Queues `entries` for every webhook that wants them; returns at once. */
  publish(entries: readonly ChangeFeedEntry[]): void {
    if (this.#closed) return;
    for (const entry of entries) {
      const event = cloudEvent(entry, this.#options.base);
      for (const target of this.#targets) {
        if (!target.wants(event.type)) continue;
        if (target.queue.length >= this.#queueSize) {
          this.#drop(target, event, `the queue holds ${this.#queueSize} events already`, "dropped");
          continue;
        }
        target.queue.push(event);
        if (!target.sending) this.#send(target);
      }
    }
  }

  #drop(target: Target, event: CloudEvent, why: string, outcome: "dropped" | "failed"): void {
    this.dropped++;
    this.#options.count?.(outcome);
    this.#options.log?.(`webhook ${target.config.url}: event ${event.id} (${event.type}) dropped: ${why}`);
  }

  #sleep(target: Target, ms: number): Promise<void> {
    return new Promise((resolve) => {
      target.wake = resolve;
      const timer = setTimeout(resolve, ms);
      target.timer = timer;
      Deno.unrefTimer(timer);
    });
  }

  async #send(target: Target): Promise<void> {
    target.sending = true;
    try {
      while (target.queue.length > 0 && !this.#closed) {
        const event = target.queue[0];
        const body = JSON.stringify(event);
        for (let attempt = 0;; attempt++) {
          const result = await this.#post(target, body);
          if (this.#closed) return;
          if (result === "ok") {
            this.delivered++;
            this.#options.count?.("delivered");
            break;
          }
          if (result.retry && attempt < this.#delays.length) {
            this.#options.count?.("retried");
            await this.#sleep(target, this.#delays[attempt]);
            if (this.#closed) return;
            continue;
          }
          this.#drop(
            target,
            event,
            result.retry ? `${result.why}, after ${attempt} retries` : `${result.why} (not retried)`,
            "failed",
          );
          break;
        }
        target.queue.shift();
      }
    } finally {
      target.sending = false;
    }
  }

  async #post(target: Target, body: string): Promise<"ok" | { retry: boolean; why: string }> {
    try {
      const response = await this.#fetch(target.config.url, {
        method: "POST",
        headers: {
          "content-type": "application/cloudevents+json; charset=utf-8",
          [SIGNATURE_HEADER]: signatureOf(body, target.config.secret),
        },
        body,
        signal: AbortSignal.timeout(this.#options.timeoutMs ?? 10_000),
      });
      await response.body?.cancel();
      if (response.ok) return "ok";
      const retry = response.status >= 500 || response.status === 408 || response.status === 429;
      return { retry, why: `it answered ${response.status}` };
    } catch (error) {
      return { retry: true, why: `it cannot be reached: ${(error as Error).message}` };
    }
  }

  /** Stops sending (queued events are dropped uncounted) and cancels the retry timers. */
  close(): void {
    this.#closed = true;
    for (const target of this.#targets) {
      clearTimeout(target.timer);
      target.wake?.();
      target.queue.length = 0;
    }
  }
}
