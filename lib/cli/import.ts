/**
 * `deno task import PATH... [--aet AET] [--overwrite] [--concurrency N]`: puts DICOM files that are anywhere
 * (files, folders walked recursively whatever the files are called, DICOMDIR sets, `.zip` archives; see
 * `import_sources.ts`) into the configured store, the local `DATA_DIR` or S3, chosen by the same environment
 * as the server, under the layout key `{study}/{series}/{sop}.dcm`.
 *
 * Every file goes through {@linkcode Ingest}, the way STOW-RS stores: the same checks (Part 10, the UIDs
 * valid before they become a key; anything else is rejected with the reason), byte-exact atomic writes, and
 * the search catalog updated as objects land, so a running server's QIDO-RS shows them at once. Files are
 * streamed (memory stays flat for a multi-gigabyte multi-frame file) and stored `--concurrency` at a time
 * (default `S3_CONCURRENCY`). Re-running is idempotent: an object stored already with the same bytes is
 * skipped; a different object under an existing key is a conflict, reported and left alone unless
 * `--overwrite`.
 *
 * The AET is `--aet`, else the only one there is (the first of `AETS` when they are configured). In the local
 * mode, without `AETS`, a new AET's folder is created in `DATA_DIR`.
 *
 * Output: progress (a live line on a terminal, a plain line every 5 s otherwise), each rejected file with its
 * reason, and last `imported 61, skipped 3 (already stored), rejected 2`. Exit codes: 0 nothing rejected,
 * 1 some file rejected, 2 bad arguments or configuration.
 *
 * Known limit: two different files with the same SOP Instance UID in one run, stored at the same moment by
 * two workers, are not told apart as a conflict (the later write wins); in separate runs they are.
 *
 * @module
 */

import { ConfigError, loadConfig, parseConfig } from "../config/config.ts";
import { assembleServices, openCatalog, openStore } from "../app/open.ts";
import { completeServices, type Services } from "../dicomweb/services.ts";
import { Ingest } from "../dicomweb/stow.ts";
import { FAILURE, type Outcome } from "../dicomweb/stow.ts";
import type { ObjectStore } from "../store/store.ts";
import type { Catalog } from "../catalog/catalog.ts";
import { findFiles, type Found, type FoundFile } from "./import_sources.ts";
import { Progress } from "./import_progress.ts";

const USAGE = "Usage: deno task import PATH... [--aet AET] [--overwrite] [--concurrency N]\n" +
  "  PATH: DICOM files, folders (walked recursively; DICOMDIR sets) and .zip archives\n" +
  "  --aet AET          the AET to store into (default: the only one; a new one is created in local mode)\n" +
  "  --overwrite        replace a stored object that differs (default: report it as a conflict)\n" +
  "  --concurrency N    files stored at once (default S3_CONCURRENCY)";

/** Files per {@linkcode Ingest.store} call: its outcomes are reported when it ends. */
const BATCH = 64;

/** The parsed command line. */
export interface ImportArgs {
  /** Files, folders and archives. */
  paths: string[];
  /** `--aet`. */
  aet?: string;
  /** `--overwrite`. */
  overwrite: boolean;
  /** `--concurrency`. */
  concurrency?: number;
}

/** Bad arguments: the message says what and shows the usage. */
class UsageError extends Error {}

/** Parses the command line; throws with a message for people when it is wrong. */
export function parseArgs(args: readonly string[]): ImportArgs {
  const result: ImportArgs = { paths: [], overwrite: false };
  let options = true;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (!options || !arg.startsWith("--")) {
      result.paths.push(arg);
      continue;
    }
    const [flag, inline] = arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [
        arg,
        undefined,
      ];
    const value = () => {
      const v = inline ?? args[++i];
      if (v === undefined || v === "") throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (flag === "--") options = false;
    else if (flag === "--aet") result.aet = value();
    else if (flag === "--overwrite" && inline === undefined) result.overwrite = true;
    else if (flag === "--concurrency") {
      const n = Number(value());
      if (!Number.isInteger(n) || n < 1 || n > 256) {
        throw new UsageError("--concurrency must be a whole number from 1 to 256");
      }
      result.concurrency = n;
    } else throw new UsageError(`Unknown option ${arg}`);
  }
  if (result.paths.length === 0) throw new UsageError("Name at least one file, folder or .zip archive");
  return result;
}

/** Options for {@linkcode main}. */
export interface MainOptions {
  /** Show a live progress line (default: standard output is a terminal). */
  live?: boolean;
  /** Milliseconds between plain progress lines (default 5000). */
  progressInterval?: number;
}

