import assert from "node:assert/strict";
import { decodeText, isIso2022 } from "../../lib/dicom/charset.ts";
import { parseBuffer } from "../../lib/dicom/part10.ts";
import { resolveBulkDataPath } from "../../lib/dicom/dicom_json.ts";
import { corpusDir } from "../_dicom_fixtures.ts";
import { type DicomDataset, elementStrings } from "../../lib/dicom/dataset.ts";

const bytes = (...values: (number | string)[]) =>
  Uint8Array.from(values.flatMap((v) => typeof v === "string" ? Array.from(v, (c) => c.charCodeAt(0)) : [v]));

// Expected strings were checked against pydicom 2.3.1 (pydicom.charset.decode_bytes) before being written here.
Deno.test("decodeText() decodes single-byte character sets", async (t) => {
  await t.step("default repertoire and ISO_IR 100 are true ISO 8859-1 (C1 controls stay)", () => {
    assert.equal(decodeText(bytes(0x80, 0xe9), ["ISO_IR 100"], "LO"), "\x80é");
    assert.equal(decodeText(bytes("Buc^J", 0xe9, "r", 0xf4, "me"), [], "PN"), "Buc^Jérôme");
  });
  await t.step("ISO_IR 101, 109, 110, 148, 166", () => {
    assert.equal(decodeText(bytes(0xb1, 0xe9), ["ISO_IR 101"], "LO"), "ąé");
    assert.equal(decodeText(bytes(0xb1, 0xe9), ["ISO_IR 109"], "LO"), "ħé");
    assert.equal(decodeText(bytes(0xb1, 0xe9), ["ISO_IR 110"], "LO"), "ąé");
    assert.equal(decodeText(bytes(0xd0, 0xdd), ["ISO_IR 148"], "LO"), "Ğİ");
    assert.equal(decodeText(bytes(0xe9), ["ISO_IR 166"], "LO"), "้");
  });
  await t.step("VRs outside SH/LO/ST/LT/UT/PN/UC ignore the character set", () => {
    assert.equal(decodeText(bytes(0xd0), ["ISO_IR 144"], "CS"), "Ð");
    assert.equal(decodeText(bytes(0xd0), ["ISO_IR 144"], "LO"), "а");
  });
  await t.step("unknown terms fall back to the default repertoire", () => {
    assert.equal(decodeText(bytes(0xe9), ["ISO_IR 999"], "LO"), "é");
  });
});

Deno.test("decodeText() decodes multi-byte character sets", async (t) => {
  await t.step("UTF-8, GB18030 and GBK", () => {
    assert.equal(decodeText(new TextEncoder().encode("王^小東"), ["ISO_IR 192"], "PN"), "王^小東");
    assert.equal(decodeText(bytes(0xd6, 0xd0, 0xce, 0xc4), ["GBK"], "LO"), "中文");
    assert.equal(decodeText(bytes(0xd6, 0xd0, 0xce, 0xc4), ["GB18030"], "LO"), "中文");
  });
});

