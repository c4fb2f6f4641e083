import assert from "node:assert/strict";
import { elementFromJson, encodeIdentifier, needsUtf8, parseIdentifier } from "../../lib/dimse/identifier.ts";
import { IDENTIFIER_SYNTAXES } from "../../lib/dimse/identifier.ts";

const ELE = "1.2.840.10008.1.2.1";

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

Deno.test("encodeIdentifier() cuts a value too long for an explicit VR's 16-bit length instead of throwing", async (t) => {
  // Found by `deno task fuzz` (dicomjson target): a stored LO of 40,000 Latin-1 "é" is 80,000 bytes in UTF-8,
  // and a C-FIND response in explicit VR threw a RangeError for it.
  const bytes = await Deno.readFile(new URL("../testdata/fuzz/dicomjson-seed1-input0.bin", import.meta.url));
  const { parseBuffer } = await import("../../lib/dicom/part10.ts");
  const { toDicomJson } = await import("../../lib/dicom/dicom_json.ts");
  const { elementsFromJson } = await import("../../lib/dimse/identifier.ts");
  const description = elementsFromJson(toDicomJson(parseBuffer(bytes, "long.dcm")))
    .find((e) => e.tag === 0x00081030)!;
  assert.ok(description.value === "é".repeat(40000));
  const utf8 = { tag: 0x00080005, vr: "CS", value: "ISO_IR 192" }; // as find_scp.ts adds it
  const written = (value: string, vr: string, syntax: string) =>
    parseIdentifier(encodeIdentifier([utf8, { tag: 0x00081030, vr, value }], syntax), syntax)[1].value;
  for (const syntax of IDENTIFIER_SYNTAXES) {
    await t.step(syntax, () => {
      const read = written(description.value, "LO", syntax);
      if (syntax === "1.2.840.10008.1.2") assert.ok(read === description.value, "implicit VR: 32-bit length");
      else assert.ok(read === "é".repeat(32767), `whole characters up to 65,534 bytes, not ${read.length}`);
    });
  }
  await t.step("text cut inside a multi-byte character keeps whole characters, padded to even length", () => {
    const read = written("a" + "€".repeat(30000), "LO", ELE); // 1 + 90,000 bytes
    assert.ok(read === "a" + "€".repeat(21844), `${read.length} characters`);
  });
  await t.step(
    "a multi-valued value is cut to whole values (a C-MOVE's Failed SOP Instance UID List)",
    () => {
      const uids = Array.from({ length: 2000 }, (_, i) => `1.2.826.0.1.3680043.8.498.${10 ** 20 + i}.${i}`);
      const value = uids.join("\\"); // 2,000 UIDs of 40-odd characters: over 65,535 bytes
      const [read] = parseIdentifier(encodeIdentifier([{ tag: 0x00080058, vr: "UI", value }], ELE), ELE);
      const got = read.value.split("\\");
      assert.ok(got.length > 1000 && got.length < 2000, `${got.length} UIDs`);
      assert.deepEqual(got, uids.slice(0, got.length), "whole UIDs, none cut");
    },
  );
  await t.step("numbers are cut to whole values", () => {
    const value = Array.from({ length: 40000 }, (_, i) => i % 65536).join("\\");
    const [read] = parseIdentifier(encodeIdentifier([{ tag: 0x00280010, vr: "US", value }], ELE), ELE);
    assert.equal(read.value.split("\\").length, 32767);
    assert.ok(value.startsWith(read.value));
  });
});
