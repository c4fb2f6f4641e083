/**
 * Transcoding of compressed instances to Explicit VR Little Endian (PS3.18 8.7.3.5: the default transfer
 * syntax of `application/dicom`): every frame is decoded (on the codec pool) and the object is rewritten with
 * native Pixel Data. Photometric Interpretation follows the decoder (YBR_FULL_422 JPEG → RGB, YBR_ICT/RCT JPEG
 * 2000 → RGB), Planar Configuration becomes 0, Lossy Image Compression stays (and is set to "01" when the
 * decoded data was lossy and the attribute was missing). The output streams: the header and the first frame
 * once frame 1 is decoded, then each frame as it is decoded (up to the pool's size ahead).
 *
 * Also {@linkcode encapsulatedInstance}: the same writer with encapsulated Pixel Data, which tests and the
 * benchmark use to make compressed instances (HTJ2K, JPEG 2000).
 *
 * @module
 */

import { DECODABLE_SYNTAXES, type DecodedFrame, decodedSize } from "../codecs/mod.ts";
import { type CodecPool, defaultPool } from "./pool.ts";
import { checkFrameSize, decodeFailure, describeFrame } from "./decode.ts";
import { frameCount, planFrame } from "../dicom/frames.ts";
import { parseObject } from "../dicom/part10.ts";
import { ahead, type OpenedInstance } from "../objects/open_instance.ts";
import type { SyntaxChoice } from "./syntax_choice.ts";
import { EXPLICIT_VR_LITTLE_ENDIAN } from "../dicom/transfer_syntax.ts";
import { MalformedError, NotAcceptableError, TooLargeError } from "../util/errors.ts";
import { LONG_VRS } from "../dicom/dictionary.ts";
import { type DicomDataset, type DicomElement, getString, type Part10Header } from "../dicom/dataset.ts";
import { concatBytes } from "../util/bytes.ts";
import { ExplicitLeWriter } from "../dicom/explicit_le.ts";
import { SWAP_WIDTH } from "../dicom/dictionary.ts";

/** Default bound on a whole decoded instance: 1 GiB. */
export const DEFAULT_MAX_INSTANCE_BYTES = 1024 * 1024 * 1024;

const PIXEL_DATA = 0x7fe00010;
const encoder = new TextEncoder();

/** An element value to set (or `null`: remove) when writing. */
export type Override = { vr: string; bytes: Uint8Array } | null;

/** Growable byte output. */
class Out extends ExplicitLeWriter {
  chunks: Uint8Array[] = [];
  protected emit(bytes: Uint8Array): void {
    this.chunks.push(bytes);
  }
  block(values: Uint8Array): void {
    this.flush();
    this.chunks.push(values);
    this.length += values.length;
  }
  concat(): Uint8Array {
    this.flush();
    return concatBytes(this.chunks, this.length);
  }
}

function swapped(bytes: Uint8Array, width: number): Uint8Array {
  const out = bytes.slice();
  for (let i = 0; i + width <= out.length; i += width) {
    for (let k = 0; k < width; k++) out[i + k] = bytes[i + width - 1 - k];
  }
  return out;
}

function writeElement(out: Out, el: DicomElement, littleEndian: boolean, name: string): void {
  if (el.items) {
    out.elementHeader(el.tag, "SQ", 0xffffffff);
    for (const item of el.items) {
      out.tag(0xfffee000);
      out.u32(0xffffffff);
      writeDataset(out, item, name);
      out.tag(0xfffee00d);
      out.u32(0);
    }
    out.tag(0xfffee0dd);
    out.u32(0);
    return;
  }
  if (el.length > 0 && !el.bytes) {
    throw new TypeError(
      `Cannot rewrite "${name}": the value of ${el.tag.toString(16).padStart(8, "0")} was not loaded`,
    );
  }
  let bytes = el.bytes ?? new Uint8Array(0);
  const width = SWAP_WIDTH[el.vr];
  if (!littleEndian && width) bytes = swapped(bytes, width);
  let vr = /^[A-Z]{2}$/.test(el.vr) ? el.vr : "UN";
  if (bytes.length % 2) {
    const padded = new Uint8Array(bytes.length + 1);
    padded.set(bytes);
    padded[bytes.length] = ["UI", "OB", "UN"].includes(vr) ? 0 : 0x20;
    bytes = padded;
  }
  if (!LONG_VRS.has(vr) && bytes.length > 0xfffe) vr = "UN";
  out.elementHeader(el.tag, vr, bytes.length);
  out.block(bytes);
}

