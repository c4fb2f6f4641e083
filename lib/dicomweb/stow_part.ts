/**
 * One part of a STOW-RS request, checked before and while it is written: its first bytes read to learn the
 * UIDs it is filed under (File Meta, SOP Class/Instance, Study, Series), those UIDs checked against each other
 * and the request, its structure followed to the end by `Part10Check`, and the last bytes kept for elements
 * after Pixel Data.
 *
 * @module
 */

import { ChunkLedger } from "../util/handoff.ts";
import { readFileMeta } from "../dicom/file_meta.ts";
import { HttpError } from "../http/errors.ts";
import { parseMediaType } from "../http/multipart_parser.ts";
import type { RangeSource } from "../dicom/part10.ts";
import { Part10Check } from "../dicom/part10_check.ts";
import { DEFLATED_SYNTAXES, encodingOf } from "../dicom/transfer_syntax.ts";
import type { Services } from "./services.ts";
import { isValidUid } from "../dicom/uid.ts";
import { FAILURE } from "./stow_response.ts";
import type { Part10Header } from "../dicom/dataset.ts";
import { concatBytes } from "../util/bytes.ts";

/** Bytes kept from the end of a streamed part, for elements after its Pixel Data. */
export const TAIL_BYTES = 64 * 1024;

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

/** The UIDs a part is filed under. */
export interface Identity {
  transferSyntax: string;
  sopClass: string;
  sop: string;
  study: string;
  series: string;
}

/** A part that is refused, with its reason code. */
export class Refusal extends Error {
  constructor(readonly reason: number, message: string, readonly uids: Partial<Identity> = {}) {
    super(message);
    this.name = "Refusal";
  }
}

/** The failure for a part whose bytes stopped coming. */
export function incomplete(error: unknown, index: number, uids: Partial<Identity> = {}): Refusal {
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

export function isDicomPart(contentType: string): boolean {
  try {
    const media = parseMediaType(contentType);
    return media.type === "application" && media.subtype === "dicom";
  } catch {
    return false;
  }
}

/** The front of a part (see {@linkcode readPrefix}). */
export interface Prefix {
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
export async function readPrefix(
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
  const bytes = concatBytes(chunks, total);
  for (const chunk of chunks) ledger.release(chunk);
  return { bytes, own: bytes.buffer, ended, next };
}

export function memorySource(bytes: Uint8Array, name: string): RangeSource {
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
export function identify(header: Part10Header, name: string): Identity {
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

/**
 * Refuses (C000) bytes that do not start as a Part 10 file: a preamble and "DICM". STOW-RS and the importer
 * take only Part 10 files; a raw data set (a legacy file the server would read) must be given File Meta first.
 */
export function checkDicm(bytes: Uint8Array, name: string): void {
  if (bytes.byteLength >= 132 && latin1(bytes.subarray(128, 132)) === "DICM") return;
  throw new Refusal(
    FAILURE.cannotUnderstand,
    `Cannot store ${name}: not a DICOM Part 10 file ("DICM" missing at offset 128)`,
  );
}

/** The identity of a part from its first bytes, and the structure check to carry on with. */
export function identifyPrefix(
  prefix: Uint8Array,
  name: string,
): { id: Identity; check: Part10Check; datasetOffset: number } {
  checkDicm(prefix, name);
  const meta = readFileMeta(prefix, name);
  if (meta === null || meta.end <= 132) {
    throw new Refusal(
      FAILURE.cannotUnderstand,
      `Cannot store ${name}: no File Meta Information after "DICM"`,
    );
  }
  if (meta.inferred) {
    throw new Refusal(
      FAILURE.cannotUnderstand,
      `Cannot store ${name}: its File Meta has no Transfer Syntax UID (0002,0010); write it and send the part again`,
      { sopClass: meta.sopClassUid || undefined, sop: meta.sopInstanceUid || undefined },
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
  return { id, check, datasetOffset: meta.end };
}

/** Thrown by a {@linkcode streamedSource} without a store for bytes it did not keep. */
export class NotKept extends Error {}

/**
 * The bytes of a streamed part as a {@linkcode RangeSource}: its front, its tail and the element headers
 * recorded on the way; anything else from the stored object when `stored` is given.
 */
export function streamedSource(
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
export class Tail {
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
    return concatBytes(this.#chunks, this.#total);
  }
}
