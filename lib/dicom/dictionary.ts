/**
 * The DICOM data dictionary (PS3.6): tag ↔ keyword and VR, taken from dcmjs's copy of the standard.
 *
 * dcmjs is imported once; its ~5,200 entries are turned into lookup maps on first use (a few ms). Importing
 * the dcmjs module itself costs roughly 60 ms at start-up, so hot paths should only call the lookups.
 *
 * Repeating groups are stored by dcmjs under their base tag — (60xx,eeee) as (6000,eeee), (50xx,eeee) as
 * (5000,eeee), (7Fxx,eeee) as (7F00,eeee), (1000,xxxy) as (1000,001y), (0028,04x0) as (0028,0400) — and
 * {@linkcode lookupTag} maps any member of such a group to that entry.
 *
 * @module
 */

import dcmjs from "dcmjs";

/** One dictionary entry. */
export interface DictionaryEntry {
  /** The tag as `group << 16 | element` (for repeating groups, the base tag, e.g. 0x60003000). */
  readonly tag: number;
  /** The VR as listed by the standard; ambiguous ones are `"US or SS"`, `"OB or OW"`, `"US or OW"`. */
  readonly vr: string;
  /** Value multiplicity, e.g. `"1"`, `"1-n"`. */
  readonly vm: string;
  /** The standard keyword without any `RETIRED_` prefix, e.g. `"PatientName"`. */
  readonly keyword: string;
  /** Whether the standard lists the attribute as retired. */
  readonly retired: boolean;
}

interface RawEntry {
  tag: string;
  vr: string;
  vm: string;
  name: string;
}

const AMBIGUOUS_VRS: Record<string, string> = { xs: "US or SS", ox: "OB or OW", lt: "US or OW", up: "UL" };

let byTag: Map<number, DictionaryEntry> | undefined;
let byKeyword: Map<string, DictionaryEntry> | undefined;

function build(): void {
  const nameMap = dcmjs.data.DicomMetaDictionary.nameMap as Record<string, RawEntry>;
  byTag = new Map();
  byKeyword = new Map();
  for (const raw of Object.values(nameMap)) {
    const match = /^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$/.exec(raw.tag);
    if (!match) continue;
    const retired = raw.name.startsWith("RETIRED_");
    const entry: DictionaryEntry = {
      tag: (parseInt(match[1], 16) << 16 | parseInt(match[2], 16)) >>> 0,
      vr: AMBIGUOUS_VRS[raw.vr] ?? (raw.vr === "na" ? "" : raw.vr),
      vm: raw.vm,
      keyword: retired ? raw.name.slice(8) : raw.name,
      retired,
    };
    const previous = byTag.get(entry.tag);
    if (!previous || (previous.retired && !retired)) byTag.set(entry.tag, entry);
    const sameName = byKeyword.get(entry.keyword);
    if (!sameName || (sameName.retired && !retired)) byKeyword.set(entry.keyword, entry);
  }
}

/** The base tag of a repeating-group member, or the tag itself. */
function repeatingBase(tag: number): number {
  const group = tag >>> 16;
  const element = tag & 0xffff;
  if (group >= 0x5000 && group <= 0x50ff && group % 2 === 0) return (0x5000 << 16 | element) >>> 0;
  if (group >= 0x6000 && group <= 0x60ff && group % 2 === 0) return (0x6000 << 16 | element) >>> 0;
  if (group >= 0x7f00 && group <= 0x7fff && group % 2 === 0 && group !== 0x7fe0) {
    return (0x7f00 << 16 | element) >>> 0;
  }
  if (group === 0x1000) return (0x1000 << 16 | 0x0010 | (element & 0x000f)) >>> 0;
  if (group === 0x0028 && ((element & 0xff00) === 0x0400 || (element & 0xff00) === 0x0800)) {
    return (0x0028 << 16 | (element & 0xff0f)) >>> 0;
  }
  return tag;
}

