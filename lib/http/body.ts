/**
 * Watching a response body as it is sent: each chunk, and one call when it has ended, failed or been
 * cancelled (the client went away), so slots can be released, chunks freed and the request logged.
 *
 * @module
 */

/** What {@linkcode watchBody} calls. */
export interface BodyWatch {
  /** Before each read from the original body (the consumer has taken the previous chunk). */
  beforeRead?(): void;
  /** Each chunk as it is handed on. */
  onChunk?(chunk: Uint8Array): void;
  /** Once: the bytes handed on, and why it ended early (`aborted: …`, `client disconnected`), if it did. */
  done(bytes: number, outcome?: string): void;
}

/** `response` with a body that reports to `watch`; `done(0)` at once when there is no body. */
export function watchBody(response: Response, watch: BodyWatch): Response {
  if (response.body === null) {
    watch.done(0);
    return response;
  }
  const reader = response.body.getReader();
  let bytes = 0;
  let finished = false;
  const finish = (outcome?: string) => {
    if (finished) return;
    finished = true;
    watch.done(bytes, outcome);
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        watch.beforeRead?.();
        const { value, done } = await reader.read();
        if (done) {
          finish();
          controller.close();
        } else {
          bytes += value.byteLength;
          watch.onChunk?.(value);
          controller.enqueue(value);
        }
      } catch (error) {
        finish(`aborted: ${error instanceof Error ? error.message : String(error)}`);
        throw error;
      }
    },
    async cancel(reason) {
      watch.beforeRead?.();
      finish("client disconnected");
      await reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}
