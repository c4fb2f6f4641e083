/**
 * Re-encoding Implicit VR Little Endian, Explicit VR Big Endian and Deflated objects as Explicit VR Little
 * Endian (PS3.18 8.7.3: those syntaxes are not used over the web) without touching pixel values.
 *
 * The parsed header says where every value is; the output is produced in one pass over the original bytes:
 * new element headers are written from the header, values are copied from the source stream (numbers and
 * OW/OF/OD words byte-swapped from big endian, across chunk boundaries). Sequences and items are written with
 * undefined length, group length elements are dropped, and values longer than 0xFFFE bytes whose VR has a
 * 16-bit length field are written as UN (PS3.5 6.2.2). A new File Meta group says 1.2.840.10008.1.2.1.
 *
 * @module
 */

import { EXPLICIT_VR_LITTLE_ENDIAN } from "./transfer_syntax.ts";
import { MalformedError } from "../util/errors.ts";
import { LONG_VRS, SWAP_WIDTH } from "./dictionary.ts";
import { type DicomDataset, type DicomElement, getString, type Part10Header } from "./dataset.ts";
import { writeFileMeta } from "./file_meta.ts";

type Op = { emit: Uint8Array } | { copy: number; length: number; swap: number };

const TS_TAG = 0x00020010;

/**
 * Writes Explicit VR Little Endian element headers and values: the one writer of that encoding. Subclasses say
 * where flushed bytes go (see {@linkcode ExplicitLeWriter.flush}).
 */
export abstract class ExplicitLeWriter {
  #pending: number[] = [];
  /** Bytes written so far, flushed or not. */
  length = 0;

  /** Takes the bytes written since the last flush. */
  protected abstract emit(bytes: Uint8Array): void;

  /** Appends bytes. */
  bytes(values: ArrayLike<number>): void {
    for (let i = 0; i < values.length; i++) this.#pending.push(values[i]);
    this.length += values.length;
  }

  /** Appends a 16-bit value. */
  u16(v: number): void {
    this.bytes([v & 0xff, v >>> 8 & 0xff]);
  }

  /** Appends a 32-bit value. */
  u32(v: number): void {
    this.bytes([v & 0xff, v >>> 8 & 0xff, v >>> 16 & 0xff, v >>> 24 & 0xff]);
  }

  /** Appends a tag (group, then element). */
  tag(tag: number): void {
    this.u16(tag >>> 16);
    this.u16(tag & 0xffff);
  }

  /** Appends an element header: tag, VR, and a 16-bit length or a reserved field and a 32-bit length. */
  elementHeader(tag: number, vr: string, length: number): void {
    this.tag(tag);
    this.bytes([vr.charCodeAt(0), vr.charCodeAt(1)]);
    if (LONG_VRS.has(vr)) {
      this.u16(0);
      this.u32(length);
    } else {
      this.u16(length);
    }
  }

  /** Hands the bytes written since the last flush to {@linkcode ExplicitLeWriter.emit}. */
  flush(): void {
    if (this.#pending.length) this.emit(Uint8Array.from(this.#pending));
    this.#pending = [];
  }
}

/** Encodes explicit VR little endian element headers and values into a list of output operations. */
class Encoder extends ExplicitLeWriter {
  ops: Op[] = [];

  protected emit(bytes: Uint8Array): void {
    this.ops.push({ emit: bytes });
  }

  copy(offset: number, length: number, swap: number): void {
    this.flush();
    if (length > 0) this.ops.push({ copy: offset, length, swap });
  }

  dataset(dataset: DicomDataset): void {
    for (const el of dataset.elements.values()) {
      if ((el.tag & 0xffff) === 0 || el.tag >>> 16 === 0x0002) continue;
      this.element(el, dataset.littleEndian);
    }
  }

