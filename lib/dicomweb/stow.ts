/**
 * STOW-RS (PS3.18 10.5 and Annex I): the parts of a `multipart/related; type="application/dicom"` request
 * are checked and written byte-exact to `{study}/{series}/{sop}.dcm`, each only when it arrived whole and
 * valid, and recorded in the search catalog before the response goes out: in batches of up to 50 (one
 * transaction each, shared by the requests storing into one AET at once), sent at the latest 250 ms after
 * their first instance was written, so a long request becomes searchable as it goes.
 *
 * The request is read as a stream. A part up to `bufferBytes` (1 MiB) is read whole, checked, and written
 * while the next parts are read. A larger part is checked on its first `bufferBytes`, then streams into
 * `ObjectStore.put` while {@linkcode Part10Check} follows its structure; the body handed to the store errors,
 * so nothing is written, when the part turns out invalid or incomplete (the store aborts its S3 multipart
 * upload or removes its temporary file). Memory stays bounded across requests: at most `2 × S3_CONCURRENCY`
 * parts are held and `S3_CONCURRENCY` writes run at once, and a part's buffer is freed as soon as it is
 * written, not at a later garbage collection. Whether a write replaces an instance is asked before it: with
 * a HEAD, or for the second and later instances of a series in one request from one listing of the series.
 *
 * Status codes used in the response (PS3.18 I.2, PS3.4 B.2.3, PS3.7 C):
 * - Failure Reason (0008,1197): `C000` cannot understand (not Part 10, malformed, missing or invalid UIDs,
 *   cut short), `0110` processing failure (the study is not the one of the URL, or the store failed), `A700`
 *   out of resources (a deflated part or a header too large to check in bounded memory, the request above
 *   `STOW_MAX_BYTES`). All SOP Classes are stored, so `0122` is never sent.
 * - Warning Reason (0008,1196) `0111`: the instance replaced a stored one with the same SOP Instance UID.
 *   PS3.18 I.2.1 defines only B000 (coercion), B006 (elements discarded) and B007 (does not match the SOP
 *   Class), none of which is true here, and lets other issues use other codes; 0111 is "Duplicate SOP
 *   Instance" in PS3.7 C.5. Each such instance also gets a `Warning: 299` header saying it was replaced.
 *
 * @module
 */

import type { Catalog, InstanceToRecord, RecordOutcome } from "../catalog/catalog.ts";
import { ChunkLedger, freeBuffer } from "../util/handoff.ts";
import { readFileMeta } from "../dicom/file_meta.ts";
import { HttpError } from "../http/errors.ts";
import { type MultipartPart, parseMediaType, readMultipart } from "../http/multipart_parser.ts";
import { parseAccept, rankRanges } from "../http/negotiation.ts";
import { type Part10Header, type RangeSource, readHeader } from "../dicom/part10.ts";
import { Part10Check } from "../dicom/part10_check.ts";
import { DEFLATED_SYNTAXES, encodingOf } from "../dicom/transfer_syntax.ts";
import type { Handler, RouteContext, Router } from "../http/router.ts";
import { bucketOf, type Services, warningHeader } from "./services.ts";
import type { ObjectInfo } from "../store/store.ts";
import { checkUid, instanceKey, isValidUid } from "../dicom/uid.ts";
import { publicBase } from "../http/urls.ts";
import { NotAcceptableError } from "../util/errors.ts";

/** Failure Reason (0008,1197) values. */
export const FAILURE = {
  processing: 0x0110,
  outOfResources: 0xa700,
  cannotUnderstand: 0xc000,
} as const;

/** Warning Reason (0008,1196) of an instance that replaced a stored one (see the module notes). */
export const WARNING_REPLACED = 0x0111;

/** Options for {@linkcode registerStow}. */
export interface StowOptions {
  /** Parts up to this size are read whole before being written; larger ones stream (default 1 MiB). */
  bufferBytes?: number;
  /**
   * Writes in flight at once, over all requests (default `config.s3Concurrency`); up to twice as many parts
   * are held in memory, read and checked ahead of their write.
   */
  concurrency?: number;
}

