/**
 * A small reader for the File Meta Information (PS3.10 7.1) at the front of a Part 10 object:
 * just enough to label a part with its transfer syntax while the object streams through.
 *
 * @module
 */

import { IMPLICIT_VR_LITTLE_ENDIAN } from "./transfer_syntax.ts";
import { MalformedError } from "../util/errors.ts";

/** The File Meta attributes the retrieve path needs. */
export interface FileMeta {
  /** (0002,0010); Implicit VR Little Endian when the object has no File Meta. */
  transferSyntaxUid: string;
  /** (0002,0002), empty when absent. */
  sopClassUid: string;
  /** (0002,0003), empty when absent. */
  sopInstanceUid: string;
  /** Offset of the first byte after the File Meta group (where the dataset starts). */
  end: number;
  /** Whether the object had the preamble and "DICM". */
  hasPreamble: boolean;
}

const LONG_VRS = new Set(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"]);
/** File Meta larger than this is treated as corrupt. */
const MAX_META = 64 * 1024;

function trimUid(bytes: Uint8Array): string {
  let end = bytes.length;
  while (end > 0 && (bytes[end - 1] === 0 || bytes[end - 1] === 0x20)) end--;
  return new TextDecoder("latin1").decode(bytes.subarray(0, end));
}

/**
 * Reads the File Meta from the first bytes of an object. Returns `null` when `bytes` is too short
 * to tell (read more and call again; pass `complete` when `bytes` is the whole object).
 * Throws a `SyntaxError` naming `name` and the offset when the object is not DICOM.
 *
 * @example
 * ```ts
 * import { readFileMeta } from "./file_meta.ts";
 * readFileMeta(new Uint8Array(10), "x.dcm"); // null: need more bytes
 * ```
 */
export function readFileMeta(bytes: Uint8Array, name: string, complete = false): FileMeta | null {
  const need = (n: number) => {
    if (bytes.length >= n) return true;
    if (complete || n > MAX_META + 132) {
      throw new MalformedError(`Cannot read File Meta of "${name}": object ends at offset ${bytes.length}`);
    }
    return false;
  };
  let pos = 0;
  let hasPreamble = false;
  if (
    bytes.length >= 132 && bytes[128] === 0x44 && bytes[129] === 0x49 && bytes[130] === 0x43 &&
    bytes[131] === 0x4d
  ) {
    pos = 132;
    hasPreamble = true;
  } else if (
    bytes.length >= 4 && bytes[0] === 0x44 && bytes[1] === 0x49 && bytes[2] === 0x43 && bytes[3] === 0x4d
  ) {
    pos = 4; // "DICM" without a preamble
    hasPreamble = true;
  } else if (bytes.length < 132 && !complete) {
    return null; // the preamble may still come
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (!hasPreamble) {
    // No preamble: a raw dataset is only plausible when it starts with a group 0002 or 0008 element.
    if (bytes.length < 8) {
      throw new MalformedError(`Cannot read "${name}": ${bytes.length} bytes is too short for DICOM`);
    }
    const group = view.getUint16(0, true);
    if (group !== 0x0002 && group !== 0x0008) {
      throw new MalformedError(
        `Cannot read "${name}": not a DICOM Part 10 object ("DICM" missing at offset 128)`,
      );
    }
  }
  const meta: FileMeta = {
    transferSyntaxUid: "",
    sopClassUid: "",
    sopInstanceUid: "",
    end: pos,
    hasPreamble,
  };
  let metaEnd = -1;
  while (true) {
    if (metaEnd >= 0 && pos >= metaEnd) break;
    if (!need(pos + 8)) return null;
    const group = view.getUint16(pos, true);
    if (group !== 0x0002) break;
    const element = view.getUint16(pos + 2, true);
    const vr = String.fromCharCode(bytes[pos + 4], bytes[pos + 5]);
    let length: number;
    let header: number;
    if (!/^[A-Z]{2}$/.test(vr)) {
      throw new MalformedError(`Cannot read File Meta of "${name}": invalid VR at offset ${pos + 4}`);
    }
    if (LONG_VRS.has(vr)) {
      if (!need(pos + 12)) return null;
      length = view.getUint32(pos + 8, true);
      header = 12;
    } else {
      length = view.getUint16(pos + 6, true);
      header = 8;
    }
    if (length === 0xffffffff || pos + header + length > MAX_META + 132) {
      throw new MalformedError(
        `Cannot read File Meta of "${name}": element (0002,${
          hex4(element)
        }) at offset ${pos} has bad length ${length}`,
      );
    }
    if (!need(pos + header + length)) return null;
    const value = bytes.subarray(pos + header, pos + header + length);
    if (element === 0x0000 && length === 4) metaEnd = pos + header + view.getUint32(pos + header, true);
    else if (element === 0x0002) meta.sopClassUid = trimUid(value);
    else if (element === 0x0003) meta.sopInstanceUid = trimUid(value);
    else if (element === 0x0010) meta.transferSyntaxUid = trimUid(value);
    pos += header + length;
  }
  meta.end = pos;
  if (meta.transferSyntaxUid === "") {
    if (hasPreamble && pos > 132) {
      throw new MalformedError(
        `Cannot read File Meta of "${name}": Transfer Syntax UID (0002,0010) is missing`,
      );
    }
    meta.transferSyntaxUid = IMPLICIT_VR_LITTLE_ENDIAN;
  }
  return meta;
}

function hex4(n: number): string {
  return n.toString(16).toUpperCase().padStart(4, "0");
}
