/**
 * The acceptor side of the DIMSE service: association negotiation (called AE title = an AET of this server,
 * calling AE title = a known peer, presentation contexts and roles), authorization per calling AE from
 * `AUTH_GRANTS`, and the dispatch of each request: C-ECHO here, C-STORE to {@linkcode handleStore}, C-FIND to
 * find_scp.ts, C-MOVE and C-GET to retrieve_scp.ts.
 *
 * @module
 */

import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION } from "../dicom/file_meta.ts";
import type { AuthConfig } from "../security/auth_config.ts";
import { allows, type Principal } from "../security/grants.ts";
import type { Services } from "../dicomweb/services.ts";
import type { Ingest } from "../dicomweb/stow.ts";
import { EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN } from "../dicom/transfer_syntax.ts";
import type { Association, Context, Message } from "./association.ts";
import { CMD, COMMAND, type Command, commandName, STATUS } from "./command.ts";
import type { DimseSettings } from "./dimse_settings.ts";
import { IDENTIFIER_SYNTAXES } from "./identifier.ts";
import {
  type AcceptedContext,
  APPLICATION_CONTEXT,
  type AssociateRq,
  CONTEXT_RESULT,
  type RoleSelection,
  type UserInfo,
} from "./pdu.ts";
import { isStorageClass, QR_MODELS, VERIFICATION } from "./sop_classes.ts";
import { storeDataset } from "./store_scp.ts";
import { handleFind } from "./find_scp.ts";
import { handleRetrieve } from "./retrieve_scp.ts";

/** What every association of the server shares. */
export interface ScpContext {
  /** The server's services (store, AETs, catalog, crawler). */
  services: Services;
  /** The DIMSE settings. */
  settings: DimseSettings;
  /** The one ingest every C-STORE goes through (shared write gates and catalog batches). */
  ingest: Ingest;
  /** Where problems are reported. */
  log: (line: string) => void;
}

/** One association's view: who called whom, with which rights. */
export interface Session {
  /** The AET called (the bucket's AET). */
  aet: string;
  /** The calling AE title. */
  callingAe: string;
  /** What the caller may do. */
  principal: Principal;
  /** Roles agreed per SOP class (SCP/SCU Role Selection). */
  roles: Map<string, RoleSelection>;
  /** Message IDs of operations the peer cancelled (C-CANCEL-RQ), until they end. */
  cancelled: Set<number>;
}

/** An A-ASSOCIATE-RJ to send: result, source, reason, and why (for the log). */
export interface Rejection {
  /** 1 permanent, 2 transient. */
  result: number;
  /** 1 service-user, 2 service-provider (ACSE), 3 service-provider (presentation). */
  source: number;
  /** Reason/Diag. */
  reason: number;
  /** For the log. */
  why: string;
}

/** The outcome of negotiation: an A-ASSOCIATE-AC's contents, or a rejection. */
export type Negotiation =
  | { rejection: Rejection }
  | {
    rejection?: undefined;
    contexts: AcceptedContext[];
    accepted: Map<number, Context>;
    user: UserInfo;
    roles: Map<string, RoleSelection>;
  };

/** The grants of a calling AE (see the module notes of lib/dimse/README.md). */
export function principalOf(callingAe: string, auth: AuthConfig): Principal {
  const own = auth.grants.get(callingAe);
  const anyone = auth.grants.get("*") ?? [];
  if (own) return { subject: callingAe, method: "none", grants: [...own, ...anyone] };
  if (auth.methods.length === 0) {
    return { subject: callingAe, method: "none", grants: [{ action: "*", aet: "*" }] };
  }
  return { subject: callingAe, method: "none", grants: anyone };
}

/** Decides an A-ASSOCIATE-RQ (the caller checks the association cap before). */
export async function negotiate(rq: AssociateRq, context: ScpContext): Promise<Negotiation> {
  const { settings, services } = context;
  if ((rq.protocolVersion & 1) === 0) {
    return { rejection: { result: 1, source: 2, reason: 2, why: `protocol version ${rq.protocolVersion}` } };
  }
  if (rq.applicationContext !== APPLICATION_CONTEXT) {
    return {
      rejection: { result: 1, source: 1, reason: 2, why: `application context ${rq.applicationContext}` },
    };
  }
  if (await services.aets.bucket(rq.calledAe) === undefined) {
    return {
      rejection: { result: 1, source: 1, reason: 7, why: `called AE title "${rq.calledAe}" not recognized` },
    };
  }
  if (!settings.peers.has(rq.callingAe) && !settings.allowAny) {
    return {
      rejection: {
        result: 1,
        source: 1,
        reason: 3,
        why: `calling AE title "${rq.callingAe}" not recognized (add it to DIMSE_PEERS)`,
      },
    };
  }
  const contexts: AcceptedContext[] = [];
  const accepted = new Map<number, Context>();
  for (const proposed of rq.contexts) {
    const { abstractSyntax, transferSyntaxes } = proposed;
    let transferSyntax: string | undefined;
    let result: number = CONTEXT_RESULT.acceptance;
    if (abstractSyntax === VERIFICATION || QR_MODELS.has(abstractSyntax)) {
      transferSyntax = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, ...IDENTIFIER_SYNTAXES]
        .find((ts) => transferSyntaxes.includes(ts));
      if (!transferSyntax) result = CONTEXT_RESULT.transferSyntaxesNotSupported;
    } else if (isStorageClass(abstractSyntax)) {
      // stored as received: the requestor's first choice, whatever it is
      transferSyntax = transferSyntaxes.find((ts) => /^[0-9.]{1,64}$/.test(ts));
      if (!transferSyntax) result = CONTEXT_RESULT.transferSyntaxesNotSupported;
    } else result = CONTEXT_RESULT.abstractSyntaxNotSupported;
    contexts.push({ id: proposed.id, result, transferSyntax: transferSyntax ?? "" });
    if (transferSyntax && result === CONTEXT_RESULT.acceptance) {
      accepted.set(proposed.id, { id: proposed.id, abstractSyntax, transferSyntax });
    }
  }
  // SCP/SCU Role Selection: C-GET receivers propose to be SCP of storage classes; we agree for those
  const roles = new Map<string, RoleSelection>();
  for (const [uid, role] of rq.user.roles) {
    if (isStorageClass(uid)) roles.set(uid, { scu: role.scu, scp: role.scp });
    else roles.set(uid, { scu: role.scu, scp: false });
  }
  const user: UserInfo = {
    maxLength: settings.maxPdu,
    implementationClassUid: IMPLEMENTATION_CLASS_UID,
    implementationVersion: IMPLEMENTATION_VERSION,
    roles,
    ...(rq.user.asyncOps ? { asyncOps: { invoked: 1, performed: 1 } } : {}),
  };
  return { contexts, accepted, user, roles };
}

