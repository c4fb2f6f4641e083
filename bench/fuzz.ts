/**
 * `deno task fuzz`: the parsers at scale. Runs a million inputs (by default) through every fuzz target of
 * tests/e2e/_fuzz.ts (the Part 10 reader, Part10Check, File Meta, DICOM JSON, multipart, Accept, QIDO, the
 * DIMSE PDU, command and identifier parsers, proxy headers and rendered parameters; `--targets http` adds the
 * whole handler), each target in its own Worker under a watchdog, two at a time (one per core), and prints per
 * target: inputs run, crashes (errors that are not the parser's typed ones, or a broken invariant), hangs (an
 * input over `--per-input-ms` that also runs over ten times that alone), slow inputs (over the deadline once,
 * finished alone: a busy machine), the worker's peak heap, the process RSS while it ran and inputs per
 * second; then the process's peak RSS (VmHWM). Exits 1 on any crash or hang, or when the peak RSS passes
 * `--max-rss-mb`.
 *
 * ```sh
 * deno task fuzz                                   # 1,000,000 inputs, at most 30 minutes, a random seed
 * deno task fuzz --inputs 200000 --seed 7 --targets part10,qido --minutes 5
 * deno task fuzz --replay .artifacts/fuzz/part10-seed7-input12345.bin   # run one saved input again
 * ```
 *
 * The inputs are split evenly over the targets; a target that cannot run its share in its part of the time
 * stops at its deadline, and the table says so. Each crashing or hanging input is written to `--out`
 * (default `.artifacts/fuzz/`, the only folder the task may write) as `{target}-seed{seed}-input{index}.bin`
 * with a `.txt` beside it (error, stack, how to replay): input N of a seed is the same bytes on every machine,
 * and `--replay` runs it with the same random choices (chunk sizes, options) as the run did.
 *
 * Why here: bench/ holds the long runs that print figures (and `deno task check` type-checks it); the targets,
 * the mutation engine and the watchdog stay in tests/e2e/_fuzz.ts, shared with the short run in CI
 * (tests/e2e/fuzz_test.ts), so a parser added there is fuzzed by both.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  describeError,
  type FuzzFailure,
  fuzzTarget,
  processPeakRssMb,
  replay,
  TARGET_NAMES,
} from "../tests/e2e/_fuzz.ts";

const MAX_MINUTES = 30;
/** The parsers; `http` (the whole handler) is left out of the default set but may be named. */
const DEFAULT_TARGETS = TARGET_NAMES.filter((name) => name !== "http");

interface TargetResult {
  name: string;
  inputs: number;
  quota: number;
  crashes: number;
  hangs: number;
  slow: number;
  heapMb: number;
  rssMb: number;
  seconds: number;
  files: string[];
}

function usage(message?: string): never {
  if (message) console.error(message);
  console.error(
    "Usage: deno task fuzz [--inputs N] [--minutes M (≤ 30)] [--seed S] [--targets a,b] [--jobs J]\n" +
      "                      [--per-input-ms MS] [--max-rss-mb MB] [--out DIR]\n" +
      "       deno task fuzz --replay FILE\n" +
      `Targets: ${TARGET_NAMES.join(", ")}`,
  );
  Deno.exit(2);
}

function whole(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value.replaceAll("_", "").replaceAll(",", ""));
  if (!Number.isSafeInteger(n) || n < 0) usage(`--${name} ${value}: use a whole number`);
  return n;
}

async function save(
  out: string,
  target: string,
  seed: number,
  index: number,
  input: Uint8Array,
  what: string,
): Promise<string> {
  await Deno.mkdir(out, { recursive: true });
  const base = `${out}/${target}-seed${seed}-input${index}`;
  await Deno.writeFile(`${base}.bin`, input);
  await Deno.writeTextFile(
    `${base}.txt`,
    `target ${target}, seed ${seed}, input ${index} (${input.length} bytes)\n\n${what}\n\n` +
      `Replay: deno task fuzz --replay ${base}.bin\n`,
  );
  return `${base}.bin`;
}

