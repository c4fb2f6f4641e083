import { concatBytes } from "../lib/util/bytes.ts";
/**
 * Test data for end-to-end tests: the real files of tests/testdata/pydicom (keyed as its
 * MANIFEST.md says) plus small Part 10 instances built here, so tests also run on a fresh checkout.
 */

export interface CorpusFile {
  /** Where it goes in a bucket: `{study}/{series}/{sop}.dcm`. */
  key: string;
  /** A short name for messages. */
  name: string;
  /** Transfer syntax UID written in its File Meta. */
  transferSyntax: string;
  bytes: Uint8Array;
}

/** The pydicom corpus in the repository (provenance and licence: its MANIFEST.md). */
export const CORPUS_DIR = new URL("./testdata/pydicom/", import.meta.url);

/** The keyed files of tests/testdata/pydicom, as its MANIFEST.md lists them. */
export async function pydicomCorpus(): Promise<CorpusFile[]> {
  const manifest = await Deno.readTextFile(new URL("MANIFEST.md", CORPUS_DIR));
  const files: CorpusFile[] = [];
  for (const line of manifest.split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    if (cells.length < 5 || !cells[1].endsWith(".dcm")) continue;
    const [, name, key, ts] = cells;
    if (key === "-" || !key.endsWith(".dcm")) continue;
    const bytes = await Deno.readFile(new URL(`files/${name}`, CORPUS_DIR));
    files.push({ key, name, transferSyntax: ts.split(" ")[0], bytes });
  }
  return files;
}

const encoder = new TextEncoder();

function element(group: number, elem: number, vr: string, value: Uint8Array): Uint8Array {
  const long = ["OB", "OW", "OF", "SQ", "UT", "UN"].includes(vr);
  const padded = value.length % 2 === 0
    ? value
    : concatBytes([value, new Uint8Array([vr === "UI" ? 0 : 0x20])]);
  const head = new Uint8Array(long ? 12 : 8);
  const view = new DataView(head.buffer);
  view.setUint16(0, group, true);
  view.setUint16(2, elem, true);
  head[4] = vr.charCodeAt(0);
  head[5] = vr.charCodeAt(1);
  if (long) view.setUint32(8, padded.length, true);
  else view.setUint16(6, padded.length, true);
  return concatBytes([head, padded]);
}

function text(group: number, elem: number, vr: string, value: string): Uint8Array {
  return element(group, elem, vr, encoder.encode(value));
}

/** Options for {@linkcode buildInstance}. */
export interface InstanceSpec {
  study: string;
  series: string;
  sop: string;
  /** Bytes of (deterministic, pseudo-random) pixel data; default 1 KiB. */
  pixelBytes?: number;
  patientName?: string;
  modality?: string;
  /** Number of frames (NumberOfFrames is written when > 1); each frame has `pixelBytes`. */
  frames?: number;
}

/** A small but valid Explicit VR Little Endian CT-like instance. */
export function buildInstance(spec: InstanceSpec): Uint8Array {
  const ts = "1.2.840.10008.1.2.1";
  const sopClass = "1.2.840.10008.5.1.4.1.1.7";
  const metaBody = concatBytes([
    element(0x0002, 0x0001, "OB", new Uint8Array([0, 1])),
    text(0x0002, 0x0002, "UI", sopClass),
    text(0x0002, 0x0003, "UI", spec.sop),
    text(0x0002, 0x0010, "UI", ts),
    text(0x0002, 0x0012, "UI", "1.2.826.0.1.3680043.10.1"),
  ]);
  const groupLength = new Uint8Array(4);
  new DataView(groupLength.buffer).setUint32(0, metaBody.length, true);
  const side = Math.max(1, Math.floor(Math.sqrt((spec.pixelBytes ?? 1024) / 2)));
  const frames = spec.frames ?? 1;
  const pixels = new Uint8Array(side * side * 2 * frames);
  let seed = [...spec.sop].reduce((n, c) => (n * 31 + c.charCodeAt(0)) >>> 0, 7);
  for (let i = 0; i < pixels.length; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    pixels[i] = seed >>> 24;
  }
  const u16 = (g: number, e: number, v: number) => {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, v, true);
    return element(g, e, "US", b);
  };
  const dataset = concatBytes([
    text(0x0008, 0x0016, "UI", sopClass),
    text(0x0008, 0x0018, "UI", spec.sop),
    text(0x0008, 0x0060, "CS", spec.modality ?? "OT"),
    text(0x0010, 0x0010, "PN", spec.patientName ?? "Test^Patient"),
    text(0x0020, 0x000d, "UI", spec.study),
    text(0x0020, 0x000e, "UI", spec.series),
    u16(0x0028, 0x0002, 1),
    text(0x0028, 0x0004, "CS", "MONOCHROME2"),
    ...(frames > 1 ? [text(0x0028, 0x0008, "IS", String(frames))] : []),
    u16(0x0028, 0x0010, side),
    u16(0x0028, 0x0011, side),
    u16(0x0028, 0x0100, 16),
    u16(0x0028, 0x0101, 16),
    u16(0x0028, 0x0102, 15),
    u16(0x0028, 0x0103, 0),
    element(0x7fe0, 0x0010, "OW", pixels),
  ]);
  return concatBytes([
    new Uint8Array(128),
    encoder.encode("DICM"),
    element(0x0002, 0x0000, "UL", groupLength),
    metaBody,
    dataset,
  ]);
}

/** Built instances: a 2-series study, and a study whose UIDs are prefixes of each other's. */
export function builtCorpus(): CorpusFile[] {
  const specs: InstanceSpec[] = [];
  for (const series of ["2.25.100.1", "2.25.100.2"]) {
    for (let i = 1; i <= 3; i++) {
      specs.push({ study: "2.25.100", series, sop: `${series}.${i}`, pixelBytes: 2048 * i });
    }
  }
  // Prefix collisions: study 1.2.3 vs 1.2.34, series 1.2.3.1 vs 1.2.3.11, sop 1.2.3.1.1 vs 1.2.3.1.11.
  specs.push({ study: "1.2.3", series: "1.2.3.1", sop: "1.2.3.1.1" });
  specs.push({ study: "1.2.3", series: "1.2.3.1", sop: "1.2.3.1.11" });
  specs.push({ study: "1.2.3", series: "1.2.3.11", sop: "1.2.3.11.1" });
  specs.push({ study: "1.2.34", series: "1.2.34.1", sop: "1.2.34.1.1" });
  return specs.map((s) => ({
    key: `${s.study}/${s.series}/${s.sop}.dcm`,
    name: `built ${s.sop}`,
    transferSyntax: "1.2.840.10008.1.2.1",
    bytes: buildInstance(s),
  }));
}

/** Hex md5 of bytes (node:crypto; Web Crypto has no MD5). */
export async function md5(bytes: Uint8Array): Promise<string> {
  const { createHash } = await import("node:crypto");
  return createHash("md5").update(bytes).digest("hex");
}