const MIB = 1024 * 1024;
/** Bytes kept from the end of a streamed part, for elements after its Pixel Data. */
const TAIL_BYTES = 64 * 1024;
const SOP_CLASS = 0x00080016;
const SOP_INSTANCE = 0x00080018;
const STUDY = 0x0020000d;
const SERIES = 0x0020000e;
const UID_TAGS = [SOP_CLASS, SOP_INSTANCE, STUDY, SERIES];
const UID_NAMES: Record<number, string> = {
  [SOP_CLASS]: "SOP Class UID (0008,0016)",
  [SOP_INSTANCE]: "SOP Instance UID (0008,0018)",
  [STUDY]: "Study Instance UID (0020,000D)",
  [SERIES]: "Series Instance UID (0020,000E)",
};

/** Adds the STOW-RS routes to `router`. */
export function registerStow(router: Router, services: Services, options: StowOptions = {}): void {
  const handler = stowHandler(services, options);
  // PS3.18 10.5 Store Transaction: /studies and /studies/{study}
  router.add("/aets/:aet/studies", { POST: handler });
  router.add("/aets/:aet/studies/:study", { POST: handler });
}

/** The STOW-RS handler for `/aets/:aet/studies` and `/aets/:aet/studies/:study`. */
export function stowHandler(services: Services, options: StowOptions = {}): Handler {
  // shared by all requests: memory and S3 writes stay bounded however many clients store at once
  const concurrency = Math.max(1, options.concurrency ?? services.config.s3Concurrency);
  const gates: Gates = { held: new Gate(2 * concurrency), writes: new Gate(concurrency) };
  // shared too: requests storing into one AET at once fill the catalog's batches together
  const batches = new Map<string, CatalogBatch>();
  const catalogBatch = (aet: string, bucket: string) => {
    const { catalog } = services;
    if (!catalog) return undefined;
    let batch = batches.get(`${aet}\0${bucket}`);
    if (!batch) {
      batch = new CatalogBatch(catalog, aet, bucket);
      batches.set(`${aet}\0${bucket}`, batch);
    }
    return batch;
  };
  return (context) => stow(context, services, { ...options, gates, catalogBatch });
}

/** Parts held in memory (read, checked or being written) and writes in flight, across requests. */
interface Gates {
  held: Gate;
  writes: Gate;
}

async function stow(
  { request, params }: RouteContext,
  services: Services,
  options: StowOptions & {
    gates: Gates;
    catalogBatch: (aet: string, bucket: string) => CatalogBatch | undefined;
  },
) {
  const urlStudy = params.study === undefined ? undefined : checkUid(params.study, "StudyInstanceUID");
  const bucket = await bucketOf(services, params.aet);
  const responseType = negotiateResponse(request.headers.get("accept"));
  const boundary = boundaryOf(request.headers.get("content-type"));
  const max = services.config.stowMaxBytes;
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > max) throw tooLarge(max);
  if (request.body === null) {
    throw new HttpError(400, "Empty STOW-RS request: send the instances as multipart parts");
  }
  const job = new StowJob(services, {
    aet: params.aet,
    bucket,
    urlStudy,
    bufferBytes: options.bufferBytes ?? MIB,
    gates: options.gates,
    catalog: options.catalogBatch(params.aet, bucket),
  });
  await job.run(readMultipart(byteLimited(request.body, max), boundary));
  const base = publicBase(request, {
    publicUrl: services.config.publicUrl,
    basePath: services.config.basePath,
  });
  return job.response(base, responseType);
}

function tooLarge(max: number): HttpError {
  return new HttpError(413, `STOW-RS request too large: at most ${max} bytes are accepted (STOW_MAX_BYTES)`);
}

/**
 * `body`, erroring with a 413 once more than `max` bytes went by (pulled chunk by chunk: a
 * `TransformStream` costs several promises per chunk).
 */
function byteLimited(body: ReadableStream<Uint8Array>, max: number): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let total = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) return controller.close();
      total += value.byteLength;
      if (total <= max) return controller.enqueue(value);
      const error = tooLarge(max);
      controller.error(error);
      await reader.cancel(error).catch(() => {});
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** The response media type, or a 406 when the client takes no JSON. */
function negotiateResponse(accept: string | null): string {
  for (const r of rankRanges(parseAccept(accept))) {
    if (r.type === "*" || (r.type === "application" && (r.subtype === "*" || r.subtype === "dicom+json"))) {
      return "application/dicom+json";
    }
    if (r.type === "application" && r.subtype === "json") return "application/json";
  }
  throw new NotAcceptableError(
    "None of the media types in Accept can be served: the STOW-RS response is application/dicom+json (XML is not offered)",
  );
}

