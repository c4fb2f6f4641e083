/**
 * Decoding DICOM text to Unicode per Specific Character Set (0008,0005): PS3.3 C.12.1.1.2 and PS3.5 6.1.
 *
 * Single-byte sets use 256-entry tables built from `TextDecoder` (bytes 0x00–0x9F map to themselves, as
 * ISO 8859 says; WHATWG's "iso-8859-1" would give windows-1252 there). Multi-byte sets use `TextDecoder`
 * directly. ISO 2022 code extensions are decoded segment by segment: JIS X 0208 (ESC $ B) as EUC-JP with the
 * high bits set, JIS X 0212 (ESC $ ( D) as EUC-JP with an 0x8F prefix, KS X 1001 (ESC $ ) C) as EUC-KR,
 * GB 2312 (ESC $ ) A) as GBK. The designations return to the initial ones at every `\`, CR, LF, TAB and FF,
 * and for PN also at `^` and `=`.
 *
 * @module
 */

/** VRs whose text is subject to Specific Character Set; all others are plain ASCII. */
export const CHARSET_VRS: ReadonlySet<string> = new Set(["SH", "LO", "ST", "LT", "UT", "PN", "UC"]);

type SetKind = "ascii" | "single" | "jis0201" | "jis0208" | "jis0212" | "ksx1001" | "gb2312";

interface CodeElement {
  kind: SetKind;
  /** TextDecoder label for "single" sets. */
  label?: string;
}

/** Non-ISO-2022 terms → TextDecoder label (`latin1` = the real ISO 8859-1). */
const PLAIN: Record<string, string> = {
  "": "latin1",
  "ISO_IR 6": "latin1",
  "ISO_IR 100": "latin1",
  "ISO_IR 101": "iso-8859-2",
  "ISO_IR 109": "iso-8859-3",
  "ISO_IR 110": "iso-8859-4",
  "ISO_IR 144": "iso-8859-5",
  "ISO_IR 127": "iso-8859-6",
  "ISO_IR 126": "iso-8859-7",
  "ISO_IR 138": "iso-8859-8",
  "ISO_IR 148": "iso-8859-9",
  "ISO_IR 166": "windows-874",
  "ISO_IR 13": "shift_jis",
  "ISO_IR 192": "utf-8",
  "GB18030": "gb18030",
  "GBK": "gbk",
};

/** The G1 set each ISO 2022 term designates (G0 is ASCII except for IR 13, which also sets Romaji). */
const ISO2022_G1: Record<string, CodeElement | undefined> = {
  "ISO 2022 IR 6": undefined,
  "ISO 2022 IR 100": { kind: "single", label: "latin1" },
  "ISO 2022 IR 101": { kind: "single", label: "iso-8859-2" },
  "ISO 2022 IR 109": { kind: "single", label: "iso-8859-3" },
  "ISO 2022 IR 110": { kind: "single", label: "iso-8859-4" },
  "ISO 2022 IR 144": { kind: "single", label: "iso-8859-5" },
  "ISO 2022 IR 127": { kind: "single", label: "iso-8859-6" },
  "ISO 2022 IR 126": { kind: "single", label: "iso-8859-7" },
  "ISO 2022 IR 138": { kind: "single", label: "iso-8859-8" },
  "ISO 2022 IR 148": { kind: "single", label: "iso-8859-9" },
  "ISO 2022 IR 166": { kind: "single", label: "windows-874" },
  "ISO 2022 IR 13": { kind: "jis0201" },
  "ISO 2022 IR 87": undefined,
  "ISO 2022 IR 159": undefined,
  "ISO 2022 IR 149": undefined,
  "ISO 2022 IR 58": undefined,
};

/** Escape sequences (the bytes after ESC) → [which register, set]. */
const ESCAPES: [string, 0 | 1, CodeElement][] = [
  ["(B", 0, { kind: "ascii" }],
  ["(J", 0, { kind: "ascii" }],
  [")I", 1, { kind: "jis0201" }],
  ["$B", 0, { kind: "jis0208" }],
  ["$@", 0, { kind: "jis0208" }],
  ["$(D", 0, { kind: "jis0212" }],
  ["$)C", 1, { kind: "ksx1001" }],
  ["$)A", 1, { kind: "gb2312" }],
  ["-A", 1, { kind: "single", label: "latin1" }],
  ["-B", 1, { kind: "single", label: "iso-8859-2" }],
  ["-C", 1, { kind: "single", label: "iso-8859-3" }],
  ["-D", 1, { kind: "single", label: "iso-8859-4" }],
  ["-L", 1, { kind: "single", label: "iso-8859-5" }],
  ["-G", 1, { kind: "single", label: "iso-8859-6" }],
  ["-F", 1, { kind: "single", label: "iso-8859-7" }],
  ["-H", 1, { kind: "single", label: "iso-8859-8" }],
  ["-M", 1, { kind: "single", label: "iso-8859-9" }],
  ["-T", 1, { kind: "single", label: "windows-874" }],
];

const tables = new Map<string, string[]>();
const decoders = new Map<string, TextDecoder>();

function decoder(label: string): TextDecoder {
  let d = decoders.get(label);
  if (!d) decoders.set(label, d = new TextDecoder(label));
  return d;
}

function singleByteTable(label: string): string[] {
  let table = tables.get(label);
  if (table) return table;
  table = [];
  for (let b = 0; b < 256; b++) {
    table.push(
      b < 0xa0 || label === "latin1" ? String.fromCharCode(b) : decoder(label).decode(Uint8Array.of(b)),
    );
  }
  tables.set(label, table);
  return table;
}