/** A response command to `request` with `status` (and the fields of `extra`). */
export function response(request: Command, status: number, extra: [number, number | string][] = []): Command {
  const field = Number(request.get(CMD.commandField)) | 0x8000;
  const out: Command = new Map<number, number | string>([
    [CMD.commandField, field],
    [CMD.respondedTo, Number(request.get(CMD.messageId))],
    [CMD.dataSetType, 0x0101],
    [CMD.status, status],
  ]);
  const sopClass = request.get(CMD.affectedSopClass);
  if (sopClass !== undefined) out.set(CMD.affectedSopClass, sopClass);
  const sop = request.get(CMD.affectedSop);
  if (sop !== undefined && (field === COMMAND.cStoreRsp)) out.set(CMD.affectedSop, sop);
  for (const [tag, value] of extra) out.set(tag, value);
  return out;
}

/** An Error Comment (0000,0902) value: LO, at most 64 characters. */
export function errorComment(text: string): [number, string] {
  const clean = text.replace(/[\\\r\n]/g, " ");
  return [CMD.errorComment, clean.length > 64 ? clean.slice(0, 61) + "..." : clean];
}

/** What the handler of a request needs to answer it: its command, context and message IDs, and a failure reply. */
export function replyTo(association: Association, message: Message): {
  command: Command;
  contextId: number;
  messageId: number;
  fail: (status: number, why: string) => Promise<void>;
} {
  const { command } = message;
  const contextId = message.context.id;
  return {
    command,
    contextId,
    messageId: Number(command.get(CMD.messageId)),
    fail: (status, why) => association.send(contextId, response(command, status, [errorComment(why)])),
  };
}

/** Handles one request on an established association. */
export async function handleRequest(
  association: Association,
  message: Message,
  session: Session,
  context: ScpContext,
): Promise<void> {
  const { command } = message;
  const field = Number(command.get(CMD.commandField));
  const contextId = message.context.id;
  const sopClass = String(command.get(CMD.affectedSopClass) ?? "");
  if (sopClass !== message.context.abstractSyntax) {
    await drain(message);
    await association.send(
      contextId,
      response(command, STATUS.noSuchSopClass, [
        errorComment(
          `${commandName(field)} for ${sopClass} on a context of ${message.context.abstractSyntax}`,
        ),
      ]),
    );
    return;
  }
  switch (field) {
    case COMMAND.cEchoRq:
      await association.send(contextId, response(command, STATUS.success));
      return;
    case COMMAND.cStoreRq: {
      if (!allows(session.principal, "write", session.aet)) {
        await drain(message);
        await association.send(
          contextId,
          response(command, STATUS.refusedNotAuthorized, [
            errorComment(`${session.callingAe} may not store into ${session.aet} (AUTH_GRANTS)`),
          ]),
        );
        return;
      }
      const { status, comment } = await storeDataset(message, session, context);
      await association.send(
        contextId,
        response(command, status, comment ? [errorComment(comment)] : []),
      );
      return;
    }
    case COMMAND.cFindRq:
    case COMMAND.cMoveRq:
    case COMMAND.cGetRq: {
      const op = field === COMMAND.cFindRq ? "find" : field === COMMAND.cMoveRq ? "move" : "get";
      if (QR_MODELS.get(sopClass)?.op !== op) {
        await drain(message);
        await association.send(
          contextId,
          response(command, STATUS.noSuchSopClass, [errorComment(`${commandName(field)} on ${sopClass}`)]),
        );
        return;
      }
      if (!allows(session.principal, "read", session.aet)) {
        await drain(message);
        await association.send(
          contextId,
          response(command, STATUS.refusedNotAuthorized, [
            errorComment(`${session.callingAe} may not read ${session.aet} (AUTH_GRANTS)`),
          ]),
        );
        return;
      }
      if (field === COMMAND.cFindRq) await handleFind(association, message, session, context);
      else await handleRetrieve(association, message, session, context);
      return;
    }
    default:
      await drain(message);
      association.abort(`${commandName(field)} is not a service of this SCP`);
  }
}

/** Reads and drops a request's data set (when it is refused without looking at it). */
export async function drain(message: Message): Promise<void> {
  await message.dataset?.cancel().catch(() => {});
  await message.datasetEnd?.catch(() => {});
}
