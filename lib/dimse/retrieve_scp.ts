/**
 * C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3). The identifier's unique keys (Patient ID, Study, Series and SOP
 * Instance UIDs, lists allowed) select instances through the catalog (studies first, then each study's
 * instances, indexed on demand as QIDO-RS does); each instance is one C-STORE sub-operation, streamed from the
 * store in the transfer syntax it is stored in, File Meta left out. C-MOVE sends to a known peer
 * (`DIMSE_PEERS`) over associations of its own (storage_scu.ts), an unknown destination is answered A801;
 * C-GET sends on the requesting association, on the contexts the SCU proposed with the SCP role.
 *
 * After each sub-operation a pending response (FF00) carries the counts of remaining, completed, failed and
 * warning sub-operations; a C-CANCEL is honoured between sub-operations (FE00 with the counts). The final
 * status is 0000 when every sub-operation succeeded, B000 when some failed or had warnings (with the Failed SOP
 * Instance UID List), A702 when a C-MOVE destination cannot be reached.
 *
 * @module
 */

import { instanceKey } from "../dicom/uid.ts";
import { openInstance } from "../objects/open_instance.ts";
import { skipBytes } from "../util/streams.ts";
import type { Association, Message } from "./association.ts";
import { CMD, COMMAND, type Command, PRIORITY_MEDIUM, STATUS, statusKind } from "./command.ts";
import { encodeIdentifier, type IdElement } from "./identifier.ts";
import { identifierOf, scopesOf } from "./find_scp.ts";
import { IdentifierError, levelOfIdentifier, type QrLevel, searchOf } from "./query.ts";
import { errorComment, replyTo, response, type ScpContext, type Session } from "./scp.ts";
import { QR_MODELS } from "./sop_classes.ts";
import { type MoveOrigin, StorageScu } from "./storage_scu.ts";

const PAGE = 1000;

/** One instance to send. */
interface Target {
  key: string;
  sop: string;
  /** From the catalog's data set (the File Meta's is used when absent). */
  sopClass?: string;
}

/** An instance opened from the store: its File Meta values and the data set that follows it. */
export interface StoredDataset {
  /** (0002,0010). */
  transferSyntax: string;
  /** (0002,0002), empty when absent. */
  sopClass: string;
  /** The data set's bytes (File Meta left out). */
  dataset: ReadableStream<Uint8Array>;
}

/**
 * Opens a stored object and reads its File Meta from the first chunks; the rest streams. Resolves to
 * `undefined` when the object is gone.
 */
export async function openStored(
  context: ScpContext,
  bucket: string,
  key: string,
): Promise<StoredDataset | undefined> {
  const opened = await openInstance(context.services.store, bucket, key);
  if (!opened) return undefined;
  return {
    transferSyntax: opened.meta.transferSyntaxUid,
    sopClass: opened.meta.sopClassUid,
    dataset: skipBytes(opened.body, opened.meta.end),
  };
}