function decodeSingle(bytes: Uint8Array, label: string): string {
  if (label === "latin1") {
    // ISO 8859-1 maps each byte to the code point of its value (TextDecoder's "latin1" is windows-1252)
    let out = "";
    for (let i = 0; i < bytes.length; i += 0x2000) {
      out += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x2000) as unknown as number[]);
    }
    return out;
  }
  const table = singleByteTable(label);
  let out = "";
  for (const b of bytes) out += table[b];
  return out;
}

/** Normalises (0008,0005) values: trimmed, first value "" stays "" (the default repertoire). */
function terms(charsets: readonly string[]): string[] {
  return charsets.map((c) => c.trim());
}

/** Whether the character set uses ISO 2022 code extensions (escape sequences). */
export function isIso2022(charsets: readonly string[]): boolean {
  return terms(charsets).some((t) => t.startsWith("ISO 2022"));
}

/**
 * Decodes text bytes of a value (all of it, backslashes included) to a string. Only VRs in
 * {@linkcode CHARSET_VRS} use the character set; others are decoded as Latin-1 (ASCII in practice).
 * Unknown terms fall back to the default repertoire.
 *
 * @example
 * ```ts
 * import { decodeText } from "./charset.ts";
 * decodeText(new Uint8Array([0x4d, 0xfc, 0x6c, 0x6c, 0x65, 0x72]), ["ISO_IR 100"], "PN"); // "Müller"
 * ```
 */
export function decodeText(bytes: Uint8Array, charsets: readonly string[], vr: string): string {
  if (!CHARSET_VRS.has(vr) || bytes.every((b) => b < 0x80 && b !== 0x1b)) {
    return decodeSingle(bytes, "latin1");
  }
  const list = terms(charsets);
  if (!isIso2022(list)) {
    const label = PLAIN[list.find((t) => t === "ISO_IR 192") ?? list[0] ?? ""] ?? "latin1";
    return isSingleByte(label) ? decodeSingle(bytes, label) : decoder(label).decode(bytes);
  }
  return decodeIso2022(bytes, list, vr === "PN");
}

function isSingleByte(label: string): boolean {
  return label === "latin1" || label.startsWith("iso-8859") || label === "windows-874";
}

function initialState(list: string[]): [CodeElement, CodeElement | undefined] {
  const first = list[0] === "" ? "ISO 2022 IR 6" : list[0];
  if (first === "ISO 2022 IR 13" || first === "ISO_IR 13") return [{ kind: "ascii" }, { kind: "jis0201" }];
  if (first in ISO2022_G1) return [{ kind: "ascii" }, ISO2022_G1[first]];
  const label = PLAIN[first];
  return [{ kind: "ascii" }, label && isSingleByte(label) ? { kind: "single", label } : undefined];
}

function decodeIso2022(bytes: Uint8Array, list: string[], personName: boolean): string {
  const [initialG0, initialG1] = initialState(list);
  let g0 = initialG0;
  let g1 = initialG1;
  let out = "";
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    if (b === 0x1b) {
      const match = ESCAPES.find(([seq]) =>
        seq.split("").every((c, k) => bytes[i + 1 + k] === c.charCodeAt(0))
      );
      if (match) {
        if (match[1] === 0) g0 = match[2];
        else g1 = match[2];
        i += 1 + match[0].length;
      } else {
        out += "\x1b";
        i++;
      }
      continue;
    }
    // A run of bytes decoded with one set: up to the next ESC or delimiter.
    let j = i;
    while (j < bytes.length && bytes[j] !== 0x1b) {
      const c = bytes[j];
      const twoByteG0 = g0.kind === "jis0208" || g0.kind === "jis0212";
      if (!twoByteG0 && isDelimiter(c, personName)) break;
      if (twoByteG0 && c < 0x21) break;
      j++;
    }
    if (j > i) {
      out += decodeRun(bytes.subarray(i, j), g0, g1);
      i = j;
    }
    if (i < bytes.length && bytes[i] !== 0x1b) {
      // A delimiter or control character: single byte, then back to the initial designations.
      out += String.fromCharCode(bytes[i]);
      if (isDelimiter(bytes[i], personName)) {
        g0 = initialG0;
        g1 = initialG1;
      }
      i++;
    }
  }
  return out;
}

function isDelimiter(c: number, personName: boolean): boolean {
  return c === 0x5c || c === 0x0d || c === 0x0a || c === 0x09 || c === 0x0c ||
    (personName && (c === 0x5e || c === 0x3d));
}

function decodeRun(run: Uint8Array, g0: CodeElement, g1: CodeElement | undefined): string {
  if (g0.kind === "jis0208" || g0.kind === "jis0212") {
    const euc: number[] = [];
    for (let k = 0; k + 1 < run.length; k += 2) {
      if (g0.kind === "jis0212") euc.push(0x8f);
      euc.push(run[k] | 0x80, run[k + 1] | 0x80);
    }
    return decoder("euc-jp").decode(Uint8Array.from(euc));
  }
  let out = "";
  let k = 0;
  while (k < run.length) {
    let m = k;
    if (run[k] < 0x80) {
      while (m < run.length && run[m] < 0x80) m++;
      out += decodeSingle(run.subarray(k, m), "latin1");
    } else {
      while (m < run.length && run[m] >= 0x80) m++;
      out += decodeHigh(run.subarray(k, m), g1);
    }
    k = m;
  }
  return out;
}

function decodeHigh(run: Uint8Array, g1: CodeElement | undefined): string {
  switch (g1?.kind) {
    case "single":
      return decodeSingle(run, g1.label!);
    case "jis0201":
      return decoder("shift_jis").decode(run);
    case "ksx1001":
      return decoder("euc-kr").decode(run);
    case "gb2312":
      return decoder("gbk").decode(run);
    default:
      return decodeSingle(run, "latin1");
  }
}