Deno.test("decodeText() follows ISO 2022 escape sequences", async (t) => {
  await t.step("switching G1 between Latin-1 and Cyrillic", () => {
    const value = bytes(0x1b, "-A", 0xe9, "t", 0xe9, 0x1b, "-L", 0xd0);
    assert.equal(decodeText(value, ["ISO 2022 IR 100", "ISO 2022 IR 144"], "LO"), "étéа");
  });
  await t.step("JIS X 0201 katakana in G1 (IR 13)", () => {
    const value = bytes(0xd4, 0xcf, 0xc0, 0xde, "^", 0xc0, 0xdb, 0xb3);
    assert.equal(decodeText(value, ["ISO 2022 IR 13"], "PN"), "ﾔﾏﾀﾞ^ﾀﾛｳ");
  });
  await t.step("JIS X 0212 (IR 159) and GB 2312 (IR 58)", () => {
    assert.equal(
      decodeText(bytes(0x1b, "$(D", 0x30, 0x21, 0x1b, "(B^ABC"), ["", "ISO 2022 IR 159"], "PN"),
      "丂^ABC",
    );
    assert.equal(
      decodeText(bytes(0x1b, "$)A", 0xd6, 0xd0, 0xce, 0xc4, "^X"), ["", "ISO 2022 IR 58"], "PN"),
      "中文^X",
    );
  });
  await t.step("delimiters reset to the initial designation", () => {
    // After "\" the G1 set is back to the initial (none): 0xE9 is read as Latin-1 fallback, not Cyrillic.
    const value = bytes(0x1b, "-L", 0xd0, "\\", 0xd0);
    assert.equal(decodeText(value, ["ISO 2022 IR 100", "ISO 2022 IR 144"], "LO"), "а\\Ð");
  });
  await t.step("0x5C inside a JIS X 0208 character is not a delimiter", () => {
    // 0x245C in JIS X 0208 is HIRAGANA LETTER BO (ぼ; checked with Python's iso2022_jp codec).
    const value = bytes(0x1b, "$B", 0x24, 0x5c, 0x1b, "(B");
    assert.equal(decodeText(value, ["", "ISO 2022 IR 87"], "LO"), "ぼ");
  });
  await t.step("isIso2022()", () => {
    assert.equal(isIso2022(["", "ISO 2022 IR 87"]), true);
    assert.equal(isIso2022(["ISO_IR 100"]), false);
  });
});

/** pydicom 2.3.1's decoding of every non-ASCII text value in the corpus (checked, then written here). */
const EXPECTED: Record<string, Record<string, string[]>> = {
  "chrArab": { "00100010": ["قباني^لنزار"] },
  "chrFren": { "00100010": ["Buc^Jérôme"] },
  "chrGerm": { "00100010": ["Äneas^Rüdiger"] },
  "chrGreek": { "00100010": ["Διονυσιος"] },
  "chrH31": { "00100010": ["Yamada^Tarou=山田^太郎=やまだ^たろう"] },
  "chrH32": { "00100010": ["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"] },
  "chrHbrw": { "00100010": ["שרון^דבורה"] },
  "chrI2": { "00100010": ["Hong^Gildong=洪^吉洞=홍^길동"] },
  "chrJapMulti": {
    "00100010": ["やまだ^たろう"],
    "00101001": ["やまだ^たろう", "やまだ^たろう"],
    "001021B0": ["たろう"],
  },
  "chrKoreanMulti": {
    "00081070": ["김희중"],
    "00100010": ["김희중"],
    "00101001": ["김희중", "김희중"],
    "001021B0": ["김희중"],
  },
  "chrRuss": { "00100010": ["Люкceмбypг"] },
  "chrSQEncoding": { "00321064/0/00100010": ["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"] },
  // pydicom drops the trailing "=" of an empty phonetic group; the raw value keeps it.
  "chrX1": { "00100010": ["Wang^XiaoDong=王^小東="] },
  "chrX2": { "00100010": ["Wang^XiaoDong=王^小东="] },
  "test-SR": {
    "0040A073/0/0040A075": ["Riesmeier^Jörg"],
    "0040A730/2/0040A730/0/0040A160": ['Inferred Sample Text\nNew line.\n\r&%$§"!()<>{}/;'],
  },
};

Deno.test("elementStrings() decodes the corpus character set files like pydicom", async (t) => {
  const dir = corpusDir();
  for (const [file, values] of Object.entries(EXPECTED)) {
    await t.step(file, () => {
      const header = parseBuffer(Deno.readFileSync(`${dir}${file}.dcm`), file);
      for (const [path, expected] of Object.entries(values)) {
        const parts = path.split("/");
        let dataset: DicomDataset = header.dataset;
        for (let i = 0; i + 1 < parts.length; i += 2) {
          dataset = dataset.elements.get(parseInt(parts[i], 16))!.items![Number(parts[i + 1])];
        }
        const element = resolveBulkDataPath(header.dataset, path)!;
        assert.deepEqual(elementStrings(element, dataset), expected, `${file} ${path}`);
      }
    });
  }
});
