/**
 * A DICOM Part 10 reader built for object storage (PS3.10 7, PS3.5 7 and Annex A).
 *
 * {@linkcode readHeader} reads from the front of an object through ranged reads and stops at the top-level
 * Pixel Data: large binary values are recorded as offset + length, never fetched; for encapsulated pixel data
 * only the 8-byte item headers are read to list the fragments. {@linkcode parseBuffer} does the same over a
 * buffer already in memory.
 *
 * Handles: preamble + "DICM", a File Meta group without preamble, a raw data set without File Meta (read as
 * implicit or explicit VR little endian, `meta` left undefined), Explicit/Implicit VR Little Endian, Explicit
 * VR Big Endian, Deflated Explicit VR Little Endian, defined and undefined lengths, nested sequences, private
 * tags, UN with undefined length (read as an implicit VR little endian sequence, CP-246), encapsulated pixel
 * data with Basic and Extended Offset Tables.
 *
 * Malformed input raises a `SyntaxError` naming the object and a byte offset.
 *
 * @module
 */

import { inflateRaw as inflateRawCallback } from "node:zlib";
import { promisify } from "node:util";
import { MalformedError, OutOfRangeError } from "../util/errors.ts";
import type { DicomDataset, DicomElement, Part10Header } from "./dataset.ts";
import { NeedInflate, NeedMore, Reader, SparseBytes } from "./part10_bytes.ts";
import { HeaderJob, limitsOf, parseMeta } from "./part10_parser.ts";

const inflate = promisify(inflateRawCallback);

/** Random access to an object's bytes (an S3 object via ranged GETs, a file, a buffer). */
export interface RangeSource {
  /** Used in error messages, e.g. the object key. */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Bytes `[start, end)`; must return exactly `end - start` bytes. */
  read(start: number, end: number): Promise<Uint8Array>;
}

/** Options for {@linkcode parseBuffer}. */
export interface ParseBufferOptions extends ParseOptions {
  /** The bytes are the output of {@linkcode inflateObject} (a deflated object's meta + inflated data set). */
  inflated?: boolean;
}

/**
 * Parses a whole Part 10 object (or raw data set) held in memory. Deflated data sets must be inflated
 * first: pass the result of {@linkcode inflateObject} (or use {@linkcode parseObject}).
 *
 * @example
 * ```ts
 * import { parseBuffer } from "./part10.ts";
 * // A raw implicit VR data set holding only PatientID (0010,0020) = "ID1 ".
 * const bytes = new Uint8Array([0x10, 0, 0x20, 0, 4, 0, 0, 0, 0x49, 0x44, 0x31, 0x20]);
 * const header = parseBuffer(bytes, "example.dcm");
 * header.meta; // undefined: the caller decides whether to accept that
 * ```
 */
export function parseBuffer(bytes: Uint8Array, name: string, options: ParseBufferOptions = {}): Part10Header {
  const job = new HeaderJob(
    readerOf(bytes, name),
    limitsOf(options),
    false,
    options.inflated ? bytes : undefined,
  );
  try {
    return job.run();
  } catch (e) {
    if (e instanceof NeedInflate) {
      throw new MalformedError(
        `Cannot parse "${name}": the data set is deflated: inflate it first (inflateObject)`,
      );
    }
    throw e;
  }
}

/** A reader over a whole object in memory. */
function readerOf(bytes: Uint8Array, name: string): Reader {
  const store = new SparseBytes();
  store.add(0, bytes);
  return new Reader(name, bytes.length, store);
}

/** Like {@linkcode parseBuffer}, inflating a deflated data set first. */
export async function parseObject(
  bytes: Uint8Array,
  name: string,
  options: ParseOptions = {},
): Promise<Part10Header> {
  const job = new HeaderJob(readerOf(bytes, name), limitsOf(options), false);
  try {
    return job.run();
  } catch (e) {
    if (!(e instanceof NeedInflate)) throw e;
  }
  const inflated = await inflateObject(bytes, name, options);
  return parseBuffer(inflated, name, { ...options, inflated: true });
}

/**
 * Returns the File Meta bytes of a deflated object followed by its inflated data set: the address space
 * the offsets of a deflated object's header refer to.
 */
