/**
 * A small fuzz harness: seeded, reproducible, bounded in time, each input under a deadline.
 *
 * {@linkcode fuzz} runs one target in a Worker that generates inputs from seeds with a PRNG derived from
 * (seed, target, index), so input N can be rebuilt alone ({@linkcode inputAt}). The main thread watches a
 * shared progress counter: an input that runs longer than `perInputMs` (an endless loop in synchronous code
 * included) is a hang, and the worker is terminated. Every thrown error must be one of the target's expected
 * kinds (SyntaxError, RangeError, HttpError 4xx, ...); anything else is a failure, reported with the index
 * and the input's first bytes.
 *
 * Reproduce with `FUZZ_SEED=<seed> FUZZ_SECONDS=<s> deno test -P=test tests/e2e/fuzz_test.ts`.
 *
 * This file is both the harness (imported by tests) and the worker (loaded by {@linkcode fuzz}).
 *
 * @module
 */

import { buildInstance, builtCorpus } from "../_corpus.ts";
import { concatBytes } from "../../lib/util/bytes.ts";

// ---------------------------------------------------------------------------------------------------
// PRNG and mutations

/** sfc32: small, fast, good enough for fuzzing, and the same everywhere. */
export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d: number;
  constructor(...seeds: number[]) {
    let h = 0x811c9dc5;
    const mix = (n: number) => {
      h = Math.imul(h ^ (n >>> 0), 0x01000193) >>> 0;
      h ^= h >>> 15;
      return h;
    };
    for (const s of seeds) mix(s);
    this.#a = mix(1);
    this.#b = mix(2);
    this.#c = mix(3);
    this.#d = mix(4);
    for (let i = 0; i < 12; i++) this.next();
  }
  /** A uint32. */
  next(): number {
    const t = (((this.#a + this.#b) >>> 0) + this.#d) >>> 0;
    this.#d = (this.#d + 1) >>> 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) >>> 0;
    this.#c = ((this.#c << 21) | (this.#c >>> 11)) >>> 0;
    this.#c = (this.#c + t) >>> 0;
    return t;
  }
  /** 0..n-1 */
  int(n: number): number {
    return n <= 0 ? 0 : this.next() % n;
  }
  chance(p: number): boolean {
    return this.next() / 0x100000000 < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

const INTERESTING_32 = [
  0,
  1,
  2,
  4,
  7,
  8,
  0x7f,
  0x80,
  0xff,
  0x100,
  0x7fff,
  0x8000,
  0xffff,
  0x10000,
  0x7fffffff,
  0x80000000,
  0xfffffffe,
  0xffffffff,
];
const DICOM_TOKENS = [
  [0xfe, 0xff, 0x00, 0xe0], // item
  [0xfe, 0xff, 0x0d, 0xe0], // item delimiter
  [0xfe, 0xff, 0xdd, 0xe0], // sequence delimiter
  [0xff, 0xff, 0xff, 0xff], // undefined length
  [0xe0, 0x7f, 0x10, 0x00], // pixel data tag
  [0x02, 0x00, 0x10, 0x00], // transfer syntax tag
  [0x44, 0x49, 0x43, 0x4d], // DICM
  ..."OB OW SQ UN UT UI PN LO SH AT FD SV OV".split(" ").map((vr) => [vr.charCodeAt(0), vr.charCodeAt(1)]),
  [...new TextEncoder().encode("1.2.840.10008.1.2.1.99")], // deflated
  [...new TextEncoder().encode("1.2.840.10008.1.2.2\0")], // big endian
];

/** Applies 1–6 random mutations to a copy of `input` (and sometimes splices in another seed). */
export function mutate(
  rng: Rng,
  input: Uint8Array,
  seeds: readonly Uint8Array[],
  tokens: number[][],
  maxLength: number,
): Uint8Array {
  let out: Uint8Array = input.slice();
  const rounds = 1 + rng.int(6);
  for (let r = 0; r < rounds; r++) {
    const at = rng.int(out.length + 1);
    switch (rng.int(11)) {
      case 0: // flip a bit
        if (out.length) out[rng.int(out.length)] ^= 1 << rng.int(8);
        break;
      case 1: // random byte
        if (out.length) out[rng.int(out.length)] = rng.int(256);
        break;
      case 2: { // interesting 16/32-bit value (lengths!)
        if (out.length < 4) break;
        const p = rng.int(out.length - 3);
        const v = rng.pick(INTERESTING_32);
        const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
        if (rng.chance(0.5)) view.setUint32(p, v, rng.chance(0.8));
        else view.setUint16(p, v & 0xffff, rng.chance(0.8));
        break;
      }
      case 3: { // insert random bytes
        const n = 1 + rng.int(rng.chance(0.9) ? 16 : 4096);
        const bytes = new Uint8Array(n);
        for (let i = 0; i < n; i++) bytes[i] = rng.int(256);
        out = concatBytes([out.subarray(0, at), bytes, out.subarray(at)]);
        break;
      }
      case 4: { // delete a range
        const n = 1 + rng.int(Math.min(out.length, rng.chance(0.8) ? 16 : 65536) || 1);
        out = concatBytes([out.subarray(0, at), out.subarray(Math.min(out.length, at + n))]);
        break;
      }
      case 5: { // duplicate a range
        if (!out.length) break;
        const start = rng.int(out.length);
        const n = 1 + rng.int(Math.min(512, out.length - start));
        out = concatBytes([out.subarray(0, at), out.subarray(start, start + n), out.subarray(at)]);
        break;
      }
      case 6: // truncate
        out = out.slice(0, rng.int(out.length + 1));
        break;
      case 7: { // splice another seed
        const other = rng.pick(seeds);
        const from = rng.int(other.length + 1);
        out = concatBytes([out.subarray(0, at), other.subarray(from, from + rng.int(4096))]);
        break;
      }
      case 8:
      case 9: { // overwrite or insert a token
        if (!tokens.length) break;
        const token = Uint8Array.from(rng.pick(tokens));
        if (rng.chance(0.5) && out.length >= token.length) {
          out.set(token, rng.int(out.length - token.length + 1));
        } else out = concatBytes([out.subarray(0, at), token, out.subarray(at)]);
        break;
      }
      case 10: { // repeat a short run many times (long values, deep nesting)
        if (!out.length) break;
        const start = rng.int(out.length);
        const run = out.subarray(start, start + 1 + rng.int(12));
        const times = 2 + rng.int(rng.chance(0.9) ? 64 : 20000);
        const chunks = new Array(times).fill(run);
        out = concatBytes([out.subarray(0, at), ...chunks, out.subarray(at)]);
        break;
      }
    }
    if (out.length > maxLength) out = out.slice(0, maxLength);
  }
  return out;
}

const latin1 = new TextDecoder("latin1");
const encoder = new TextEncoder();
function toBytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
}
function tokenBytes(words: string[]): number[][] {
  return words.map((w) => [...encoder.encode(w)]);
}

// ---------------------------------------------------------------------------------------------------
// Targets

/** What a target does with one input; throws to report an error (checked against `expected`). */
export interface Target {
  /** Seeds (made once per worker). */
  seeds(): Promise<Uint8Array[]>;
  tokens: number[][];
  maxLength: number;
  /** Runs one input; may throw only errors that `expected` accepts. */
  run(input: Uint8Array, rng: Rng): Promise<void> | void;
  expected(error: unknown): boolean;
}

function isClientError(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { name?: string }).name === "HttpError" &&
    (error as { status: number }).status >= 400 && (error as { status: number }).status < 500;
}

function standard(error: unknown): boolean {
  return error instanceof SyntaxError || error instanceof RangeError || isClientError(error) ||
    (error instanceof Error && error.name === "NotAcceptableError");
}

async function corpusFiles(): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for await (const entry of Deno.readDir(new URL("../testdata/pydicom/files/", import.meta.url))) {
    if (entry.isFile && entry.name.endsWith(".dcm")) {
      out.push(await Deno.readFile(new URL(`../testdata/pydicom/files/${entry.name}`, import.meta.url)));
    }
  }
  return out.sort((a, b) => a.length - b.length || a[200] - b[200]);
}

function chunked(bytes: Uint8Array, rng: Rng): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
      const n = 1 + rng.int(rng.chance(0.3) ? 8 : 8192);
      controller.enqueue(bytes.slice(at, at + n));
      at += n;
    },
  });
}

