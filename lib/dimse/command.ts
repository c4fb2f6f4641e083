/**
 * DIMSE command sets (PS3.7 9.3, E.1): the group 0000 elements of a request or response, always encoded in
 * Implicit VR Little Endian, and the command field and status values the services use.
 *
 * @module
 */

import { MalformedError } from "../util/errors.ts";

/** Command Field (0000,0100) values (PS3.7 E.1). */
export const COMMAND = {
  cStoreRq: 0x0001,
  cStoreRsp: 0x8001,
  cGetRq: 0x0010,
  cGetRsp: 0x8010,
  cFindRq: 0x0020,
  cFindRsp: 0x8020,
  cMoveRq: 0x0021,
  cMoveRsp: 0x8021,
  cEchoRq: 0x0030,
  cEchoRsp: 0x8030,
  cCancelRq: 0x0fff,
} as const;

/** Status (0000,0900) values used here (PS3.4 Annexes B, C; PS3.7 C). */
export const STATUS = {
  success: 0x0000,
  pending: 0xff00,
  cancel: 0xfe00,
  /** Sub-operations complete, one or more failures or warnings (C-MOVE, C-GET). */
  subOpsWarning: 0xb000,
  refusedNotAuthorized: 0x0124,
  duplicateSop: 0x0111,
  processingFailure: 0x0110,
  noSuchSopClass: 0x0122,
  outOfResources: 0xa700,
  /** C-MOVE/C-GET: out of resources, unable to calculate the number of matches. */
  outOfResourcesMatches: 0xa701,
  /** C-MOVE/C-GET: out of resources, unable to perform sub-operations. */
  outOfResourcesSubOps: 0xa702,
  /** C-MOVE: Move Destination unknown. */
  moveDestinationUnknown: 0xa801,
  identifierDoesNotMatch: 0xa900,
  cannotUnderstand: 0xc000,
  unableToProcess: 0xc001,
} as const;

/** Command Data Set Type (0000,0800) meaning "no data set". */
export const NO_DATASET = 0x0101;

/** Priority (0000,0700): medium. */
export const PRIORITY_MEDIUM = 0;

/** Command element tags. */
export const CMD = {
  groupLength: 0x00000000,
  affectedSopClass: 0x00000002,
  requestedSopClass: 0x00000003,
  commandField: 0x00000100,
  messageId: 0x00000110,
  respondedTo: 0x00000120,
  moveDestination: 0x00000600,
  priority: 0x00000700,
  dataSetType: 0x00000800,
  status: 0x00000900,
  offendingElement: 0x00000901,
  errorComment: 0x00000902,
  errorId: 0x00000903,
  affectedSop: 0x00001000,
  requestedSop: 0x00001001,
  remaining: 0x00001020,
  completed: 0x00001021,
  failed: 0x00001022,
  warning: 0x00001023,
  moveOriginatorAe: 0x00001030,
  moveOriginatorId: 0x00001031,
} as const;

/** The VR of each command element: US, UL, AT or text (UI, AE, LO, SH). */
const VRS: Record<number, "US" | "UL" | "AT" | "UI" | "AE" | "LO"> = {
  [CMD.groupLength]: "UL",
  [CMD.affectedSopClass]: "UI",
  [CMD.requestedSopClass]: "UI",
  [CMD.commandField]: "US",
  [CMD.messageId]: "US",
  [CMD.respondedTo]: "US",
  [CMD.moveDestination]: "AE",
  [CMD.priority]: "US",
  [CMD.dataSetType]: "US",
  [CMD.status]: "US",
  [CMD.offendingElement]: "AT",
  [CMD.errorComment]: "LO",
  [CMD.errorId]: "US",
  [CMD.affectedSop]: "UI",
  [CMD.requestedSop]: "UI",
  [CMD.remaining]: "US",
  [CMD.completed]: "US",
  [CMD.failed]: "US",
  [CMD.warning]: "US",
  [CMD.moveOriginatorAe]: "AE",
  [CMD.moveOriginatorId]: "US",
};

/** A decoded command set: tag → value (numbers for US/UL/AT, trimmed text otherwise). */
export type Command = Map<number, number | string>;

/** Text of a command element, one character per byte (ISO 8859-1 proper, not windows-1252). */
function byteText(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 4096) out += String.fromCharCode(...bytes.subarray(i, i + 4096));
  return out;
}

/** The bytes of command text, one per character, so a value read is written back as it came. */
function textBytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) <= 0xff ? c.charCodeAt(0) : 0x3f); // "?" beyond Latin-1
}

