/**
 * The PDUs of the DICOM upper layer (PS3.8 9.3): A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP and
 * A-ABORT, parsed from and encoded to bytes. {@linkcode parsePdu} takes one whole PDU (header included) and
 * throws a `MalformedError` (a `SyntaxError`) for anything that does not follow the standard's layout: it is
 * the function the fuzz harness calls.
 *
 * @module
 */

import { MalformedError } from "../util/errors.ts";

/** PDU types (PS3.8 9.3.1). */
export const PDU_TYPE = {
  associateRq: 0x01,
  associateAc: 0x02,
  associateRj: 0x03,
  pData: 0x04,
  releaseRq: 0x05,
  releaseRp: 0x06,
  abort: 0x07,
} as const;

/** The DICOM Application Context Name (PS3.7 A.2.1). */
export const APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1";

/** Presentation context results (PS3.8 9.3.3.2). */
export const CONTEXT_RESULT = {
  acceptance: 0,
  userRejection: 1,
  noReason: 2,
  abstractSyntaxNotSupported: 3,
  transferSyntaxesNotSupported: 4,
} as const;

/** A presentation context as the requestor proposes it. */
export interface ProposedContext {
  /** Odd number 1–255. */
  id: number;
  /** The SOP class. */
  abstractSyntax: string;
  /** Transfer syntaxes offered, in the requestor's order of preference. */
  transferSyntaxes: string[];
}

/** A presentation context as the acceptor answers it. */
export interface AcceptedContext {
  /** The id of the proposed context. */
  id: number;
  /** One of {@linkcode CONTEXT_RESULT}. */
  result: number;
  /** The transfer syntax chosen (meaningful on acceptance). */
  transferSyntax: string;
}

/** SCP/SCU Role Selection (PS3.7 D.3.3.4) for one SOP class. */
export interface RoleSelection {
  /** The requestor (or acceptor) may act as SCU. */
  scu: boolean;
  /** The requestor (or acceptor) may act as SCP. */
  scp: boolean;
}

/** The User Information item (PS3.8 D.1, PS3.7 D.3.3). */
export interface UserInfo {
  /** Maximum Length Received: the largest P-DATA-TF variable field the sender accepts; 0 = no limit. */
  maxLength: number;
  /** Implementation Class UID. */
  implementationClassUid: string;
  /** Implementation Version Name. */
  implementationVersion?: string;
  /** Asynchronous Operations Window: invoked, performed. */
  asyncOps?: { invoked: number; performed: number };
  /** SCP/SCU Role Selection per SOP class UID. */
  roles: Map<string, RoleSelection>;
}

/** A-ASSOCIATE-RQ. */
export interface AssociateRq {
  /** PDU type. */
  type: "associate-rq";
  /** Protocol version bits (bit 0 = version 1). */
  protocolVersion: number;
  /** Called AE title, trimmed. */
  calledAe: string;
  /** Calling AE title, trimmed. */
  callingAe: string;
  /** Application Context Name. */
  applicationContext: string;
  /** Presentation contexts proposed. */
  contexts: ProposedContext[];
  /** User Information. */
  user: UserInfo;
}

/** A-ASSOCIATE-AC. */
export interface AssociateAc {
  /** PDU type. */
  type: "associate-ac";
  /** Protocol version bits. */
  protocolVersion: number;
  /** Called AE title as the request had it. */
  calledAe: string;
  /** Calling AE title as the request had it. */
  callingAe: string;
  /** Application Context Name. */
  applicationContext: string;
  /** One result per proposed context. */
  contexts: AcceptedContext[];
  /** User Information. */
  user: UserInfo;
}

/** A-ASSOCIATE-RJ (PS3.8 9.3.4). */
export interface AssociateRj {
  /** PDU type. */
  type: "associate-rj";
  /** 1 rejected-permanent, 2 rejected-transient. */
  result: number;
  /** 1 service-user, 2 service-provider (ACSE), 3 service-provider (presentation). */
  source: number;
  /** Reason/Diag. (meaning depends on `source`). */
  reason: number;
}