/** The instances an identifier selects, through the catalog. */
async function targetsOf(elements: IdElement[], level: QrLevel, session: Session, context: ScpContext) {
  const { catalog, crawler } = context.services;
  if (!catalog) throw new IdentifierError("Retrieve needs the search catalog: the server runs without one");
  const studyQuery = searchOf(
    elements.filter((e) => [0x00100020, 0x0020000d].includes(e.tag)),
    "STUDY",
    PAGE,
  );
  const instanceQuery = searchOf(
    elements.filter((e) => [0x0020000e, 0x00080018].includes(e.tag)),
    "IMAGE",
    PAGE,
  );
  if (level !== "PATIENT" && studyQuery.filters.every((f) => f.path[0] !== 0x0020000d)) {
    throw new IdentifierError(`A ${level} level retrieve needs StudyInstanceUID (0020,000D)`);
  }
  if (level === "PATIENT" && studyQuery.filters.length === 0) {
    throw new IdentifierError("A PATIENT level retrieve needs PatientID (0010,0020)");
  }
  if (
    (level === "SERIES" || level === "IMAGE") && instanceQuery.filters.every((f) => f.path[0] !== 0x0020000e)
  ) {
    throw new IdentifierError(`A ${level} level retrieve needs SeriesInstanceUID (0020,000E)`);
  }
  if (level === "IMAGE" && instanceQuery.filters.every((f) => f.path[0] !== 0x00080018)) {
    throw new IdentifierError("An IMAGE level retrieve needs SOPInstanceUID (0008,0018)");
  }
  await crawler?.ready(session.aet, 10_000);
  const studies: string[] = [];
  for (let offset = 0;; offset += PAGE) {
    const rows = await catalog.search({
      aet: session.aet,
      level: "study",
      filters: studyQuery.filters,
      limit: PAGE,
      offset,
    });
    studies.push(...rows.map((r) => r.study));
    if (rows.length < PAGE) break;
  }
  const targets: Target[] = [];
  for (const study of studies) {
    for (const scope of scopesOf(instanceQuery.filters) ?? [{}]) {
      await crawler?.ensureIndexed(session.aet, { study, series: scope.series });
    }
    for (let offset = 0;; offset += PAGE) {
      const rows = await catalog.search({
        aet: session.aet,
        level: "instance",
        study,
        filters: instanceQuery.filters,
        limit: PAGE,
        offset,
      });
      for (const row of rows) {
        const sopClass = row.instanceJson?.["00080016"]?.Value?.[0];
        targets.push({
          key: instanceKey(row.study, row.series!, row.sop!),
          sop: row.sop!,
          sopClass: typeof sopClass === "string" ? sopClass : undefined,
        });
      }
      if (rows.length < PAGE) break;
    }
  }
  return targets;
}

/** Sends one instance somewhere; `undefined` when it cannot be offered there (no context for it). */
type Sender = (
  target: { sopClass: string; sop: string; transferSyntax: string },
  dataset: ReadableStream<Uint8Array>,
) => Promise<{ status: number; comment?: string } | undefined>;

