/**
 * Instances on their way into the catalog in batches: {@linkcode CatalogBatch} collects what every request
 * storing into one AET has stored, and files them together (one `recordInstances` call, one transaction).
 *
 * @module
 */

import type { CatalogIngest, InstanceToRecord, RecordOutcome } from "./catalog.ts";

/** Stored instances recorded in the catalog at once, at most. */
const CATALOG_BATCH = 50;

/** How long a stored instance waits at most for others to be recorded with, while the request is read. */
const CATALOG_WAIT_MS = 250;

/**
 * Stored instances of one AET on their way to the catalog, from every request storing into it at once,
 * recorded in batches ({@linkcode CatalogIngest.recordInstances}: one transaction, each series and study refreshed
 * once per batch instead of once per instance): when {@linkcode CATALOG_BATCH} are waiting, when the first
 * has waited {@linkcode CATALOG_WAIT_MS} (a long request becomes searchable as it goes), and on
 * {@linkcode CatalogBatch.flush} (a job calls it once no more of its own can come). Each request's response
 * waits for its instances' outcomes.
 */
export class CatalogBatch {
  #catalog: CatalogIngest;
  #aet: string;
  #bucket: string;
  #waiting: { item: InstanceToRecord; settle: (result: PromiseSettledResult<RecordOutcome>) => void }[] = [];
  #timer?: ReturnType<typeof setTimeout>;

  /** Instances of `aet` (in `bucket`) go to `catalog`. */
  constructor(catalog: CatalogIngest, aet: string, bucket: string) {
    this.#catalog = catalog;
    this.#aet = aet;
    this.#bucket = bucket;
  }

  /** Resolves to how the catalog filed `item` (rejected: it could not), never rejects. */
  add(item: InstanceToRecord): Promise<PromiseSettledResult<RecordOutcome>> {
    const filed = new Promise<PromiseSettledResult<RecordOutcome>>((settle) =>
      this.#waiting.push({ item, settle })
    );
    if (this.#waiting.length >= CATALOG_BATCH) this.flush();
    else this.#timer ??= setTimeout(() => this.flush(), CATALOG_WAIT_MS);
    return filed;
  }

  /** Records the waiting instances now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#waiting;
    if (batch.length === 0) return;
    this.#waiting = [];
    new Promise<PromiseSettledResult<RecordOutcome>[]>((resolve) =>
      resolve(this.#catalog.recordInstances(this.#aet, this.#bucket, batch.map((b) => b.item)))
    ).then(
      (results) =>
        batch.forEach((b, i) =>
          b.settle(results[i] ?? { status: "rejected", reason: new Error("The catalog gave no outcome") })
        ),
      (reason) => batch.forEach((b) => b.settle({ status: "rejected", reason })),
    );
  }
}