export async function inflateObject(
  bytes: Uint8Array,
  name: string,
  options: ParseOptions = {},
): Promise<Uint8Array> {
  const { datasetOffset } = parseMeta(readerOf(bytes, name));
  const max = options.maxInflatedBytes ?? 512 * 1024 * 1024;
  // node:zlib stops at the end of the deflate stream (some writers leave bytes after it) and bounds the
  // output; its memory is freed at once (DecompressionStream's waited for a garbage collection).
  const result = await inflateRaw(bytes.subarray(datasetOffset), max, name, datasetOffset);
  const out = new Uint8Array(datasetOffset + result.length);
  out.set(bytes.subarray(0, datasetOffset));
  out.set(result, datasetOffset);
  return out;
}

/** Inflates raw deflate data of at most `max` bytes; bytes after the end of the stream are ignored. */
async function inflateRaw(input: Uint8Array, max: number, name: string, offset: number): Promise<Uint8Array> {
  try {
    return await inflate(input, { maxOutputLength: max });
  } catch (e) {
    if ((e as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
      throw new OutOfRangeError(
        `Cannot parse "${name}": the deflated data set inflates to more than ${max} bytes`,
      );
    }
    throw new MalformedError(
      `Cannot parse "${name}": the deflated data set at offset ${offset} is corrupt (${
        (e as Error).message
      })`,
    );
  }
}

/**
 * Reads the header of a Part 10 object through ranged reads: everything up to the top-level Pixel Data, the
 * fragment list of encapsulated pixel data (item headers only) and any elements after the pixel data.
 * Deflated objects are read whole and inflated (see {@linkcode Part10Header.inflated}).
 *
 * @example
 * ```ts
 * import { readHeader } from "./part10.ts";
 * const bytes = new Uint8Array([0x10, 0, 0x20, 0, 4, 0, 0, 0, 0x49, 0x44, 0x31, 0x20]);
 * const source = { name: "a.dcm", size: bytes.length, read: (s: number, e: number) => Promise.resolve(bytes.slice(s, e)) };
 * const header = await readHeader(source);
 * header.dataset.elements.has(0x00100020); // true
 * ```
 */
export async function readHeader(source: RangeSource, options: ParseOptions = {}): Promise<Part10Header> {
  const size = source.size;
  const initial = Math.max(options.initialBytes ?? 65536, 256);
  const store = new SparseBytes();
  const load = async (ranges: [number, number][]) => {
    const datas = await Promise.all(ranges.map(([s, e]) => source.read(s, e)));
    ranges.forEach(([s, e], i) => {
      if (datas[i].length !== e - s) {
        throw new Error(
          `Short read of "${source.name}": asked for bytes ${s}-${e - 1}, got ${datas[i].length}`,
        );
      }
      store.add(s, datas[i]);
    });
  };
  if (size > 0) await load([[0, Math.min(initial, size)]]);
  const job = new HeaderJob(new Reader(source.name, size, store), limitsOf(options), true);
  for (;;) {
    try {
      const header = job.run();
      const copy = copiesOf([header.dataset, ...(header.meta ? [header.meta.elements] : [])]);
      return {
        ...header,
        dataset: detach(header.dataset, copy),
        meta: header.meta && { ...header.meta, elements: detach(header.meta.elements, copy) },
      };
    } catch (e) {
      if (e instanceof NeedInflate) {
        const whole = await source.read(0, size);
        const inflated = await inflateObject(whole, source.name, options);
        return parseBuffer(inflated, source.name, { ...options, inflated: true });
      }
      if (!(e instanceof NeedMore)) throw e;
      const ranges = planReads(job, store, e, initial, size).filter(([s, end]) => end > s);
      // Cannot happen unless planReads and SparseBytes disagree; never spin on a read that adds nothing.
      if (ranges.length === 0) {
        throw new Error(`Cannot read "${source.name}": no progress at offset ${e.start}`);
      }
      await load(ranges);
    }
  }
}

/** Which ranges to fetch for a NeedMore: grow the current run by doubling, or jump; batch fragment headers. */
/**
 * Which ranges to fetch for a NeedMore: grow the current run by doubling, or jump to a new place. While
 * scanning large fragments, read just the next item header plus (in parallel) those the offset tables
 * predict; without offset tables, after 16 lone headers switch to windows spanning ~32 fragments.
 */
function planReads(
  job: HeaderJob,
  store: SparseBytes,
  need: NeedMore,
  initial: number,
  size: number,
): [number, number][] {
  const clamp = (s: number, e: number): [number, number] => [s, Math.min(size, Math.max(e, s + 1))];
  const fragmentLength = job.lastFragmentLength();
  if (job.scanning() && fragmentLength > 16384) {
    const ranges: [number, number][] = [];
    for (const p of job.predictedHeaders()) {
      if (ranges.length >= 64) break;
      if (!store.get(p, p + 8)) ranges.push(clamp(p, p + 8));
    }
    if (ranges.length === 0 && ++job.loneHeaderReads > 16) {
      return [clamp(need.start, need.start + Math.min(8 * 1024 * 1024, 32 * (fragmentLength + 8)))];
    }
    return [clamp(need.start, need.start + 8), ...ranges.filter(([s]) => s !== need.start)];
  }
  const run = store.around(need.start);
  if (run) return [clamp(run.end, Math.max(need.end, run.end + (run.end - run.start)))];
  return [clamp(need.start, Math.max(need.end, need.start + initial))];
}

/** Loaded values closer than this in one read buffer share one copy (see {@linkcode copiesOf}). */
const COPY_GAP = 4096;

/**
 * Copies of the loaded values of `datasets` (and their items) that no longer share the (possibly large)
 * read buffers: values near each other in a buffer are copied together, so a header's hundred values
 * cost a copy or two, not a hundred small buffers.
 */
function copiesOf(datasets: DicomDataset[]): Map<Uint8Array, Uint8Array> {
  const views: Uint8Array[] = [];
  const collect = (dataset: DicomDataset) => {
    for (const el of dataset.elements.values()) {
      if (el.bytes) views.push(el.bytes);
      el.items?.forEach(collect);
    }
  };
  datasets.forEach(collect);
  const copies = new Map<Uint8Array, Uint8Array>();
  const byBuffer = new Map<ArrayBufferLike, Uint8Array[]>();
  for (const view of views) {
    const list = byBuffer.get(view.buffer);
    if (list) list.push(view);
    else byBuffer.set(view.buffer, [view]);
  }
  for (const [buffer, list] of byBuffer) {
    list.sort((a, b) => a.byteOffset - b.byteOffset);
    for (let i = 0; i < list.length;) {
      const start = list[i].byteOffset;
      let end = start + list[i].byteLength;
      let j = i + 1;
      while (j < list.length && list[j].byteOffset - end <= COPY_GAP) {
        end = Math.max(end, list[j].byteOffset + list[j].byteLength);
        j++;
      }
      const copy = new Uint8Array(buffer, start, end - start).slice();
      for (; i < j; i++) {
        const at = list[i].byteOffset - start;
        copies.set(list[i], copy.subarray(at, at + list[i].byteLength));
      }
    }
  }
  return copies;
}

/** `dataset` with its loaded values replaced by their `copies`. */
function detach(dataset: DicomDataset, copies: Map<Uint8Array, Uint8Array>): DicomDataset {
  const elements = new Map<number, DicomElement>();
  for (const [tag, el] of dataset.elements) {
    elements.set(tag, {
      ...el,
      ...(el.bytes ? { bytes: copies.get(el.bytes) ?? el.bytes.slice() } : {}),
      ...(el.items ? { items: el.items.map((item) => detach(item, copies)) } : {}),
    });
  }
  return { ...dataset, elements };
}

/** Options for {@linkcode readHeader} and {@linkcode parseBuffer}. */
export interface ParseOptions {
  /** OB, OD, OF, OL, OV, OW and UN values longer than this are not loaded (default 1024). */
  bulkThreshold?: number;
  /** UT, LT and UC values longer than this are not loaded (default 65536). */
  textBulkThreshold?: number;
  /** First range to read (default 64 KiB); doubled while the header is longer. */
  initialBytes?: number;
  /** Cap on the inflated size of a deflated data set (default 512 MiB). */
  maxInflatedBytes?: number;
}
