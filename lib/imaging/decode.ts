/**
 * Pixel decoding of one frame of a stored instance to native little endian samples (what an Explicit VR
 * Little Endian Pixel Data value holds), on the worker pool when the frame is compressed. Frames whose decoded
 * size exceeds a bound are refused with 413 before any decoding; data a codec rejects is a 422.
 *
 * @module
 */

import { canDecode, type DecodedFrame, decodedSize, type FrameDescription } from "../codecs/mod.ts";
import { type CodecPool, defaultPool } from "./pool.ts";
import { NATIVE_SYNTAXES } from "../dicom/transfer_syntax.ts";
import {
  BusyError,
  MalformedError,
  NotAcceptableError,
  NotFoundError,
  OutOfRangeError,
  TooLargeError,
  UnprocessableError,
} from "../util/errors.ts";
import { getNumber, getString, type Part10Header } from "../dicom/dataset.ts";

export type { DecodedFrame, FrameDescription } from "../codecs/mod.ts";

/** Default bound on one decoded frame: 256 MiB (a 8192×8192 RGB 16-bit frame is 384 MiB). */
export const DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024;

/** Options for {@linkcode decodedFrame}. */
export interface DecodeOptions {
  /** Where compressed frames are decoded (default: the process-wide pool sized to the cores). */
  pool?: CodecPool;
  /** Refuse frames whose decoded size is larger (default {@linkcode DEFAULT_MAX_FRAME_BYTES}). */
  maxFrameBytes?: number;
}

/**
 * The Image Pixel attributes of an instance (PS3.3 C.7.6.3). Throws a `NotFoundError` when the instance
 * has no pixel data and a `SyntaxError` when Rows, Columns or Bits Allocated are missing.
 */
export function describeFrame(header: Part10Header): FrameDescription {
  if (!header.pixelData) throw new NotFoundError(`Not found: "${header.name}" has no pixel data`);
  if (header.pixelData.tag !== 0x7fe00010) {
    throw new UnprocessableError(
      `Cannot decode "${header.name}": Float and Double Float Pixel Data are not supported`,
    );
  }
  const ds = header.dataset;
  const rows = getNumber(ds, 0x00280010);
  const columns = getNumber(ds, 0x00280011);
  const bitsAllocated = getNumber(ds, 0x00280100);
  if (!rows || !columns || !bitsAllocated) {
    throw new MalformedError(
      `Cannot decode pixels of "${header.name}": Rows, Columns or Bits Allocated is missing`,
    );
  }
  return {
    rows,
    columns,
    samplesPerPixel: getNumber(ds, 0x00280002) ?? 1,
    bitsAllocated,
    bitsStored: getNumber(ds, 0x00280101) ?? bitsAllocated,
    pixelRepresentation: getNumber(ds, 0x00280103) ?? 0,
    photometricInterpretation: getString(ds, 0x00280004) ?? "MONOCHROME2",
    planarConfiguration: getNumber(ds, 0x00280006) ?? 0,
  };
}

/** Throws a `TooLargeError` when one decoded frame of `d` would be larger than `maxBytes`. */
export function checkFrameSize(
  d: FrameDescription,
  maxBytes = DEFAULT_MAX_FRAME_BYTES,
  name = "this instance",
): void {
  const size = decodedSize(d);
  if (size > maxBytes) {
    throw new TooLargeError(
      `Frame too large to decode: ${d.columns}×${d.rows}×${d.samplesPerPixel} samples of ${d.bitsAllocated} bits in ` +
        `${name} take ${size} bytes, more than the ${maxBytes}-byte limit; ask for transfer-syntax=* to get it as stored`,
    );
  }
}

/**
 * Turns a codec failure into the error a client should see: no codec for the syntax (`NotAcceptableError`), or
 * data the codec cannot decode (`UnprocessableError`). Errors that already say what went wrong pass through.
 */
export function decodeFailure(error: unknown, what: string): Error {
  if (
    error instanceof NotFoundError || error instanceof TooLargeError || error instanceof UnprocessableError ||
    error instanceof NotAcceptableError || error instanceof BusyError
  ) return error;
  const message = error instanceof Error ? error.message : String(error);
  if (error instanceof RangeError) {
    return new NotAcceptableError(
      `Cannot decode ${what}: ${message}; ask for transfer-syntax=* to get it as stored`,
      { cause: error },
    );
  }
  return new UnprocessableError(`Cannot decode ${what}: ${message}`, { cause: error });
}

/**
 * Decodes one frame of `header` (`bytes`: the frame as `planFrame` and its `extract` give it) to native little
 * endian, pixel-interleaved samples. Photometric Interpretation may change: JPEG and JPEG 2000 colour comes out
 * as RGB. Errors: `TooLargeError`, `UnprocessableError` (undecodable), `NotAcceptableError` (no codec).
 *
 * @example
 * ```ts ignore
 * const plan = planFrame(header, 1);
 * const frame = await decodedFrame(header, await readFrame(plan));
 * new Response(frame.bytes, { headers: { "content-type": "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1" } });
 * ```
 */
export async function decodedFrame(
  header: Part10Header,
  bytes: Uint8Array,
  options: DecodeOptions = {},
): Promise<DecodedFrame> {
  const d = describeFrame(header);
  const ts = header.transferSyntaxUid;
  if (NATIVE_SYNTAXES.has(ts)) return { ...d, bytes, lossy: false };
  if (!canDecode(ts)) {
    throw decodeFailure(new OutOfRangeError(`no codec for transfer syntax ${ts}`), `"${header.name}"`);
  }
  checkFrameSize(d, options.maxFrameBytes, `"${header.name}"`);
  const pool = options.pool ?? defaultPool();
  try {
    return await pool.decode(ts, bytes, d);
  } catch (error) {
    throw decodeFailure(error, `a frame of "${header.name}"`);
  }
}