const TARGETS: Record<string, () => Promise<Target>> = {
  /** lib/dicom/part10.ts parseBuffer + readHeader (ranged reads), lib/dicom/file_meta.ts readFileMeta, lib/dicom/part10_check.ts Part10Check. */
  async part10() {
    const { parseBuffer, readHeader } = await import("../../lib/dicom/part10.ts");
    const { readFileMeta } = await import("../../lib/dicom/file_meta.ts");
    const { Part10Check } = await import("../../lib/dicom/part10_check.ts");
    return {
      seeds: async () => [
        ...await corpusFiles(),
        ...builtCorpus().slice(0, 4).map((f) => f.bytes),
        buildInstance({ study: "1.2", series: "1.2.3", sop: "1.2.3.4", frames: 3, pixelBytes: 64 }),
      ],
      tokens: DICOM_TOKENS,
      maxLength: 512 * 1024,
      async run(input, rng) {
        let header;
        try {
          header = parseBuffer(input, "fuzz.dcm", { bulkThreshold: rng.pick([0, 64, 1024]) });
        } catch (error) {
          if (!standard(error)) throw error;
        }
        const source = {
          name: "fuzz.dcm",
          size: input.length,
          read: (s: number, e: number) => Promise.resolve(input.slice(s, e)),
        };
        try {
          await readHeader(source, {
            initialBytes: rng.pick([256, 1024, 65536]),
            maxInflatedBytes: 16 * 1024 * 1024,
          });
        } catch (error) {
          if (!standard(error)) throw error;
        }
        try {
          readFileMeta(input.subarray(0, rng.int(input.length + 1)), "fuzz.dcm", rng.chance(0.5));
        } catch (error) {
          if (!standard(error)) throw error;
        }
        const check = new Part10Check(
          header ?? { explicit: rng.chance(0.5), little: rng.chance(0.9) },
          "fuzz.dcm",
          header ? {} : { start: 0 },
        );
        const body = input.subarray(header ? header.datasetOffset : 0);
        for (let at = 0; at < body.length;) {
          const n = 1 + rng.int(4096);
          check.push(body.subarray(at, at + n));
          at += n;
        }
        check.finish();
      },
      expected: standard,
    };
  },

  /** lib/http/multipart_parser.ts readMultipart (random chunking) and parseMediaType. */
  async multipart() {
    const { readMultipart, parseMediaType } = await import("../../lib/http/multipart_parser.ts");
    const boundary = "fuzz-b0undary";
    const part = (type: string, body: Uint8Array) =>
      concatBytes([
        encoder.encode(`--${boundary}\r\nContent-Type: ${type}\r\n\r\n`),
        body,
        encoder.encode("\r\n"),
      ]);
    const dicom = buildInstance({ study: "1.2", series: "1.2.3", sop: "1.2.3.4", pixelBytes: 200 });
    return {
      seeds: () =>
        Promise.resolve([
          concatBytes([part("application/dicom", dicom), encoder.encode(`--${boundary}--\r\n`)]),
          concatBytes([
            encoder.encode("preamble\r\n"),
            part("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", dicom),
            part("text/plain", encoder.encode("--fuzz-b0undar")),
            encoder.encode(`--${boundary}--epilogue`),
          ]),
          concatBytes([part("application/dicom", new Uint8Array(0)), encoder.encode(`--${boundary}--`)]),
          encoder.encode(`--${boundary}\r\n\r\n\r\n--${boundary}--\r\n`),
        ]),
      tokens: tokenBytes([
        `\r\n--${boundary}`,
        `--${boundary}--`,
        "\r\n",
        "\r\n\r\n",
        "Content-Type: ",
        ": ",
        "\n",
        "--",
        "\r",
      ]),
      maxLength: 256 * 1024,
      async run(input, rng) {
        const text = latin1.decode(input.subarray(0, 200));
        try {
          parseMediaType(`multipart/related; type="application/dicom"; boundary=${text}`);
          parseMediaType(text);
        } catch (error) {
          if (!standard(error)) throw error;
        }
        const b = rng.chance(0.9) ? boundary : latin1.decode(input.subarray(0, rng.int(80)));
        let total = 0;
        for await (
          const p of readMultipart(chunked(input, rng), b, { maxHeaderBytes: rng.pick([64, 1024, 16384]) })
        ) {
          if (rng.chance(0.2)) await p.body.cancel();
          else for await (const chunk of p.body) total += chunk.byteLength;
          if (p.index > 100_000) throw new Error("unbounded part count");
        }
        if (total > input.length) throw new Error(`more body bytes (${total}) than input (${input.length})`);
      },
      expected: standard,
    };
  },

  /** lib/http/negotiation.ts parseAccept/negotiateDicom, lib/dicomweb/frames_bulkdata.ts negotiateFrames/parseFrameList/parseRange. */
  async accept() {
    const { parseAccept, rankRanges, negotiateDicom } = await import("../../lib/http/negotiation.ts");
    const { negotiateFrames, parseFrameList, parseRange } = await import(
      "../../lib/dicomweb/frames_bulkdata.ts"
    );
    const seeds = [
      'multipart/related; type="application/dicom"; transfer-syntax=*',
      "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1, application/dicom;q=0.5",
      'multipart/related; type="application/octet-stream"; transfer-syntax=*',
      'multipart/related; type="*/*", */*;q=0.1, image/jpeg;q=0.9',
      "application/dicom+json, application/json;q=0.9",
      "image/jls, image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90;q=0.8",
      "1,2,3,10",
      "bytes=0-1023",
      "bytes=-500",
      "",
    ];
    const syntaxes = [
      "1.2.840.10008.1.2.1",
      "1.2.840.10008.1.2.4.50",
      "1.2.840.10008.1.2.5",
      "1.2.840.10008.1.2.4.90",
    ];
    const types = ["application/octet-stream", "image/jpeg", "image/dicom-rle", "image/jp2"];
    return {
      seeds: () => Promise.resolve(seeds.map(toBytes)),
      tokens: tokenBytes([
        ";",
        ",",
        "=",
        '"',
        "*",
        "/",
        "q=",
        "q=0.",
        "type=",
        "transfer-syntax=",
        "multipart/related",
        "application/dicom",
        "\t",
        " ",
        "\\",
        "-",
        "1",
        "0",
      ]),
      maxLength: 8 * 1024,
      run(input, rng) {
        const text = latin1.decode(input);
        const attempts: (() => unknown)[] = [
          () => rankRanges(parseAccept(text)),
          () => negotiateDicom(text, { single: rng.chance(0.5) }),
          () =>
            negotiateFrames(
              text,
              { transferSyntax: rng.pick(syntaxes), mediaType: rng.pick(types) },
              rng.chance(0.5),
            ),
          () => parseFrameList(text),
          () => parseRange(text, rng.pick([0, 1, 1000, 2 ** 40])),
        ];
        for (const attempt of attempts) {
          try {
            attempt();
          } catch (error) {
            if (!standard(error)) throw error;
          }
        }
      },
      expected: standard,
    };
  },

  /**
   * The whole handler over a memory store: mutated paths, QIDO-RS queries, Accept headers and STOW-RS
   * bodies. Never a 5xx, never a throw, and nothing stored under a key that is not `{uid}/{uid}/{uid}.dcm`.
   */
  async http() {
    const { testHandler, memoryCatalog } = await import("../_server.ts");
    const { MemoryStore } = await import("../../lib/store/memory_store.ts");
    const store = new MemoryStore(["pacs"]);
    const corpus = builtCorpus();
    for (const f of corpus) await store.put("pacs", f.key, f.bytes);
    const { handler } = testHandler({
      store,
      config: { AETS: "PACS=pacs", STOW_MAX_BYTES: String(1 << 20), CRAWL_INTERVAL: "0" },
      capabilities: { reEncode: true },
      catalog: await memoryCatalog(),
      handler: { log: () => {} },
    });
    const [study, series, sop] = corpus[0].key.slice(0, -4).split("/");
    const requests = [
      `GET /aets/PACS/studies/${study}/series/${series}/instances/${sop}\naccept: multipart/related; type="application/dicom"; transfer-syntax=*`,
      `GET /aets/PACS/studies/${study}/metadata\naccept: application/dicom+json`,
      `GET /aets/PACS/studies/${study}/series/${series}/instances/${sop}/frames/1\naccept: multipart/related; type="application/octet-stream"; transfer-syntax=*`,
      `GET /aets/PACS/studies/${study}/series/${series}/instances/${sop}/bulkdata/7FE00010\naccept: application/octet-stream\nrange: bytes=0-99`,
      "GET /aets/PACS/studies?PatientName=*BRA*&StudyDate=20240101-20241231&limit=101&offset=0&fuzzymatching=true&includefield=00081030,00080060\naccept: application/dicom+json",
      `GET /aets/PACS/studies/${study}/series?Modality=CT&includefield=00080021,00080031,0008103E,00200011`,
      `GET /aets/PACS/instances?SOPInstanceUID=${sop},1.2.3&00100020=&limit=5`,
      "GET /aets/PACS/series?SeriesInstanceUID=1.2.3.4.5&PerformedProcedureStepStartDate=-20240101&offset=10",
      `POST /aets/PACS/studies\ncontent-type: multipart/related; type="application/dicom"; boundary=b\n\n--b\r\nContent-Type: application/dicom\r\n\r\n${
        latin1.decode(corpus[0].bytes)
      }\r\n--b--\r\n`,
      `GET /aets/${"..%2F".repeat(3)}etc/studies/1.2.3/series/%2e%2e/instances/1.2%00.3`,
    ];
    return {
      seeds: () => Promise.resolve(requests.map(toBytes)),
      tokens: tokenBytes([
        "/",
        "%2F",
        "%2f",
        "%2e%2e",
        "..",
        "%00",
        "?",
        "&",
        "=",
        "*",
        ",",
        "-",
        "\\",
        "%",
        "%25",
        "includefield=all",
        "limit=",
        "offset=-1",
        "StudyInstanceUID=",
        "00100010=",
        ";",
        "\n",
        "accept: ",
        "--b",
        "\r\n",
      ]),
      maxLength: 64 * 1024,
      async run(input) {
        const text = latin1.decode(input);
        const blank = text.indexOf("\n\n");
        const head = blank < 0 ? text : text.slice(0, blank);
        const body = blank < 0 ? undefined : input.slice(blank + 2);
        const [requestLine, ...headerLines] = head.split("\n");
        const space = requestLine.indexOf(" ");
        const method = ["GET", "HEAD", "POST", "OPTIONS", "DELETE"].includes(requestLine.slice(0, space))
          ? requestLine.slice(0, space)
          : "GET";
        const target = requestLine.slice(space + 1).replace(/[\s\0]/g, "");
        let request: Request;
        try {
          const headers = new Headers();
          for (const line of headerLines) {
            const colon = line.indexOf(":");
            if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
          }
          request = new Request(
            new URL(target.startsWith("/") ? target : "/" + target, "http://127.0.0.1:8080"),
            {
              method,
              headers,
              body: method === "POST" || method === "DELETE" ? body : undefined,
            },
          );
        } catch {
          return; // not a request HTTP could carry
        }
        const response = await handler(request);
        await response.arrayBuffer().catch((error) => {
          if (response.status < 300) return; // a streamed failure after the head is the documented behaviour
          throw error;
        });
        if (response.status >= 500) {
          const problem = new Error(`${method} ${target.slice(0, 120)} answered ${response.status}`);
          problem.name = "ServerError";
          throw problem;
        }
        for await (const info of store.list("pacs", "")) {
          if (!/^[0-9.]{1,64}\/[0-9.]{1,64}\/[0-9.]{1,64}\.dcm$/.test(info.key)) {
            throw new Error(`Stored under an unexpected key: ${JSON.stringify(info.key)}`);
          }
        }
      },
      expected: () => false,
    };
  },
};