/** One Presentation Data Value: a fragment of a command or data set. */
export interface Pdv {
  /** Presentation context id. */
  contextId: number;
  /** A command fragment (else a data set fragment). */
  command: boolean;
  /** The last fragment of its command or data set. */
  last: boolean;
  /** The fragment's bytes (a view into the PDU). */
  data: Uint8Array;
}

/** P-DATA-TF. */
export interface PData {
  /** PDU type. */
  type: "p-data";
  /** Its PDVs, in order. */
  pdvs: Pdv[];
}

/** A-RELEASE-RQ or A-RELEASE-RP. */
export interface Release {
  /** PDU type. */
  type: "release-rq" | "release-rp";
}

/** A-ABORT (PS3.8 9.3.8). */
export interface Abort {
  /** PDU type. */
  type: "abort";
  /** 0 service-user, 2 service-provider. */
  source: number;
  /** Reason (service-provider only). */
  reason: number;
}

/** Any PDU. */
export type Pdu = AssociateRq | AssociateAc | AssociateRj | PData | Release | Abort;

const encoder = new TextEncoder();

function fail(detail: string): never {
  throw new MalformedError(`Malformed PDU: ${detail}`);
}

/**
 * An AE title, UID or name: one character per byte (ISO 8859-1 proper; `TextDecoder("latin1")` is really
 * windows-1252, which maps 0x80–0x9F elsewhere), so a title read here is written back byte for byte.
 */
function text(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    out += String.fromCharCode(...bytes.subarray(i, i + 4096));
  }
  return out.replace(/[\0 ]+$/, "").replace(/^ +/, "");
}

function u16(bytes: Uint8Array, at: number): number {
  return bytes[at] << 8 | bytes[at + 1];
}

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at] << 24 | bytes[at + 1] << 16 | bytes[at + 2] << 8 | bytes[at + 3]) >>> 0;
}

/** The length of the PDU whose first 6 bytes are `header` (the 6 bytes included). */
export function pduLength(header: Uint8Array): number {
  return 6 + u32(header, 2);
}

/**
 * Parses one whole PDU, header included. Throws a `MalformedError` for an unknown type, a length that does not
 * match, items that run past their parent, or missing required items.
 *
 * @example
 * ```ts
 * import { parsePdu } from "./pdu.ts";
 * parsePdu(new Uint8Array([5, 0, 0, 0, 0, 4, 0, 0, 0, 0])); // { type: "release-rq" }
 * ```
 */
export function parsePdu(bytes: Uint8Array): Pdu {
  if (bytes.length < 6) fail(`${bytes.length} bytes is shorter than a PDU header`);
  const length = u32(bytes, 2);
  if (bytes.length !== 6 + length) fail(`the header says ${length} bytes follow, ${bytes.length - 6} do`);
  const body = bytes.subarray(6);
  switch (bytes[0]) {
    case PDU_TYPE.associateRq:
    case PDU_TYPE.associateAc:
      return parseAssociate(body, bytes[0] === PDU_TYPE.associateRq);
    case PDU_TYPE.associateRj:
      if (length !== 4) fail(`A-ASSOCIATE-RJ has length ${length}, not 4`);
      return { type: "associate-rj", result: body[1], source: body[2], reason: body[3] };
    case PDU_TYPE.pData:
      return { type: "p-data", pdvs: parsePdvs(body) };
    case PDU_TYPE.releaseRq:
    case PDU_TYPE.releaseRp:
      if (length !== 4) fail(`A-RELEASE PDU has length ${length}, not 4`);
      return { type: bytes[0] === PDU_TYPE.releaseRq ? "release-rq" : "release-rp" };
    case PDU_TYPE.abort:
      if (length !== 4) fail(`A-ABORT has length ${length}, not 4`);
      return { type: "abort", source: body[2], reason: body[3] };
    default:
      fail(`unknown PDU type 0x${bytes[0].toString(16).padStart(2, "0")}`);
  }
}

