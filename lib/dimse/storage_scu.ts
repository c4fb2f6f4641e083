/**
 * The storage SCU of C-MOVE: sends instances to a peer over associations it opens, proposing each (SOP class,
 * transfer syntax) pair as the objects come, so every object is offered in the syntax it is stored in. When an
 * object needs a pair the current association did not propose, the association is released and a new one
 * proposes every pair seen so far (as Orthanc does); a pair the peer rejected is not proposed again.
 *
 * @module
 */

import { IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION } from "../dicom/file_meta.ts";
import { MalformedError } from "../util/errors.ts";
import {
  Association,
  type Context,
  expectPdu,
  type Message,
  noDelay,
  PduReader,
  writeAll,
} from "./association.ts";
import { CMD, COMMAND, type Command, PRIORITY_MEDIUM } from "./command.ts";
import type { DimseSettings, Peer } from "./dimse_settings.ts";
import {
  APPLICATION_CONTEXT,
  CONTEXT_RESULT,
  encodeAssociateRq,
  parsePdu,
  type ProposedContext,
  REJECT_REASONS,
} from "./pdu.ts";

/** Opens TCP connections (`Deno.connect` by default; tests may wrap it). */
export type Connector = (peer: Peer) => Promise<Deno.Conn>;

/** Options of {@linkcode StorageScu}. */
export interface StorageScuOptions {
  /** Our AE title on these associations (the AET the C-MOVE was asked of). */
  callingAe: string;
  /** Limits and timeouts. */
  settings: Pick<DimseSettings, "maxPdu" | "idleMs" | "connectMs">;
  /** Where problems are reported. */
  log?: (line: string) => void;
}

/** Where one C-STORE came from (a C-MOVE). */
export interface MoveOrigin {
  /** Move Originator AE Title. */
  ae: string;
  /** Move Originator Message ID. */
  messageId: number;
}

/** Sends C-STOREs to one peer. */
export class StorageScu {
  readonly #peer: Peer;
  readonly #options: StorageScuOptions;
  #association?: Association;
  #running?: Promise<void>;
  /** Pairs proposed on some association, `sopClass\0syntax`, in the order first seen. */
  #proposed: string[] = [];
  /** Pairs the peer rejected. */
  #rejected = new Set<string>();

  /** A storage SCU sending to `peer`. */
  constructor(peer: Peer, options: StorageScuOptions) {
    this.#peer = peer;
    this.#options = options;
  }