/** The harness's own check: input 3 throws a TypeError (unexpected), input 5 never returns (a hang). */
TARGETS.selftest = () =>
  Promise.resolve({
    seeds: () => Promise.resolve([new Uint8Array([1])]),
    tokens: [],
    maxLength: 16,
    run(_input: Uint8Array, _rng: Rng) {
      const index = Atomics.load(new Int32Array(selftestProgress ?? new SharedArrayBuffer(8)), 0);
      if (index === 2) throw new SyntaxError("expected kind");
      if (index === 3) throw new TypeError("unexpected kind");
      if (index === 5) { for (;;); }
    },
    expected: standard,
  });
let selftestProgress: SharedArrayBuffer | undefined;

/** The target names (without the harness self-test). */
export const TARGET_NAMES = Object.keys(TARGETS).filter((name) => name !== "selftest");

// ---------------------------------------------------------------------------------------------------
// Harness (main thread)

/** One failure. */
export interface FuzzFailure {
  index: number;
  error: string;
  /** The input's first 256 bytes, base64. */
  preview: string;
  length: number;
}

/** What a run of one target did. */
export interface FuzzReport {
  target: string;
  seed: number;
  tried: number;
  seeds: number;
  failures: FuzzFailure[];
  /** An input that did not finish within `perInputMs`. */
  hang?: { index: number; ms: number };
  /** Highest RSS seen during the run, MiB. */
  peakRssMb: number;
  seconds: number;
}

