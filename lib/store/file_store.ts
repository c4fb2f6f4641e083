/**
 * {@linkcode ObjectStore} on a local folder: each bucket is a subfolder, each key a relative path.
 *
 * Writes go to a hidden temporary file beside the target and are renamed into place, so readers
 * never see half an object. Names starting with "." are not objects: listings skip them and keys
 * may not contain them.
 *
 * @module
 */

import {
  checkRange,
  compareKeys,
  type GetOptions,
  type ListOptions,
  type ObjectBody,
  type ObjectInfo,
  type ObjectStore,
  type PutOptions,
  type ReadOptions,
  StoreError,
} from "./store.ts";
import { OutOfRangeError } from "../util/errors.ts";

/** Options for {@linkcode FileStore}. */
export interface FileStoreOptions {
  /** Bytes per read when streaming; files up to this size are read in one go. Default 1 MiB. */
  chunkSize?: number;
}

const DEFAULT_CHUNK = 1024 * 1024;

/**
 * Local-folder object store.
 *
 * @example
 * ```ts ignore
 * const store = new FileStore("./data");
 * const object = await store.get("DICOM", "1.2.3/1.2.3.4/1.2.3.4.5.dcm");
 * ```
 */
export class FileStore implements ObjectStore {
  readonly kind = "local";
  readonly location: string;
  #root: string;
  #chunkSize: number;

  /** A store over the data folder `root`: its subfolders are the buckets. */
  constructor(root: string, options: FileStoreOptions = {}) {
    this.#root = root.replace(/\/+$/, "") || "/";
    this.location = this.#root;
    this.#chunkSize = options.chunkSize ?? DEFAULT_CHUNK;
    if (!Number.isSafeInteger(this.#chunkSize) || this.#chunkSize < 1) {
      throw new OutOfRangeError(`chunkSize must be a positive integer: ${options.chunkSize}`);
    }
  }

  /** Creates the bucket's folder (no-op when it exists). */
  async createBucket(bucket: string): Promise<void> {
    const path = this.#bucketPath(bucket);
    try {
      await Deno.mkdir(path, { recursive: true });
    } catch (error) {
      throw this.#storeError(error, "create", path);
    }
  }

  async listBuckets(options: ReadOptions = {}): Promise<string[]> {
    options.signal?.throwIfAborted();
    const names: string[] = [];
    try {
      for await (const entry of Deno.readDir(this.#root)) {
        if (entry.name.startsWith(".")) continue;
        if (entry.isDirectory || (entry.isSymlink && await isDirectory(`${this.#root}/${entry.name}`))) {
          names.push(entry.name);
        }
      }
    } catch (error) {
      throw this.#storeError(error, "list buckets in", this.#root);
    }
    return names.sort(compareKeys);
  }

  async *list(bucket: string, prefix: string, options: ListOptions = {}): AsyncIterable<ObjectInfo> {
    const base = this.#bucketPath(bucket);
    const cut = prefix.lastIndexOf("/");
    const folder = prefix.slice(0, cut + 1); // "" or "a/b/"
    const start = prefix.slice(cut + 1); // what names in `folder` must start with
    if (folder !== "") checkKey(folder.slice(0, -1), "Prefix");
    if (/[\\\0]/.test(start)) {
      throw new OutOfRangeError(`Prefix contains a backslash or NUL: ${JSON.stringify(prefix)}`);
    }
    await this.#checkBucket(base, bucket);
    const keys: string[] = [];
    const seen = new Set<string>();
    const walk = async (dir: string, keyPrefix: string, filter: string): Promise<void> => {
      options.signal?.throwIfAborted();
      let entries;
      try {
        entries = await Array.fromAsync(Deno.readDir(dir));
      } catch (error) {
        if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) return;
        throw this.#storeError(error, "list", dir);
      }
      for (const entry of entries) {
        const { name } = entry;
        if (name.startsWith(".") || !name.startsWith(filter)) continue;
        const path = `${dir}/${name}`;
        let { isFile, isDirectory } = entry;
        if (entry.isSymlink) {
          const target = await Deno.stat(path).catch(() => null);
          if (!target) continue;
          ({ isFile, isDirectory } = target);
          // a link back up the tree would never end
          if (isDirectory) {
            const id = `${target.dev}:${target.ino}`;
            if (seen.has(id)) continue;
            seen.add(id);
          }
        }
        if (isFile) keys.push(keyPrefix + name);
        else if (isDirectory) await walk(path, `${keyPrefix}${name}/`, "");
      }
    };
    await walk(folder === "" ? base : `${base}/${folder.slice(0, -1)}`, folder, start);
    keys.sort(compareKeys);
    const after = options.startAfter;
    for (const key of keys) {
      if (after !== undefined && compareKeys(key, after) <= 0) continue;
      options.signal?.throwIfAborted();
      let stat;
      try {
        stat = await Deno.stat(`${base}/${key}`);
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) continue; // deleted since the walk
        throw this.#storeError(error, "list", `${base}/${key}`);
      }
      if (stat.isFile) yield infoOf(key, stat);
    }
  }

