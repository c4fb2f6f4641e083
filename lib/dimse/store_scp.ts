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
import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION } from "./pdu.ts";

/** Failure Reasons of `Ingest` (PS3.18 I.2 / PS3.7 C) and the C-STORE status each becomes. */
const STATUS_OF_REASON: Record<number, number> = {
  0x0110: STATUS.processingFailure,
  0x0111: STATUS.duplicateSop,
  0xa700: STATUS.outOfResources,
  0xc000: STATUS.cannotUnderstand,
};

const encoder = new TextEncoder();

/**
 * File Meta Information (PS3.10 7.1) for a received data set, preamble and "DICM" included: Media Storage SOP
 * Class/Instance from the C-STORE's Affected SOP Class/Instance UID, the negotiated transfer syntax and this
 * implementation. Nothing else (no Source Application Entity Title): the stored bytes depend only on the
 * instance, so the same instance sent again, by any peer, is a byte-identical duplicate (a success), not a
 * conflict.
 *
 * @example
 * ```ts
 * import { fileMetaFor } from "./store_scp.ts";
 * const meta = fileMetaFor({ sopClass: "1.2.840.10008.5.1.4.1.1.2", sop: "1.2.3", transferSyntax: "1.2.840.10008.1.2" });
 * new TextDecoder().decode(meta.subarray(128, 132)); // "DICM"
 * ```
 */
export function fileMetaFor(
  fields: { sopClass: string; sop: string; transferSyntax: string },
): Uint8Array {
  const elements: Uint8Array[] = [
    element(0x0001, "OB", new Uint8Array([0, 1])),
    element(0x0002, "UI", text(fields.sopClass, 0)),
    element(0x0003, "UI", text(fields.sop, 0)),
    element(0x0010, "UI", text(fields.transferSyntax, 0)),
    element(0x0012, "UI", text(IMPLEMENTATION_CLASS_UID, 0)),
    element(0x0013, "SH", text(IMPLEMENTATION_VERSION, 0x20)),
  ];
  const length = elements.reduce((n, e) => n + e.length, 0);
  const groupLength = element(0x0000, "UL", new Uint8Array(4));
  new DataView(groupLength.buffer).setUint32(8, length, true);
  const out = new Uint8Array(132 + groupLength.length + length);
  out.set(encoder.encode("DICM"), 128);
  let at = 132;
  for (const e of [groupLength, ...elements]) {
    out.set(e, at);
    at += e.length;
  }
  return out;
}

function text(value: string, pad: number): Uint8Array {
  const bytes = encoder.encode(value);
  if (bytes.length % 2 === 0) return bytes;
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  out[bytes.length] = pad;
  return out;
}

function element(elementNumber: number, vr: string, value: Uint8Array): Uint8Array {
  const long = vr === "OB";
  const out = new Uint8Array((long ? 12 : 8) + value.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, 0x0002, true);
  view.setUint16(2, elementNumber, true);
  out[4] = vr.charCodeAt(0);
  out[5] = vr.charCodeAt(1);
  if (long) view.setUint32(8, value.length, true);
  else view.setUint16(6, value.length, true);
  out.set(value, long ? 12 : 8);
  return out;
}

/** `head`, then every chunk of `rest`. */
function prepend(head: Uint8Array, rest: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = rest.getReader();
  let sentHead = false;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!sentHead) {
        sentHead = true;
        return controller.enqueue(head);
      }
      const { done, value } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/** Stores a C-STORE-RQ's data set through `Ingest`; resolves with the status for the response. */
export async function storeDataset(
  message: Message,
  session: Session,
  context: ScpContext,
): Promise<{ status: number; comment?: string }> {
  const { command } = message;
  const sop = String(command.get(CMD.affectedSop) ?? "");
  const sopClass = String(command.get(CMD.affectedSopClass) ?? "");
  const meta = fileMetaFor({
    sopClass,
    sop,
    transferSyntax: message.context.transferSyntax,
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