/** Options for {@linkcode fuzz}. */
export interface FuzzOptions {
  seed: number;
  /** Time budget. */
  seconds: number;
  /** Deadline of one input. */
  perInputMs: number;
  /** Stop after this many inputs even if time is left. */
  maxInputs?: number;
}

function generate(
  target: Target,
  seeds: readonly Uint8Array[],
  name: string,
  seed: number,
  index: number,
): { input: Uint8Array; rng: Rng } {
  const rng = new Rng(seed, hashString(name), index);
  // A few unmutated seeds first, then mutations of mutations now and then.
  if (index < seeds.length) return { input: seeds[index], rng };
  let input = mutate(rng, rng.pick(seeds), seeds, target.tokens, target.maxLength);
  if (rng.chance(0.2)) input = mutate(rng, input, seeds, target.tokens, target.maxLength);
  return { input, rng };
}

/** Rebuilds input `index` of a run (to debug a reported failure). */
export async function inputAt(name: string, seed: number, index: number): Promise<Uint8Array> {
  const target = await TARGETS[name]();
  return generate(target, await target.seeds(), name, seed, index).input;
}

/** Runs target `name` in a worker for `options.seconds`; resolves with what happened. */
export function fuzz(name: string, options: FuzzOptions): Promise<FuzzReport> {
  if (!(name in TARGETS)) throw new RangeError(`No fuzz target ${name}: use ${TARGET_NAMES.join(", ")}`);
  const shared = new SharedArrayBuffer(8);
  const progress = new Int32Array(shared); // [current index (-1 idle), inputs finished]
  progress[0] = -1;
  const worker = new Worker(new URL(import.meta.url).href, { type: "module", name: `fuzz-${name}` });
  const started = performance.now();
  let peakRss = Deno.memoryUsage().rss;
  return new Promise<FuzzReport>((resolve, reject) => {
    let lastIndex = -2;
    let since = performance.now();
    let ready = false;
    let seedCount = 0;
    const failures: FuzzFailure[] = [];
    const finish = (
      report: Omit<FuzzReport, "target" | "seed" | "peakRssMb" | "seconds" | "seeds" | "failures">,
    ) => {
      clearInterval(watchdog);
      worker.terminate();
      resolve({
        target: name,
        seed: options.seed,
        seeds: seedCount,
        failures,
        ...report,
        peakRssMb: Math.round(peakRss / 1024 / 1024),
        seconds: Math.round((performance.now() - started) / 100) / 10,
      });
    };
    const watchdog = setInterval(() => {
      peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
      if (!ready) {
        if (performance.now() - started > 60_000) {
          clearInterval(watchdog);
          worker.terminate();
          reject(new Error(`fuzz worker for ${name} did not start within 60 s`));
        }
        return;
      }
      const index = Atomics.load(progress, 0);
      if (index !== lastIndex) {
        lastIndex = index;
        since = performance.now();
      } else if (index >= 0 && performance.now() - since > options.perInputMs) {
        finish({
          tried: Atomics.load(progress, 1),
          hang: { index, ms: Math.round(performance.now() - since) },
        });
      }
    }, 25);
    worker.onmessage = (event: MessageEvent) => {
      const message = event.data;
      if (message.type === "ready") {
        ready = true;
        seedCount = message.seeds;
        since = performance.now();
      } else if (message.type === "failure") failures.push(message.failure);
      else if (message.type === "done") finish({ tried: message.tried });
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      failures.push({
        index: Atomics.load(progress, 0),
        error: `worker crashed: ${event.message}`,
        preview: "",
        length: 0,
      });
      finish({ tried: Atomics.load(progress, 1) });
    };
    worker.postMessage({ name, shared, ...options });
  });
}