function parsePdvs(body: Uint8Array): Pdv[] {
  const pdvs: Pdv[] = [];
  let at = 0;
  while (at < body.length) {
    if (at + 6 > body.length) fail(`PDV header cut short at offset ${at}`);
    const length = u32(body, at);
    if (length < 2) fail(`PDV item length ${length} at offset ${at} is below 2`);
    if (at + 4 + length > body.length) fail(`PDV of ${length} bytes at offset ${at} runs past the PDU`);
    const contextId = body[at + 4];
    const control = body[at + 5];
    if (contextId % 2 === 0) fail(`PDV presentation context id ${contextId} is even`);
    if ((control & 0xfc) !== 0) {
      fail(`PDV message control header 0x${control.toString(16)} has reserved bits`);
    }
    pdvs.push({
      contextId,
      command: (control & 1) === 1,
      last: (control & 2) === 2,
      data: body.subarray(at + 6, at + 4 + length),
    });
    at += 4 + length;
  }
  if (pdvs.length === 0) fail("P-DATA-TF without a PDV");
  return pdvs;
}

/** Splits `bytes` into items (type, 1 reserved byte, 16-bit length, value). */
function* items(bytes: Uint8Array, where: string): Generator<{ type: number; value: Uint8Array }> {
  let at = 0;
  while (at < bytes.length) {
    if (at + 4 > bytes.length) fail(`item header cut short at offset ${at} of ${where}`);
    const length = u16(bytes, at + 2);
    if (at + 4 + length > bytes.length) {
      fail(`item 0x${bytes[at].toString(16)} runs past the end of ${where}`);
    }
    yield { type: bytes[at], value: bytes.subarray(at + 4, at + 4 + length) };
    at += 4 + length;
  }
}

function parseAssociate(body: Uint8Array, request: boolean): AssociateRq | AssociateAc {
  const name = request ? "A-ASSOCIATE-RQ" : "A-ASSOCIATE-AC";
  if (body.length < 68) fail(`${name} is ${body.length} bytes, shorter than its 68-byte fixed part`);
  const protocolVersion = u16(body, 0);
  const calledAe = text(body.subarray(4, 20));
  const callingAe = text(body.subarray(20, 36));
  let applicationContext: string | undefined;
  const proposed: ProposedContext[] = [];
  const accepted: AcceptedContext[] = [];
  let user: UserInfo | undefined;
  for (const item of items(body.subarray(68), name)) {
    if (item.type === 0x10) applicationContext = text(item.value);
    else if (item.type === 0x20 && request) proposed.push(parseProposed(item.value));
    else if (item.type === 0x21 && !request) accepted.push(parseAccepted(item.value));
    else if (item.type === 0x50) user = parseUserInfo(item.value);
    else fail(`unexpected item 0x${item.type.toString(16)} in ${name}`);
  }
  if (applicationContext === undefined) fail(`${name} has no Application Context item`);
  if (user === undefined) fail(`${name} has no User Information item`);
  if (request) {
    if (proposed.length === 0) fail(`${name} proposes no presentation context`);
    return {
      type: "associate-rq",
      protocolVersion,
      calledAe,
      callingAe,
      applicationContext,
      contexts: proposed,
      user,
    };
  }
  return {
    type: "associate-ac",
    protocolVersion,
    calledAe,
    callingAe,
    applicationContext,
    contexts: accepted,
    user,
  };
}

function parseProposed(value: Uint8Array): ProposedContext {
  if (value.length < 4) fail("presentation context item shorter than 4 bytes");
  const id = value[0];
  if (id % 2 === 0) fail(`presentation context id ${id} is even`);
  let abstractSyntax: string | undefined;
  const transferSyntaxes: string[] = [];
  for (const sub of items(value.subarray(4), `presentation context ${id}`)) {
    if (sub.type === 0x30) abstractSyntax = text(sub.value);
    else if (sub.type === 0x40) transferSyntaxes.push(text(sub.value));
    else fail(`unexpected sub-item 0x${sub.type.toString(16)} in presentation context ${id}`);
  }
  if (abstractSyntax === undefined) fail(`presentation context ${id} has no abstract syntax`);
  if (transferSyntaxes.length === 0) fail(`presentation context ${id} has no transfer syntax`);
  return { id, abstractSyntax, transferSyntaxes };
}

