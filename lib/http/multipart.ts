/**
 * A streaming `multipart/related` writer (RFC 2387, PS3.18 8.6.1.2): parts come from an
 * async source, go out in order, and large chunks move without copying.
 *
 * @module
 */

import { concatBytes } from "../util/bytes.ts";

/** One part of a multipart body. */
export interface Part {
  /** Header name → value, written as given. */
  headers: Record<string, string>;
  /** The part's bytes. */
  body: ReadableStream<Uint8Array> | Uint8Array;
}

const encoder = new TextEncoder();

const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

/** A fresh random boundary (32 hex digits, prefixed so it reads well in logs). */
export function randomBoundary(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  let text = "dicomweb-";
  for (let i = 0; i < 16; i++) text += HEX[bytes[i]];
  return text;
}

/** A part's delimiter and headers as {@linkcode multipartStream} writes them, up to its body. */
function partHeadText(boundary: string, headers: Record<string, string>): string {
  let head = `--${boundary}\r\n`;
  for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`;
  return head + "\r\n";
}

/** The exact length of the body {@linkcode multipartStream} writes for parts of known sizes. */
export function multipartLength(
  boundary: string,
  parts: { headers: Record<string, string>; size: number }[],
): number {
  let total = 0;
  for (const part of parts) {
    total += encoder.encode(partHeadText(boundary, part.headers)).byteLength + part.size + 2;
  }
  return total + `--${boundary}--\r\n`.length;
}

/** Options for {@linkcode multipartStream}. */
export interface MultipartOptions {
  /**
   * Pieces smaller than this (part headers, delimiters, small bodies or body chunks) are merged into
   * output chunks of about this size; larger body chunks go out as they are, without a copy.
   * Default 64 KiB.
   */
  chunkSize?: number;
  /** Called once when the consumer cancels (client gone); abort upstream reads here. */
  onCancel?: (reason: unknown) => void;
}

/**
 * Turns a sequence of parts into a multipart body stream. Pull-based: a part's body is read only
 * as fast as the consumer takes bytes. An error from the source or a part body errors the stream,
 * so the HTTP response is aborted rather than ending short but well-formed.
 *
 * @example
 * ```ts
 * import { multipartStream } from "./multipart.ts";
 * async function* parts() {
 *   yield { headers: { "Content-Type": "application/dicom" }, body: new Uint8Array([1, 2]) };
 * }
 * const text = await new Response(multipartStream(parts(), "b")).text();
 * ```
 */
export function multipartStream(
  parts: AsyncIterable<Part>,
  boundary: string,
  options: MultipartOptions = {},
): ReadableStream<Uint8Array> {
  const chunkSize = options.chunkSize ?? 64 * 1024;
  const iterator = parts[Symbol.asyncIterator]();
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let first = true;
  let done = false;
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;

  const push = (bytes: Uint8Array) => {
    if (bytes.byteLength === 0) return;
    pending.push(bytes);
    pendingBytes += bytes.byteLength;
  };
  const take = (): Uint8Array => {
    const out = pending.length === 1 ? pending[0] : concatBytes(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    return out;
  };
  const partHead = (part: Part) => encoder.encode(partHeadText(boundary, part.headers));

  // Stops everything upstream once, whether the consumer cancelled or something failed.
  let stopped = false;
  let stopReason: unknown;
  const stop = async (reason: unknown) => {
    if (stopped) return;
    stopped = done = true;
    stopReason = reason;
    options.onCancel?.(reason);
    // A source paused at a yield closes at once; one still opening its next part (a slow store) closes
    // when that open settles, which the consumer is not kept waiting for.
    const closing = Promise.resolve(iterator.return?.()).catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.allSettled([
      reader?.cancel(reason),
      Promise.race([closing, new Promise<void>((resolve) => timer = setTimeout(resolve, 0))]),
    ]);
    clearTimeout(timer);
  };

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        await fill(controller);
      } catch (error) {
        if (stopped) return; // cancelled meanwhile: the consumer is gone
        await stop(error);
        throw error;
      }
    },
    cancel: stop,
  }, { highWaterMark: 0 });

  async function fill(controller: ReadableStreamDefaultController<Uint8Array>) {
    // Fill one output chunk: the first chunk goes out as soon as it has anything (fast first byte).
    while (!done && pendingBytes < chunkSize) {
      if (reader) {
        const { value, done: partDone } = await reader.read();
        if (stopped) return; // a cancelled reader reads as done: that is not the end of the part
        if (partDone) {
          reader = undefined;
          push(encoder.encode("\r\n"));
        } else if (value.byteLength >= chunkSize) {
          // big enough on its own: flush what is pending, then pass it through uncopied
          if (pendingBytes > 0) controller.enqueue(take());
          controller.enqueue(value);
          first = false;
          return;
        } else {
          push(value);
        }
      } else {
        const next = await iterator.next();
        if (stopped) {
          // a part that arrived after the stop is ours to release
          if (!next.done && !(next.value.body instanceof Uint8Array)) {
            await next.value.body.cancel(stopReason).catch(() => {});
          }
          return;
        }
        if (next.done) {
          push(encoder.encode(`--${boundary}--\r\n`));
          done = true;
          break;
        }
        const part = next.value;
        push(partHead(part));
        if (!(part.body instanceof Uint8Array)) reader = part.body.getReader();
        else if (part.body.byteLength < chunkSize) {
          push(part.body);
          push(encoder.encode("\r\n"));
        } else {
          controller.enqueue(take());
          controller.enqueue(part.body);
          push(encoder.encode("\r\n"));
          first = false;
          return;
        }
      }
      if (first && pendingBytes > 0) break;
    }
    first = false;
    if (pendingBytes > 0) controller.enqueue(take());
    if (done) controller.close();
  }
}
