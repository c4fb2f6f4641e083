/**
 * One STOW-RS request at work ({@linkcode StowJob}): its parts read in order, each checked, written
 * atomically under its layout key while the next is read, replacements told apart, stored instances sent to
 * the catalog in batches, and the outcome of every part kept for the response.
 *
 * @module
 */

import { ChunkLedger, freeBuffer } from "../util/handoff.ts";
import { HttpError } from "../http/errors.ts";
import type { MultipartPart } from "../http/multipart_parser.ts";
import { readHeader } from "../dicom/part10.ts";
import { Part10Check } from "../dicom/part10_check.ts";
import type { Services } from "./services.ts";
import type { ObjectInfo } from "../store/store.ts";
import { instanceKey } from "../dicom/uid.ts";
import type { CatalogBatch } from "../catalog/batch.ts";
import type { Gate } from "../util/gate.ts";
import { FAILURE, type Outcome } from "./stow_response.ts";
import {
  checkDicm,
  identify,
  identifyPrefix,
  type Identity,
  incomplete,
  isDicomPart,
  memorySource,
  NotKept,
  type Prefix,
  readPrefix,
  Refusal,
  streamedSource,
  Tail,
  TAIL_BYTES,
} from "./stow_part.ts";
import type { Part10Header } from "../dicom/dataset.ts";
import { type OpenedInstance, openInstance } from "../objects/open_instance.ts";
import { skipBytes } from "../util/streams.ts";
import { MalformedError } from "../util/errors.ts";

const MIB = 1024 * 1024;

export interface JobOptions {
  aet: string;
  bucket: string;
  urlStudy?: string;
  bufferBytes: number;
  gates: Gates;
  /** Where stored instances wait for the catalog (none without a catalog). */
  catalog?: CatalogBatch;
  /** Replace a stored object that differs (default: refuse it as a conflict, write nothing). */
  overwrite?: boolean;
}

/** What one write did: the object now stored, its header, and whether it was there before. */
interface Written {
  info: ObjectInfo;
  header: Part10Header;
  replaced: boolean;
  /** The same bytes were stored already: nothing was written. */
  duplicate: boolean;
}

/** One STOW-RS request: reads the parts, writes them, and builds the response. */
export class StowJob {
  #services: Services;
  #options: JobOptions;
  #outcomes: Outcome[] = [];
  #inFlight = new Set<Promise<void>>();
  /** Instances seen per series prefix, listings of series prefixes, and the keys this request wrote. */
  #seriesSeen = new Map<string, number>();
  #listings = new Map<string, Promise<Set<string> | null>>();
  #written = new Set<string>();
  /** The last write per key, so two parts with one SOP Instance UID are written in request order. */
  #byKey = new Map<string, Promise<void>>();
  /** Why reading the request stopped early. */
  #abort?: unknown;
  /** Whether parts may still come, and the writes scheduled and not over (see {@linkcode StowJob.#serialised}). */
  #reading = true;
  #writing = 0;
  /** Frees the request's buffers once their parts are copied or written. */
  #ledger = new ChunkLedger();

  constructor(services: Services, options: JobOptions) {
    this.#services = services;
    this.#options = options;
  }