async function runReplay(file: string): Promise<number> {
  const match = /([a-z0-9]+)-seed(\d+)-input(\d+)\.bin$/.exec(file);
  if (!match) usage(`--replay ${file}: the name must be {target}-seed{seed}-input{index}.bin`);
  const [, target, seed, index] = match;
  const input = await Deno.readFile(file);
  console.log(`Replaying ${file}: target ${target}, seed ${seed}, input ${index}, ${input.length} bytes`);
  const error = await replay(target, Number(seed), Number(index), input);
  if (error === undefined) {
    console.log("No crash: the target threw nothing, or only its typed errors");
    return 0;
  }
  console.log(`Crash: ${describeError(error)}`);
  console.log((error as Error)?.stack ?? "");
  return 1;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      inputs: { type: "string" },
      minutes: { type: "string" },
      seed: { type: "string" },
      targets: { type: "string" },
      jobs: { type: "string" },
      "per-input-ms": { type: "string" },
      "max-rss-mb": { type: "string" },
      out: { type: "string" },
      replay: { type: "string" },
      help: { type: "boolean" },
    },
  });
  if (values.help) usage();
  if (values.replay) return await runReplay(values.replay);

  const inputs = whole(values.inputs, "inputs", 1_000_000);
  const minutes = Number(values.minutes ?? MAX_MINUTES);
  if (!(minutes > 0 && minutes <= MAX_MINUTES)) {
    usage(`--minutes ${values.minutes}: use more than 0, at most 30`);
  }
  const seed = whole(values.seed, "seed", Math.floor(Math.random() * 2 ** 31));
  const jobs = Math.max(1, whole(values.jobs, "jobs", navigator.hardwareConcurrency || 2));
  const perInputMs = whole(values["per-input-ms"], "per-input-ms", 2000);
  const maxRssMb = whole(values["max-rss-mb"], "max-rss-mb", 2048);
  const out = values.out ?? ".artifacts/fuzz";
  const targets = values.targets ? values.targets.split(",").map((t) => t.trim()) : DEFAULT_TARGETS;
  for (const t of targets) if (!TARGET_NAMES.includes(t)) usage(`No fuzz target ${t}`);

  const quota = Math.ceil(inputs / targets.length);
  const started = performance.now();
  const deadline = started + minutes * 60_000;
  console.log(
    `fuzz: ${inputs.toLocaleString("en")} inputs over ${targets.length} targets (${
      quota.toLocaleString("en")
    } each), ` +
      `seed ${seed}, ${jobs} at a time, ${perInputMs} ms per input at most, ${minutes} min at most`,
  );

  // The Part 10 targets last: the time the quick ones leave over is theirs.
  const heavy = ["part10", "part10check", "dicomjson", "http"];
  const queue = [...targets].sort((a, b) => Number(heavy.includes(a)) - Number(heavy.includes(b)));
  const results: TargetResult[] = [];
  const runTarget = async (name: string): Promise<TargetResult> => {
    // This target's share of the time left: what remains, spread over the targets not finished yet.
    const waiting = queue.length + 1;
    const seconds = (deadline - performance.now()) / 1000 * Math.min(1, jobs / waiting);
    const report = await fuzzTarget(name, { seed, seconds, perInputMs, maxInputs: quota });
    const result: TargetResult = {
      name,
      inputs: report.inputs,
      quota,
      crashes: report.failureCount,
      hangs: report.hangs.length,
      slow: report.slow.length,
      heapMb: report.peakHeapMb,
      rssMb: report.peakRssMb,
      seconds: report.seconds,
      files: [],
    };
    for (const failure of report.failures) await recordCrash(result, failure);
    for (const hang of report.hangs) {
      const file = await save(
        out,
        name,
        seed,
        hang.index,
        hang.input,
        `Hang: still running after ${hang.ms} ms`,
      );
      result.files.push(file);
      console.log(`  ${name}: input ${hang.index} hung (${hang.ms} ms) → ${file}`);
    }
    for (const slow of report.slow) {
      console.log(
        `  ${name}: input ${slow.index} ran over ${perInputMs} ms (${slow.ms} ms), then finished alone`,
      );
    }
    const rate = result.seconds > 0 ? Math.round(result.inputs / result.seconds) : 0;
    console.log(
      `  ${name}: ${result.inputs.toLocaleString("en")} inputs in ${result.seconds} s (${rate}/s), ` +
        `${result.crashes} crashes, ${result.hangs} hangs, peak heap ${result.heapMb} MiB`,
    );
    return result;
  };
  const recordCrash = async (result: TargetResult, failure: FuzzFailure) => {
    if (failure.index < 0) return console.log(`  ${result.name}: ${failure.error}`); // no input: setup failed
    const file = await save(out, result.name, seed, failure.index, failure.input, failure.error);
    result.files.push(file);
    console.log(
      `  ${result.name}: input ${failure.index} crashed: ${failure.error.split("\n")[0]} → ${file}`,
    );
  };
  await Promise.all(
    Array.from({ length: Math.min(jobs, targets.length) }, async () => {
      for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
        results.push(await runTarget(name));
      }
    }),
  );

  const wall = (performance.now() - started) / 1000;
  const peakRss = processPeakRssMb();
  results.sort((a, b) => targets.indexOf(a.name) - targets.indexOf(b.name));
  const rows = results.map((r) => [
    r.name,
    r.inputs.toLocaleString("en"),
    String(r.crashes),
    String(r.hangs),
    String(r.slow),
    String(r.heapMb),
    String(r.rssMb),
    r.seconds > 0 ? Math.round(r.inputs / r.seconds).toLocaleString("en") : "-",
    r.inputs < r.quota ? `short of ${r.quota.toLocaleString("en")}` : "",
  ]);
  const total = results.reduce((n, r) => n + r.inputs, 0);
  const crashes = results.reduce((n, r) => n + r.crashes, 0);
  const hangs = results.reduce((n, r) => n + r.hangs, 0);
  rows.push([
    "total",
    total.toLocaleString("en"),
    String(crashes),
    String(hangs),
    String(results.reduce((n, r) => n + r.slow, 0)),
    "",
    String(peakRss),
    Math.round(total / wall).toLocaleString("en"),
    "",
  ]);
  const head = ["target", "inputs", "crashes", "hangs", "slow", "heap MiB", "RSS MiB", "inputs/s", ""];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 || i === 8 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ")
      .trimEnd();
  console.log();
  console.log(line(head));
  for (const row of rows) console.log(line(row));
  console.log(
    `\nseed ${seed}; ${total.toLocaleString("en")} inputs in ${Math.round(wall)} s wall; ` +
      `process peak RSS (VmHWM) ${peakRss} MiB (limit ${maxRssMb}); ` +
      `slow: over the deadline once, finished when run again alone (not a failure); heap: the worker isolate's peak; RSS: the whole process's while the target ran`,
  );
  const files = results.flatMap((r) => r.files);
  if (files.length) console.log(`Inputs saved for replay:\n  ${files.join("\n  ")}`);
  const short = results.filter((r) => r.inputs < r.quota);
  if (short.length) {
    console.log(`Short of their share in the time: ${short.map((r) => r.name).join(", ")} (raise --minutes)`);
  }
  const ok = crashes === 0 && hangs === 0 && peakRss <= maxRssMb;
  console.log(ok ? "OK: 0 crashes, 0 hangs, memory bounded" : "FAILED");
  return ok ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