/** Runs the command; resolves to the exit code. */
export async function main(args: string[], options: MainOptions = {}): Promise<number> {
  let parsed: ImportArgs;
  try {
    parsed = parseArgs(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${error.message}\n${USAGE}`);
    return 2;
  }
  let store: ObjectStore | undefined;
  let catalog: Catalog | undefined;
  try {
    const config = await loadConfig();
    store = await openStore(config);
    catalog = await openCatalog(config, { log: (line) => console.error(line) });
    if (catalog && config.catalogPath !== undefined && catalog.location !== config.catalogPath) {
      console.error(
        `Warning: the catalog at CATALOG_PATH=${config.catalogPath} cannot be written; the server finds the ` +
          "imported objects at its next crawl (or run deno task index)",
      );
    }
    const services = completeServices(
      assembleServices(config, store, { catalog }),
      (line) => console.error(line),
    );
    const aet = await chooseAet(services, parsed.aet);
    return await importInto(services, aet, parsed, options);
  } catch (error) {
    if (error instanceof UsageError || error instanceof ConfigError) {
      console.error(error.message);
      return 2;
    }
    throw error;
  } finally {
    await catalog?.close();
    await store?.close?.();
  }
}

/**
 * The AET to store into: `requested` (created as a folder in the local mode when the AETs are discovered),
 * else the only AET, else the first of `AETS`. Throws a {@linkcode UsageError} listing the AETs otherwise.
 */
async function chooseAet(services: Services, requested: string | undefined): Promise<string> {
  const { config, store, aets } = services;
  const local = store.kind === "local";
  let known: string[];
  try {
    known = (await aets.entries()).map(([aet]) => aet);
  } catch (error) {
    throw new UsageError(
      `Cannot list the AETs of ${store.kind} store ${store.location}: ${(error as Error).message}`,
    );
  }
  const list = known.length > 0 ? known.join(", ") : "(none)";
  let aet = requested;
  if (aet === undefined) {
    if (config.aets) aet = [...config.aets.keys()][0];
    else if (known.length === 1) aet = known[0];
    else if (known.length === 0) {
      throw new UsageError(
        local
          ? `There is no AET in ${config.dataDir} yet: name one with --aet NAME (its folder is created)`
          : `The S3 credentials list no bucket: create one (the AET's bucket), or set AETS, then use --aet NAME`,
      );
    } else throw new UsageError(`Several AETs: choose one with --aet (${list})`);
  } else {
    try {
      parseConfig({ AETS: aet }); // the server's rule for an AET name
    } catch (error) {
      throw new UsageError((error as Error).message.replace(/^AETS=/, "--aet "));
    }
    if (!known.includes(aet)) {
      if (aets.fixed) throw new UsageError(`Unknown AET ${aet}: AETS lists ${list}`);
      if (!local) {
        throw new UsageError(
          `Unknown AET ${aet}: the S3 buckets are ${list}. Create the bucket ${aet} first, ` +
            `or map the AET to a bucket with AETS=${aet}=BUCKET`,
        );
      }
    }
  }
  if (local) {
    // the AET's folder, for a new AET or one that AETS names but nothing was stored in yet
    const bucket = (config.aets?.get(aet)) ?? aet;
    const folder = `${config.dataDir.replace(/\/+$/, "")}/${bucket}`;
    const exists = await Deno.stat(folder).then((info) => info.isDirectory, () => false);
    if (!exists) {
      await Deno.mkdir(folder, { recursive: true });
      console.log(`Created the AET ${aet}: folder ${folder}`);
      await aets.refresh();
    }
  }
  return aet;
}

/** Counts of what happened. */
interface Tally {
  imported: number;
  skipped: number;
  rejected: number;
  replaced: number;
  conflicts: number;
  dicomdirs: number;
  system: number;
}

