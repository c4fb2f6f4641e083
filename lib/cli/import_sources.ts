/**
 * What `deno task import` reads ({@linkcode findFiles}): the files under the paths it is given, in name
 * order, each with a way to open it as a stream. Folders are walked recursively whatever their files are
 * called (a CD export's `IMAGES/IM000001`, a modality's dump); `.zip` archives are read entry by entry,
 * streamed from the archive file (never unpacked to disk, never read whole); a `DICOMDIR` is a media
 * directory, not an instance, so it is passed over: the files it lists are found by walking its folder (a
 * `DICOMDIR` given as a path stands for its folder). Operating-system litter (`.DS_Store`, `Thumbs.db`,
 * `desktop.ini`, AppleDouble `._*` files and `__MACOSX/` in archives) is passed over too.
 *
 * Archives are read with zip.js (`@zip.js/zip.js`): web streams throughout, Zip64 (entries and archives
 * over 4 GiB), CRC-32 checked as an entry is read, inflation in the runtime's `DecompressionStream`.
 *
 * @module
 */

import { configure, type FileEntry, Reader, ZipReader } from "@zip.js/zip.js";

// Inflate on this thread with the native DecompressionStream: no worker threads to permit or to leak.
configure({ useWebWorkers: false, chunkSize: 64 * 1024 });

/** A file to import. */
export interface FoundFile {
  /** What it is. */
  kind: "file";
  /** The path as shown to people: `folder/IM0001`, or `export.zip:DICOM/IM0001` for an archive entry. */
  name: string;
  /** Its size in bytes (uncompressed, for an archive entry). */
  size: number;
  /** Opens it for reading; rejects when it cannot be opened. */
  open(): Promise<ReadableStream<Uint8Array>>;
}

/** A path or archive that cannot be read at all: rejected without being handed to the ingest. */
export interface Unreadable {
  /** What it is. */
  kind: "unreadable";
  /** The path (or `archive.zip:entry`). */
  name: string;
  /** Why, and what to do. */
  message: string;
}

/** A file passed over on purpose: not an instance and not a problem. */
export interface PassedOver {
  /** What it is. */
  kind: "passed";
  /** The path (or `archive.zip:entry`). */
  name: string;
  /** `dicomdir` (a media directory) or `system` (operating-system litter). */
  why: "dicomdir" | "system";
}

/** What {@linkcode findFiles} finds. */
export type Found = FoundFile | Unreadable | PassedOver;

const SYSTEM_FILES = new Set([".ds_store", "thumbs.db", "desktop.ini"]);

/** Why the file called `base` (no folder) is passed over, or undefined when it is to be imported. */
export function passedOver(base: string): PassedOver["why"] | undefined {
  const lower = base.toLowerCase();
  if (lower === "dicomdir") return "dicomdir";
  if (SYSTEM_FILES.has(lower) || base.startsWith("._")) return "system";
  return undefined;
}

/**
 * Every file under `paths` (files, folders, `.zip` archives), depth first in name order, each real file
 * once even when paths overlap or symbolic links loop.
 */
export async function* findFiles(paths: readonly string[]): AsyncGenerator<Found> {
  const seen = new Set<string>();
  for (const path of paths) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch (error) {
      yield { kind: "unreadable", name: path, message: statProblem(error) };
      continue;
    }
    if (info.isFile && passedOver(baseName(path)) === "dicomdir") {
      // `import /media/cdrom/DICOMDIR`: the set is the folder the DICOMDIR sits in
      yield* walk(parentOf(path), seen);
    } else if (info.isDirectory) yield* walk(path, seen);
    else yield* file(path, info, seen);
  }
}

async function* walk(folder: string, seen: Set<string>): AsyncGenerator<Found> {
  let real: string;
  const names: string[] = [];
  try {
    real = await Deno.realPath(folder);
    if (seen.has(real)) return;
    seen.add(real);
    for await (const entry of Deno.readDir(folder)) names.push(entry.name);
  } catch (error) {
    yield { kind: "unreadable", name: folder, message: statProblem(error) };
    return;
  }
  names.sort();
  const prefix = folder.endsWith("/") ? folder : `${folder}/`;
  for (const name of names) {
    const path = prefix + name;
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch (error) {
      // a dangling symbolic link, or a file removed meanwhile
      yield { kind: "unreadable", name: path, message: statProblem(error) };
      continue;
    }
    if (info.isDirectory) yield* walk(path, seen);
    else if (info.isFile) {
      const why = passedOver(name);
      if (why) yield { kind: "passed", name: path, why };
      else yield* file(path, info, seen);
    }
  }
}

async function* file(path: string, info: Deno.FileInfo, seen: Set<string>): AsyncGenerator<Found> {
  try {
    const real = await Deno.realPath(path);
    if (seen.has(real)) return;
    seen.add(real);
  } catch (error) {
    yield { kind: "unreadable", name: path, message: statProblem(error) };
    return;
  }
  if (/\.zip$/i.test(path)) {
    yield* archive(path, info.size);
    return;
  }
  yield {
    kind: "file",
    name: path,
    size: info.size,
    open: async () => (await Deno.open(path, { read: true })).readable,
  };
}

