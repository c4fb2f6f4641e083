import assert from "node:assert/strict";
import { elementFromJson, encodeIdentifier, needsUtf8, parseIdentifier } from "../../lib/dimse/identifier.ts";
import { IDENTIFIER_SYNTAXES } from "../../lib/dimse/identifier.ts";

const ELEMENTS = [
  { tag: 0x00080052, vr: "CS", value: "STUDY" },
  { tag: 0x00080020, vr: "DA", value: "20200101-20201231" },
  { tag: 0x00100010, vr: "PN", value: "DOE*" },
  { tag: 0x00201206, vr: "IS", value: "" },
  { tag: 0x00280010, vr: "US", value: "512" },
  {
    tag: 0x00081032,
    vr: "SQ",
    value: "",
    items: [[{ tag: 0x00080100, vr: "SH", value: "CT1" }, { tag: 0x00080102, vr: "SH", value: "" }]],
  },
];

Deno.test("encodeIdentifier() and parseIdentifier() round-trip in each syntax", () => {
  for (const syntax of IDENTIFIER_SYNTAXES) {
    const parsed = parseIdentifier(encodeIdentifier(ELEMENTS, syntax), syntax);
    assert.deepEqual(parsed, [...ELEMENTS].sort((a, b) => a.tag - b.tag), syntax);
  }
});

Deno.test("parseIdentifier() reads sequences of undefined length and decodes the character set", () => {
  // implicit VR LE: (0008,0005) ISO_IR 100, (0010,0010) "Müller" in Latin-1, (0040,0275) SQ undefined length
  const bytes = new Uint8Array([
    ...[0x08, 0, 0x05, 0, 10, 0, 0, 0],
    ..."ISO_IR 100".split("").map((c) => c.charCodeAt(0)),
    ...[0x10, 0, 0x10, 0, 6, 0, 0, 0, 0x4d, 0xfc, 0x6c, 0x6c, 0x65, 0x72],
    ...[0x40, 0, 0x75, 0x02, 0xff, 0xff, 0xff, 0xff],
    ...[0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff],
    ...[0x40, 0, 0x09, 0x10, 2, 0, 0, 0, 0x41, 0x20],
    ...[0xfe, 0xff, 0x0d, 0xe0, 0, 0, 0, 0],
    ...[0xfe, 0xff, 0xdd, 0xe0, 0, 0, 0, 0],
  ]);
  const parsed = parseIdentifier(bytes, "1.2.840.10008.1.2");
  assert.equal(parsed[1].value, "Müller");
  assert.deepEqual(parsed[2].items, [[{ tag: 0x00401009, vr: "SH", value: "A" }]]);
});

Deno.test("parseIdentifier() refuses elements running past the end", () => {
  const bytes = encodeIdentifier([{ tag: 0x00100010, vr: "PN", value: "DOE" }], "1.2.840.10008.1.2.1");
  assert.throws(
    () => parseIdentifier(bytes.subarray(0, bytes.length - 1), "1.2.840.10008.1.2.1"),
    SyntaxError,
  );
  assert.throws(() => parseIdentifier(bytes, "1.2.840.10008.1.2.4.50"), SyntaxError);
});

Deno.test("elementFromJson() writes PN groups and multiple values as DICOM text", () => {
  assert.equal(
    elementFromJson(0x00100010, "PN", {
      vr: "PN",
      Value: [{ Alphabetic: "Yamada^Tarou", Ideographic: "山田^太郎" }],
    })
      .value,
    "Yamada^Tarou=山田^太郎",
  );
  assert.equal(elementFromJson(0x00080061, "CS", { vr: "CS", Value: ["CT", "MR"] }).value, "CT\\MR");
  assert.equal(elementFromJson(0x00100030, "DA", undefined).value, "");
  assert.equal(
    needsUtf8([elementFromJson(0x00100010, "PN", { vr: "PN", Value: [{ Alphabetic: "Müller" }] })]),
    true,
  );
});