/** The boundary of a STOW-RS request's Content-Type; 415 for anything but DICOM parts in multipart/related. */
function boundaryOf(contentType: string | null): string {
  const expected = 'use multipart/related; type="application/dicom"; boundary=...';
  if (contentType === null) throw new HttpError(415, `STOW-RS request without Content-Type: ${expected}`);
  let media;
  try {
    media = parseMediaType(contentType);
  } catch (error) {
    throw new HttpError(400, `${(error as Error).message}: ${expected}`, { cause: error });
  }
  if (media.type !== "multipart" || media.subtype !== "related") {
    throw new HttpError(
      415,
      `Unsupported media type ${media.type}/${media.subtype} for STOW-RS: ${expected}`,
    );
  }
  const type = media.params.type?.toLowerCase();
  if (type !== undefined && type !== "application/dicom") {
    throw new HttpError(
      415,
      `Unsupported STOW-RS payload type="${type}": only DICOM instances are stored, ${expected}`,
    );
  }
  const boundary = media.params.boundary;
  if (!boundary) throw new HttpError(400, `Content-Type has no boundary parameter: ${expected}`);
  return boundary;
}

/** A part written and catalogued. */
interface Stored {
  stored: true;
  index: number;
  sopClass: string;
  sop: string;
  study: string;
  series: string;
  replaced: boolean;
  /** Something to tell the client about it. */
  note?: string;
}

/** A part not written. */
interface Failed {
  stored: false;
  index: number;
  sopClass?: string;
  sop?: string;
  study?: string;
  reason: number;
  message: string;
}

/** What happened to one part. */
type Outcome = Stored | Failed;

/** The UIDs a part is filed under. */
interface Identity {
  transferSyntax: string;
  sopClass: string;
  sop: string;
  study: string;
  series: string;
}

/** A part that is refused, with its reason code. */
class Refusal extends Error {
  constructor(readonly reason: number, message: string, readonly uids: Partial<Identity> = {}) {
    super(message);
    this.name = "Refusal";
  }
}

interface JobOptions {
  aet: string;
  bucket: string;
  urlStudy?: string;
  bufferBytes: number;
  gates: Gates;
  /** Where stored instances wait for the catalog (none without a catalog). */
  catalog?: CatalogBatch;
}

/** One STOW-RS request: reads the parts, writes them, and builds the response. */
class StowJob {
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

