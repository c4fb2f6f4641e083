/**
 * Which AETs exist and which bucket each one reads: fixed by `AETS`, or discovered from the store
 * (folders of `DATA_DIR`, buckets the S3 credentials can list) and refreshed when an unknown AET is asked for.
 *
 * @module
 */

import type { ObjectStore } from "../store/store.ts";

/** Resolves AET names to buckets. */
export class AetRegistry {
  readonly #store: ObjectStore;
  readonly #configured?: Map<string, string>;
  #discovered = new Map<string, string>();
  #refreshedAt = -Infinity;
  #refreshing?: Promise<void>;
  /** Minimum milliseconds between two discoveries triggered by unknown AETs. */
  readonly refreshInterval: number;

  /** The AETs of `store`: configured ones, or every bucket (folder) it lists. */
  constructor(
    store: ObjectStore,
    options: { configured?: Map<string, string>; refreshInterval?: number } = {},
  ) {
    this.#store = store;
    this.#configured = options.configured;
    this.refreshInterval = options.refreshInterval ?? 5_000;
  }

  /** Whether the AETs come from configuration rather than discovery. */
  get fixed(): boolean {
    return this.#configured !== undefined;
  }

  /** Discovers AETs from the store now (no-op when they are configured). */
  async refresh(): Promise<void> {
    if (this.#configured) return;
    this.#refreshing ??= (async () => {
      try {
        const buckets = await this.#store.listBuckets();
        this.#discovered = new Map(buckets.map((b) => [b, b]));
        this.#refreshedAt = performance.now();
      } finally {
        this.#refreshing = undefined;
      }
    })();
    await this.#refreshing;
  }

  /** AET → bucket, sorted by AET. */
  async entries(): Promise<[string, string][]> {
    if (!this.#configured && performance.now() - this.#refreshedAt > this.refreshInterval) {
      await this.refresh();
    }
    const map = this.#configured ?? this.#discovered;
    return [...map.entries()].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
  }

  /**
   * Creates the AET `aet` (its bucket of the same name) when the AETs are discovered and the store can create
   * buckets (a local folder); resolves to its bucket, or `undefined` when AETs cannot be created here.
   * Zero-config local mode: the first STOW-RS to a new AET makes its folder.
   */
  async create(aet: string): Promise<string | undefined> {
    if (this.#configured || this.#store.createBucket === undefined) return undefined;
    await this.#store.createBucket(aet);
    this.#discovered.set(aet, aet);
    return aet;
  }

  /** The bucket of `aet`, or `undefined` when there is no such AET. */
  async bucket(aet: string): Promise<string | undefined> {
    if (this.#configured) return this.#configured.get(aet);
    const known = this.#discovered.get(aet);
    if (known !== undefined) return known;
    if (performance.now() - this.#refreshedAt > this.refreshInterval) {
      await this.refresh();
      return this.#discovered.get(aet);
    }
    return undefined;
  }
}