  /**
   * Sends one instance; resolves with the peer's C-STORE-RSP status, or `undefined` when the peer does not
   * accept the SOP class in this transfer syntax (the data set is not read then). Rejects when the
   * association fails.
   */
  async store(
    instance: { sopClass: string; sop: string; transferSyntax: string },
    dataset: ReadableStream<Uint8Array>,
    origin?: MoveOrigin,
  ): Promise<{ status: number; comment?: string } | undefined> {
    const pair = `${instance.sopClass}\0${instance.transferSyntax}`;
    if (this.#rejected.has(pair)) return undefined;
    let context = this.#contextFor(instance);
    if (!context) {
      if (!this.#proposed.includes(pair)) {
        this.#proposed.push(pair);
        if (this.#proposed.length > 128) this.#proposed.shift();
      }
      await this.close();
      await this.#open();
      context = this.#contextFor(instance);
      if (!context) {
        this.#rejected.add(pair);
        return undefined;
      }
    }
    const association = this.#association!;
    const command: Command = new Map<number, number | string>([
      [CMD.commandField, COMMAND.cStoreRq],
      [CMD.messageId, association.nextMessageId()],
      [CMD.affectedSopClass, instance.sopClass],
      [CMD.affectedSop, instance.sop],
      [CMD.priority, PRIORITY_MEDIUM],
      [CMD.dataSetType, 0x0000],
    ]);
    if (origin) {
      command.set(CMD.moveOriginatorAe, origin.ae);
      command.set(CMD.moveOriginatorId, origin.messageId);
    }
    const reply: Message = await association.request(context.id, command, dataset);
    const comment = reply.command.get(CMD.errorComment);
    return {
      status: Number(reply.command.get(CMD.status)),
      comment: comment === undefined ? undefined : String(comment),
    };
  }

  #contextFor(instance: { sopClass: string; transferSyntax: string }): Context | undefined {
    if (!this.#association || this.#association.closed) return undefined;
    for (const context of this.#association.contexts.values()) {
      if (
        context.abstractSyntax === instance.sopClass && context.transferSyntax === instance.transferSyntax
      ) {
        return context;
      }
    }
    return undefined;
  }

  async #open(): Promise<void> {
    const { settings, callingAe } = this.#options;
    const peer = this.#peer;
    const proposals: ProposedContext[] = this.#proposed.map((pair, i) => {
      const [abstractSyntax, syntax] = pair.split("\0");
      return { id: 2 * i + 1, abstractSyntax, transferSyntaxes: [syntax] };
    });
    const conn = await connectWithin(peer, settings.connectMs);
    noDelay(conn);
    const timer = setTimeout(() => conn.close(), settings.connectMs);
    const reader = new PduReader(conn);
    let reply;
    try {
      await writeAll(
        conn,
        encodeAssociateRq({
          calledAe: peer.aet,
          callingAe,
          applicationContext: APPLICATION_CONTEXT,
          contexts: proposals,
          user: {
            maxLength: settings.maxPdu,
            implementationClassUid: IMPLEMENTATION_CLASS_UID,
            implementationVersion: IMPLEMENTATION_VERSION,
            roles: new Map(),
          },
        }),
      );
      const bytes = await reader.next(1024 * 1024);
      if (bytes === null) throw new MalformedError(`${peer.aet} closed the connection instead of answering`);
      reply = expectPdu(parsePdu(bytes), "associate-ac", "associate-rj", "abort");
    } catch (error) {
      conn.close();
      throw new Error(
        `Cannot associate with ${peer.aet}@${peer.host}:${peer.port}: ${(error as Error).message}`,
        { cause: error },
      );
    } finally {
      clearTimeout(timer);
    }
    if (reply.type !== "associate-ac") {
      conn.close();
      const why = reply.type === "associate-rj"
        ? `rejected (result ${reply.result}, source ${reply.source}, reason ${reply.reason}` +
          `${reply.source === 1 && REJECT_REASONS[reply.reason] ? `: ${REJECT_REASONS[reply.reason]}` : ""})`
        : "aborted";
      throw new Error(`${peer.aet}@${peer.host}:${peer.port} ${why} the association`);
    }
    const contexts = new Map<number, Context>();
    for (const answer of reply.contexts) {
      const proposal = proposals.find((p) => p.id === answer.id);
      if (!proposal) continue;
      const pair = `${proposal.abstractSyntax}\0${proposal.transferSyntaxes[0]}`;
      if (
        answer.result === CONTEXT_RESULT.acceptance && answer.transferSyntax === proposal.transferSyntaxes[0]
      ) {
        contexts.set(answer.id, {
          id: answer.id,
          abstractSyntax: proposal.abstractSyntax,
          transferSyntax: answer.transferSyntax,
        });
      } else this.#rejected.add(pair);
    }
    const association = new Association(conn, reader, {
      contexts,
      peer: peer.aet,
      limits: {
        maxReceivePdu: settings.maxPdu + 6,
        peerMaxLength: reply.user.maxLength,
        maxSendPdu: settings.maxPdu,
        idleMs: settings.idleMs,
        maxMessageBytes: 1024 * 1024,
      },
    });
    association.onRequest = () => {
      association.abort("the peer sent a request on a storage association");
      return Promise.resolve();
    };
    this.#association = association;
    this.#running = association.run();
  }

  /** Releases the current association, if any. */
  async close(): Promise<void> {
    const association = this.#association;
    this.#association = undefined;
    if (!association) return;
    try {
      await association.release();
    } catch {
      association.abort("release failed");
    }
    await this.#running;
  }

  /** Aborts the current association, if any. */
  abort(reason: string): void {
    this.#association?.abort(reason, 0);
    this.#association = undefined;
  }
}

/** `Deno.connect` that gives up after `ms`. */
async function connectWithin(peer: Peer, ms: number): Promise<Deno.Conn> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const connecting = Deno.connect({ hostname: peer.host, port: peer.port });
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      connecting.then((conn) => conn.close(), () => {});
      reject(new Error(`Cannot connect to ${peer.aet}@${peer.host}:${peer.port} within ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([connecting, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