/**
 * The entries of the archive at `path`, each streamed from it when opened. The file is open while entries
 * are read: closed once the walk is past the archive and no entry is being read, and opened again if an
 * entry is read after that.
 */
async function* archive(path: string, size: number): AsyncGenerator<Found> {
  const file = new FileReader(path, size);
  let open = 0;
  let walked = false;
  const release = () => {
    if (walked && open === 0) file.close();
  };
  try {
    const reader = new ZipReader(file, { checkCrc32: true });
    let entries;
    try {
      entries = await reader.getEntries();
    } catch (error) {
      yield {
        kind: "unreadable",
        name: path,
        message: `Cannot read the zip archive: ${messageOf(error)}. Check that it is a whole .zip file ` +
          "(not cut short, not another format renamed), or unpack it and import the folder",
      };
      return;
    }
    for (const entry of entries) {
      if (entry.directory) continue;
      const name = `${path}:${entry.filename}`;
      const base = entry.filename.slice(entry.filename.lastIndexOf("/") + 1);
      if (entry.filename.startsWith("__MACOSX/") || passedOver(base) === "system") {
        yield { kind: "passed", name, why: "system" };
        continue;
      }
      if (passedOver(base) === "dicomdir") {
        yield { kind: "passed", name, why: "dicomdir" };
        continue;
      }
      if (entry.encrypted) {
        yield {
          kind: "unreadable",
          name,
          message: "The zip entry is encrypted: unpack the archive with its password and import the folder",
        };
        continue;
      }
      if (/\.zip$/i.test(entry.filename)) {
        yield {
          kind: "unreadable",
          name,
          message:
            "A zip archive inside a zip archive is not read: unpack the outer one and import the folder",
        };
        continue;
      }
      yield {
        kind: "file",
        name,
        size: entry.uncompressedSize,
        open: () => {
          open++;
          return Promise.resolve(entryStream(entry as FileEntry, () => {
            open--;
            release();
          }));
        },
      };
    }
  } finally {
    walked = true;
    release();
  }
}

/**
 * The bytes of `entry`, inflated and CRC-checked as they are read: zip.js errors the stream when the archive
 * is damaged (so the ingest writes nothing), and stops when it is cancelled; `done` is called either way.
 */
function entryStream(entry: FileEntry, done: () => void): ReadableStream<Uint8Array> {
  const pipe = new TransformStream<Uint8Array, Uint8Array>();
  const reader = pipe.readable.getReader();
  let outer!: ReadableStreamDefaultController<Uint8Array>;
  let failed = false;
  // zip.js errors the stream when it fails, except when reading the archive file itself fails: then only its
  // promise tells. (Not a Promise.race per read against a promise that stays pending: that keeps every chunk.)
  const fail = (error: unknown) => {
    if (failed) return;
    failed = true;
    outer.error(new Error(`Cannot read the entry from the archive (damaged?): ${messageOf(error)}`));
    reader.cancel(error).catch(() => {});
  };
  entry.getData(pipe.writable).catch(fail).finally(done);
  return new ReadableStream<Uint8Array>({
    start(controller) {
      outer = controller;
    },
    async pull(controller) {
      let next;
      try {
        next = await reader.read();
      } catch (error) {
        return fail(error);
      }
      if (failed) return;
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
    cancel: (reason) => {
      failed = true;
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/**
 * A zip.js reader over the file at `path`: reads at offsets, one at a time (a seek and a read must not
 * interleave), opening the file when it is closed.
 */
class FileReader extends Reader<string> {
  #path: string;
  #file?: Deno.FsFile;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(path: string, size: number) {
    super(path);
    this.#path = path;
    this.size = size;
  }

  override init(): void {}

  override readUint8Array(offset: number, length: number): Promise<Uint8Array> {
    const result = this.#queue.then(async () => {
      this.#file ??= await Deno.open(this.#path, { read: true });
      await this.#file.seek(offset, Deno.SeekMode.Start);
      const data = new Uint8Array(length);
      let read = 0;
      while (read < length) {
        const count = await this.#file.read(data.subarray(read));
        if (count === null) return data.subarray(0, read);
        read += count;
      }
      return data;
    });
    this.#queue = result.catch(() => {});
    return result;
  }

  /** Closes the file after the reads queued; a later read opens it again. */
  close(): void {
    this.#queue = this.#queue.then(() => {
      this.#file?.close();
      this.#file = undefined;
    });
  }
}

function statProblem(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "No such file or folder: check the path";
  if (error instanceof Deno.errors.PermissionDenied) {
    return "Permission denied: the importer may not read it (check the file's owner and mode)";
  }
  if (error instanceof Deno.errors.NotCapable) {
    return "Not readable with the permissions the importer runs with: grant --allow-read for it";
  }
  return `Cannot read it: ${messageOf(error)}`;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function baseName(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  return trimmed.slice(trimmed.lastIndexOf("/") + 1);
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash > 0 ? path.slice(0, slash) : slash === 0 ? "/" : ".";
}