function writeDataset(out: Out, dataset: DicomDataset, name: string): void {
  for (const el of dataset.elements.values()) {
    if ((el.tag & 0xffff) === 0 || el.tag >>> 16 === 0x0002) continue;
    writeElement(out, el, dataset.littleEndian, name);
  }
}

/** Preamble, "DICM" and a File Meta group like the original's, with `transferSyntax`. */
function writeMeta(
  header: Part10Header,
  transferSyntax: string,
  overrides?: Map<number, Override>,
): Uint8Array {
  const body = new Out();
  const sopOverride = overrides?.get(0x00080018);
  const ts = textValue(transferSyntax, "UI");
  const originals = [...(header.meta?.elements.elements.values() ?? [])]
    .filter((e) => e.tag !== 0x00020000 && e.tag !== 0x00020010 && e.bytes);
  const elements = [
    ...originals.map((e) => ({
      tag: e.tag,
      vr: e.vr,
      bytes: e.tag === 0x00020003 && sopOverride ? sopOverride.bytes : e.bytes!,
    })),
    {
      tag: 0x00020010,
      vr: "UI",
      bytes: ts,
    },
  ];
  if (!elements.some((e) => e.tag === 0x00020001)) {
    elements.push({ tag: 0x00020001, vr: "OB", bytes: new Uint8Array([0, 1]) });
  }
  const sopClass = getString(header.dataset, 0x00080016);
  const sop = getString(header.dataset, 0x00080018);
  if (!elements.some((e) => e.tag === 0x00020002) && sopClass) {
    elements.push({ tag: 0x00020002, vr: "UI", bytes: textValue(sopClass, "UI") });
  }
  if (!elements.some((e) => e.tag === 0x00020003) && sop) {
    elements.push({ tag: 0x00020003, vr: "UI", bytes: textValue(sop, "UI") });
  }
  for (const el of elements.sort((a, b) => a.tag - b.tag)) {
    body.elementHeader(el.tag, /^[A-Z]{2}$/.test(el.vr) ? el.vr : "UN", el.bytes.length);
    body.block(el.bytes);
  }
  const group = body.concat();
  const out = new Uint8Array(132 + 12 + group.length);
  out.set([0x44, 0x49, 0x43, 0x4d], 128);
  out.set([0x02, 0x00, 0x00, 0x00, 0x55, 0x4c, 0x04, 0x00], 132);
  new DataView(out.buffer).setUint32(140, group.length, true);
  out.set(group, 144);
  return out;
}

/** A text value padded to even length (UI with NUL, others with a space). */
export function textValue(text: string, vr: string): Uint8Array {
  const bytes = encoder.encode(text);
  if (bytes.length % 2 === 0) return bytes;
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  out[bytes.length] = vr === "UI" ? 0 : 0x20;
  return out;
}