function parseAccepted(value: Uint8Array): AcceptedContext {
  if (value.length < 4) fail("presentation context item shorter than 4 bytes");
  const id = value[0];
  const result = value[2];
  let transferSyntax = "";
  for (const sub of items(value.subarray(4), `presentation context ${id}`)) {
    if (sub.type === 0x40) transferSyntax = text(sub.value);
  }
  if (result === CONTEXT_RESULT.acceptance && transferSyntax === "") {
    fail(`accepted presentation context ${id} has no transfer syntax`);
  }
  return { id, result, transferSyntax };
}

function parseUserInfo(value: Uint8Array): UserInfo {
  const user: UserInfo = { maxLength: 0, implementationClassUid: "", roles: new Map() };
  let sawMax = false;
  for (const sub of items(value, "User Information")) {
    const v = sub.value;
    switch (sub.type) {
      case 0x51:
        if (v.length !== 4) fail(`Maximum Length item of ${v.length} bytes, not 4`);
        user.maxLength = u32(v, 0);
        sawMax = true;
        break;
      case 0x52:
        user.implementationClassUid = text(v);
        break;
      case 0x53:
        if (v.length !== 4) fail(`Asynchronous Operations Window item of ${v.length} bytes, not 4`);
        user.asyncOps = { invoked: u16(v, 0), performed: u16(v, 2) };
        break;
      case 0x54: {
        if (v.length < 4) fail("SCP/SCU Role Selection item shorter than 4 bytes");
        const n = u16(v, 0);
        if (v.length !== 2 + n + 2) {
          fail(`SCP/SCU Role Selection item of ${v.length} bytes for a ${n}-byte UID`);
        }
        user.roles.set(text(v.subarray(2, 2 + n)), { scu: v[2 + n] === 1, scp: v[3 + n] === 1 });
        break;
      }
      case 0x55:
        user.implementationVersion = text(v);
        break;
      default:
        break; // extended negotiation, user identity: not used, ignored as PS3.7 D.3.3 allows
    }
  }
  if (!sawMax) fail("User Information has no Maximum Length item");
  return user;
}

// ---------------------------------------------------------------------------------------------------
// Encoding

function pdu(type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(6 + body.length);
  out[0] = type;
  new DataView(out.buffer).setUint32(2, body.length);
  out.set(body, 6);
  return out;
}

function item(type: number, value: Uint8Array): Uint8Array {
  if (value.length > 0xffff) {
    throw new RangeError(`Item 0x${type.toString(16)} too long: ${value.length} bytes`);
  }
  const out = new Uint8Array(4 + value.length);
  out[0] = type;
  out[2] = value.length >> 8;
  out[3] = value.length & 0xff;
  out.set(value, 4);
  return out;
}