/**
 * Decodes a command set (Implicit VR Little Endian). Unknown elements are skipped. Throws a `MalformedError`
 * for an element running past the end or a command without Command Field.
 *
 * @example
 * ```ts
 * import { CMD, decodeCommand, encodeCommand } from "./command.ts";
 * const bytes = encodeCommand(new Map([[CMD.commandField, 0x30], [CMD.messageId, 7]]));
 * decodeCommand(bytes).get(CMD.messageId); // 7
 * ```
 */
export function decodeCommand(bytes: Uint8Array): Command {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Command = new Map();
  let at = 0;
  while (at < bytes.length) {
    if (at + 8 > bytes.length) throw new MalformedError(`Malformed command set: element cut short at ${at}`);
    const tag = (view.getUint16(at, true) << 16 | view.getUint16(at + 2, true)) >>> 0;
    const length = view.getUint32(at + 4, true);
    if (tag >>> 16 !== 0) {
      throw new MalformedError(`Malformed command set: element ${tag.toString(16)} is not in group 0000`);
    }
    if (at + 8 + length > bytes.length) {
      throw new MalformedError(`Malformed command set: element ${tag.toString(16)} runs past the end`);
    }
    const value = bytes.subarray(at + 8, at + 8 + length);
    const vr = VRS[tag];
    if (vr === "US" && length >= 2) out.set(tag, view.getUint16(at + 8, true));
    else if (vr === "UL" && length >= 4) out.set(tag, view.getUint32(at + 8, true));
    else if (vr === "AT" && length >= 4) {
      out.set(tag, (view.getUint16(at + 8, true) << 16 | view.getUint16(at + 10, true)) >>> 0);
    } else if (vr !== undefined && vr !== "US" && vr !== "UL" && vr !== "AT") {
      out.set(tag, byteText(value).replace(/[\0\s]+$/, "").replace(/^\s+/, "")); // padding in any order
    }
    at += 8 + length;
  }
  if (typeof out.get(CMD.commandField) !== "number") {
    throw new MalformedError("Malformed command set: no Command Field (0000,0100)");
  }
  return out;
}

/** Encodes a command set (Implicit VR Little Endian), elements in tag order, with its group length. */
export function encodeCommand(command: Command): Uint8Array {
  const parts: Uint8Array[] = [];
  const tags = [...command.keys()].filter((t) => t !== CMD.groupLength).sort((a, b) => a - b);
  for (const tag of tags) {
    const value = command.get(tag)!;
    const vr = VRS[tag];
    let bytes: Uint8Array;
    if (vr === "US") bytes = new Uint8Array([Number(value) & 0xff, Number(value) >> 8 & 0xff]);
    else if (vr === "UL" || vr === "AT") {
      bytes = new Uint8Array(4);
      const v = new DataView(bytes.buffer);
      if (vr === "UL") v.setUint32(0, Number(value), true);
      else {
        v.setUint16(0, Number(value) >>> 16, true);
        v.setUint16(2, Number(value) & 0xffff, true);
      }
    } else {
      const text = textBytes(String(value));
      bytes = text.length % 2 === 0 ? text : new Uint8Array([...text, vr === "UI" ? 0 : 0x20]);
    }
    const element = new Uint8Array(8 + bytes.length);
    const view = new DataView(element.buffer);
    view.setUint16(0, 0, true);
    view.setUint16(2, tag & 0xffff, true);
    view.setUint32(4, bytes.length, true);
    element.set(bytes, 8);
    parts.push(element);
  }
  const length = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(12 + length);
  const view = new DataView(out.buffer);
  view.setUint32(4, 4, true);
  view.setUint32(8, length, true);
  let at = 12;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Whether a command says a data set follows. */
export function hasDataset(command: Command): boolean {
  const type = command.get(CMD.dataSetType);
  return type !== undefined && type !== NO_DATASET;
}

/** The status categories of PS3.7 C.1. */
export function statusKind(status: number): "success" | "warning" | "pending" | "cancel" | "failure" {
  if (status === 0) return "success";
  if (status === 0xff00 || status === 0xff01) return "pending";
  if (status === 0xfe00) return "cancel";
  if (status === 0x0001 || status === 0x0107 || status === 0x0116 || (status & 0xf000) === 0xb000) {
    return "warning";
  }
  return "failure";
}

/** A short name of a command field, for messages. */
export function commandName(field: number): string {
  const names: Record<number, string> = {
    0x0001: "C-STORE-RQ",
    0x8001: "C-STORE-RSP",
    0x0010: "C-GET-RQ",
    0x8010: "C-GET-RSP",
    0x0020: "C-FIND-RQ",
    0x8020: "C-FIND-RSP",
    0x0021: "C-MOVE-RQ",
    0x8021: "C-MOVE-RSP",
    0x0030: "C-ECHO-RQ",
    0x8030: "C-ECHO-RSP",
    0x0fff: "C-CANCEL-RQ",
  };
  return names[field] ?? `command 0x${field.toString(16).padStart(4, "0")}`;
}