/** The data set's elements with overrides applied, split around Pixel Data. */
function splitDataset(header: Part10Header, overrides: Map<number, Override>) {
  const elements = new Map(header.dataset.elements);
  for (const tag of [0x7fe00001, 0x7fe00002, 0x7fe00008, 0x7fe00009, PIXEL_DATA]) elements.delete(tag);
  for (const [tag, value] of overrides) {
    if (value === null) elements.delete(tag);
    else elements.set(tag, { tag, vr: value.vr, offset: 0, length: value.bytes.length, bytes: value.bytes });
  }
  const sorted = [...elements.values()].sort((a, b) => a.tag - b.tag);
  const before: DicomDataset = {
    ...header.dataset,
    elements: new Map(sorted.filter((e) => e.tag < PIXEL_DATA).map((e) => [e.tag, e])),
  };
  const after: DicomDataset = {
    ...header.dataset,
    elements: new Map(sorted.filter((e) => e.tag > PIXEL_DATA).map((e) => [e.tag, e])),
  };
  return { before, after };
}

/**
 * The instance rewritten (explicit VR little endian encoding) with encapsulated Pixel Data: `frames` (one fragment
 * each, Basic Offset Table filled) in `transferSyntax`. `header` must have every value loaded (parse with
 * `bulkThreshold: Infinity`). For making compressed test data (e.g. HTJ2K) from a native instance.
 */
export function encapsulatedInstance(
  header: Part10Header,
  frames: Uint8Array[],
  transferSyntax: string,
  overrides: Map<number, Override> = new Map(),
): Uint8Array {
  const { before, after } = splitDataset(header, overrides);
  const out = new Out();
  out.block(writeMeta(header, transferSyntax, overrides));
  writeDataset(out, before, header.name);
  out.elementHeader(PIXEL_DATA, "OB", 0xffffffff);
  out.tag(0xfffee000);
  out.u32(frames.length * 4);
  let offset = 0;
  for (const f of frames) {
    out.u32(offset);
    offset += 8 + f.length + (f.length % 2);
  }
  for (const f of frames) {
    out.tag(0xfffee000);
    out.u32(f.length + (f.length % 2));
    out.block(f);
    if (f.length % 2) out.bytes([0]);
  }
  out.tag(0xfffee0dd);
  out.u32(0);
  writeDataset(out, after, header.name);
  return out.concat();
}

/** Options for {@linkcode decodedInstanceParts} and friends. */
export interface PixelTranscodeOptions {
  /** Where frames are decoded (default: the process-wide pool). */
  pool?: CodecPool;
  /** Bound on one decoded frame (413 beyond). */
  maxFrameBytes?: number;
  /** Bound on the whole decoded Pixel Data (413 beyond; default {@linkcode DEFAULT_MAX_INSTANCE_BYTES}). */
  maxInstanceBytes?: number;
}

/** The overrides a decoded instance needs (Photometric Interpretation, Planar Configuration, lossy flag). */
function decodedOverrides(header: Part10Header, first: DecodedFrame): Map<number, Override> {
  const overrides = new Map<number, Override>();
  const ds = header.dataset;
  if (first.photometricInterpretation !== (getString(ds, 0x00280004) ?? "")) {
    overrides.set(0x00280004, { vr: "CS", bytes: textValue(first.photometricInterpretation, "CS") });
  }
  if (first.samplesPerPixel > 1) overrides.set(0x00280006, { vr: "US", bytes: new Uint8Array([0, 0]) });
  if (first.lossy && !getString(ds, 0x00282110)) {
    overrides.set(0x00282110, { vr: "CS", bytes: textValue("01", "CS") });
  }
  return overrides;
}

/**
 * The decoded instance as a sequence of byte chunks: meta + header + Pixel Data element header + frame 1, then
 * one chunk per frame, then any elements after Pixel Data. `bytes` is the whole stored object.
 */
