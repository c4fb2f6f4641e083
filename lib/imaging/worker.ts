/**
 * Entry point of a codec worker (see `pool.ts`): runs each task it is sent and posts back the result, its
 * buffer transferred, or the error's name and message.
 *
 * @module
 */

import { MalformedError, OutOfRangeError } from "../util/errors.ts";
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
    // this server's input errors keep their class across the boundary (the HTTP layer maps them to 400)
    const name = e instanceof MalformedError
      ? "MalformedError"
      : e instanceof OutOfRangeError
      ? "OutOfRangeError"
      : e.name;
    scope.postMessage({ id, error: { name, message: e.message } });
  }
};

scope.postMessage({ ready: true });
