/**
 * Retrieval in Explicit VR Little Endian of instances stored as Implicit VR Little Endian, Explicit VR
 * Big Endian or Deflated (PS3.18 8.7.3.5: those syntaxes are not sent over the web), streaming:
 * the header is re-encoded from its parsed form, the pixel data flows through. And legacy objects (no File
 * Meta, or one not naming the syntax) sent as stored, behind the File Meta a Part 10 file needs.
 *
 * @module
 */

import { type HeaderCache, loadHeader } from "./header_cache.ts";
import type { OpenedInstance } from "./open_instance.ts";
import type { ObjectStore } from "../store/store.ts";
import { transcodeStream } from "../dicom/explicit_le.ts";
import { writeFileMeta } from "../dicom/file_meta.ts";
import { getString, type Part10Header } from "../dicom/dataset.ts";
import { prepend, skipBytes } from "../util/streams.ts";

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

/**
 * A legacy object (its syntax inferred: no File Meta, or one without (0002,0010)) as a Part 10 file: a File
 * Meta naming the inferred syntax and the SOP Class and Instance UIDs of the data set, then the data set's
 * bytes as stored.
 */
export function withFileMeta(opened: OpenedInstance, options: ReEncodeOptions): ReadableStream<Uint8Array> {
  return fromHeader(opened, options, (header) => {
    const uid = (tag: number) => (getString(header.dataset, tag) ?? "").replace(/[\0 ]+$/, "");
    const meta = writeFileMeta({
      sopClassUid: uid(0x00080016),
      sopInstanceUid: uid(0x00080018),
      transferSyntaxUid: opened.meta.transferSyntaxUid,
    });
    return prepend(meta, skipBytes(opened.body, header.datasetOffset));
  });
}

/** The opened instance's bytes re-encoded as Explicit VR Little Endian. */
export function reEncodeBody(opened: OpenedInstance, options: ReEncodeOptions): ReadableStream<Uint8Array> {
  return fromHeader(opened, options, async (header) => {
    if (!header.inflated) return transcodeStream(header, skipBytes(opened.body, header.datasetOffset));
    await opened.body.cancel();
    return transcodeStream(header);
  });
}

/**
 * A body made from the instance's parsed header (loaded, or from the cache) once it is first read; the opened
 * body is cancelled when that fails.
 */
function fromHeader(
  opened: OpenedInstance,
  options: ReEncodeOptions,
  make: (header: Part10Header) => ReadableStream<Uint8Array> | Promise<ReadableStream<Uint8Array>>,
): ReadableStream<Uint8Array> {
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  return new ReadableStream<Uint8Array>({
    async start() {
      try {
        const header = await loadHeader(options.store, options.headers, options.bucket, opened.info, {
          bulkThreshold: options.bulkThreshold,
        });
        reader = (await make(header)).getReader();
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