export async function* decodedInstanceParts(
  bytes: Uint8Array,
  name: string,
  options: PixelTranscodeOptions = {},
): AsyncGenerator<Uint8Array> {
  const header = await parseObject(bytes, name, { bulkThreshold: Infinity, textBulkThreshold: Infinity });
  const ts = header.transferSyntaxUid;
  if (!DECODABLE_SYNTAXES.has(ts)) {
    throw new NotAcceptableError(`Cannot decode "${name}": no codec for its transfer syntax ${ts}`);
  }
  const d = describeFrame(header);
  checkFrameSize(d, options.maxFrameBytes, `"${name}"`);
  const count = frameCount(header);
  const frameBytes = decodedSize(d);
  const total = frameBytes * count;
  const maxTotal = options.maxInstanceBytes ?? DEFAULT_MAX_INSTANCE_BYTES;
  if (total > maxTotal) {
    throw new TooLargeError(
      `Instance too large to decode: ${count} frames of ${frameBytes} bytes in "${name}" take ${total} bytes, ` +
        `more than the ${maxTotal}-byte limit; ask for transfer-syntax=* to get it as stored`,
    );
  }
  const source = header.inflated ?? bytes;
  const pool = options.pool ?? defaultPool();
  const decode = async (n: number): Promise<DecodedFrame> => {
    const plan = planFrame(header, n);
    const parts = plan.ranges.map((r) => source.subarray(r.offset, r.offset + r.length));
    const data = parts.length === 1 ? parts[0] : concatBytes(parts);
    try {
      const frame = await pool.decode(ts, plan.extract ? plan.extract(data) : data, d);
      if (frame.bytes.length !== frameBytes) {
        throw new MalformedError(`frame ${n} decoded to ${frame.bytes.length} bytes, ${frameBytes} expected`);
      }
      return frame;
    } catch (error) {
      throw decodeFailure(error, `frame ${n} of "${name}"`);
    }
  };
  const frames = ahead(
    Array.from({ length: count }, (_, i) => i + 1),
    decode,
    { concurrency: Math.max(1, pool.size) + 1 },
  );
  const first = await frames.next();
  if (first.done) return;
  const firstFrame = first.value;
  const split = splitDataset(header, decodedOverrides(header, firstFrame));
  const nestedContext = { header, source, pool, options };
  const before = await decodeNested(split.before, nestedContext);
  const after = await decodeNested(split.after, nestedContext);
  const out = new Out();
  out.block(writeMeta(header, EXPLICIT_VR_LITTLE_ENDIAN));
  writeDataset(out, before, name);
  const padded = total + (total % 2);
  out.elementHeader(PIXEL_DATA, d.bitsAllocated > 8 ? "OW" : "OB", padded);
  out.block(firstFrame.bytes);
  yield out.concat();
  for await (const frame of frames) yield frame.bytes;
  const tail = new Out();
  if (total % 2) tail.bytes([0]);
  writeDataset(tail, after, name);
  if (tail.length) yield tail.concat();
}

/**
 * `dataset` with the encapsulated Pixel Data of its items (an Icon Image Sequence's, PS3.5 A.4) decoded too:
 * an Explicit VR Little Endian object holds no fragments. The item's Photometric Interpretation and Planar
 * Configuration follow the decoder, as the instance's own do. The same dataset when there is none.
 */
async function decodeNested(dataset: DicomDataset, context: NestedContext): Promise<DicomDataset> {
  let elements: Map<number, DicomElement> | undefined;
  for (const el of dataset.elements.values()) {
    if (!el.items) continue;
    const items = await Promise.all(el.items.map((item) => decodeItem(item, context)));
    if (items.every((item, i) => item === el.items![i])) continue;
    elements ??= new Map(dataset.elements);
    elements.set(el.tag, { ...el, items });
  }
  return elements ? { ...dataset, elements } : dataset;
}

/** What decoding nested pixel data needs: the instance's header, its bytes, the codec pool and limits. */
interface NestedContext {
  header: Part10Header;
  source: Uint8Array;
  pool: CodecPool;
  options: PixelTranscodeOptions;
}

