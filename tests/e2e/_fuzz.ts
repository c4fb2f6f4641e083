/**
 * The fuzz harness: seeded, reproducible, bounded in time and inputs, each input under a deadline.
 *
 * {@linkcode fuzz} runs one target in a Worker that generates inputs from seeds with a PRNG derived from
 * (seed, target, index), so input N can be rebuilt alone ({@linkcode inputAt}) and run again alone
 * ({@linkcode replay}). The main thread watches a shared progress counter: an input that runs longer than
 * `perInputMs` (an endless loop in synchronous code included) is a hang, and the worker is terminated without
 * the parser's help. Every error a parser throws must be one of the project's typed errors
 * ({@linkcode isTypedError}: `MalformedError`, `OutOfRangeError`, the `DomainError`s of lib/util/errors.ts, an
 * `HttpError` 4xx); anything else (a plain `RangeError`, `TypeError`, `Error`, a stack overflow) is a crash,
 * reported with its index, stack and the whole input.
 *
 * Two entry points use it: tests/e2e/fuzz_test.ts (the short run in CI, every target for a few seconds) and
 * bench/fuzz.ts (`deno task fuzz`: a million inputs, a table per parser, crashing inputs written to files).
 * A new parser gets fuzzed by adding a target to `TARGETS` below: both pick it up.
 *
 * This file is both the harness (imported by those two) and the worker (loaded by {@linkcode fuzz}).
 *
 * @module
 */

import process from "node:process";
import { buildInstance, builtCorpus } from "../_corpus.ts";
import { concatBytes } from "../../lib/util/bytes.ts";
import { DomainError, MalformedError, OutOfRangeError } from "../../lib/util/errors.ts";

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
const utf8 = new TextDecoder();
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

/**
 * Whether `error` is one a parser documents: a `MalformedError` (bad input), an `OutOfRangeError` (a value out
 * of bounds), another typed error of lib/util/errors.ts (`NotAcceptableError`, `TooLargeError`, ...) or an
 * `HttpError` with a 4xx status. Plain `SyntaxError`, `RangeError` and `TypeError` are the engine's or a bug's.
 */
export function isTypedError(error: unknown): boolean {
  if (error instanceof MalformedError || error instanceof OutOfRangeError || error instanceof DomainError) {
    return true;
  }
  // lib/http/errors.ts HttpError, told by name: importing it would load the store layer into every worker
  const status = (error as { status?: unknown })?.status;
  return error instanceof Error && error.name === "HttpError" && typeof status === "number" &&
    status >= 400 &&
    status < 500;
}