/**
 * The dictionary entry of a tag, following repeating groups; `undefined` for private and unknown tags.
 *
 * @example
 * ```ts
 * import { lookupTag } from "./dictionary.ts";
 * lookupTag(0x00100010)?.keyword; // "PatientName"
 * lookupTag(0x60023000)?.keyword; // "OverlayData"
 * ```
 */
export function lookupTag(tag: number): DictionaryEntry | undefined {
  if (!byTag) build();
  return byTag!.get(tag >>> 0) ?? byTag!.get(repeatingBase(tag >>> 0));
}

/** The dictionary entry of a keyword (retired keywords without their `RETIRED_` prefix work too). */
export function lookupKeyword(keyword: string): DictionaryEntry | undefined {
  if (!byKeyword) build();
  return byKeyword!.get(keyword);
}

/** Options for {@linkcode vrOf}. */
export interface VrOfOptions {
  /** Pixel Representation (0028,0103) in effect: 1 picks SS for "US or SS" attributes. */
  pixelRepresentation?: number;
  /** Bits Allocated (0028,0100) in effect: over 8 picks OW for "OB or OW" (the default for implicit VR). */
  bitsAllocated?: number;
}

/**
 * The VR to use for a tag whose encoding does not say (implicit VR): group lengths are UL, private
 * creators LO, unknown and private tags UN; ambiguous VRs are resolved as PS3.5 Annex A says for implicit VR.
 */
export function vrOf(tag: number, options: VrOfOptions = {}): string {
  const element = tag & 0xffff;
  const group = tag >>> 16;
  if (element === 0) return "UL";
  if (group % 2 === 1) return element >= 0x0010 && element <= 0x00ff ? "LO" : "UN";
  const vr = lookupTag(tag)?.vr;
  if (!vr) return "UN";
  if (vr === "US or SS") return options.pixelRepresentation === 1 ? "SS" : "US";
  if (vr === "OB or OW") return "OW";
  if (vr === "US or OW") return "OW";
  if (vr === "US or SS or OW") return "OW";
  return vr;
}

/** `(0010,0010)` style text for a tag. */
export function formatTag(tag: number): string {
  const hex = tagToHex(tag);
  return `(${hex.slice(0, 4)},${hex.slice(4)})`;
}

/** The 8-character uppercase hex form used by DICOM JSON and QIDO, e.g. `"00100010"`. */
export function tagToHex(tag: number): string {
  let hex = hexOfTag.get(tag);
  if (hex === undefined) {
    hex = (tag >>> 0).toString(16).toUpperCase().padStart(8, "0");
    // the same few hundred tags come again and again (every instance's DICOM JSON): keep them, bounded
    if (hexOfTag.size >= 8192) hexOfTag.clear();
    hexOfTag.set(tag, hex);
  }
  return hex;
}

const hexOfTag = new Map<number, string>();

/**
 * Parses a tag given as 8 hex digits (`00100010`), `(0010,0010)`, `0010,0010` or a keyword; `undefined` when
 * it is none of these.
 */
export function parseTag(text: string): number | undefined {
  const hex = /^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$/.exec(text.trim());
  if (hex) return (parseInt(hex[1], 16) << 16 | parseInt(hex[2], 16)) >>> 0;
  return lookupKeyword(text.trim())?.tag;
}

/** Every VR of PS3.5 Table 6.2-1. */
export const KNOWN_VRS: ReadonlySet<string> = new Set(
  "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV"
    .split(" "),
);

/** VRs with a 2-byte reserved field and a 4-byte length in explicit VR. */
export const LONG_VRS: ReadonlySet<string> = new Set("OB OD OF OL OV OW SQ SV UC UN UR UT UV".split(" "));

/** Bytes per value of the binary VRs whose values are byte-swapped between big and little endian. */
export const SWAP_WIDTH: Readonly<Record<string, number>> = {
  US: 2,
  SS: 2,
  OW: 2,
  AT: 2,
  UL: 4,
  SL: 4,
  FL: 4,
  OF: 4,
  OL: 4,
  FD: 8,
  OD: 8,
  SV: 8,
  UV: 8,
  OV: 8,
};