async function decodeItem(item: DicomDataset, context: NestedContext): Promise<DicomDataset> {
  const { header, source, pool, options } = context;
  const inner = await decodeNested(item, context);
  const pixel = inner.elements.get(PIXEL_DATA);
  if (!pixel?.fragments) return inner;
  const what = `the pixel data nested in an item of "${header.name}"`;
  const nested: Part10Header = {
    ...header,
    dataset: inner,
    pixelData: {
      tag: PIXEL_DATA,
      vr: pixel.vr,
      offset: pixel.offset,
      length: -1,
      encapsulated: true,
      fragments: pixel.fragments.slice(1),
      basicOffsetTable: [],
      end: pixel.offset,
    },
  };
  const d = describeFrame(nested);
  checkFrameSize(d, options.maxFrameBytes, what);
  const data = concatBytes(
    pixel.fragments.slice(1).map((f) => source.subarray(f.offset, f.offset + f.length)),
  );
  let frame: DecodedFrame;
  try {
    frame = await pool.decode(header.transferSyntaxUid, data, d);
  } catch (error) {
    throw decodeFailure(error, what);
  }
  const elements = new Map(inner.elements);
  const set = (tag: number, vr: string, bytes: Uint8Array) =>
    elements.set(tag, { tag, vr, offset: 0, length: bytes.length, bytes });
  for (const [tag, value] of decodedOverrides(nested, frame)) if (value) set(tag, value.vr, value.bytes);
  set(PIXEL_DATA, d.bitsAllocated > 8 ? "OW" : "OB", frame.bytes);
  return {
    ...inner,
    elements: new Map([...elements.values()].sort((a, b) => a.tag - b.tag).map((e) => [e.tag, e])),
  };
}

/** Whole-buffer convenience: the decoded instance in one array. */
export async function decodeInstance(
  bytes: Uint8Array,
  name: string,
  options: PixelTranscodeOptions = {},
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const c of decodedInstanceParts(bytes, name, options)) chunks.push(c);
  return concatBytes(chunks);
}

/** Reads a stream to the end, refusing more than `max` bytes. */
async function readAll(stream: ReadableStream<Uint8Array>, max: number, name: string): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of stream) {
    total += chunk.length;
    if (total > max) {
      await stream.cancel().catch(() => {});
      throw new TooLargeError(`Instance too large to decode: "${name}" is more than ${max} bytes`);
    }
    chunks.push(chunk);
  }
  return concatBytes(chunks, total);
}

/** The opened (compressed) instance decoded to Explicit VR Little Endian, as a stream. */
export function decodedInstanceBody(
  opened: Pick<OpenedInstance, "key" | "body">,
  options: PixelTranscodeOptions = {},
): ReadableStream<Uint8Array> {
  let parts: AsyncGenerator<Uint8Array> | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!parts) {
        const bytes = await readAll(
          opened.body,
          options.maxInstanceBytes ?? DEFAULT_MAX_INSTANCE_BYTES,
          opened.key,
        );
        parts = decodedInstanceParts(bytes, opened.key, options);
      }
      const { value, done } = await parts.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel(reason) {
      if (parts) await parts.return(undefined);
      else await opened.body.cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
}

/** A body encoder as `lib/dicomweb/retrieve.ts` takes it (`BodyEncoder`). */
export type PixelBodyEncoder = (
  opened: OpenedInstance,
  choice: SyntaxChoice,
  bucket: string,
) => ReadableStream<Uint8Array>;

/**
 * A `BodyEncoder` that decodes instances stored in a compressed syntax and hands every other conversion
 * (Implicit VR, Big Endian, Deflated → ELE) to `fallback`.
 *
 * @example
 * ```ts ignore
 * retrieveHandlers(services, { encode: transcodingEncoder((o, c, b) => reEncodeBody(o, { ... })) });
 * ```
 */
export function transcodingEncoder(
  fallback: PixelBodyEncoder,
  options: PixelTranscodeOptions = {},
): PixelBodyEncoder {
  return (opened, choice, bucket) =>
    DECODABLE_SYNTAXES.has(opened.meta.transferSyntaxUid) &&
      choice.transferSyntax === EXPLICIT_VR_LITTLE_ENDIAN
      ? decodedInstanceBody(opened, options)
      : fallback(opened, choice, bucket);
}