  async head(bucket: string, key: string, options: ReadOptions = {}): Promise<ObjectInfo | null> {
    options.signal?.throwIfAborted();
    const path = this.#objectPath(bucket, key);
    try {
      const stat = await Deno.stat(path);
      return stat.isFile ? infoOf(key, stat) : null;
    } catch (error) {
      return await this.#missing(error, bucket, "read", path);
    }
  }

  async get(bucket: string, key: string, options: GetOptions = {}): Promise<ObjectBody | null> {
    const { range, signal } = options;
    signal?.throwIfAborted();
    if (range) checkRange(range);
    const path = this.#objectPath(bucket, key);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (error) {
      return await this.#missing(error, bucket, "read", path);
    }
    try {
      const stat = await file.stat();
      if (!stat.isFile) {
        file.close();
        return null;
      }
      const info = infoOf(key, stat);
      const start = range?.start ?? 0;
      if (range && start >= stat.size) {
        throw new OutOfRangeError(
          `Range start ${start} is past the end of ${bucket}/${key} (${stat.size} bytes)`,
        );
      }
      const end = Math.min(range?.end ?? stat.size - 1, stat.size - 1);
      const length = Math.max(end - start + 1, 0);
      if (start > 0) await file.seek(start, Deno.SeekMode.Start);
      if (length <= this.#chunkSize) {
        // small enough to read now: one chunk, and no handle left open
        const data = await readFully(file, length);
        file.close();
        return { info, start, length, body: streamOf(data) };
      }
      return { info, start, length, body: fileStream(file, length, this.#chunkSize, signal) };
    } catch (error) {
      file.close();
      if (error instanceof RangeError) throw error;
      throw this.#storeError(error, "read", path);
    }
  }

  async put(
    bucket: string,
    key: string,
    body: ReadableStream<Uint8Array> | Uint8Array,
    options: PutOptions = {},
  ): Promise<ObjectInfo> {
    const { signal, size } = options;
    signal?.throwIfAborted();
    const path = this.#objectPath(bucket, key);
    const base = this.#bucketPath(bucket);
    await this.#checkBucket(base, bucket);
    const slash = path.lastIndexOf("/");
    const dir = path.slice(0, slash);
    const temp = `${dir}/.${path.slice(slash + 1)}.${crypto.randomUUID().slice(0, 8)}.tmp`;
    let file: Deno.FsFile | undefined;
    try {
      await Deno.mkdir(dir, { recursive: true });
      file = await Deno.open(temp, { write: true, createNew: true });
      let written = 0;
      if (body instanceof Uint8Array) {
        await writeAll(file, body);
        written = body.byteLength;
      } else {
        const reader = body.getReader();
        const onAbort = () => void reader.cancel(signal?.reason).catch(() => {});
        signal?.addEventListener("abort", onAbort, { once: true });
        try {
          while (true) {
            const { done, value } = await reader.read();
            // a cancelled reader reads as "done": never mistake that for the end of the body
            signal?.throwIfAborted();
            if (done) break;
            await writeAll(file, value);
            written += value.byteLength;
          }
        } catch (error) {
          await reader.cancel(error).catch(() => {});
          throw error;
        } finally {
          signal?.removeEventListener("abort", onAbort);
        }
      }
      if (size !== undefined && size !== written) {
        throw new OutOfRangeError(`Body of ${bucket}/${key} has ${written} bytes, expected ${size}`);
      }
      const stat = await file.stat();
      file.close();
      file = undefined;
      signal?.throwIfAborted();
      await Deno.rename(temp, path);
      return infoOf(key, stat);
    } catch (error) {
      file?.close();
      await Deno.remove(temp).catch(() => {});
      if (error instanceof RangeError || signal?.aborted || !isFsError(error)) throw error;
      if (
        error instanceof Deno.errors.IsADirectory || error instanceof Deno.errors.NotADirectory ||
        error instanceof Deno.errors.AlreadyExists
      ) {
        throw new StoreError(
          "failed",
          `Cannot write ${path}: a folder and an object have the same name (keys cannot be both)`,
          { cause: error },
        );
      }
      throw this.#storeError(error, "write", path);
    }
  }

  async delete(bucket: string, key: string, options: ReadOptions = {}): Promise<void> {
    options.signal?.throwIfAborted();
    const path = this.#objectPath(bucket, key);
    try {
      const stat = await Deno.lstat(path);
      if (stat.isDirectory) return;
      await Deno.remove(path);
    } catch (error) {
      await this.#missing(error, bucket, "delete", path);
    }
  }

  async check(bucket: string, options: ReadOptions = {}): Promise<void> {
    options.signal?.throwIfAborted();
    const base = this.#bucketPath(bucket);
    await this.#checkBucket(base, bucket);
    try {
      for await (const _ of Deno.readDir(base)) break;
    } catch (error) {
      throw this.#storeError(error, "read", base);
    }
  }

  #bucketPath(bucket: string): string {
    if (bucket === "" || bucket.startsWith(".") || /[/\\\0]/.test(bucket)) {
      throw new OutOfRangeError(`Invalid bucket name for a folder: ${JSON.stringify(bucket)}`);
    }
    return `${this.#root}/${bucket}`;
  }

