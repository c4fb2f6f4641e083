/**
 * Retrieval in Explicit VR Little Endian of instances stored as Implicit VR Little Endian, Explicit VR
 * Big Endian or Deflated (PS3.18 8.7.3.5: those syntaxes are not sent over the web), streaming:
 * the header is re-encoded from its parsed form, the pixel data flows through.
 *
 * @module
 */

import { type HeaderCache, loadHeader } from "./header_cache.ts";
import type { OpenedInstance } from "./open_instance.ts";
import type { ObjectStore } from "../store/store.ts";
import { transcodeStream } from "../dicom/explicit_le.ts";

/** Drops the first `count` bytes of a stream. */
export function skipBytes(stream: ReadableStream<Uint8Array>, count: number): ReadableStream<Uint8Array> {
  let left = count;
  return stream.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (left >= chunk.byteLength) {
          left -= chunk.byteLength;
          return;
        }
        controller.enqueue(left > 0 ? chunk.subarray(left) : chunk);
        left = 0;
      },
    }),
  );
}

/** Options for {@linkcode reEncodeBody}. */
export interface ReEncodeOptions {
  /** The store holding the instance. */
  store: ObjectStore;
  /** Where its parsed header is cached. */
  headers: HeaderCache;
  /** Its bucket. */
  bucket: string;
  /** Binary values up to this length are inline in metadata. */
  bulkThreshold?: number;
}

/** The opened instance's bytes re-encoded as Explicit VR Little Endian. */
export function reEncodeBody(opened: OpenedInstance, options: ReEncodeOptions): ReadableStream<Uint8Array> {
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  return new ReadableStream<Uint8Array>({
    async start() {
      try {
        const header = await loadHeader(options.store, options.headers, options.bucket, opened.info, {
          bulkThreshold: options.bulkThreshold,
        });
        if (header.inflated) {
          await opened.body.cancel();
          reader = transcodeStream(header).getReader();
        } else {
          reader = transcodeStream(header, skipBytes(opened.body, header.datasetOffset)).getReader();
        }
      } catch (error) {
        await opened.body.cancel(error).catch(() => {});
        throw error;
      }
    },
    async pull(controller) {
      const { value, done } = await reader!.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel(reason) {
      await (reader ? reader.cancel(reason) : opened.body.cancel(reason));
    },
  }, { highWaterMark: 0 });
}
