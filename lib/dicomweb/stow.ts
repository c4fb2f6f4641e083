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
 * An instance already stored is never overwritten. When its key exists, the part is compared with the stored
 * object as it arrives instead of being written: the same bytes are a success (listed in the
 * ReferencedSOPSequence like any stored instance, so a client's retry is idempotent), different bytes a
 * failure with reason `0111`. PS3.18 leaves the policy to the server; this is what the Azure DICOM service
 * and dcm4chee (by default) do, and it keeps a bucket's objects immutable under their keys. The importer may
 * replace (`Ingest` with `overwrite`); STOW-RS never does.
 *
 * Status codes used in the response (PS3.18 10.5.3 Table 10.5.3-1, I.2, PS3.4 B.2.3, PS3.7 C):
 * - HTTP: 200 every part stored; 202 some stored and some not (or with a note); 400 nothing stored and every
 *   part was not understood (not Part 10, malformed, missing required attributes: SOP Class/Instance,
 *   Study/Series Instance UID); 409 nothing stored and at least one part failed for another reason (a
 *   conflict with a stored instance, a study other than the URL's, a store failure); 413 over
 *   `STOW_MAX_BYTES`; 415 not `multipart/related; type="application/dicom"`.
 * - Failure Reason (0008,1197): `C000` cannot understand (not Part 10, malformed, missing or invalid UIDs,
 *   cut short), `0111` duplicate SOP Instance with different content (PS3.7 C.5), `0110` processing failure
 *   (the study is not the one of the URL, or the store failed), `A700` out of resources (a deflated part or
 *   a header too large to check in bounded memory, the request above `STOW_MAX_BYTES`). All SOP Classes are
 *   stored, so `0122` is never sent.
 *
 * @module
 */

import { HttpError } from "../http/errors.ts";
import { type MultipartPart, parseMediaType, readMultipart } from "../http/multipart_parser.ts";
import { parseAccept, rankRanges } from "../http/negotiation.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import { bucketOf, type Services } from "./services.ts";
import { checkUid } from "../dicom/uid.ts";
import { publicBase } from "../http/urls.ts";
import { NotAcceptableError } from "../util/errors.ts";
import { CatalogBatch } from "../catalog/batch.ts";
import { Gate } from "../util/gate.ts";
import { type Gates, StowJob } from "./stow_job.ts";
import { type Outcome, storeResponse } from "./stow_response.ts";

export type { Failed, Outcome, Stored } from "./stow_response.ts";
export { FAILURE } from "./stow_response.ts";

/** Options for {@linkcode Ingest}. */
export interface StowOptions {
  /** Parts up to this size are read whole before being written; larger ones stream (default 1 MiB). */
  bufferBytes?: number;
  /**
   * Writes in flight at once, over all requests (default `config.s3Concurrency`); up to twice as many parts
   * are held in memory, read and checked ahead of their write.
   */
  concurrency?: number;
  /** Replace a stored object that differs instead of refusing it (the importer's `--overwrite`). */
  overwrite?: boolean;
}

const MIB = 1024 * 1024;

/** What {@linkcode Ingest.store} did with each part. */
export interface IngestResult {
  /** One per part, in order. */
  outcomes: readonly Outcome[];
  /** Why reading the parts stopped early, if it did. */
  abort: unknown;
}

/**
 * The one way instances get in: STOW-RS requests, and every other entry (DIMSE C-STORE, the importer) that
 * hands over Part 10 streams as parts. Each part gets the same checks, atomic write under its layout key and
 * catalog update as a STOW-RS part; the write gates and catalog batches are shared by everything that stores
 * through one `Ingest`, so memory and S3 writes stay bounded however many clients store at once.
 */
export class Ingest {
  #services: Services;
  #bufferBytes: number;
  #gates: Gates;
  #overwrite: boolean;
  #batches = new Map<string, CatalogBatch>();

  /** An ingest over `services`, with its own write gates (see {@linkcode StowOptions}). */
  constructor(services: Services, options: StowOptions = {}) {
    this.#services = services;
    this.#bufferBytes = options.bufferBytes ?? MIB;
    this.#overwrite = options.overwrite ?? false;
    const concurrency = Math.max(1, options.concurrency ?? services.config.s3Concurrency);
    this.#gates = { held: new Gate(2 * concurrency), writes: new Gate(concurrency) };
  }

  /**
   * Stores the parts (each a whole Part 10 file; `index` 1-based) into the bucket of `aet`. `study`, when
   * given, is the study every part must belong to. Throws what {@linkcode bucketOf} throws for an unknown AET.
   */
  async store(aet: string, parts: AsyncIterable<MultipartPart>, study?: string): Promise<IngestResult> {
    const bucket = await bucketOf(this.#services, aet, { create: true });
    const job = new StowJob(this.#services, {
      aet,
      bucket,
      urlStudy: study,
      bufferBytes: this.#bufferBytes,
      gates: this.#gates,
      catalog: this.#batch(aet, bucket),
      overwrite: this.#overwrite,
    });
    await job.run(parts);
    return { outcomes: job.outcomes, abort: job.abort };
  }

  #batch(aet: string, bucket: string): CatalogBatch | undefined {
    const { catalog } = this.#services;
    if (!catalog) return undefined;
    let batch = this.#batches.get(`${aet}\0${bucket}`);
    if (!batch) {
      batch = new CatalogBatch(catalog, aet, bucket);
      this.#batches.set(`${aet}\0${bucket}`, batch);
    }
    return batch;
  }
}

/** The STOW-RS handler for `/aets/:aet/studies` and `/aets/:aet/studies/:study`. */
export function stowHandler(services: Services, ingest: Ingest = new Ingest(services)): Handler {
  return (context) => stow(context, services, ingest);
}

async function stow({ request, params }: RouteContext, services: Services, ingest: Ingest) {
  const urlStudy = params.study === undefined ? undefined : checkUid(params.study, "StudyInstanceUID");
  // an unknown AET is a 404 before the body is looked at (in local zero-config mode it is created instead)
  await bucketOf(services, params.aet, { create: true });
  const responseType = negotiateResponse(request.headers.get("accept"));
  const boundary = boundaryOf(request.headers.get("content-type"));
  const max = services.config.stowMaxBytes;
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > max) throw tooLarge(max);
  if (request.body === null) {
    throw new HttpError(400, "Empty STOW-RS request: send the instances as multipart parts");
  }
  const { outcomes, abort } = await ingest.store(
    params.aet,
    readMultipart(byteLimited(request.body, max), boundary),
    urlStudy,
  );
  const base = publicBase(request, {
    publicUrl: services.config.publicUrl,
    basePath: services.config.basePath,
  });
  return storeResponse(outcomes, abort, { aet: params.aet, urlStudy, base, contentType: responseType });
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
