/**
 * One established association (PS3.8 upper layer, PS3.7 message exchange) over a TCP or TLS connection: PDUs
 * read with a size cap and an idle timeout, P-DATA-TF fragments put together into DIMSE messages, and messages
 * sent as fragments no larger than the peer's Maximum Length. Used both as acceptor (the SCP, lib/dimse/scp.ts)
 * and as requestor (C-MOVE's storage SCU, lib/dimse/storage_scu.ts).
 *
 * Data sets stream both ways. A received data set is a `ReadableStream` fed from the socket with backpressure:
 * the next PDU is read only when the consumer has taken the previous one, so a C-STORE of any size holds about
 * one PDU in memory (TCP flow control holds the peer back meanwhile). A data set sent is read from its stream
 * one PDU-sized piece at a time and each PDU is written before the next is read.
 *
 * @module
 */

import { concatBytes } from "../util/bytes.ts";
import { MalformedError } from "../util/errors.ts";
import { type Command, commandName, decodeCommand, encodeCommand, hasDataset } from "./command.ts";
import { CMD } from "./command.ts";
import {
  encodeAbort,
  encodeReleaseRp,
  encodeReleaseRq,
  parsePdu,
  type Pdu,
  pduLength,
  writePDataHead,
} from "./pdu.ts";

/** The socket an association runs on (`Deno.Conn` and `Deno.TlsConn` are ones). */
export interface Connection {
  /** Reads into `p`; `null` at the end. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`. */
  write(p: Uint8Array): Promise<number>;
  /** Closes the socket. */
  close(): void;
}

/** An accepted presentation context. */
export interface Context {
  /** Presentation context id. */
  id: number;
  /** The SOP class. */
  abstractSyntax: string;
  /** The transfer syntax agreed. */
  transferSyntax: string;
}

/** A DIMSE message received. */
export interface Message {
  /** Its presentation context. */
  context: Context;
  /** The command set. */
  command: Command;
  /** Its data set, when one follows: C-STORE-RQ data sets stream; other data sets come whole. */
  dataset?: ReadableStream<Uint8Array>;
  /** Settles when the data set has arrived whole (rejects when the association ended first). */
  datasetEnd?: Promise<void>;
}

/** Limits of one association. */
export interface AssociationLimits {
  /** Largest PDU accepted from the peer (our Maximum Length Received, plus the 6-byte header). */
  maxReceivePdu: number;
  /** The peer's Maximum Length Received (0: none given; PDUs are then cut at `maxSendPdu`). */
  peerMaxLength: number;
  /** Largest P-DATA-TF variable field sent, whatever the peer accepts. */
  maxSendPdu: number;
  /** Abort when nothing arrives for this long while waiting for the peer (ms). */
  idleMs: number;
  /** Largest command set or non-C-STORE data set (an identifier), in bytes. */
  maxMessageBytes: number;
}

/** Thrown when the peer aborted, the connection dropped, or the association is over. */
export class AssociationClosed extends Error {
  /** An association that ended: `message` says how. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "AssociationClosed";
  }
}

/** Reads whole PDUs from a connection, at most `maxLength` bytes each. */
export class PduReader {
  #conn: Connection;
  #buffer = new Uint8Array(16 * 1024);
  #start = 0;
  #end = 0;

  /** A reader over `conn`. */
  constructor(conn: Connection) {
    this.#conn = conn;
  }