/** Answers a C-MOVE-RQ or C-GET-RQ. */
export async function handleRetrieve(
  association: Association,
  message: Message,
  session: Session,
  context: ScpContext,
): Promise<void> {
  const { command, contextId, messageId, fail } = replyTo(association, message);
  const isMove = Number(command.get(CMD.commandField)) === COMMAND.cMoveRq;
  let targets: Target[];
  try {
    const elements = await identifierOf(message);
    const level = levelOfIdentifier(elements, QR_MODELS.get(message.context.abstractSyntax)!.root);
    targets = await targetsOf(elements, level, session, context);
  } catch (error) {
    if (error instanceof IdentifierError) return await fail(STATUS.identifierDoesNotMatch, error.message);
    throw error;
  }
  let sender: Sender;
  let scu: StorageScu | undefined;
  if (isMove) {
    const destination = String(command.get(CMD.moveDestination) ?? "");
    const peer = context.settings.peers.get(destination);
    if (!peer) {
      return await fail(
        STATUS.moveDestinationUnknown,
        `Move Destination "${destination}" unknown: add it to DIMSE_PEERS`,
      );
    }
    const origin: MoveOrigin = { ae: session.callingAe, messageId };
    scu = new StorageScu(peer, { callingAe: session.aet, settings: context.settings, log: context.log });
    sender = (target, dataset) => scu!.store(target, dataset, origin);
  } else {
    sender = (target, dataset) => storeOnAssociation(association, session, target, dataset);
  }
  const bucket = (await context.services.aets.bucket(session.aet))!;
  const counts = { remaining: targets.length, completed: 0, failed: 0, warning: 0 };
  const failedUids: string[] = [];
  const countFields = (final: boolean): [number, number][] => [
    ...(final ? [] : [[CMD.remaining, counts.remaining] as [number, number]]),
    [CMD.completed, counts.completed],
    [CMD.failed, counts.failed],
    [CMD.warning, counts.warning],
  ];
  const failedList = () =>
    encodeIdentifier(
      [{ tag: 0x00080058, vr: "UI", value: failedUids.join("\\") }],
      message.context.transferSyntax,
    );
  // the next object is opened while the current one is sent (one S3 request's latency hidden per instance)
  const open = (i: number) => {
    const opening = openStored(context, bucket, targets[i].key);
    opening.catch(() => {}); // observed when its turn comes
    return opening;
  };
  let ahead = targets.length > 0 ? open(0) : undefined;
  const dropAhead = () => ahead?.then((next) => next?.dataset.cancel()).catch(() => {});
  try {
    for (const [index, target] of targets.entries()) {
      const opening = ahead!;
      ahead = index + 1 < targets.length ? open(index + 1) : undefined;
      if (session.cancelled.has(messageId)) {
        opening.then((next) => next?.dataset.cancel()).catch(() => {});
        await association.send(
          contextId,
          response(command, STATUS.cancel, [...countFields(false), [CMD.dataSetType, 0x0000]]),
          failedList(),
        );
        return;
      }
      let outcome: { status: number; comment?: string } | undefined;
      try {
        const stored = await opening;
        if (!stored) {
          outcome = { status: STATUS.processingFailure, comment: "The object is gone from the store" };
        } else {
          outcome = await sender(
            {
              sopClass: target.sopClass ?? stored.sopClass,
              sop: target.sop,
              transferSyntax: stored.transferSyntax,
            },
            stored.dataset,
          );
          if (outcome === undefined) {
            await stored.dataset.cancel().catch(() => {});
            context.log(
              `dimse: ${target.sop} not sent to ${
                isMove ? command.get(CMD.moveDestination) : session.callingAe
              }: ` +
                `its SOP class in transfer syntax ${stored.transferSyntax} was not accepted`,
            );
          }
        }
      } catch (error) {
        if (association.closed) throw error;
        context.log(`dimse: sub-operation for ${target.sop} failed: ${(error as Error).message}`);
        if (
          isMove && /Cannot (connect|associate)|rejected|aborted/.test((error as Error).message) &&
          counts.completed === 0 && counts.warning === 0
        ) {
          counts.remaining -= 1;
          counts.failed += 1 + counts.remaining;
          failedUids.push(target.sop, ...targets.slice(targets.indexOf(target) + 1).map((t) => t.sop));
          counts.remaining = 0;
          await association.send(
            contextId,
            response(command, STATUS.outOfResourcesSubOps, [
              ...countFields(true),
              errorComment((error as Error).message),
              [CMD.dataSetType, 0x0000],
            ]),
            failedList(),
          );
          return;
        }
        outcome = undefined;
      }
      counts.remaining--;
      const kind = outcome === undefined ? "failure" : statusKind(outcome.status);
      if (kind === "success") counts.completed++;
      else if (kind === "warning") counts.warning++;
      else {
        counts.failed++;
        failedUids.push(target.sop);
      }
      if (counts.remaining > 0) {
        await association.send(contextId, response(command, STATUS.pending, countFields(false)));
      }
    }
    if (counts.failed === 0 && counts.warning === 0) {
      await association.send(contextId, response(command, STATUS.success, countFields(true)));
    } else {
      await association.send(
        contextId,
        response(command, STATUS.subOpsWarning, [...countFields(true), [CMD.dataSetType, 0x0000]]),
        failedList(),
      );
    }
  } finally {
    dropAhead();
    session.cancelled.delete(messageId);
    await scu?.close().catch(() => {});
  }
}

/** A C-GET sub-operation: C-STORE-RQ on the requesting association. */
async function storeOnAssociation(
  association: Association,
  session: Session,
  target: { sopClass: string; sop: string; transferSyntax: string },
  dataset: ReadableStream<Uint8Array>,
): Promise<{ status: number; comment?: string } | undefined> {
  if (session.roles.get(target.sopClass)?.scp !== true) return undefined;
  const context = [...association.contexts.values()].find((c) =>
    c.abstractSyntax === target.sopClass && c.transferSyntax === target.transferSyntax
  );
  if (!context) return undefined;
  const command: Command = new Map<number, number | string>([
    [CMD.commandField, COMMAND.cStoreRq],
    [CMD.messageId, association.nextMessageId()],
    [CMD.affectedSopClass, target.sopClass],
    [CMD.affectedSop, target.sop],
    [CMD.priority, PRIORITY_MEDIUM],
    [CMD.dataSetType, 0x0000],
  ]);
  const reply = await association.request(context.id, command, dataset);
  const comment = reply.command.get(CMD.errorComment);
  return {
    status: Number(reply.command.get(CMD.status)),
    comment: comment === undefined ? undefined : String(comment),
  };
}