// ---------------------------------------------------------------------------------------------------
// Worker side

interface WorkerScope {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
}

function describeError(error: unknown): string {
  if (error instanceof Error) {
    return `${error.name}: ${error.message.slice(0, 300)}\n${
      (error.stack ?? "").split("\n").slice(1, 6).join("\n")
    }`;
  }
  return String(error);
}

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

async function work(
  scope: WorkerScope,
  data: FuzzOptions & { name: string; shared: SharedArrayBuffer },
): Promise<void> {
  const progress = new Int32Array(data.shared);
  selftestProgress = data.shared;
  const target = await TARGETS[data.name]();
  const seeds = await target.seeds();
  scope.postMessage({ type: "ready", seeds: seeds.length });
  let failures = 0;
  const until = performance.now() + data.seconds * 1000;
  const maxInputs = data.maxInputs ?? Number.MAX_SAFE_INTEGER;
  let index = 0;
  for (; index < maxInputs && performance.now() < until; index++) {
    const { input, rng } = generate(target, seeds, data.name, data.seed, index);
    Atomics.store(progress, 0, index);
    try {
      await target.run(input, rng);
    } catch (error) {
      if (!target.expected(error) && failures++ < 20) {
        const failure: FuzzFailure = {
          index,
          error: describeError(error),
          preview: toBase64(input.subarray(0, 256)),
          length: input.length,
        };
        scope.postMessage({ type: "failure", failure });
      }
    }
    Atomics.store(progress, 1, index + 1);
  }
  Atomics.store(progress, 0, -1);
  scope.postMessage({ type: "done", tried: index });
}

const workerScope = globalThis as unknown as WorkerScope & { WorkerGlobalScope?: unknown };
if (
  typeof workerScope.WorkerGlobalScope !== "undefined" &&
  globalThis instanceof (workerScope.WorkerGlobalScope as typeof Object)
) {
  workerScope.onmessage = (event: MessageEvent) => {
    work(workerScope, event.data).catch((error) => {
      workerScope.postMessage({
        type: "failure",
        failure: { index: -1, error: `setup failed: ${describeError(error)}`, preview: "", length: 0 },
      });
      workerScope.postMessage({ type: "done", tried: 0 });
    });
  };
}