  element(el: DicomElement, littleEndian: boolean): void {
    if (el.items) {
      this.elementHeader(el.tag, "SQ", 0xffffffff);
      for (const item of el.items) {
        this.tag(0xfffee000);
        this.u32(0xffffffff);
        this.dataset(item);
        this.tag(0xfffee00d);
        this.u32(0);
      }
      this.tag(0xfffee0dd);
      this.u32(0);
      return;
    }
    if (el.fragments) {
      this.elementHeader(el.tag, el.vr === "OW" ? "OW" : "OB", 0xffffffff);
      for (const f of el.fragments) {
        this.tag(0xfffee000);
        this.u32(f.length);
        this.copy(f.offset, f.length, 0);
      }
      this.tag(0xfffee0dd);
      this.u32(0);
      return;
    }
    let vr = el.vr;
    const swap = littleEndian ? 0 : SWAP_WIDTH[vr] ?? 0;
    if (!LONG_VRS.has(vr) && el.length > 0xfffe) vr = "UN";
    this.elementHeader(el.tag, vr, el.length);
    this.copy(el.offset, el.length, swap);
  }
}

/**
 * The File Meta group for the output: the original elements with the new transfer syntax, or for an object
 * without File Meta (a legacy raw data set) one made from its SOP Class and Instance UIDs.
 */
function encodeMeta(header: Part10Header): Uint8Array {
  if (!header.meta) {
    const uid = (tag: number) => (getString(header.dataset, tag) ?? "").replace(/[\0 ]+$/, "");
    return writeFileMeta({
      sopClassUid: uid(0x00080016),
      sopInstanceUid: uid(0x00080018),
      transferSyntaxUid: EXPLICIT_VR_LITTLE_ENDIAN,
    });
  }
  const body = new Encoder();
  const elements = [...header.meta.elements.elements.values()].filter((e) => e.tag !== 0x00020000);
  const ts = new TextEncoder().encode(EXPLICIT_VR_LITTLE_ENDIAN + "\0");
  const withTs = [...elements.filter((e) => e.tag !== TS_TAG), { tag: TS_TAG, vr: "UI", bytes: ts }]
    .sort((a, b) => a.tag - b.tag);
  for (const el of withTs) {
    const bytes = el.bytes ?? new Uint8Array();
    const vr = /^[A-Z]{2}$/.test(el.vr) ? el.vr : "UN";
    body.elementHeader(el.tag, vr, bytes.length);
    body.bytes(bytes);
  }
  body.flush();
  const meta = (body.ops as { emit: Uint8Array }[]).map((o) => o.emit);
  const metaLength = meta.reduce((n, b) => n + b.length, 0);
  const out = new Uint8Array(132 + 12 + metaLength);
  out.set([0x44, 0x49, 0x43, 0x4d], 128);
  out.set([0x02, 0x00, 0x00, 0x00, 0x55, 0x4c, 0x04, 0x00], 132);
  new DataView(out.buffer).setUint32(140, metaLength, true);
  let at = 144;
  for (const b of meta) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}

function plan(header: Part10Header): Op[] {
  const encoder = new Encoder();
  encoder.bytes(encodeMeta(header));
  encoder.dataset(header.dataset);
  encoder.flush();
  return encoder.ops;
}

/** The exact length of what {@linkcode transcodeStream} produces (for Content-Length). */
export function transcodedLength(header: Part10Header): number {
  return plan(header).reduce((n, op) => n + ("emit" in op ? op.emit.length : op.length), 0);
}

/**
 * Streams the object re-encoded as Explicit VR Little Endian. `source` delivers the original object's bytes
 * from `header.datasetOffset` to the end (for deflated objects, omit it: `header.inflated` is used). Values
 * are taken from `source`, so bulk values the header did not load are copied too.
 *
 * @example
 * ```ts ignore
 * const body = await store.get(key, { range: { start: header.datasetOffset } });
 * return new Response(transcodeStream(header, body.body));
 * ```
 */
export function transcodeStream(
  header: Part10Header,
  source?: ReadableStream<Uint8Array>,
): ReadableStream<Uint8Array> {
  const ops = plan(header);
  if (!source) {
    if (!header.inflated) throw new TypeError(`Cannot transcode "${header.name}": no source stream`);
    const rest = header.inflated.subarray(header.datasetOffset);
    source = new ReadableStream({
      start(controller) {
        controller.enqueue(rest);
        controller.close();
      },
    });
  }
  const reader = source.getReader();
  let chunk: Uint8Array = new Uint8Array();
  let chunkStart = header.datasetOffset;
  let index = 0;
  let carry: number[] = [];
  /** Makes sure bytes at `position` are in `chunk`; false at the end of the source. */
  const fill = async (position: number): Promise<boolean> => {
    while (position >= chunkStart + chunk.length) {
      const { done, value } = await reader.read();
      if (done) return false;
      chunkStart += chunk.length;
      chunk = value;
    }
    return true;
  };
  let position = header.datasetOffset;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      // Loop until something is enqueued: a pull that enqueues nothing would not be called again.
      for (;;) {
        if (index >= ops.length) {
          controller.close();
          reader.releaseLock();
          return;
        }
        const op = ops[index];
        if ("emit" in op) {
          controller.enqueue(op.emit);
          index++;
          return;
        }
        if (position < op.copy) position = op.copy;
        const end = op.copy + op.length;
        if (!await fill(position)) {
          controller.error(
            new MalformedError(`Cannot transcode "${header.name}": the object ends at offset ${position}`),
          );
          return;
        }
        let piece: Uint8Array = chunk.subarray(
          position - chunkStart,
          Math.min(chunk.length, end - chunkStart),
        );
        position += piece.length;
        const last = position === end;
        if (op.swap) {
          const joined = carry.length ? Uint8Array.from([...carry, ...piece]) : piece;
          const usable = last ? joined.length : joined.length - joined.length % op.swap;
          piece = swapWords(joined.subarray(0, usable), op.swap);
          carry = Array.from(joined.subarray(usable));
        }
        if (last) index++;
        if (piece.length) {
          controller.enqueue(piece);
          return;
        }
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
}

function swapWords(bytes: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  let i = 0;
  for (; i + width <= bytes.length; i += width) {
    for (let k = 0; k < width; k++) out[i + k] = bytes[i + width - 1 - k];
  }
  out.set(bytes.subarray(i), i);
  return out;
}

/** Whole-buffer convenience: the object (or, if deflated, its inflated form) re-encoded in one array. */
export async function toExplicitVrLittleEndian(
  header: Part10Header,
  bytes?: Uint8Array,
): Promise<Uint8Array> {
  const source = bytes
    ? new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytes.subarray(header.datasetOffset));
        controller.close();
      },
    })
    : undefined;
  const out = new Uint8Array(transcodedLength(header));
  let at = 0;
  for await (const piece of transcodeStream(header, source)) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}