  async run(parts: AsyncGenerator<MultipartPart>): Promise<void> {
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
        await gates.writes.enter();
        try {
          const info = await store.put(bucket, key, bytes, {
            size: bytes.byteLength,
            contentType: "application/dicom",
          });
          return { info, header, replaced };
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
    try {
      ({ id, check } = identifyPrefix(prefix, name));
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
        return { info, header, replaced };
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
    write: (key: string) => Promise<{ info: ObjectInfo; header: Part10Header; replaced: boolean }>,
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
      this.#outcomes.push({ stored: true, index, ...id, replaced: result.replaced, note });
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

  /** The Store Instances Response (PS3.18 Annex I) with its status. */
  response(base: string, contentType: string): Response {
    const outcomes = [...this.#outcomes].sort((a, b) => a.index - b.index);
    const stored = outcomes.filter((o): o is Stored => o.stored);
    const failed = outcomes.filter((o): o is Failed => !o.stored);
    const abort = this.#abort;
    if (outcomes.length === 0) {
      if (abort instanceof HttpError) throw abort;
      if (abort !== undefined) throw new HttpError(400, (abort as Error).message, { cause: abort });
      throw new HttpError(
        400,
        "The STOW-RS request has no parts: send each instance as an application/dicom part",
      );
    }
    let status: number;
    if (abort instanceof HttpError && abort.status === 413) status = 413;
    else if (stored.length > 0) {
      status = failed.length > 0 || abort !== undefined || stored.some((o) => o.replaced || o.note)
        ? 202
        : 200;
    } else if (failed.every((o) => o.reason === FAILURE.cannotUnderstand)) status = 400;
    else status = 409;
    const aet = encodeURIComponent(this.#options.aet);
    const studies = new Set(stored.map((o) => o.study));
    const study = this.#options.urlStudy ?? (studies.size === 1 ? [...studies][0] : undefined);
    const body: Record<string, unknown> = {
      "00081190": study === undefined
        ? { vr: "UR" }
        : { vr: "UR", Value: [`${base}/aets/${aet}/studies/${study}`] },
    };
    const warnings: string[] = [];
    const note = (text: string) => warnings.push(text);
    if (failed.length > 0) {
      body["00081198"] = {
        vr: "SQ",
        Value: failed.map((o) => {
          note(o.message);
          return {
            ...(o.sopClass ? { "00081150": { vr: "UI", Value: [o.sopClass] } } : {}),
            ...(o.sop ? { "00081155": { vr: "UI", Value: [o.sop] } } : {}),
            "00081197": { vr: "US", Value: [o.reason] },
          };
        }),
      };
    }
    if (stored.length > 0) {
      body["00081199"] = {
        vr: "SQ",
        Value: stored.map((o) => {
          if (o.replaced) {
            note(
              `Part ${o.index}: instance ${o.sop} replaced the stored instance with the same SOP Instance UID`,
            );
          }
          if (o.note) note(`Part ${o.index}: instance ${o.sop} ${o.note}`);
          return {
            "00081150": { vr: "UI", Value: [o.sopClass] },
            "00081155": { vr: "UI", Value: [o.sop] },
            "00081190": {
              vr: "UR",
              Value: [`${base}/aets/${aet}/studies/${o.study}/series/${o.series}/instances/${o.sop}`],
            },
            ...(o.replaced ? { "00081196": { vr: "US", Value: [WARNING_REPLACED] } } : {}),
          };
        }),
      };
    }
    const headers = new Headers({ "content-type": contentType });
    const host = new URL(base).host;
    if (abort !== undefined) warnings.unshift((abort as Error).message);
    // header values are bytes: whatever a file holds (UIDs in messages) goes out as printable ASCII only
    for (const text of warnings.slice(0, 20)) {
      headers.append("warning", warningHeader(host, text.replace(/[^\x20-\x7e]/g, "?")));
    }
    if (warnings.length > 20) {
      headers.append("warning", warningHeader(host, `${warnings.length - 20} more problems`));
    }
    return new Response(JSON.stringify(body) + "\n", { status, headers });
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

/** A counting semaphore. */
class Gate {
  #free: number;
  #waiting: (() => void)[] = [];

  constructor(count: number) {
    this.#free = count;
  }

  async enter(): Promise<void> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  leave(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

/** Stored instances recorded in the catalog at once, at most. */
const CATALOG_BATCH = 50;
/** How long a stored instance waits at most for others to be recorded with, while the request is read. */
const CATALOG_WAIT_MS = 250;

/**
 * Stored instances of one AET on their way to the catalog, from every request storing into it at once,
 * recorded in batches ({@linkcode Catalog.recordInstances}: one transaction, each series and study refreshed
 * once per batch instead of once per instance): when {@linkcode CATALOG_BATCH} are waiting, when the first
 * has waited {@linkcode CATALOG_WAIT_MS} (a long request becomes searchable as it goes), and on
 * {@linkcode CatalogBatch.flush} (a job calls it once no more of its own can come). Each request's response
 * waits for its instances' outcomes.
 */
class CatalogBatch {
  #catalog: Catalog;
  #aet: string;
  #bucket: string;
  #waiting: { item: InstanceToRecord; settle: (result: PromiseSettledResult<RecordOutcome>) => void }[] = [];
  #timer?: ReturnType<typeof setTimeout>;

  constructor(catalog: Catalog, aet: string, bucket: string) {
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

/** The failure for a part whose bytes stopped coming. */
function incomplete(error: unknown, index: number, uids: Partial<Identity> = {}): Refusal {
  if (error instanceof HttpError && error.status === 413) {
    return new Refusal(FAILURE.outOfResources, `Part ${index} was not stored: ${error.message}`, uids);
  }
  const why = error instanceof Error ? error.message : String(error);
  return new Refusal(
    FAILURE.cannotUnderstand,
    `Part ${index} arrived incomplete and was not stored: ${why}`,
    uids,
  );
}

function isDicomPart(contentType: string): boolean {
  try {
    const media = parseMediaType(contentType);
    return media.type === "application" && media.subtype === "dicom";
  } catch {
    return false;
  }
}

/** The front of a part (see {@linkcode readPrefix}). */
interface Prefix {
  /** A buffer of its own (see `own`), or the one view of the request read, held in the ledger. */
  bytes: Uint8Array;
  /**
   * The buffer of `bytes` when it is one of its own (the chunks joined), not a view of a chunk of the
   * request: it is freed when the part is done with (see {@linkcode StowJob.#receive}).
   */
  own?: ArrayBuffer;
  ended: boolean;
  next?: Uint8Array;
}

/**
 * Reads `bound` bytes or more (whole chunks) and the chunk after them: `ended` when the part ended within
 * these, else `next` is that chunk. Each chunk is reported to `ledger` and held while it is needed: a lone
 * chunk stays held as the part's bytes, chunks joined into a buffer of the part's own are released.
 */
async function readPrefix(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  bound: number,
  ledger: ChunkLedger,
): Promise<Prefix> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  let ended = false;
  let next: Uint8Array | undefined;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) {
        ended = true;
        break;
      }
      ledger.see(value);
      if (total >= bound) {
        next = value;
        break;
      }
      ledger.hold(value);
      chunks.push(value);
      total += value.byteLength;
    }
  } catch (error) {
    for (const chunk of chunks) ledger.release(chunk);
    throw error;
  }
  if (chunks.length === 1) return { bytes: chunks[0], ended, next };
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
    ledger.release(chunk);
  }
  return { bytes, own: bytes.buffer, ended, next };
}

function memorySource(bytes: Uint8Array, name: string): RangeSource {
  return { name, size: bytes.byteLength, read: (start, end) => Promise.resolve(bytes.subarray(start, end)) };
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

function uidText(bytes: Uint8Array | undefined): string | undefined {
  return bytes === undefined ? undefined : latin1(bytes).replace(/[\0 ]+$/, "");
}

/**
 * The UIDs of a part, each checked: they become its key, so nothing but a valid UID may pass. The data
 * set's UIDs are the ones that count: real files (rtdose.dcm of the corpus) have File Meta naming another
 * SOP Instance UID, and readers key on the data set too.
 */
function checkIdentity(
  name: string,
  transferSyntax: string,
  values: (tag: number) => string | undefined,
): Identity {
  const found: Partial<Identity> = {};
  const uid = (tag: number) => {
    const value = values(tag);
    if (value === undefined || value === "") {
      throw new Refusal(
        FAILURE.cannotUnderstand,
        `Cannot store ${name}: ${UID_NAMES[tag]} is missing`,
        found,
      );
    }
    if (!isValidUid(value)) {
      const shown = JSON.stringify(value.length > 70 ? value.slice(0, 70) + "..." : value);
      throw new Refusal(
        FAILURE.cannotUnderstand,
        `Cannot store ${name}: ${UID_NAMES[tag]} ${shown} is not a valid UID`,
        found,
      );
    }
    return value;
  };
  found.sopClass = uid(SOP_CLASS);
  found.sop = uid(SOP_INSTANCE);
  found.study = uid(STUDY);
  found.series = uid(SERIES);
  if (!isValidUid(transferSyntax)) {
    throw new Refusal(
      FAILURE.cannotUnderstand,
      `Cannot store ${name}: its Transfer Syntax UID is not a valid UID`,
      found,
    );
  }
  return { transferSyntax, ...found } as Identity;
}

/** The identity of a whole part from its parsed header; it must be Part 10 with preamble and File Meta. */
function identify(header: Part10Header, name: string): Identity {
  const meta = header.meta;
  if (!meta?.preamble || !meta.transferSyntaxUid) {
    throw new Refusal(
      FAILURE.cannotUnderstand,
      `Cannot store ${name}: not a DICOM Part 10 object (it needs the preamble, "DICM" and File Meta with a Transfer Syntax UID)`,
    );
  }
  const values = (tag: number) => uidText(header.dataset.elements.get(tag)?.bytes);
  return checkIdentity(name, meta.transferSyntaxUid, values);
}

/** The identity of a part from its first bytes, and the structure check to carry on with. */
function identifyPrefix(prefix: Uint8Array, name: string): { id: Identity; check: Part10Check } {
  const dicm = prefix.byteLength >= 132 && latin1(prefix.subarray(128, 132)) === "DICM";
  if (!dicm) {
    throw new Refusal(
      FAILURE.cannotUnderstand,
      `Cannot store ${name}: not a DICOM Part 10 object ("DICM" missing at offset 128)`,
    );
  }
  const meta = readFileMeta(prefix, name);
  if (meta === null || meta.end <= 132) {
    throw new Refusal(
      FAILURE.cannotUnderstand,
      `Cannot store ${name}: no File Meta Information after "DICM"`,
    );
  }
  if (DEFLATED_SYNTAXES.has(meta.transferSyntaxUid)) {
    throw new Refusal(
      FAILURE.outOfResources,
      `Cannot store ${name}: deflated objects are accepted up to the buffer size only`,
      { sopClass: meta.sopClassUid || undefined, sop: meta.sopInstanceUid || undefined },
    );
  }
  const check = new Part10Check(encodingOf(meta.transferSyntaxUid), name, {
    start: meta.end,
    want: UID_TAGS,
    recordFrom: prefix.byteLength,
  });
  check.push(prefix.subarray(meta.end));
  const values = (tag: number) => uidText(check.values.get(tag));
  const missing = UID_TAGS.find((tag) => !check.values.has(tag));
  if (missing !== undefined && check.lastTopTag <= missing) {
    throw new Refusal(
      FAILURE.outOfResources,
      `Cannot store ${name}: its header up to the Series Instance UID is larger than ${prefix.byteLength} bytes`,
      { sopClass: values(SOP_CLASS), sop: values(SOP_INSTANCE) },
    );
  }
  const id = checkIdentity(name, meta.transferSyntaxUid, values);
  return { id, check };
}

/** Thrown by a {@linkcode streamedSource} without a store for bytes it did not keep. */
class NotKept extends Error {}

/**
 * The bytes of a streamed part as a {@linkcode RangeSource}: its front, its tail and the element headers
 * recorded on the way; anything else from the stored object when `stored` is given.
 */
function streamedSource(
  name: string,
  size: number,
  prefix: Uint8Array,
  tail: Tail,
  recorded: Map<number, Uint8Array>,
  stored: { store: Services["store"]; bucket: string; key: string } | null,
): RangeSource {
  const tailBytes = tail.bytes();
  const tailStart = size - tailBytes.byteLength;
  return {
    name,
    size,
    async read(start, end) {
      if (end <= prefix.byteLength) return prefix.subarray(start, end);
      if (start >= tailStart) return tailBytes.subarray(start - tailStart, end - tailStart);
      if (start < prefix.byteLength && tailStart <= prefix.byteLength) {
        const out = new Uint8Array(end - start);
        out.set(prefix.subarray(start));
        out.set(
          tailBytes.subarray(prefix.byteLength - tailStart, end - tailStart),
          prefix.byteLength - start,
        );
        return out;
      }
      const header = recorded.get(start);
      if (header && end - start <= header.byteLength) return header.subarray(0, end - start);
      if (!stored) throw new NotKept(`Bytes ${start}-${end} of ${name} were not kept`);
      const object = await stored.store.get(stored.bucket, stored.key, { range: { start, end: end - 1 } });
      if (!object) throw new Error(`${stored.key} disappeared while its header was read`);
      return new Uint8Array(await new Response(object.body).arrayBuffer());
    },
  };
}

/** The last bytes of a stream (at least `keep` of them, in whole chunks). */
class Tail {
  #chunks: Uint8Array[] = [];
  #total = 0;
  #keep: number;

  constructor(keep: number) {
    this.#keep = keep;
  }

  push(chunk: Uint8Array): void {
    this.#chunks.push(chunk);
    this.#total += chunk.byteLength;
    while (this.#chunks.length > 1 && this.#total - this.#chunks[0].byteLength >= this.#keep) {
      this.#total -= this.#chunks.shift()!.byteLength;
    }
  }

  bytes(): Uint8Array {
    const out = new Uint8Array(this.#total);
    let at = 0;
    for (const chunk of this.#chunks) {
      out.set(chunk, at);
      at += chunk.byteLength;
    }
    return out;
  }
}
