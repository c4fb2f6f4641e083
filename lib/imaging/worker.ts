/**
 * Entry point of a codec worker (see `pool.ts`): runs each task it is sent and posts back the result, its
 * buffer transferred, or the error's name and message.
 *
 * @module
 */

import { runTask, type Task } from "./pool.ts";

const scope = self as unknown as {
  postMessage(message: unknown, transfer?: Transferable[]): void;
  onmessage: ((event: MessageEvent) => void) | null;
};

scope.onmessage = async (event: MessageEvent) => {
  const { id, task } = event.data as { id: number; task: Task };
  try {
    const result = await runTask(task);
    const buffer = result.bytes.buffer;
    const transfer = buffer instanceof ArrayBuffer && result.bytes.byteLength === buffer.byteLength
      ? [buffer]
      : [];
    scope.postMessage({ id, result }, transfer);
  } catch (error) {
    const e = error instanceof Error ? error : new Error(String(error));
    scope.postMessage({ id, error: { name: e.name, message: e.message } });
  }
};

scope.postMessage({ ready: true });