  async run(parts: AsyncIterable<MultipartPart>): Promise<void> {
    try {
      for await (const part of parts) await this.#receive(part);
    } catch (error) {
      this.#abort = error;
    }
    this.#reading = false;
    this.#catalogIfIdle();
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight);
    if (
      this.#abort !== undefined && !(this.#abort instanceof SyntaxError) &&
      !(this.#abort instanceof HttpError)
    ) {
      const why = this.#abort instanceof Error ? this.#abort.message : String(this.#abort);
      this.#abort = new HttpError(400, `The STOW-RS request body could not be read to its end: ${why}`, {
        cause: this.#abort,
      });
    }
  }

  async #receive(part: MultipartPart): Promise<void> {
    const { index } = part;
    const type = part.headers.get("content-type");
    if (type !== null && !isDicomPart(type)) {
      await part.body.cancel();
      this.#fail(
        new Refusal(
          FAILURE.cannotUnderstand,
          `Part ${index} is ${type}: only application/dicom parts are stored`,
        ),
        index,
      );
      return;
    }
    const { held } = this.#options.gates;
    await held.enter();
    let writing: Promise<void> | undefined;
    let head: Prefix | undefined;
    const done = () => {
      held.leave();
      if (head?.own) freeBuffer(head.own);
      else if (head) this.#ledger.release(head.bytes);
    };
    try {
      const reader = part.body.getReader();
      try {
        head = await readPrefix(reader, this.#options.bufferBytes, this.#ledger);
      } catch (error) {
        this.#fail(incomplete(error, index), index);
        throw error;
      }
      if (head.ended) writing = (await this.#receiveWhole(head.bytes, index)).written;
      else {
        // the store may keep what it is given: none of these buffers is freed here
        this.#ledger.pin(head.bytes);
        this.#ledger.pin(head.next!);
        await this.#receiveStream(head.bytes, head.next!, reader, index);
      }
    } finally {
      // a whole part stays held until it is written (not until it is in the catalog)
      if (writing) writing.finally(done);
      else done();
    }
  }

  /**
   * A part read whole: checked, then written in the background. Resolves once checked (in request order, so
   * writes of one key keep it), to the write (none when the part failed); the write never rejects.
   */
  async #receiveWhole(bytes: Uint8Array, index: number): Promise<{ written?: Promise<void> }> {
    const name = `part ${index}`;
    let id: Identity | undefined;
    let header: Part10Header;
    try {
      checkDicm(bytes, name);
      header = await readHeader(memorySource(bytes, name), this.#parseOptions());
      id = identify(header, name);
      if (!header.deflated) {
        const check = new Part10Check(header, name);
        check.push(bytes.subarray(header.datasetOffset));
        check.finish();
      }
      this.#checkStudy(id);
    } catch (error) {
      this.#fail(error, index, id);
      return {};
    }
    const { gates } = this.#options;
    const written = this.#serialised(
      instanceKey(id.study, id.series, id.sop),
      async (key) => {
        const { store } = this.#services;
        const { bucket } = this.#options;
        const replaced = await this.#exists(key);
        if (replaced && !this.#options.overwrite) {
          const stored = await this.#compare(key, singleChunk(bytes), header.datasetOffset, id);
          return { info: stored, header, replaced: false, duplicate: true };
        }
        await gates.writes.enter();
        try {
          const info = await store.put(bucket, key, bytes, {
            size: bytes.byteLength,
            contentType: "application/dicom",
          });
          return { info, header, replaced, duplicate: false };
        } finally {
          gates.writes.leave();
        }
      },
      id,
      index,
    );
    return { written };
  }

  /** A part larger than the buffer: checked on its front, then streamed to the store while it is followed. */
  async #receiveStream(
    prefix: Uint8Array,
    next: Uint8Array,
    reader: ReadableStreamDefaultReader<Uint8Array>,
    index: number,
  ): Promise<void> {
    const name = `part ${index}`;
    let id: Identity;
    let check: Part10Check;
    let datasetOffset: number;
    try {
      ({ id, check, datasetOffset } = identifyPrefix(prefix, name));
      this.#checkStudy(id);
    } catch (error) {
      await reader.cancel().catch(() => {});
      this.#fail(error, index);
      return;
    }
    const key = instanceKey(id.study, id.series, id.sop);
    let sourceError: { error: unknown } | undefined;
    const tail = new Tail(TAIL_BYTES);
    let size = prefix.byteLength;
    let verified: Part10Header | undefined;
    let pending: Uint8Array | undefined = next;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(prefix);
      },
      pull: async (controller) => {
        let result: ReadableStreamReadResult<Uint8Array>;
        if (pending) {
          result = { done: false, value: pending };
          pending = undefined;
        } else {
          try {
            result = await reader.read();
          } catch (error) {
            sourceError = { error };
            throw error;
          }
        }
        try {
          if (result.done) {
            check.finish();
            verified = await readHeader(
              streamedSource(name, size, prefix, tail, check.recorded, null),
              { ...this.#parseOptions(), initialBytes: prefix.byteLength },
            ).catch((error) => {
              if (error instanceof NotKept) return undefined; // checked on the stored object instead
              throw error;
            });
            controller.close();
            return;
          }
          this.#ledger.see(result.value);
          this.#ledger.pin(result.value);
          check.push(result.value);
          tail.push(result.value);
          size += result.value.byteLength;
          controller.enqueue(result.value);
        } catch (error) {
          await reader.cancel(error).catch(() => {});
          throw error;
        }
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
    await this.#serialised(
      key,
      async () => {
        const { store } = this.#services;
        const { bucket } = this.#options;
        let replaced = false;
        try {
          replaced = await this.#exists(key);
        } catch (error) {
          await body.cancel(error).catch(() => {});
          throw error;
        }
        if (replaced && !this.#options.overwrite) {
          // compared as it arrives, never written: the same bytes are a success, others a conflict
          let stored: ObjectInfo;
          try {
            stored = await this.#compare(key, body, datasetOffset, id);
          } catch (error) {
            if (sourceError) throw incomplete(sourceError.error, index, id);
            throw error;
          }
          const header = verified ?? await readHeader(
            streamedSource(name, stored.size, prefix, tail, check.recorded, { store, bucket, key }),
            { ...this.#parseOptions(), initialBytes: prefix.byteLength },
          );
          return { info: stored, header, replaced: false, duplicate: true };
        }
        let info: ObjectInfo;
        await this.#options.gates.writes.enter();
        try {
          info = await store.put(bucket, key, body, { contentType: "application/dicom" });
        } catch (error) {
          if (sourceError) throw incomplete(sourceError.error, index, id);
          throw error;
        } finally {
          this.#options.gates.writes.leave();
        }
        let header = verified;
        if (!header) {
          const source = streamedSource(name, info.size, prefix, tail, check.recorded, {
            store,
            bucket,
            key,
          });
          try {
            header = await readHeader(source, { ...this.#parseOptions(), initialBytes: prefix.byteLength });
          } catch (error) {
            // cannot happen when Part10Check and readHeader agree; never leave an unreadable object behind
            await store.delete(bucket, key).catch(() => {});
            this.#services.log?.(
              `stow: ${bucket}/${key} was written but is not readable, deleted: ${(error as Error).message}`,
            );
            throw error;
          }
        }
        return { info, header, replaced, duplicate: false };
      },
      id,
      index,
    );
    if (sourceError) throw sourceError.error;
  }

  /**
   * Whether `key` is stored already (the write will replace it). The first instance of a series asks with
   * a HEAD; from the second on, one listing of the series answers for all of them (kept current with this
   * request's own writes), unless the series holds more than {@linkcode LISTING_LIMIT} objects.
   */
  async #exists(key: string): Promise<boolean> {
    const { store } = this.#services;
    const { bucket } = this.#options;
    const prefix = key.slice(0, key.lastIndexOf("/") + 1);
    const seen = (this.#seriesSeen.get(prefix) ?? 0) + 1;
    this.#seriesSeen.set(prefix, seen);
    if (seen > 1) {
      let listing = this.#listings.get(prefix);
      if (!listing) {
        listing = listKeys(store, bucket, prefix);
        this.#listings.set(prefix, listing);
      }
      const keys = await listing;
      if (keys) return keys.has(key) || this.#written.has(key);
    }
    return (await store.head(bucket, key)) !== null;
  }

  /**
   * Reads `incoming` to its end beside the stored object under `key`: resolves to the stored object's info
   * when both hold the same data set, else throws a conflict {@linkcode Refusal} (nothing is written either
   * way). The data sets are compared past their File Meta, which says who wrote the file rather than what it
   * holds: an instance received over DIMSE (our File Meta) and the same one stored by STOW-RS (the client's)
   * are one instance.
   */
  async #compare(
    key: string,
    incoming: ReadableStream<Uint8Array>,
    datasetOffset: number,
    id: Identity,
  ): Promise<ObjectInfo> {
    const { store } = this.#services;
    const { bucket } = this.#options;
    let stored: OpenedInstance | null;
    try {
      stored = await openInstance(store, bucket, key);
    } catch (error) {
      await incoming.cancel(error).catch(() => {});
      if (!(error instanceof MalformedError)) throw error;
      throw new Refusal(
        FAILURE.conflict,
        `Instance ${id.sop} is stored already (${key}) as an object that is not DICOM: nothing was overwritten. ` +
          "Delete the stored object first",
        id,
      );
    }
    if (!stored) { // deleted meanwhile: nothing to compare with, so nothing is stored either; ask again
      await incoming.cancel().catch(() => {});
      throw new Refusal(
        FAILURE.processing,
        `Instance ${id.sop} was removed from ${key} while this request compared it: send it again`,
        id,
      );
    }
    const same = await sameBytes(skipBytes(incoming, datasetOffset), skipBytes(stored.body, stored.meta.end));
    if (!same) {
      throw new Refusal(
        FAILURE.conflict,
        `Instance ${id.sop} is stored already with different content (${key}): nothing was overwritten. ` +
          "Delete the stored instance first, or give the new object its own SOP Instance UID",
        id,
      );
    }
    return stored.info;
  }

  #parseOptions() {
    return { bulkThreshold: this.#services.config.bulkDataThreshold, maxInflatedBytes: 256 * MIB };
  }

  #checkStudy(id: Identity): void {
    const { urlStudy } = this.#options;
    if (urlStudy !== undefined && id.study !== urlStudy) {
      throw new Refusal(
        FAILURE.processing,
        `Instance ${id.sop} belongs to study ${id.study}, not to study ${urlStudy} of the URL`,
        id,
      );
    }
  }

  /**
   * Runs `write` after any earlier write of the same key (so they happen in request order), in the
   * background, then files the instance in the catalog (in a batch, see {@linkcode CatalogBatch}) and
   * records the outcome, or the failure. Resolves (never rejects) once the write is over, whether or not it
   * succeeded; the rest is awaited with the job's other work in flight.
   */
  #serialised(
    key: string,
    write: (key: string) => Promise<Written>,
    id: Identity,
    index: number,
  ): Promise<void> {
    const before = this.#byKey.get(key);
    // a write waiting for another of the same key counts once it starts (the other may wait for the catalog)
    if (!before) this.#writing++;
    let wrote!: () => void;
    const written = new Promise<void>((resolve) => wrote = resolve);
    const run: Promise<void> = (before ?? Promise.resolve()).then(async () => {
      if (before) this.#writing++;
      let result: Awaited<ReturnType<typeof write>> | undefined;
      try {
        result = await write(key);
        this.#written.add(key);
      } catch (error) {
        this.#fail(error, index, id);
      }
      this.#writing--;
      wrote();
      const filing = result && this.#options.catalog?.add({ info: result.info, header: result.header });
      this.#catalogIfIdle();
      if (!result) return;
      let note: string | undefined;
      const filed = await filing;
      if (filed?.status === "fulfilled" && filed.value !== "indexed") {
        note = `is stored but not searchable: the catalog filed it as ${filed.value}`;
      } else if (filed?.status === "rejected") {
        const why = filed.reason instanceof Error ? filed.reason.message : String(filed.reason);
        note = `is stored but not yet searchable: ${why}`;
        this.#services.log?.(`stow: cannot catalog ${this.#options.bucket}/${key}: ${why}`);
      }
      this.#outcomes.push({
        stored: true,
        index,
        ...id,
        replaced: result.replaced,
        duplicate: result.duplicate,
        note,
      });
    }).finally(() => {
      this.#inFlight.delete(run);
      if (this.#byKey.get(key) === run) this.#byKey.delete(key);
    });
    this.#inFlight.add(run);
    this.#byKey.set(key, run);
    return written;
  }

  /** Sends the waiting instances to the catalog once no more can join them: the request is read, no write runs. */
  #catalogIfIdle(): void {
    if (!this.#reading && this.#writing === 0) this.#options.catalog?.flush();
  }

  #fail(error: unknown, index: number, uids: Partial<Identity> = {}): void {
    let reason: number = FAILURE.processing;
    let message: string;
    if (error instanceof Refusal) {
      reason = error.reason;
      message = error.message;
      uids = { ...uids, ...error.uids };
    } else if (error instanceof SyntaxError || error instanceof RangeError) {
      reason = FAILURE.cannotUnderstand;
      message = error.message;
    } else {
      message = `Cannot store part ${index}: ${error instanceof Error ? error.message : String(error)}`;
    }
    this.#outcomes.push({
      stored: false,
      index,
      sopClass: uids.sopClass,
      sop: uids.sop,
      study: uids.study,
      reason,
      message,
    });
  }

  /** What happened to each part, in the order the parts were read. */
  get outcomes(): readonly Outcome[] {
    return this.#outcomes;
  }

  /** Why reading the parts stopped early, if it did (an `HttpError` the response reports). */
  get abort(): unknown {
    return this.#abort;
  }
}