  #objectPath(bucket: string, key: string): string {
    checkKey(key, "Key");
    return `${this.#bucketPath(bucket)}/${key}`;
  }

  async #checkBucket(base: string, bucket: string): Promise<void> {
    let stat;
    try {
      stat = await Deno.stat(base);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw this.#storeError(error, "read", base);
    }
    if (!stat?.isDirectory) {
      throw new StoreError(
        "no-bucket",
        `Bucket folder "${bucket}" does not exist in ${this.#root}: create ${base} or configure another bucket`,
      );
    }
  }

  /** `null` for a missing object in an existing bucket; otherwise the matching store error. */
  async #missing(error: unknown, bucket: string, op: string, path: string): Promise<null> {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
      await this.#checkBucket(this.#bucketPath(bucket), bucket);
      return null;
    }
    throw this.#storeError(error, op, path);
  }

  #storeError(error: unknown, op: string, path: string): unknown {
    if (error instanceof StoreError || !isFsError(error)) return error;
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      return new StoreError(
        "denied",
        `No permission to ${op} ${path}: run with read and write permission on the data folder ${this.#root}` +
          ` (--allow-read/--allow-write) and check the folder's owner and mode`,
        { cause: error },
      );
    }
    if (error instanceof Deno.errors.NotFound && path === this.#root) {
      return new StoreError("unavailable", `Data folder ${this.#root} does not exist: create it`, {
        cause: error,
      });
    }
    return new StoreError("failed", `Cannot ${op} ${path}: ${(error as Error).message}`, { cause: error });
  }
}

/** Rejects keys that could leave the bucket folder or name a hidden file. */
function checkKey(key: string, what: string): void {
  if (
    key === "" || /[\\\0]/.test(key) || key.split("/").some((part) => part === "" || part.startsWith("."))
  ) {
    throw new OutOfRangeError(
      `${what} is not a safe relative path (empty segment, leading ".", backslash or NUL): ${
        JSON.stringify(key)
      }`,
    );
  }
}

function infoOf(key: string, stat: Deno.FileInfo): ObjectInfo {
  const mtime = stat.mtime ?? undefined;
  // changes when the content is replaced (new inode from rename) or rewritten in place (size, mtime)
  const etag = [stat.size, mtime?.getTime() ?? 0, stat.ino ?? 0]
    .map((n) => n.toString(16)).join("-");
  return { key, size: stat.size, etag, lastModified: mtime };
}

function isFsError(error: unknown): boolean {
  return Object.values(Deno.errors).some((type) => error instanceof type);
}

async function isDirectory(path: string): Promise<boolean> {
  return (await Deno.stat(path).catch(() => null))?.isDirectory ?? false;
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  for (let offset = 0; offset < data.byteLength;) offset += await file.write(data.subarray(offset));
}

async function readFully(file: Deno.FsFile, length: number): Promise<Uint8Array> {
  const data = new Uint8Array(length);
  let filled = 0;
  while (filled < length) {
    const n = await file.read(data.subarray(filled));
    if (n === null) break; // truncated meanwhile
    filled += n;
  }
  return filled === length ? data : data.subarray(0, filled);
}

/** A stream of one chunk (none when empty). */
function streamOf(data: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      if (data.byteLength > 0) controller.enqueue(data);
      controller.close();
    },
  });
}

/** Streams `length` bytes from the file's position in fresh chunks of `chunkSize`; closes it at the end. */
function fileStream(
  file: Deno.FsFile,
  length: number,
  chunkSize: number,
  signal?: AbortSignal,
): ReadableStream<Uint8Array> {
  let left = length;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    signal?.removeEventListener("abort", onAbort);
    file.close();
  };
  let controller: ReadableStreamDefaultController<Uint8Array>;
  const onAbort = () => {
    close();
    controller.error(signal?.reason);
  };
  signal?.addEventListener("abort", onAbort, { once: true });
  return new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    async pull(c) {
      try {
        const chunk = await readFully(file, Math.min(chunkSize, left));
        if (closed) return;
        if (chunk.byteLength === 0) throw new Error("File ended early: it was truncated while being read");
        left -= chunk.byteLength;
        c.enqueue(chunk);
        if (left === 0) {
          close();
          c.close();
        }
      } catch (error) {
        if (closed) return;
        close();
        c.error(error);
      }
    },
    cancel() {
      close();
    },
  }, { highWaterMark: 0 });
}