/** Runs `attempt`, letting typed errors pass and rethrowing anything else. */
async function tolerate<T>(attempt: () => T | Promise<T>): Promise<T | undefined> {
  try {
    return await attempt();
  } catch (error) {
    if (!isTypedError(error)) throw error;
    return undefined;
  }
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

async function part10Seeds(): Promise<Uint8Array[]> {
  return [
    ...await corpusFiles(),
    ...builtCorpus().slice(0, 4).map((f) => f.bytes),
    buildInstance({ study: "1.2", series: "1.2.3", sop: "1.2.3.4", frames: 3, pixelBytes: 64 }),
  ];
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

/** Real Accept headers (tests/app/accept_headers_test.ts has where each comes from) and DICOMweb ones. */
const ACCEPT_SEEDS = [
  "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8," +
  "application/signed-exchange;v=b3;q=0.7",
  "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/png,image/svg+xml,*/*;q=0.8",
  "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
  "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
  "*/*",
  "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2",
  "application/json, text/plain, */*",
  "image/jpeg, application/x-ms-application, image/gif, application/xaml+xml, image/pjpeg, */*",
  "application/dicom+json;q=1., */*;q=0.1",
  "image/jpeg;q=0.9, image/png;q=.5, */*;q=.1",
  "multipart/related; type=application/octet-stream; transfer-syntax=*",
  'multipart/related; type="application/dicom"; transfer-syntax=*',
  "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1, application/dicom;q=0.5",
  'multipart/related; type="application/octet-stream"; transfer-syntax=*',
  'multipart/related; type="*/*", */*;q=0.1, image/jpeg;q=0.9',
  "application/dicom+json; charset, */*;q=0.5",
  "image/jls, image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90;q=0.8",
  "1,2,3,10",
  "bytes=0-1023",
  "bytes=-500",
  "",
];

const QIDO_SEEDS = [
  "PatientName=*BRA*&StudyDate=20240101-20241231&limit=101&offset=0&fuzzymatching=true",
  "includefield=00081030,00080060&includefield=all&StudyInstanceUID=1.2.3,1.2.4",
  "Modality=CT&includefield=00080021,00080031,0008103E,00200011",
  "SOPInstanceUID=1.2.3.4&00100020=&limit=5",
  "SeriesInstanceUID=1.2.3.4.5&PerformedProcedureStepStartDate=-20240101&offset=10",
  "StudyTime=101010.123-235959&StudyDate=20240101&ModalitiesInStudy=MR",
  "AcquisitionDateTime=20240101101010.1+0100-&PatientBirthDate=19700101",
  "RequestAttributesSequence.RequestedProcedureID=RP1&ReferencedSeriesSequence=",
  "00081032.00080100=12345&PatientID=%22%22&InstanceNumber=3&SeriesNumber=1",
  "PatientName=DOE%5EJOHN&AccessionNumber=A?C*&Rows=512&limit=0&_=1&accept=application/json",
];
const QIDO_VRS = [
  "PN",
  "DA",
  "TM",
  "DT",
  "UI",
  "CS",
  "LO",
  "SH",
  "IS",
  "DS",
  "US",
  "FD",
  "SQ",
  "UN",
  "AE",
  "UT",
];

const TARGETS: Record<string, () => Promise<Target>> = {
  /** The Part 10 reader: lib/dicom/part10.ts parseBuffer and readHeader (ranged reads of varying sizes). */
  async part10() {
    const { parseBuffer, readHeader } = await import("../../lib/dicom/part10.ts");
    return {
      seeds: part10Seeds,
      tokens: DICOM_TOKENS,
      maxLength: 512 * 1024,
      async run(input, rng) {
        await tolerate(() => parseBuffer(input, "fuzz.dcm", { bulkThreshold: rng.pick([0, 64, 1024]) }));
        const source = {
          name: "fuzz.dcm",
          size: input.length,
          read: (s: number, e: number) => Promise.resolve(input.slice(s, e)),
        };
        await tolerate(() =>
          readHeader(source, { initialBytes: rng.pick([256, 1024, 65536]), maxInflatedBytes: 4 << 20 })
        );
      },
      expected: isTypedError,
    };
  },

  /**
   * lib/dicom/part10_check.ts Part10Check, set up from the File Meta as STOW-RS does: the outcome is the same
   * for random chunks and one chunk, and an object it accepts is one parseBuffer reads (what STOW-RS stores,
   * retrieval can serve).
   */
  async part10check() {
    const { readFileMeta } = await import("../../lib/dicom/file_meta.ts");
    const { Part10Check } = await import("../../lib/dicom/part10_check.ts");
    const { encodingOf, DEFLATED_SYNTAXES: DEFLATED } = await import("../../lib/dicom/transfer_syntax.ts");
    const { parseBuffer } = await import("../../lib/dicom/part10.ts");
    const want = [0x00080016, 0x00080018, 0x0020000d, 0x0020000e];
    return {
      seeds: part10Seeds,
      tokens: DICOM_TOKENS,
      maxLength: 512 * 1024,
      run(input, rng) {
        let meta;
        try {
          meta = readFileMeta(input, "fuzz.dcm", true);
        } catch (error) {
          if (!isTypedError(error)) throw error;
        }
        const asStow = meta !== null && meta !== undefined && rng.chance(0.9);
        const encoding = asStow
          ? encodingOf(meta!.transferSyntaxUid)
          : { explicit: rng.chance(0.5), little: rng.chance(0.8) };
        const start = asStow ? meta!.end : rng.int(Math.min(input.length, 200) + 1);
        const recordFrom = rng.chance(0.2) ? start + rng.int(4096) : undefined;
        const body = input.subarray(start);
        // The same bytes in random chunks and in one: the outcome must not depend on where chunks end.
        const outcome = (chunks: number) => {
          const check = new Part10Check(encoding, "fuzz.dcm", { start, want, recordFrom });
          try {
            for (let at = 0; at < body.length;) {
              const n = chunks ? 1 + rng.int(rng.chance(0.1) ? 16 : 8192) : body.length;
              check.push(body.subarray(at, at + n));
              at += n;
            }
            check.finish();
          } catch (error) {
            if (!isTypedError(error)) throw error;
            return `threw ${(error as Error).message}`;
          }
          return `accepted, values ${[...check.values].map(([t, v]) => `${t}:${v.join(",")}`).join(" ")}, ` +
            `last tag ${check.lastTopTag}, ${check.recorded.size} headers recorded`;
        };
        const chunked = outcome(1);
        const whole = outcome(0);
        if (chunked !== whole) {
          throw new Error(
            `Part10Check differs by chunking: ${chunked.slice(0, 200)} / ${whole.slice(0, 200)}`,
          );
        }
        // What STOW-RS accepts (its File Meta names the syntax, not deflated) must be readable for retrieval.
        if (
          asStow && !meta!.inferred && !DEFLATED.has(meta!.transferSyntaxUid) && whole.startsWith("accepted")
        ) {
          try {
            parseBuffer(input, "fuzz.dcm");
          } catch (error) {
            throw new Error(`Part10Check accepted what parseBuffer refuses: ${(error as Error).message}`);
          }
        }
      },
      expected: isTypedError,
    };
  },

  /**
   * lib/dicom/file_meta.ts: readFileMeta on prefixes (what a prefix tells is what the whole object says),
   * scanFileMeta (implicit VR too), inferSyntax.
   */
  async filemeta() {
    const { readFileMeta, scanFileMeta, inferSyntax } = await import("../../lib/dicom/file_meta.ts");
    return {
      seeds: async () => (await part10Seeds()).map((b) => b.slice(0, 2048)),
      tokens: DICOM_TOKENS,
      maxLength: 16 * 1024,
      async run(input, rng) {
        // STOW-RS labels a part from its first bytes: what a prefix tells must be what the whole object says.
        const whole = await tolerate(() => readFileMeta(input, "fuzz.dcm", true));
        for (const cut of [rng.int(input.length + 1), rng.int(input.length + 1)]) {
          const meta = await tolerate(() => readFileMeta(input.subarray(0, cut), "fuzz.dcm"));
          if (!meta) continue;
          if (meta.end < 0 || meta.end > cut) {
            throw new Error(`File Meta ends at ${meta.end}, outside the ${cut} bytes read`);
          }
          if (JSON.stringify(meta) !== JSON.stringify(whole)) {
            throw new Error(
              `The first ${cut} bytes say ${JSON.stringify(meta)}, the whole object ${JSON.stringify(whole)}`,
            );
          }
        }
        await tolerate(() =>
          scanFileMeta(input, "fuzz.dcm", {
            complete: rng.chance(0.5),
            implicitVr: rng.chance(0.5),
            groupLength: rng.chance(0.5),
          })
        );
        inferSyntax(input, rng.int(input.length + 8));
      },
      expected: isTypedError,
    };
  },

  /**
   * lib/dicom/dicom_json.ts: the DICOM JSON of every header parseBuffer reads, which must be valid JSON, and
   * lib/dimse/identifier.ts writing it as a C-FIND response identifier (elementsFromJson, encodeIdentifier),
   * which must read back.
   */
  async dicomjson() {
    const { parseBuffer } = await import("../../lib/dicom/part10.ts");
    const { toDicomJson, stringifyDicomJson } = await import("../../lib/dicom/dicom_json.ts");
    const { elementsFromJson, encodeIdentifier, IDENTIFIER_SYNTAXES, needsUtf8, parseIdentifier } =
      await import(
        "../../lib/dimse/identifier.ts"
      );
    return {
      seeds: part10Seeds,
      tokens: DICOM_TOKENS,
      maxLength: 256 * 1024,
      async run(input, rng) {
        const header = await tolerate(() =>
          parseBuffer(input, "fuzz.dcm", { bulkThreshold: rng.pick([0, 64, 1024]) })
        );
        if (!header) return;
        const uri = rng.chance(0.5);
        const json = toDicomJson(header, {
          bulkDataUri: (path) => uri ? `http://127.0.0.1/bulkdata/${path}` : undefined,
        });
        JSON.parse(stringifyDicomJson(json));
        // What a C-FIND SCP answers from the catalog's DICOM JSON: written as an identifier, it must read back.
        const ts = rng.pick(IDENTIFIER_SYNTAXES);
        const elements = elementsFromJson(json).filter((e) => e.tag !== 0x00080005); // as keysOf() leaves it out
        const all = needsUtf8(elements)
          ? [...elements, { tag: 0x00080005, vr: "CS", value: "ISO_IR 192" }]
          : elements;
        parseIdentifier(encodeIdentifier(all, ts), ts);
      },
      expected: isTypedError,
    };
  },

  /**
   * lib/http/multipart_parser.ts readMultipart and parseMediaType: the parts (headers, body bytes) or the error
   * are the same in random chunks as in one chunk; bodies cancelled part-way do not break the next parts.
   */
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
        await tolerate(() => parseMediaType(`multipart/related; type="application/dicom"; boundary=${text}`));
        await tolerate(() => parseMediaType(text));
        const b = rng.chance(0.9) ? boundary : latin1.decode(input.subarray(0, rng.int(80)));
        const maxHeaderBytes = rng.pick([64, 1024, 16384]);
        // Read in random chunks and in one chunk, reading every body: the parts must be the same.
        const parts = async (chunks: boolean) => {
          const out: string[] = [];
          let total = 0;
          try {
            const stream = chunks ? chunked(input, rng) : ReadableStream.from([input.slice()]);
            for await (const p of readMultipart(stream, b, { maxHeaderBytes })) {
              let length = 0;
              let hash = 0;
              for await (const chunk of p.body) {
                for (const byte of chunk) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
                length += chunk.byteLength;
              }
              total += length;
              out.push(`${p.index} ${[...p.headers].join(";")} ${length} bytes ${hash}`);
              if (p.index > 100_000) throw new Error("unbounded part count");
            }
          } catch (error) {
            if (!isTypedError(error)) throw error;
            out.push(`threw ${(error as Error).message}`);
          }
          if (total > input.length) {
            throw new Error(`more body bytes (${total}) than input (${input.length})`);
          }
          return out.join("\n");
        };
        const a = await parts(true);
        const whole = await parts(false);
        if (a !== whole) {
          throw new Error(`readMultipart differs by chunking:\n${a.slice(-300)}\n---\n${whole.slice(-300)}`);
        }
        // Cancelling bodies part-way must not break the parts after them.
        await tolerate(async () => {
          for await (const p of readMultipart(chunked(input, rng), b, { maxHeaderBytes })) {
            if (rng.chance(0.5)) await p.body.cancel();
            else {
              const reader = p.body.getReader();
              await reader.read();
              await reader.cancel();
            }
          }
        });
      },
      expected: isTypedError,
    };
  },

  /** lib/http/negotiation.ts parseAccept/negotiateDicom/acceptJson; frames_bulkdata.ts frame lists and ranges. */
  async accept() {
    const { parseAccept, rankRanges, negotiateDicom, acceptJson } = await import(
      "../../lib/http/negotiation.ts"
    );
    const { negotiateFrames, parseFrameList, parseRange } = await import(
      "../../lib/dicomweb/frames_bulkdata.ts"
    );
    const syntaxes = [
      "1.2.840.10008.1.2.1",
      "1.2.840.10008.1.2.4.50",
      "1.2.840.10008.1.2.5",
      "1.2.840.10008.1.2.4.90",
    ];
    const types = ["application/octet-stream", "image/jpeg", "image/dicom-rle", "image/jp2"];
    return {
      seeds: () => Promise.resolve(ACCEPT_SEEDS.map(toBytes)),
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
      async run(input, rng) {
        const text = rng.chance(0.8) ? latin1.decode(input) : utf8.decode(input);
        await tolerate(() => rankRanges(parseAccept(text)));
        await tolerate(() => negotiateDicom(text, { single: rng.chance(0.5) }));
        await tolerate(() => acceptJson(text, "metadata"));
        await tolerate(() =>
          negotiateFrames(
            text,
            { transferSyntax: rng.pick(syntaxes), mediaType: rng.pick(types) },
            rng.chance(0.5),
          )
        );
        await tolerate(() => parseFrameList(text));
        await tolerate(() => parseRange(text, rng.pick([0, 1, 1000, 2 ** 40])));
      },
      expected: isTypedError,
    };
  },

  /** lib/catalog/qido_query.ts parseSearch (at each level) and parseMatcher (per VR). */
  async qido() {
    const { parseSearch, parseMatcher } = await import("../../lib/catalog/qido_query.ts");
    type Level = "study" | "series" | "instance";
    const levels: [Level, Level[]][] = [
      ["study", ["study"]],
      ["series", ["study", "series"]],
      ["series", ["series"]],
      ["instance", ["study", "series", "instance"]],
      ["instance", ["instance"]],
    ];
    return {
      seeds: () => Promise.resolve(QIDO_SEEDS.map(toBytes)),
      tokens: tokenBytes([
        "&",
        "=",
        ",",
        "-",
        "*",
        "?",
        ".",
        "\\",
        "%",
        "%2",
        "%22%22",
        "includefield=",
        "all",
        "fuzzymatching=true",
        "limit=",
        "offset=",
        "PatientName=",
        "StudyDate=",
        "StudyTime=",
        "AcquisitionDateTime=",
        "ReferencedSeriesSequence.",
        "00100010",
        "0020000D=",
        "99999999",
        "+0100",
        "^",
        "=",
      ]),
      maxLength: 8 * 1024,
      async run(input, rng) {
        const text = rng.chance(0.8) ? latin1.decode(input) : utf8.decode(input);
        const [level, matchable] = rng.pick(levels);
        const limit = 1 + rng.int(1000);
        await tolerate(() =>
          parseSearch(new URLSearchParams(text), {
            level,
            matchable,
            defaultLimit: limit,
            maxLimit: limit * 10,
          })
        );
        const eq = text.indexOf("=");
        await tolerate(() => parseMatcher("fuzz", eq < 0 ? text : text.slice(eq + 1), rng.pick(QIDO_VRS)));
      },
      expected: isTypedError,
    };
  },

  /**
   * lib/dimse/pdu.ts parsePdu on PDUs this module encodes (A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, release, abort), and
   * for a request, the A-ASSOCIATE-AC the SCP answers it with, which must read back with the same titles.
   */
  async pdu() {
    const pdu = await import("../../lib/dimse/pdu.ts");
    const fileMeta = await import("../../lib/dicom/file_meta.ts");
    const user = {
      maxLength: 16384,
      implementationClassUid: fileMeta.IMPLEMENTATION_CLASS_UID,
      implementationVersion: fileMeta.IMPLEMENTATION_VERSION,
      asyncOps: { invoked: 1, performed: 1 },
      roles: new Map([["1.2.840.10008.5.1.4.1.1.2", { scu: true, scp: true }]]),
    };
    const fields = {
      calledAe: "DICOMWEB",
      callingAe: "STORESCU",
      applicationContext: pdu.APPLICATION_CONTEXT,
      user,
    };
    const pData = (data: Uint8Array, command: boolean, last: boolean) => {
      const out = new Uint8Array(12 + data.length);
      pdu.writePDataHead(out, data.length, { contextId: 1, command, last });
      out.set(data, 12);
      return out;
    };
    return {
      seeds: () =>
        Promise.resolve([
          pdu.encodeAssociateRq({
            ...fields,
            contexts: [
              {
                id: 1,
                abstractSyntax: "1.2.840.10008.1.1",
                transferSyntaxes: ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"],
              },
              {
                id: 3,
                abstractSyntax: "1.2.840.10008.5.1.4.1.2.2.1",
                transferSyntaxes: ["1.2.840.10008.1.2"],
              },
            ],
          }),
          pdu.encodeAssociateAc({
            ...fields,
            user: { ...user, roles: new Map() },
            contexts: [
              { id: 1, result: 0, transferSyntax: "1.2.840.10008.1.2" },
              { id: 3, result: 3, transferSyntax: "" },
            ],
          }),
          pdu.encodeAssociateRj(1, 1, 7),
          pdu.encodeReleaseRq(),
          pdu.encodeReleaseRp(),
          pdu.encodeAbort(2, 6),
          pData(new Uint8Array([2, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0x30, 0, 0, 0]), true, true),
          pData(new Uint8Array(64).fill(0x41), false, false),
        ]),
      tokens: [
        ...[0x10, 0x20, 0x21, 0x30, 0x40, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56].map((t) => [t, 0]),
        [0, 0, 0, 0],
        [0xff, 0xff],
        [0, 0],
        [0x01, 0x00, 0x00, 0x00],
        ...tokenBytes(["1.2.840.10008.1.2", "1.2.840.10008.3.1.1.1"]),
      ],
      maxLength: 64 * 1024,
      async run(input, rng) {
        // Half the time fix the header's length, or the parser's first check refuses nearly everything.
        if (input.length >= 6 && rng.chance(0.5)) {
          input = input.slice();
          new DataView(input.buffer).setUint32(2, input.length - 6);
        }
        if (input.length >= 6) pdu.pduLength(input);
        const parsed = await tolerate(() => pdu.parsePdu(input));
        if (parsed?.type !== "associate-rq") return;
        // What the SCP answers (lib/dimse/server.ts): an A-ASSOCIATE-AC echoing the titles, which must read back.
        const ac = pdu.parsePdu(pdu.encodeAssociateAc({
          calledAe: parsed.calledAe,
          callingAe: parsed.callingAe,
          applicationContext: pdu.APPLICATION_CONTEXT,
          contexts: parsed.contexts.map((c) => ({
            id: c.id,
            result: 0,
            transferSyntax: c.transferSyntaxes[0],
          })),
          user,
        }));
        if (
          ac.type !== "associate-ac" || ac.callingAe !== parsed.callingAe || ac.calledAe !== parsed.calledAe
        ) {
          throw new Error(`A-ASSOCIATE-AC does not echo the titles ${parsed.callingAe}/${parsed.calledAe}`);
        }
      },
      expected: isTypedError,
    };
  },

  /**
   * lib/dimse/command.ts decodeCommand on command sets this module encodes; what it reads, encodeCommand
   * writes back unchanged.
   */
  async command() {
    const { CMD, COMMAND, STATUS, decodeCommand, encodeCommand } = await import("../../lib/dimse/command.ts");
    const commands: [number, number | string][][] = [
      [[CMD.commandField, COMMAND.cEchoRq], [CMD.messageId, 1], [CMD.dataSetType, 0x0101], [
        CMD.affectedSopClass,
        "1.2.840.10008.1.1",
      ]],
      [
        [CMD.commandField, COMMAND.cStoreRq],
        [CMD.messageId, 7],
        [CMD.priority, 0],
        [CMD.dataSetType, 0],
        [CMD.affectedSopClass, "1.2.840.10008.5.1.4.1.1.2"],
        [CMD.affectedSop, "1.2.3.4.5.6.7.8"],
        [CMD.moveOriginatorAe, "MOVESCU"],
        [CMD.moveOriginatorId, 3],
      ],
      [
        [CMD.commandField, COMMAND.cMoveRsp],
        [CMD.respondedTo, 9],
        [CMD.dataSetType, 0x0101],
        [CMD.status, STATUS.subOpsWarning],
        [CMD.remaining, 0],
        [CMD.completed, 4],
        [CMD.failed, 1],
        [CMD.warning, 0],
        [CMD.offendingElement, 0x00100010],
        [CMD.errorComment, "Something failed"],
      ],
      [[CMD.commandField, COMMAND.cFindRq], [CMD.messageId, 2], [CMD.priority, 0], [CMD.dataSetType, 1], [
        CMD.affectedSopClass,
        "1.2.840.10008.5.1.4.1.2.2.1",
      ]],
    ];
    return {
      seeds: () => Promise.resolve(commands.map((c) => encodeCommand(new Map(c)))),
      tokens: [[0, 0, 0, 1], [0, 0, 0x10, 1], [0, 0, 0, 9], [0xff, 0xff, 0xff, 0xff], [2, 0, 0, 0], [0, 0]],
      maxLength: 16 * 1024,
      async run(input) {
        const command = await tolerate(() => decodeCommand(input));
        if (!command) return;
        // Responses echo request fields (UIDs, AE titles): what is read must be written back the same.
        const again = decodeCommand(encodeCommand(command));
        const text = (c: Map<number, unknown>) =>
          JSON.stringify([...c].filter(([tag]) => tag !== CMD.groupLength).sort((a, b) => a[0] - b[0])); // recomputed
        if (text(again) !== text(command)) {
          throw new Error(`encodeCommand changes what decodeCommand read: ${text(command)} → ${text(again)}`);
        }
      },
      expected: isTypedError,
    };
  },

  /**
   * lib/dimse/identifier.ts parseIdentifier, in the three syntaxes, on identifiers this module encodes, and
   * lib/dimse/query.ts levelOfIdentifier/searchOf on what it returns.
   */
  async identifier() {
    const { encodeIdentifier, parseIdentifier, IDENTIFIER_SYNTAXES } = await import(
      "../../lib/dimse/identifier.ts"
    );
    const { levelOfIdentifier, searchOf } = await import("../../lib/dimse/query.ts");
    const elements = [
      { tag: 0x00080005, vr: "CS", value: "ISO_IR 192" },
      { tag: 0x00080020, vr: "DA", value: "20240101-" },
      { tag: 0x00080052, vr: "CS", value: "STUDY" },
      { tag: 0x00100010, vr: "PN", value: "Müller^Jürgen" },
      { tag: 0x00100020, vr: "LO", value: "P*" },
      { tag: 0x0020000d, vr: "UI", value: "1.2.3.4" },
      { tag: 0x00201208, vr: "IS", value: "" },
      { tag: 0x00280010, vr: "US", value: "512" },
      {
        tag: 0x00081032,
        vr: "SQ",
        value: "",
        items: [[{ tag: 0x00080100, vr: "SH", value: "CODE" }, { tag: 0x00080102, vr: "SH", value: "99" }]],
      },
    ];
    const plain = [
      { tag: 0x00080005, vr: "CS", value: "ISO 2022 IR 87\\ISO 2022 IR 13" },
      ...elements.slice(1),
    ];
    return {
      seeds: () =>
        Promise.resolve(
          IDENTIFIER_SYNTAXES.flatMap((ts) => [encodeIdentifier(elements, ts), encodeIdentifier(plain, ts)]),
        ),
      tokens: DICOM_TOKENS,
      maxLength: 32 * 1024,
      async run(input, rng) {
        const elements = await tolerate(() => parseIdentifier(input, rng.pick(IDENTIFIER_SYNTAXES)));
        if (!elements) return;
        // What a C-FIND SCP does next: the level, then the catalog query of the keys
        await tolerate(() =>
          searchOf(elements, levelOfIdentifier(elements, rng.pick(["patient", "study"] as const)), 100)
        );
      },
      expected: isTypedError,
    };
  },
  /**
   * Proxy headers: lib/http/urls.ts publicBase (Forwarded, X-Forwarded-Host/-Proto/-Port, Host) and
   * lib/security/proxies.ts clientAddress (Forwarded for=, X-Forwarded-For), parseTrustedProxies, parseAddress.
   * Lines of the input are header values; publicBase must give an absolute http(s) URL.
   */
  async forwarded() {
    const { publicBase } = await import("../../lib/http/urls.ts");
    const { clientAddress, parseAddress, parseTrustedProxies } = await import(
      "../../lib/security/proxies.ts"
    );
    const trusted = parseTrustedProxies("loopback,private");
    const names = [
      "forwarded",
      "x-forwarded-host",
      "x-forwarded-proto",
      "x-forwarded-port",
      "host",
      "x-forwarded-for",
    ];
    return {
      seeds: () =>
        Promise.resolve(
          [
            'for=192.0.2.60;proto=https;host="pacs.example.org:8443", for=10.0.0.1\npacs.example.org\nhttps\n443\nlocalhost:8080\n203.0.113.9, 10.0.0.2',
            'for="[2001:db8:cafe::17]:4711";host=[::1]:80\n[::1]:8080\nhttp\n80\n[fe80::1]\n::ffff:10.0.0.1, 2001:db8::1',
            "\nexample.org, other.org\nHTTPS, http\n65536\nexample.org:99999\n10.0.0.0/8,loopback",
          ].map(toBytes),
        ),
      tokens: tokenBytes([
        "for=",
        "host=",
        "proto=",
        ";",
        ",",
        '"',
        "[",
        "]",
        ":",
        "::",
        ".",
        "/",
        "\n",
        "%",
        "\\",
      ]),
      maxLength: 4096,
      async run(input, rng) {
        const lines = latin1.decode(input).split("\n");
        const headers = new Headers();
        names.forEach((name, i) => {
          const value = lines[i]?.replace(/[\0\r]/g, "").trim();
          if (value && rng.chance(0.8)) {
            try {
              headers.set(name, value);
            } catch {
              // not a value HTTP could carry
            }
          }
        });
        const base = await tolerate(() =>
          publicBase({ url: "http://127.0.0.1:8080/aets", headers }, {
            basePath: rng.pick(["", "/dicomweb"]),
          })
        );
        if (base !== undefined && !/^https?:\/\/[^/]/.test(base)) {
          throw new Error(`publicBase gave ${JSON.stringify(base)}, not an absolute http(s) URL`);
        }
        await tolerate(() =>
          clientAddress(headers, { hostname: rng.pick(["127.0.0.1", "10.0.0.1", "::1"]) }, trusted)
        );
        for (const line of lines.slice(0, 8)) {
          await tolerate(() => parseAddress(line));
          await tolerate(() => parseTrustedProxies(line));
        }
      },
      expected: isTypedError,
    };
  },

  /** lib/dicomweb/rendered.ts parseRenderRequest: the query (window, viewport, quality, accept...) and Accept. */
  async rendered() {
    const { parseRenderRequest } = await import("../../lib/dicomweb/rendered.ts");
    return {
      seeds: () =>
        Promise.resolve(
          [
            "window=40,400,LINEAR&viewport=512,512&quality=90&accept=image/jpeg\n*/*",
            "viewport=256,256,0,0,512,512&accept=image%2Fpng&iccprofile=no\nimage/png;q=0.5, image/jpeg",
            'annotation=patient,technique&window=40,400,SIGMOID\nmultipart/related; type="image/jpeg"',
            "quality=101&viewport=-1,0\n",
          ].map(toBytes),
        ),
      tokens: tokenBytes([
        "&",
        "=",
        ",",
        "-",
        ".",
        "window=",
        "viewport=",
        "quality=",
        "accept=",
        "\n",
        "e9",
        "NaN",
      ]),
      maxLength: 4096,
      async run(input) {
        const text = latin1.decode(input);
        const newline = text.indexOf("\n");
        const query = newline < 0 ? text : text.slice(0, newline);
        const accept = newline < 0 ? null : text.slice(newline + 1);
        let url: URL;
        try {
          url = new URL(`http://127.0.0.1/rendered?${query}`);
        } catch {
          return; // not a URL a request could have
        }
        await tolerate(() => parseRenderRequest(url, accept));
      },
      expected: isTypedError,
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

/** The harness's own check: input 3 throws a TypeError (a crash), input 5 never returns (a hang). */
TARGETS.selftest = () =>
  Promise.resolve({
    seeds: () => Promise.resolve([new Uint8Array([1])]),
    tokens: [],
    maxLength: 16,
    run(_input: Uint8Array, _rng: Rng) {
      const index = Atomics.load(new Int32Array(selftestProgress ?? new SharedArrayBuffer(8)), 0);
      if (index === 2) throw new MalformedError("expected kind");
      if (index === 3) throw new TypeError("unexpected kind");
      if (index === 5) { for (;;); }
    },
    expected: isTypedError,
  });
let selftestProgress: SharedArrayBuffer | undefined;

/** Every target (without the harness self-test): the parsers, then the whole handler (`http`). */
export const TARGET_NAMES: readonly string[] = Object.keys(TARGETS).filter((name) => name !== "selftest");

// ---------------------------------------------------------------------------------------------------
// Harness (main thread)

/** One input that threw an error of a kind its target does not document. */
export interface FuzzFailure {
  index: number;
  /** Name, message and the first lines of the stack. */
  error: string;
  /** The whole input. */
  input: Uint8Array;
}

/** What a run of one target did. */
export interface FuzzReport {
  target: string;
  seed: number;
  /** Index of the first input run. */
  start: number;
  /** Inputs that finished (a hung one not counted). */
  tried: number;
  seeds: number;
  /** The first 20 failures. */
  failures: FuzzFailure[];
  /** Failures in all (beyond the 20 kept). */
  failureCount: number;
  /** An input that did not finish within `perInputMs`; the run stopped there. */
  hang?: { index: number; ms: number };
  /** Highest RSS of the whole process seen during the run, MiB. */
  peakRssMb: number;
  /** Highest JavaScript heap of the worker's isolate seen during the run, MiB. */
  peakHeapMb: number;
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
  /** Index of the first input (after a hang, the run goes on from the next one). */
  start?: number;
}

function generate(
  target: Target,
  seeds: readonly Uint8Array[],
  name: string,
  seed: number,
  index: number,
): { input: Uint8Array; rng: Rng } {
  const rng = new Rng(seed, hashString(name), index);
  // The unmutated seeds first, then mutations of mutations now and then.
  if (index < seeds.length) return { input: seeds[index].slice(), rng };
  let input = mutate(rng, rng.pick(seeds), seeds, target.tokens, target.maxLength);
  if (rng.chance(0.2)) input = mutate(rng, input, seeds, target.tokens, target.maxLength);
  return { input, rng };
}

/** Rebuilds input `index` of a run (to debug a reported hang or failure). */
export async function inputAt(name: string, seed: number, index: number): Promise<Uint8Array> {
  if (!(name in TARGETS)) throw new RangeError(`No fuzz target ${name}: use ${TARGET_NAMES.join(", ")}`);
  const target = await TARGETS[name]();
  return generate(target, await target.seeds(), name, seed, index).input;
}

/**
 * Runs `input` through target `name` in this thread, with the random choices of input `index` of a run
 * seeded `seed`: resolves with the error it throws when the target does not expect it, else `undefined`.
 */
export async function replay(name: string, seed: number, index: number, input: Uint8Array): Promise<unknown> {
  if (!(name in TARGETS)) throw new RangeError(`No fuzz target ${name}: use ${TARGET_NAMES.join(", ")}`);
  const target = await TARGETS[name]();
  // The target's random choices (chunk sizes, options) come from the rng left where generating input `index` left it.
  const { rng } = generate(target, await target.seeds(), name, seed, index);
  try {
    await target.run(input, rng);
  } catch (error) {
    if (!target.expected(error)) return error;
  }
  return undefined;
}

/** The process's peak RSS so far (getrusage's maxrss, which is Linux's VmHWM), MiB. */
export function processPeakRssMb(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

/** Runs target `name` in a worker for `options.seconds` (or `maxInputs`); resolves with what happened. */
export function fuzz(name: string, options: FuzzOptions): Promise<FuzzReport> {
  if (!(name in TARGETS)) throw new RangeError(`No fuzz target ${name}: use ${TARGET_NAMES.join(", ")}`);
  const shared = new SharedArrayBuffer(8);
  const progress = new Int32Array(shared); // [current index (-1 idle), inputs finished]
  progress[0] = -1;
  const worker = new Worker(new URL(import.meta.url).href, { type: "module", name: `fuzz-${name}` });
  const started = performance.now();
  const start = options.start ?? 0;
  let peakRss = Deno.memoryUsage().rss;
  let peakHeap = 0;
  return new Promise<FuzzReport>((resolve, reject) => {
    let lastIndex = -2;
    let since = performance.now();
    let ready = false;
    let seedCount = 0;
    let failureCount = 0;
    const failures: FuzzFailure[] = [];
    const finish = (tried: number, hang?: FuzzReport["hang"]) => {
      clearInterval(watchdog);
      worker.terminate();
      resolve({
        target: name,
        seed: options.seed,
        start,
        tried,
        seeds: seedCount,
        failures,
        failureCount,
        hang,
        peakRssMb: Math.round(peakRss / 1024 / 1024),
        peakHeapMb: Math.round(peakHeap / 1024 / 1024),
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
        finish(Atomics.load(progress, 1), { index, ms: Math.round(performance.now() - since) });
      }
    }, 25);
    worker.onmessage = (event: MessageEvent) => {
      const message = event.data;
      if (message.type === "ready") {
        ready = true;
        seedCount = message.seeds;
        since = performance.now();
      } else if (message.type === "failure") {
        failureCount++;
        if (failures.length < 20) failures.push(message.failure);
      } else if (message.type === "failure-counted") failureCount++;
      else if (message.type === "heap") peakHeap = Math.max(peakHeap, message.bytes);
      else if (message.type === "done") {
        peakHeap = Math.max(peakHeap, message.heap);
        finish(message.tried);
      }
    };
    worker.onerror = (event: ErrorEvent) => {
      // An error escaping the target (thrown from a stream callback, say): the input being run is the culprit.
      event.preventDefault();
      const index = Atomics.load(progress, 0);
      failureCount++;
      failures.push({ index, error: `worker crashed: ${event.message}`, input: new Uint8Array(0) });
      finish(Atomics.load(progress, 1));
    };
    worker.postMessage({ name, shared, ...options, start });
  });
}

/** What {@linkcode fuzzTarget} found. */
export interface TargetReport {
  target: string;
  seed: number;
  /** Inputs run, hung ones included. */
  inputs: number;
  seeds: number;
  /** The first 20 crashes. */
  failures: FuzzFailure[];
  /** Crashes in all. */
  failureCount: number;
  /** Inputs over `perInputMs` that also ran over 10 × `perInputMs` alone (the run went on after each). */
  hangs: { index: number; ms: number; input: Uint8Array }[];
  /** Inputs over `perInputMs` that finished when run again alone: a loaded machine, or a slow path. */
  slow: { index: number; ms: number }[];
  peakRssMb: number;
  peakHeapMb: number;
  /** Time spent, confirmations of hangs included. */
  seconds: number;
}

/**
 * Runs target `name` for `options.seconds` or `options.maxInputs` inputs, going on after hangs: an input over
 * `perInputMs` is run again alone with ten times the deadline before it counts as a hang, so a busy machine
 * does not make one (it is listed in `slow` instead). Stops after `maxHangs` (default 10) hangs.
 */
export async function fuzzTarget(
  name: string,
  options: FuzzOptions & { maxHangs?: number },
): Promise<TargetReport> {
  const started = performance.now();
  const until = started + options.seconds * 1000;
  const maxInputs = options.maxInputs ?? Number.MAX_SAFE_INTEGER;
  const report: TargetReport = {
    target: name,
    seed: options.seed,
    inputs: 0,
    seeds: 0,
    failures: [],
    failureCount: 0,
    hangs: [],
    slow: [],
    peakRssMb: 0,
    peakHeapMb: 0,
    seconds: 0,
  };
  const add = (run: FuzzReport) => {
    report.seeds = run.seeds;
    report.failureCount += run.failureCount;
    report.failures.push(...run.failures.slice(0, 20 - report.failures.length));
    report.peakRssMb = Math.max(report.peakRssMb, run.peakRssMb);
    report.peakHeapMb = Math.max(report.peakHeapMb, run.peakHeapMb);
  };
  let start = options.start ?? 0;
  while (report.inputs < maxInputs && performance.now() < until) {
    const run = await fuzz(name, {
      ...options,
      seconds: Math.max(0.1, (until - performance.now()) / 1000),
      maxInputs: maxInputs - report.inputs,
      start,
    });
    add(run);
    report.inputs += run.tried;
    if (!run.hang) break;
    const index = run.hang.index;
    const again = await fuzz(name, {
      ...options,
      seconds: 3600,
      perInputMs: options.perInputMs * 10,
      maxInputs: 1,
      start: index,
    });
    add(again);
    report.inputs++;
    if (again.hang) {
      report.hangs.push({ index, ms: again.hang.ms, input: await inputAt(name, options.seed, index) });
      if (report.hangs.length >= (options.maxHangs ?? 10)) break;
    } else report.slow.push({ index, ms: run.hang.ms });
    start = index + 1;
  }
  report.seconds = Math.round((performance.now() - started) / 100) / 10;
  return report;
}

// ---------------------------------------------------------------------------------------------------
// Worker side

interface WorkerScope {
  onmessage: ((event: MessageEvent) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
}

/** Name, message and the first lines of the stack of `error`. */
export function describeError(error: unknown): string {
  if (error instanceof Error) {
    return `${error.name}: ${error.message.slice(0, 300)}\n${
      (error.stack ?? "").split("\n").slice(1, 9).join("\n")
    }`;
  }
  return String(error);
}

async function work(
  scope: WorkerScope,
  data: FuzzOptions & { name: string; shared: SharedArrayBuffer; start: number },
): Promise<void> {
  const progress = new Int32Array(data.shared);
  selftestProgress = data.shared;
  const target = await TARGETS[data.name]();
  const seeds = await target.seeds();
  scope.postMessage({ type: "ready", seeds: seeds.length });
  let failures = 0;
  const until = performance.now() + data.seconds * 1000;
  const end = data.start + (data.maxInputs ?? Number.MAX_SAFE_INTEGER - data.start);
  let heap = 0;
  let index = data.start;
  for (; index < end && performance.now() < until; index++) {
    const { input, rng } = generate(target, seeds, data.name, data.seed, index);
    Atomics.store(progress, 0, index);
    try {
      await target.run(input, rng);
    } catch (error) {
      if (!target.expected(error)) {
        if (++failures <= 20) {
          // rebuilt: the target may have changed `input`
          const original = generate(target, seeds, data.name, data.seed, index).input;
          const failure: FuzzFailure = { index, error: describeError(error), input: original };
          scope.postMessage({ type: "failure", failure }, [original.buffer as ArrayBuffer]);
        } else scope.postMessage({ type: "failure-counted" });
      }
    }
    Atomics.store(progress, 1, index + 1 - data.start);
    if ((index & 255) === 0) {
      const used = Deno.memoryUsage().heapUsed;
      if (used > heap) {
        heap = used;
        scope.postMessage({ type: "heap", bytes: used });
      }
    }
  }
  Atomics.store(progress, 0, -1);
  scope.postMessage({ type: "done", tried: index - data.start, heap });
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
        failure: { index: -1, error: `setup failed: ${describeError(error)}`, input: new Uint8Array(0) },
      });
      workerScope.postMessage({ type: "done", tried: 0, heap: 0 });
    });
  };
}