  /** The next PDU's bytes (header included), or `null` when the connection ended between PDUs. */
  async next(maxLength: number): Promise<Uint8Array | null> {
    while (this.#end - this.#start < 6) {
      if (!await this.#fill()) {
        if (this.#end === this.#start) return null;
        throw new MalformedError("Malformed PDU: the connection ended inside a PDU header");
      }
    }
    const head = this.#buffer.subarray(this.#start, this.#start + 6);
    if (head[0] < 1 || head[0] > 7) {
      throw new MalformedError(`Malformed PDU: unknown PDU type 0x${head[0].toString(16).padStart(2, "0")}`);
    }
    const length = pduLength(head);
    if (length > maxLength) {
      throw new MalformedError(
        `Malformed PDU: ${length} bytes, more than the ${maxLength} this association accepts`,
      );
    }
    const out = new Uint8Array(length);
    const have = Math.min(length, this.#end - this.#start);
    out.set(this.#buffer.subarray(this.#start, this.#start + have));
    this.#start += have;
    let filled = have;
    while (filled < length) {
      const n = await this.#conn.read(out.subarray(filled));
      if (n === null) {
        throw new MalformedError(`Malformed PDU: the connection ended ${length - filled} bytes short`);
      }
      filled += n;
    }
    return out;
  }

  async #fill(): Promise<boolean> {
    if (this.#start > 0) {
      this.#buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const n = await this.#conn.read(this.#buffer.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }
}

/**
 * Turns Nagle's algorithm off: a DIMSE exchange ends each message with a short PDU and waits for the answer, which
 * Nagle would hold back until the peer's delayed ACK (40 ms per message).
 */
export function noDelay(conn: Deno.Conn): void {
  (conn as Deno.Conn & { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
}

/** Writes all of `bytes`. */
export async function writeAll(conn: Connection, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.length) at += await conn.write(bytes.subarray(at));
}

/** A data set arriving: a stream fed by the association's reader, with backpressure. */
class Incoming {
  readonly stream: ReadableStream<Uint8Array>;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #wake?: () => void;
  #ended!: (error?: unknown) => void;
  cancelled = false;
  /** Settles when the last fragment arrived (resolves) or the association ended first (rejects). */
  readonly ended: Promise<void> = new Promise((resolve, reject) => {
    this.#ended = (error) => error === undefined ? resolve() : reject(error);
  });

  constructor() {
    this.stream = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => {
        this.#wake?.();
      },
      cancel: () => {
        this.cancelled = true;
        this.#wake?.();
      },
    }, { highWaterMark: 1, size: () => 1 });
  }

  /** Hands over one fragment; resolves when the consumer wants more (or went away). */
  async push(chunk: Uint8Array): Promise<void> {
    if (this.cancelled) return;
    this.#controller.enqueue(chunk);
    while (!this.cancelled && (this.#controller.desiredSize ?? 1) <= 0) {
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  close(): void {
    if (!this.cancelled) this.#controller.close();
    this.#ended();
  }

  error(reason: unknown): void {
    if (!this.cancelled) this.#controller.error(reason);
    this.#ended(reason ?? new Error("The data set did not arrive whole"));
  }
}

/** Collects `stream` into one buffer of at most `max` bytes. */
export async function readAllBounded(stream: ReadableStream<Uint8Array>, max: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of stream) {
    total += chunk.length;
    if (total > max) {
      throw new MalformedError(`Data set larger than ${max} bytes where an identifier was expected`);
    }
    chunks.push(chunk);
  }
  return concatBytes(chunks, total);
}

/**
 * An established association. {@linkcode Association.run} reads until the association ends, handing each
 * request to `onRequest` (one at a time, in order) and each C-CANCEL to `onCancel`; responses resolve the
 * {@linkcode Association.request} that waits for them.
 */
export class Association {
  readonly #conn: Connection;
  readonly #reader: PduReader;
  readonly #limits: AssociationLimits;
  /** Accepted presentation contexts by id. */
  readonly contexts: Map<number, Context>;
  /** Who the peer is (its AE title), for messages. */
  readonly peer: string;
  #sendChain: Promise<void> = Promise.resolve();
  #sendBuffer: Uint8Array;
  #waiting = new Map<number, { resolve: (m: Message) => void; reject: (e: unknown) => void }>();
  #nextMessageId = 1;
  #closed = false;
  #closedReason?: Error;
  #releasing?: () => void;
  #timer?: ReturnType<typeof setTimeout>;
  /** Requests being handled: the peer may be quiet meanwhile (unless a data set or a response is due). */
  #busy = 0;
  /** Blocked reading the socket. */
  #reading = false;
  /** A data set is arriving: the peer owes its next fragment. */
  #inDataset = false;
  /** Called for each request message (not responses, not C-CANCEL); requests are handled one at a time. */
  onRequest: (message: Message) => Promise<void> = () => Promise.resolve();
  /** Called for each C-CANCEL-RQ with the Message ID it cancels. */
  onCancel: (messageId: number) => void = () => {};
  /** Called once when the association ends, with why. */
  onClose: (reason: string) => void = () => {};

  /** An association over `conn` whose negotiation is done. */
  constructor(
    conn: Connection,
    reader: PduReader,
    options: { contexts: Map<number, Context>; limits: AssociationLimits; peer: string },
  ) {
    this.#conn = conn;
    this.#reader = reader;
    this.#limits = options.limits;
    this.contexts = options.contexts;
    this.peer = options.peer;
    const peerMax = options.limits.peerMaxLength;
    const max = peerMax === 0 ? options.limits.maxSendPdu : Math.min(peerMax, options.limits.maxSendPdu);
    this.#sendBuffer = new Uint8Array(Math.max(max, 64) + 6);
  }

  /** Whether the association is over. */
  get closed(): boolean {
    return this.#closed;
  }

  /** A Message ID for a request of ours. */
  nextMessageId(): number {
    const id = this.#nextMessageId;
    this.#nextMessageId = this.#nextMessageId >= 0xffff ? 1 : this.#nextMessageId + 1;
    return id;
  }

  /**
   * Reads PDUs until the association is released or aborted. Resolves once it is over (never rejects): a
   * malformed PDU or a protocol error aborts the association.
   */
  async run(): Promise<void> {
    const pending: Message[] = [];
    let handling: Promise<void> | undefined;
    const handleNext = (): void => {
      if (handling || pending.length === 0) return;
      const message = pending.shift()!;
      this.#busy++;
      handling = this.onRequest(message).catch((error) => {
        this.abort(`handling ${commandName(Number(message.command.get(CMD.commandField)))} failed: ${error}`);
      }).finally(() => {
        this.#busy--;
        handling = undefined;
        this.#arm();
        handleNext();
      });
    };
    let command: Uint8Array[] = [];
    let commandBytes = 0;
    let current:
      | { message: Message; incoming?: Incoming; collected?: Uint8Array[]; size: number }
      | undefined;
    try {
      this.#arm();
      while (!this.#closed) {
        this.#reading = true;
        let bytes: Uint8Array | null;
        try {
          bytes = await this.#reader.next(this.#limits.maxReceivePdu);
        } finally {
          this.#reading = false;
        }
        this.#arm();
        if (bytes === null) throw new AssociationClosed(`${this.peer} closed the connection`);
        const pdu = parsePdu(bytes);
        if (pdu.type === "abort") {
          throw new AssociationClosed(
            `${this.peer} aborted the association (source ${pdu.source}, reason ${pdu.reason})`,
          );
        }
        if (pdu.type === "release-rq") {
          if (current) throw new MalformedError("A-RELEASE-RQ while a data set was arriving");
          while (handling) await handling;
          await this.#sendChain;
          await writeAll(this.#conn, encodeReleaseRp());
          this.#finish("released");
          return;
        }
        if (pdu.type === "release-rp") {
          this.#releasing?.();
          this.#finish("released");
          return;
        }
        if (pdu.type !== "p-data") {
          throw new MalformedError(`unexpected ${pdu.type} PDU on an established association`);
        }
        for (const pdv of pdu.pdvs) {
          const context = this.contexts.get(pdv.contextId);
          if (!context) {
            throw new MalformedError(`PDV for presentation context ${pdv.contextId}, which was not accepted`);
          }
          if (pdv.command) {
            if (current) throw new MalformedError("a command fragment arrived while a data set was arriving");
            commandBytes += pdv.data.length;
            if (commandBytes > this.#limits.maxMessageBytes) {
              throw new MalformedError("command set too large");
            }
            command.push(pdv.data);
            if (!pdv.last) continue;
            const decoded = decodeCommand(join(command, commandBytes));
            command = [];
            commandBytes = 0;
            const message: Message = { context, command: decoded };
            if (!hasDataset(decoded)) {
              this.#deliver(message, pending, handleNext);
              continue;
            }
            const field = decoded.get(CMD.commandField);
            if (field === 0x0001) { // C-STORE-RQ: its data set streams to the handler
              const incoming = new Incoming();
              message.dataset = incoming.stream;
              message.datasetEnd = incoming.ended;
              incoming.ended.catch(() => {}); // observed by the handler
              current = { message, incoming, size: 0 };
              this.#inDataset = true;
              this.#deliver(message, pending, handleNext);
            } else {
              current = { message, collected: [], size: 0 };
              this.#inDataset = true;
            }
            continue;
          }
          if (!current) throw new MalformedError("a data set fragment arrived without its command");
          if (pdv.contextId !== current.message.context.id) {
            throw new MalformedError(
              "a data set fragment arrived on another presentation context than its command",
            );
          }
          if (current.incoming) {
            await current.incoming.push(pdv.data);
            if (pdv.last) {
              current.incoming.close();
              current = undefined;
              this.#inDataset = false;
            }
          } else {
            current.size += pdv.data.length;
            if (current.size > this.#limits.maxMessageBytes) {
              throw new MalformedError(
                `data set larger than ${this.#limits.maxMessageBytes} bytes where an identifier was expected`,
              );
            }
            current.collected!.push(pdv.data);
            if (pdv.last) {
              const whole = join(current.collected!, current.size);
              current.message.dataset = new ReadableStream({
                start(controller) {
                  controller.enqueue(whole);
                  controller.close();
                },
              });
              this.#deliver(current.message, pending, handleNext);
              current = undefined;
              this.#inDataset = false;
            }
          }
        }
      }
    } catch (error) {
      current?.incoming?.error(error);
      if (error instanceof AssociationClosed) this.#finish(error.message, error);
      else if (!this.#closed) {
        this.abort(error instanceof Error ? error.message : String(error));
      }
    } finally {
      clearTimeout(this.#timer);
      await handling?.catch(() => {});
    }
  }

  #deliver(message: Message, pending: Message[], handleNext: () => void): void {
    const field = Number(message.command.get(CMD.commandField));
    if (field === 0x0fff) {
      this.onCancel(Number(message.command.get(CMD.respondedTo)));
      return;
    }
    if (field & 0x8000) {
      const id = Number(message.command.get(CMD.respondedTo));
      const waiter = this.#waiting.get(id);
      if (!waiter) {
        throw new MalformedError(`${commandName(field)} for message ${id}, which nobody waits for`);
      }
      waiter.resolve(message);
      return;
    }
    pending.push(message);
    handleNext();
  }

  /** (Re)starts the idle timer. */
  #arm(): void {
    clearTimeout(this.#timer);
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      const owed = this.#busy === 0 || this.#inDataset || this.#waiting.size > 0;
      if (!this.#reading || !owed) return this.#arm();
      this.abort(`nothing received from ${this.peer} for ${this.#limits.idleMs} ms`);
    }, this.#limits.idleMs);
  }

  /**
   * Sends a message on `contextId`: the command set, then the data set (bytes or a stream) if any. Messages
   * are sent one after the other, whole.
   */
  send(
    contextId: number,
    command: Command,
    dataset?: Uint8Array | ReadableStream<Uint8Array>,
  ): Promise<void> {
    const run = this.#sendChain.then(() => this.#sendNow(contextId, command, dataset));
    this.#sendChain = run.catch(() => {});
    return run;
  }

  async #sendNow(contextId: number, command: Command, dataset?: Uint8Array | ReadableStream<Uint8Array>) {
    if (this.#closed) throw this.#closedReason ?? new AssociationClosed("The association is closed");
    await this.#sendFragments(contextId, true, single(encodeCommand(command)));
    if (dataset !== undefined) {
      await this.#sendFragments(contextId, false, dataset instanceof Uint8Array ? single(dataset) : dataset);
    }
  }

  /** Sends `stream` as PDVs of at most one PDU each; the last one flagged. */
  async #sendFragments(
    contextId: number,
    isCommand: boolean,
    stream: ReadableStream<Uint8Array>,
  ): Promise<void> {
    const buffer = this.#sendBuffer;
    const room = buffer.length - 12;
    let filled = 0;
    const flush = async (last: boolean) => {
      writePDataHead(buffer, filled, { contextId, command: isCommand, last });
      await writeAll(this.#conn, buffer.subarray(0, 12 + filled));
      filled = 0;
    };
    const reader = stream.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        let at = 0;
        while (at < value.length) {
          if (filled === room) await flush(false);
          const n = Math.min(room - filled, value.length - at);
          buffer.set(value.subarray(at, at + n), 12 + filled);
          filled += n;
          at += n;
        }
        if (this.#closed) throw this.#closedReason ?? new AssociationClosed("The association is closed");
      }
      await flush(true);
    } catch (error) {
      await reader.cancel(error).catch(() => {});
      // a message cut short cannot be taken back: the association ends
      if (!this.#closed) {
        this.abort(`sending a data set failed: ${error instanceof Error ? error.message : error}`);
      }
      throw error;
    } finally {
      reader.releaseLock();
    }
  }

  /**
   * Sends a request and resolves with the final response (pending responses go to `onPending`). Rejects when
   * the association ends first.
   */
  request(
    contextId: number,
    command: Command,
    dataset?: Uint8Array | ReadableStream<Uint8Array>,
    onPending?: (message: Message) => void,
  ): Promise<Message> {
    const id = Number(command.get(CMD.messageId));
    return new Promise<Message>((resolve, reject) => {
      const waiter = {
        resolve: (message: Message) => {
          const status = Number(message.command.get(CMD.status));
          if ((status === 0xff00 || status === 0xff01) && onPending) return onPending(message);
          this.#waiting.delete(id);
          resolve(message);
        },
        reject: (error: unknown) => {
          this.#waiting.delete(id);
          reject(error);
        },
      };
      this.#waiting.set(id, waiter);
      this.#arm();
      this.send(contextId, command, dataset).catch(waiter.reject);
    });
  }

  /** Releases the association (as requestor): A-RELEASE-RQ, then waits for A-RELEASE-RP. */
  async release(): Promise<void> {
    if (this.#closed) return;
    const released = new Promise<void>((resolve) => this.#releasing = resolve);
    await this.#sendChain;
    await writeAll(this.#conn, encodeReleaseRq());
    this.#arm();
    await Promise.race([released, this.#closedPromise()]);
  }

  #closeWaiters: (() => void)[] = [];
  #closedPromise(): Promise<void> {
    return this.#closed ? Promise.resolve() : new Promise((resolve) => this.#closeWaiters.push(resolve));
  }

  /** Aborts the association (A-ABORT from the service user, or provider for protocol errors) and closes. */
  abort(reason: string, source = 2): void {
    if (this.#closed) return;
    const bytes = encodeAbort(source, 0);
    this.#conn.write(bytes).catch(() => {}).finally(() => this.#finish(`aborted: ${reason}`));
    this.#markClosed(`aborted: ${reason}`);
  }

  #markClosed(reason: string, cause?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closedReason = cause ?? new AssociationClosed(`The association with ${this.peer} ended: ${reason}`);
    clearTimeout(this.#timer);
    for (const waiter of [...this.#waiting.values()]) waiter.reject(this.#closedReason);
    this.#waiting.clear();
    for (const wake of this.#closeWaiters) wake();
    this.#closeWaiters = [];
    this.onClose(reason);
  }

  #finish(reason: string, cause?: Error): void {
    this.#markClosed(reason, cause);
    try {
      this.#conn.close();
    } catch {
      // closed already
    }
  }
}

function single(bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes);
      controller.close();
    },
  });
}

function join(chunks: Uint8Array[], total: number): Uint8Array {
  return chunks.length === 1 ? chunks[0] : concatBytes(chunks, total);
}

/** Throws when `pdu` is not what was expected, with its type in the message. */
export function expectPdu<T extends Pdu["type"]>(pdu: Pdu, ...types: T[]): Extract<Pdu, { type: T }> {
  if (!(types as string[]).includes(pdu.type)) {
    throw new MalformedError(`Expected ${types.join(" or ")}, received ${pdu.type}`);
  }
  return pdu as Extract<Pdu, { type: T }>;
}
