/**
 * Helpers for the importer's tests: run `lib/cli/import.ts` as a subprocess with the permissions its task
 * grants, and read what a folder or a bucket holds.
 *
 * @module
 */

import { readHeader } from "../../lib/dicom/part10.ts";
import { getString } from "../../lib/dicom/dataset.ts";
import { memorySource } from "../_dicom_fixtures.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const IMPORT = new URL("../../lib/cli/import.ts", import.meta.url).pathname;

/** What a run printed and how it ended. */
export interface ImportRun {
  code: number;
  stdout: string;
  stderr: string;
  /** Standard output's lines, without the empty last one. */
  lines: string[];
  /** The last line of standard output. */
  last: string;
}

/**
 * Runs the importer with `args` and only `env` (plus what Deno needs to find its cache), granted what
 * `deno task import` grants: env, net, sys osRelease, read everywhere, write only `writable` (the data folder).
 */
export async function runImport(
  args: string[],
  env: Record<string, string>,
  writable: string,
): Promise<ImportRun> {
  const base: Record<string, string> = { NO_COLOR: "1" };
  for (const name of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const value = Deno.env.get(name);
    if (value !== undefined) base[name] = value;
  }
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-env",
      "--allow-net",
      "--allow-sys=osRelease",
      "--allow-read",
      `--allow-write=${writable}`,
      IMPORT,
      ...args,
    ],
    cwd: ROOT,
    clearEnv: true,
    env: { ...base, ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  const lines = stdout.split("\n");
  if (lines.at(-1) === "") lines.pop();
  return {
    code: output.code,
    stdout,
    stderr: new TextDecoder().decode(output.stderr),
    lines,
    last: lines.at(-1) ?? "",
  };
}

/** The counts of the last line, which must be exactly of the summary's form. */
export function summary(run: ImportRun): { imported: number; skipped: number; rejected: number } {
  const match = /^imported (\d+), skipped (\d+) \(already stored\), rejected (\d+)$/.exec(run.last);
  if (!match) {
    throw new Error(`Not a summary line: ${JSON.stringify(run.last)}\n${run.stdout}\n${run.stderr}`);
  }
  return { imported: Number(match[1]), skipped: Number(match[2]), rejected: Number(match[3]) };
}

/** The layout key of a Part 10 file (deflated ones too): `{study}/{series}/{sop}.dcm`. */
export async function layoutKey(bytes: Uint8Array): Promise<string> {
  const { dataset } = await readHeader(memorySource(bytes));
  const uid = (tag: number) => getString(dataset, tag);
  return `${uid(0x0020000d)}/${uid(0x0020000e)}/${uid(0x00080018)}.dcm`;
}

/** Every file under `folder` by its path relative to it (names starting with "." left out, as the store does). */
export async function filesUnder(folder: string): Promise<Map<string, Uint8Array>> {
  const result = new Map<string, Uint8Array>();
  const walk = async (dir: string, prefix: string) => {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.name.startsWith(".")) continue;
      if (entry.isDirectory) await walk(`${dir}/${entry.name}`, `${prefix}${entry.name}/`);
      else result.set(`${prefix}${entry.name}`, await Deno.readFile(`${dir}/${entry.name}`));
    }
  };
  await walk(folder, "");
  return result;
}

/** Runs a command, throwing with its output when it fails. */
export async function sh(command: string, args: string[], cwd?: string): Promise<void> {
  const output = await new Deno.Command(command, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  if (!output.success) {
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    throw new Error(`${command} ${args.join(" ")} failed: ${decode(output.stdout)}${decode(output.stderr)}`);
  }
}
