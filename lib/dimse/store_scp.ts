/**
 * The Storage SCP (PS3.4 Annex B): a C-STORE's data set, in the transfer syntax negotiated for its context,
 * becomes a Part 10 stream (preamble, File Meta written here, then the received bytes as the PDVs arrive) and
 * goes through `Ingest` (lib/dicomweb/stow.ts) exactly as a STOW-RS part does: the same checks, atomic write,
 * duplicate handling and catalog update. The response is sent once `Ingest` says the instance is stored.
 *
 * Outcomes map to C-STORE statuses: stored (or the same bytes stored already) → 0000 Success; a different
 * object under the SOP Instance UID → 0111 Duplicate SOP Instance; a part not understood (not DICOM, UIDs
 * missing, cut short) → C000 Cannot understand; out of resources → A700; a store failure → 0110 Processing
 * failure. The failure's message goes into Error Comment (0000,0902).
 *
 * @module
 */

import { CMD } from "./command.ts";
import { STATUS } from "./command.ts";
import type { Message } from "./association.ts";
import type { ScpContext, Session } from "./scp.ts";
import { writeFileMeta } from "../dicom/file_meta.ts";
import { prepend } from "../util/streams.ts";

/** Failure Reasons of `Ingest` (PS3.18 I.2 / PS3.7 C) and the C-STORE status each becomes. */
const STATUS_OF_REASON: Record<number, number> = {
  0x0110: STATUS.processingFailure,
  0x0111: STATUS.duplicateSop,
  0xa700: STATUS.outOfResources,
  0xc000: STATUS.cannotUnderstand,
};

/** Stores a C-STORE-RQ's data set through `Ingest`; resolves with the status for the response. */
export async function storeDataset(
  message: Message,
  session: Session,
  context: ScpContext,
): Promise<{ status: number; comment?: string }> {
  const { command } = message;
  const sop = String(command.get(CMD.affectedSop) ?? "");
  const sopClass = String(command.get(CMD.affectedSopClass) ?? "");
  // File Meta (PS3.10 7.1) from the C-STORE's Affected SOP Class/Instance UID and the negotiated syntax, and
  // nothing about the sender (no Source AE Title): the stored object depends only on the instance.
  const meta = writeFileMeta({
    sopClassUid: sopClass,
    sopInstanceUid: sop,
    transferSyntaxUid: message.context.transferSyntax,
  });
  const body = prepend(meta, message.dataset!);
  const part = { index: 1, headers: new Headers({ "content-type": "application/dicom" }), body };
  let result;
  try {
    result = await context.ingest.store(
      session.aet,
      (async function* () {
        yield part;
      })(),
    );
  } catch (error) {
    await body.cancel().catch(() => {});
    await message.datasetEnd?.catch(() => {});
    context.log(`dimse: C-STORE of ${sop} from ${session.callingAe} into ${session.aet} failed: ${error}`);
    return { status: STATUS.processingFailure, comment: `Cannot store: ${(error as Error).message}` };
  }
  // the rest of a data set refused early is read and dropped before answering
  try {
    await message.datasetEnd;
  } catch {
    return { status: STATUS.processingFailure, comment: "The data set did not arrive whole" };
  }
  const outcome = result.outcomes[0];
  if (outcome === undefined) {
    const why = result.abort instanceof Error ? result.abort.message : "nothing was stored";
    return { status: STATUS.processingFailure, comment: why };
  }
  if (outcome.stored) {
    if (outcome.note) context.log(`dimse: ${sop} from ${session.callingAe} ${outcome.note}`);
    return { status: STATUS.success };
  }
  context.log(
    `dimse: C-STORE of ${sop} from ${session.callingAe} into ${session.aet} refused: ${outcome.message}`,
  );
  return { status: STATUS_OF_REASON[outcome.reason] ?? STATUS.processingFailure, comment: outcome.message };
}
