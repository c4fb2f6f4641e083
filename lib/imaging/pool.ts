/**
 * A pool of module workers (one per core by default) that decode and render frames off the event loop that
 * serves requests. Tasks are plain data ({@linkcode Task}); results come back with their buffers transferred.
 * A worker that dies fails only its own task and is replaced. When workers cannot start at all (e.g. the
 * process may not read `lib/`, which Deno requires for worker modules) the pool runs tasks inline instead.
 *
 * @module
 */

import { type RenderAttributes, type RenderedImage, renderFrame, type RenderOptions } from "./render.ts";
import { type DecodedFrame, decodeFrame, type FrameDescription } from "../codecs/mod.ts";
import { BusyError, MalformedError, OutOfRangeError } from "../util/errors.ts";

/** Work for a pool. */
export type Task =
  | { op: "decode"; transferSyntax: string; data: Uint8Array; description: FrameDescription }
  | {
    op: "render";
    transferSyntax: string;
    data: Uint8Array;
    description: FrameDescription;
    attributes: RenderAttributes;
    options: RenderOptions;
  };

/** Runs one task on the current thread (what each worker does with the tasks it gets). */
export async function runTask(task: Task): Promise<DecodedFrame | RenderedImage> {
  const frame = await decodeFrame(task.transferSyntax, task.data, task.description);
  if (task.op === "decode") return frame;
  return await renderFrame(frame, task.attributes, task.options);
}

/** An error as it crosses the worker boundary. */
interface WireError {
  name: string;
  message: string;
}

/** Rebuilds an error of the closest built-in class from its wire form. */
function revive(error: WireError): Error {
  const types: Record<string, new (message: string) => Error> = {
    MalformedError,
    OutOfRangeError,
    SyntaxError,
    RangeError,
    TypeError,
  };
  const e = new (types[error.name] ?? Error)(error.message);
  return e;
}

interface Job {
  task: Task;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

interface Slot {
  worker: Worker;
  ready: boolean;
  job?: Job;
}

/** Options for {@linkcode CodecPool}. */
export interface PoolOptions {
  /** Number of workers; 0 runs tasks inline (default `navigator.hardwareConcurrency`). */
  size?: number;
  /** Tasks waiting beyond this are refused with a `BusyError` (503) (default 4096). */
  maxQueue?: number;
}

/** Workers that decode and render frames. Call {@linkcode CodecPool.close} when done (workers keep a process alive). */
export class CodecPool {
  #slots: Slot[] = [];
  #queue: Job[] = [];
  #inline: boolean;
  #closed = false;
  #nextId = 0;
  readonly #maxQueue: number;
  readonly #size: number;
  /** Tasks finished (for tests and benchmarks). */
  completed = 0;

  /** A pool of codec workers (see {@linkcode PoolOptions}). */
  constructor(options: PoolOptions = {}) {
    this.#size = options.size ?? Math.max(1, navigator.hardwareConcurrency || 1);
    this.#maxQueue = options.maxQueue ?? 4096;
    this.#inline = this.#size === 0;
  }

  /** Number of workers (0 when tasks run inline). */
  get size(): number {
    return this.#inline ? 0 : this.#size;
  }

  /** Decodes one frame (see `decodeFrame` in `mod.ts`). */
  decode(transferSyntax: string, data: Uint8Array, description: FrameDescription): Promise<DecodedFrame> {
    return this.run({ op: "decode", transferSyntax, data, description }) as Promise<DecodedFrame>;
  }

  /** Decodes and renders one frame to an encoded image (see `renderFrame` in `render.ts`). */
  render(
    transferSyntax: string,
    data: Uint8Array,
    description: FrameDescription,
    attributes: RenderAttributes,
    options: RenderOptions,
  ): Promise<RenderedImage> {
    return this.run({ op: "render", transferSyntax, data, description, attributes, options }) as Promise<
      RenderedImage
    >;
  }

  /** Runs a task on a free worker (queued while all are busy). */
  run(task: Task): Promise<DecodedFrame | RenderedImage> {
    if (this.#closed) return Promise.reject(new Error("The codec pool is closed"));
    if (this.#inline) return this.#runInline(task);
    if (this.#queue.length >= this.#maxQueue) {
      return Promise.reject(
        new BusyError(`The codec pool has ${this.#queue.length} tasks waiting: try again later`),
      );
    }
    // Posting a view clones its whole buffer: send a copy of just the frame when it is part of a larger one.
    const data = task.data;
    if (data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength) {
      task = { ...task, data: data.slice() };
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ task, resolve: resolve as (v: unknown) => void, reject });
      this.#pump();
    });
  }

  async #runInline(task: Task): Promise<DecodedFrame | RenderedImage> {
    const result = await runTask(task);
    this.completed++;
    return result;
  }

  #pump(): void {
    while (this.#queue.length) {
      if (this.#inline) {
        const job = this.#queue.shift()!;
        this.#runInline(job.task).then(job.resolve, job.reject);
        continue;
      }
      let slot = this.#slots.find((s) => s.ready && !s.job);
      if (!slot && this.#slots.length < this.#size) {
        slot = this.#spawn();
        if (!slot) continue; // could not start: now inline
      }
      if (!slot || !slot.ready) return;
      const job = this.#queue.shift()!;
      slot.job = job;
      slot.worker.postMessage({ id: this.#nextId++, task: job.task });
    }
  }

  #spawn(): Slot | undefined {
    let worker: Worker;
    try {
      worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    } catch {
      this.#inline = true;
      return undefined;
    }
    const slot: Slot = { worker, ready: false };
    this.#slots.push(slot);
    worker.onmessage = (event: MessageEvent) => {
      const message = event.data as { ready?: boolean; result?: unknown; error?: WireError };
      if (message.ready) {
        slot.ready = true;
        this.#pump();
        return;
      }
      const job = slot.job;
      slot.job = undefined;
      this.completed++;
      if (job) {
        if (message.error) job.reject(revive(message.error));
        else job.resolve(message.result);
      }
      this.#pump();
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      const job = slot.job;
      slot.job = undefined;
      this.#slots = this.#slots.filter((s) => s !== slot);
      worker.terminate();
      if (!slot.ready) {
        // The worker module did not load (permissions, syntax): stop trying workers.
        this.#inline = true;
      }
      job?.reject(new Error(`A codec worker failed: ${event.message}`));
      if (!this.#closed) this.#pump();
    };
    return slot;
  }

  /** Starts every worker now (module loading takes a few hundred ms), so the first requests need not wait. */
  warm(): void {
    while (!this.#inline && !this.#closed && this.#slots.length < this.#size) {
      if (!this.#spawn()) break;
    }
  }

  /** Terminates the workers; queued tasks are rejected. */
  close(): void {
    this.#closed = true;
    for (const job of this.#queue.splice(0)) job.reject(new Error("The codec pool was closed"));
    for (const slot of this.#slots) {
      slot.job?.reject(new Error("The codec pool was closed"));
      slot.worker.terminate();
    }
    this.#slots = [];
  }
}

let shared: CodecPool | undefined;

/** The process-wide pool (created on first use). */
export function defaultPool(): CodecPool {
  shared ??= new CodecPool();
  return shared;
}

/** Closes the process-wide pool (tests; a server keeps it for its lifetime). */
export function closeDefaultPool(): void {
  shared?.close();
  shared = undefined;
}