function join(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * The 16-byte AE title field, space padded. Titles are read as Latin-1 (one character per byte), so they are
 * written back the same way: an A-ASSOCIATE-AC returns the request's titles byte for byte (PS3.8 9.3.3), even
 * ones outside the default repertoire, which UTF-8 would lengthen past 16 bytes.
 */
function aeField(ae: string): Uint8Array {
  const out = new Uint8Array(16).fill(0x20);
  for (let i = 0; i < Math.min(16, ae.length); i++) {
    const code = ae.charCodeAt(i);
    out[i] = code <= 0xff ? code : 0x3f; // "?" for what Latin-1 cannot hold
  }
  return out;
}

function userInfoItem(user: UserInfo): Uint8Array {
  const max = new Uint8Array(4);
  new DataView(max.buffer).setUint32(0, user.maxLength);
  const subs = [item(0x51, max), item(0x52, encoder.encode(user.implementationClassUid))];
  if (user.asyncOps) {
    const v = new Uint8Array(4);
    const view = new DataView(v.buffer);
    view.setUint16(0, user.asyncOps.invoked);
    view.setUint16(2, user.asyncOps.performed);
    subs.push(item(0x53, v));
  }
  for (const [uid, role] of user.roles) {
    const u = encoder.encode(uid);
    const v = new Uint8Array(2 + u.length + 2);
    v[0] = u.length >> 8;
    v[1] = u.length & 0xff;
    v.set(u, 2);
    v[2 + u.length] = role.scu ? 1 : 0;
    v[3 + u.length] = role.scp ? 1 : 0;
    subs.push(item(0x54, v));
  }
  if (user.implementationVersion) {
    subs.push(item(0x55, encoder.encode(user.implementationVersion.slice(0, 16))));
  }
  return item(0x50, join(subs));
}

function associate(type: number, fields: Omit<AssociateRq, "type" | "contexts">, contexts: Uint8Array[]) {
  const fixed = new Uint8Array(68);
  fixed[1] = 1; // protocol version 1
  fixed.set(aeField(fields.calledAe), 4);
  fixed.set(aeField(fields.callingAe), 20);
  return pdu(
    type,
    join([
      fixed,
      item(0x10, encoder.encode(fields.applicationContext)),
      ...contexts,
      userInfoItem(fields.user),
    ]),
  );
}

/** The bytes of an A-ASSOCIATE-RQ. */
export function encodeAssociateRq(rq: Omit<AssociateRq, "type" | "protocolVersion">): Uint8Array {
  const contexts = rq.contexts.map((c) => {
    const head = new Uint8Array([c.id, 0, 0, 0]);
    return item(
      0x20,
      join([
        head,
        item(0x30, encoder.encode(c.abstractSyntax)),
        ...c.transferSyntaxes.map((ts) => item(0x40, encoder.encode(ts))),
      ]),
    );
  });
  return associate(PDU_TYPE.associateRq, { ...rq, protocolVersion: 1 }, contexts);
}

/** The bytes of an A-ASSOCIATE-AC. */
export function encodeAssociateAc(ac: Omit<AssociateAc, "type" | "protocolVersion">): Uint8Array {
  const contexts = ac.contexts.map((c) =>
    item(
      0x21,
      join([
        new Uint8Array([c.id, 0, c.result, 0]),
        // PS3.8 9.3.3.2: the transfer syntax sub-item is sent but not significant on rejection
        item(0x40, encoder.encode(c.result === CONTEXT_RESULT.acceptance ? c.transferSyntax : "")),
      ]),
    )
  );
  return associate(PDU_TYPE.associateAc, { ...ac, protocolVersion: 1 }, contexts);
}

/** The bytes of an A-ASSOCIATE-RJ. */
export function encodeAssociateRj(result: number, source: number, reason: number): Uint8Array {
  return pdu(PDU_TYPE.associateRj, new Uint8Array([0, result, source, reason]));
}

/** The bytes of an A-RELEASE-RQ. */
export function encodeReleaseRq(): Uint8Array {
  return pdu(PDU_TYPE.releaseRq, new Uint8Array(4));
}

/** The bytes of an A-RELEASE-RP. */
export function encodeReleaseRp(): Uint8Array {
  return pdu(PDU_TYPE.releaseRp, new Uint8Array(4));
}

/** The bytes of an A-ABORT (`source` 0 service-user, 2 service-provider). */
export function encodeAbort(source = 0, reason = 0): Uint8Array {
  return pdu(PDU_TYPE.abort, new Uint8Array([0, 0, source, reason]));
}

/**
 * Writes the 12-byte head of a P-DATA-TF holding one PDV of `dataLength` bytes into `out` (at 0): PDU header,
 * PDV length, context id and message control header. The PDV's data follows at offset 12.
 */
export function writePDataHead(
  out: Uint8Array,
  dataLength: number,
  pdv: Omit<Pdv, "data">,
): void {
  const view = new DataView(out.buffer, out.byteOffset, 12);
  out[0] = PDU_TYPE.pData;
  out[1] = 0;
  view.setUint32(2, dataLength + 6);
  view.setUint32(6, dataLength + 2);
  out[10] = pdv.contextId;
  out[11] = (pdv.command ? 1 : 0) | (pdv.last ? 2 : 0);
}

/** Reasons of A-ASSOCIATE-RJ from the service user (PS3.8 Table 9-21), for messages. */
export const REJECT_REASONS: Record<number, string> = {
  1: "no reason given",
  2: "application context name not supported",
  3: "calling AE title not recognized",
  7: "called AE title not recognized",
};