async function importInto(
  services: Services,
  aet: string,
  args: ImportArgs,
  options: MainOptions,
): Promise<number> {
  const { config, store } = services;
  const concurrency = args.concurrency ?? config.s3Concurrency;
  const total = { files: 0, bytes: 0 };
  for await (const found of findFiles(args.paths)) {
    if (found.kind === "file") {
      total.files++;
      total.bytes += found.size;
    }
  }
  const where = store.kind === "local" ? `${store.location}/${(await services.aets.bucket(aet)) ?? aet}` : (
    `${store.location} bucket ${await services.aets.bucket(aet)}`
  );
  console.log(
    `Importing ${total.files} files (${
      (total.bytes / 1e6).toFixed(1)
    } MB) into AET ${aet} (${store.kind}: ${where}` +
      `${services.catalog ? "" : "; no catalog"}), ${concurrency} at a time`,
  );
  const progress = new Progress({
    total,
    live: options.live ?? Deno.stdout.isTerminal(),
    interval: options.progressInterval,
  });
  const tally: Tally = {
    imported: 0,
    skipped: 0,
    rejected: 0,
    replaced: 0,
    conflicts: 0,
    dicomdirs: 0,
    system: 0,
  };
  const reject = (name: string, message: string) => {
    tally.rejected++;
    progress.print(`rejected ${name}: ${message}`);
  };
  const ingest = new Ingest(services, { concurrency, overwrite: args.overwrite });
  const source = findFiles(args.paths);
  let exhausted = false;
  // async generators queue concurrent next() calls: every worker takes the next file in walk order
  const next = async (): Promise<FoundFile | undefined> => {
    while (!exhausted) {
      const step = await source.next();
      if (step.done) {
        exhausted = true;
        return undefined;
      }
      const found: Found = step.value;
      if (found.kind === "file") return found;
      if (found.kind === "unreadable") reject(found.name, found.message);
      else if (found.why === "dicomdir") tally.dicomdirs++;
      else tally.system++;
    }
    return undefined;
  };
  const worker = async () => {
    while (!exhausted) {
      const names: string[] = [];
      const parts = async function* () {
        while (names.length < BATCH) {
          const file = await next();
          if (!file) return;
          let body: ReadableStream<Uint8Array>;
          try {
            body = await file.open();
          } catch (error) {
            reject(file.name, `Cannot open it: ${(error as Error).message}`);
            progress.files++;
            continue;
          }
          names.push(file.name);
          yield {
            index: names.length,
            headers: new Headers({ "content-type": "application/dicom" }),
            body: counted(body, progress),
          };
        }
      };
      const { outcomes, abort } = await ingest.store(aet, parts());
      const reported = new Set<number>();
      for (const outcome of [...outcomes].sort((a, b) => a.index - b.index)) {
        reported.add(outcome.index);
        record(outcome, names[outcome.index - 1], tally, reject, args.overwrite);
      }
      for (let index = 1; index <= names.length; index++) {
        if (reported.has(index)) continue;
        const why = abort instanceof Error ? abort.message : String(abort ?? "not stored");
        reject(names[index - 1], `Not stored: ${why}`);
      }
    }
  };
  const started = performance.now();
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    progress.stop();
  }
  const seconds = (performance.now() - started) / 1000;
  if (tally.dicomdirs > 0) {
    console.log(
      `${tally.dicomdirs} DICOMDIR ${
        plural(tally.dicomdirs, "file")
      } not imported: a DICOMDIR is the index of a ` +
        "media set, not an instance (the files it lists are found by walking its folder)",
    );
  }
  if (tally.system > 0) {
    console.log(
      `${tally.system} operating-system ${
        plural(tally.system, "file")
      } passed over (.DS_Store, __MACOSX, ...)`,
    );
  }
  if (tally.replaced > 0) {
    console.log(
      `${tally.replaced} stored ${
        plural(tally.replaced, "object")
      } replaced by a different one (--overwrite)`,
    );
  }
  if (tally.conflicts > 0) {
    console.log(
      `${tally.conflicts} ${
        plural(tally.conflicts, "conflict")
      }: a different object is stored under the same ` +
        "SOP Instance UID and was left alone; --overwrite replaces it",
    );
  }
  console.log(
    `${progress.files} files, ${(progress.bytes / 1e6).toFixed(1)} MB in ${seconds.toFixed(1)} s ` +
      `(${(progress.files / Math.max(seconds, 1e-3)).toFixed(1)} files/s, ` +
      `${(progress.bytes / 1e6 / Math.max(seconds, 1e-3)).toFixed(1)} MB/s)`,
  );
  console.log(
    `imported ${tally.imported}, skipped ${tally.skipped} (already stored), rejected ${tally.rejected}`,
  );
  return tally.rejected > 0 ? 1 : 0;
}

function record(
  outcome: Outcome,
  name: string,
  tally: Tally,
  reject: (name: string, message: string) => void,
  overwrite: boolean,
): void {
  if (outcome.stored) {
    if (outcome.duplicate) tally.skipped++;
    else tally.imported++;
    if (outcome.replaced) tally.replaced++;
    if (outcome.note) console.error(`${name}: ${outcome.note}`);
    return;
  }
  if (outcome.reason === FAILURE.conflict && !overwrite) tally.conflicts++;
  // the ingest numbers parts as STOW-RS does; here the file's name says which
  reject(name, outcome.message.replace(/"[Pp]art \d+"/, "it").replace(/\b[Pp]art \d+\b/, "the file"));
}

/**
 * `body`, counting its bytes into `progress`, and the file as done once it is read to its end, failed or
 * cancelled.
 */
function counted(body: ReadableStream<Uint8Array>, progress: Progress): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let finished = false;
  const finish = () => {
    if (!finished) progress.files++;
    finished = true;
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let next;
      try {
        next = await reader.read();
      } catch (error) {
        finish();
        throw error;
      }
      if (next.done) {
        finish();
        controller.close();
        return;
      }
      progress.bytes += next.value.byteLength;
      controller.enqueue(next.value);
    },
    cancel(reason) {
      finish();
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

function plural(n: number, word: string): string {
  return n === 1 ? word : `${word}s`;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