/** A stream of one chunk. */
function singleChunk(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes);
      controller.close();
    },
  });
}

/**
 * Whether two streams deliver the same bytes. Both are read to their end when they agree; on the first
 * difference both are cancelled (the incoming one reads on to its end, so its checks still run).
 */
async function sameBytes(a: ReadableStream<Uint8Array>, b: ReadableStream<Uint8Array>): Promise<boolean> {
  const ra = a.getReader();
  const rb = b.getReader();
  let ca: Uint8Array = new Uint8Array(0);
  let cb: Uint8Array = new Uint8Array(0);
  let same = true;
  try {
    while (true) {
      if (ca.length === 0) {
        const next = await ra.read();
        if (next.done) break;
        ca = next.value;
        continue;
      }
      if (cb.length === 0) {
        const next = await rb.read();
        if (next.done) {
          same = false;
          break;
        }
        cb = next.value;
        continue;
      }
      const n = Math.min(ca.length, cb.length);
      for (let i = 0; i < n; i++) {
        if (ca[i] !== cb[i]) {
          same = false;
          break;
        }
      }
      if (!same) break;
      ca = ca.subarray(n);
      cb = cb.subarray(n);
    }
    if (same && cb.length === 0) same = (await rb.read()).done === true;
    else if (same) same = false;
    if (!same) {
      // the incoming part is read on (its structure checks still run) but not compared any more
      while (!(await ra.read()).done) { /* drained */ }
    }
    return same;
  } finally {
    await rb.cancel().catch(() => {});
    ra.releaseLock();
  }
}

/** Series listed to tell replacements with one request instead of a HEAD per instance, up to this size. */
const LISTING_LIMIT = 5000;

/** The keys under `prefix`, or `null` when there are more than {@linkcode LISTING_LIMIT} or the listing fails. */
async function listKeys(
  store: Services["store"],
  bucket: string,
  prefix: string,
): Promise<Set<string> | null> {
  const keys = new Set<string>();
  try {
    for await (const info of store.list(bucket, prefix)) {
      if (keys.size >= LISTING_LIMIT) return null;
      keys.add(info.key);
    }
  } catch {
    return null; // each instance asks with a HEAD then, which reports the store's error
  }
  return keys;
}

/** Parts held in memory (read, checked or being written) and writes in flight, across requests. */
export interface Gates {
  held: Gate;
  writes: Gate;
}
