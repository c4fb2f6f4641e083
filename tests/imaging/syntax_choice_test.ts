import assert from "node:assert/strict";
import {
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
} from "../../lib/dicom/transfer_syntax.ts";
import { chooseSyntax } from "../../lib/imaging/syntax_choice.ts";

const JPEG_BASELINE = "1.2.840.10008.1.2.4.50";
const JPEG_2000 = "1.2.840.10008.1.2.4.90";
const RLE = "1.2.840.10008.1.2.5";
const NO = { reEncode: false };
const YES = { reEncode: true };
const ALL = [
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
  EXPLICIT_VR_BIG_ENDIAN,
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  JPEG_BASELINE,
  JPEG_2000,
  RLE,
];

Deno.test("chooseSyntax() picks the syntax to send from the client's wishes and the server's conversions", async (t) => {
  await t.step("'*' sends every instance as stored, without conversion or warning", () => {
    for (const stored of ALL) {
      for (const caps of [NO, YES]) {
        assert.deepEqual(
          chooseSyntax(stored, ["*"], caps),
          { transferSyntax: stored, convert: false },
          stored,
        );
      }
    }
  });

  await t.step("the default (undefined) sends Explicit VR Little Endian as stored", () => {
    assert.deepEqual(chooseSyntax(EXPLICIT_VR_LITTLE_ENDIAN, [undefined], NO), {
      transferSyntax: EXPLICIT_VR_LITTLE_ENDIAN,
      convert: false,
    });
  });

  await t.step("the default converts ILE, EBE and deflated to ELE when re-encoding is available", () => {
    for (
      const stored of [IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN]
    ) {
      assert.deepEqual(chooseSyntax(stored, [undefined], YES), {
        transferSyntax: EXPLICIT_VR_LITTLE_ENDIAN,
        convert: true,
      });
    }
  });

  await t.step("the default sends as stored with a warning when it cannot convert", () => {
    for (
      const [stored, caps] of [[IMPLICIT_VR_LITTLE_ENDIAN, NO], [JPEG_BASELINE, NO], [
        JPEG_BASELINE,
        YES,
      ]] as const
    ) {
      const choice = chooseSyntax(stored, [undefined], caps);
      assert.equal(choice?.transferSyntax, stored);
      assert.equal(choice?.convert, false);
      assert.match(choice?.warning ?? "", new RegExp(stored.replaceAll(".", "\\.")));
    }
  });

  await t.step("an explicit UID matching the stored syntax is sent as stored", () => {
    for (const stored of ALL) {
      assert.deepEqual(chooseSyntax(stored, [stored], NO), { transferSyntax: stored, convert: false });
    }
  });

  await t.step("an explicit ELE request converts only when re-encoding is available", () => {
    assert.equal(chooseSyntax(IMPLICIT_VR_LITTLE_ENDIAN, [EXPLICIT_VR_LITTLE_ENDIAN], NO), null);
    assert.deepEqual(chooseSyntax(IMPLICIT_VR_LITTLE_ENDIAN, [EXPLICIT_VR_LITTLE_ENDIAN], YES), {
      transferSyntax: EXPLICIT_VR_LITTLE_ENDIAN,
      convert: true,
    });
    // Compressed pixel data needs decoding: not available either way.
    assert.equal(chooseSyntax(JPEG_BASELINE, [EXPLICIT_VR_LITTLE_ENDIAN], YES), null);
  });

  await t.step("an explicit non-matching UID cannot be produced (null)", () => {
    assert.equal(chooseSyntax(EXPLICIT_VR_LITTLE_ENDIAN, [JPEG_BASELINE], YES), null);
    assert.equal(chooseSyntax(JPEG_2000, [JPEG_BASELINE], YES), null);
    assert.equal(chooseSyntax(EXPLICIT_VR_LITTLE_ENDIAN, [IMPLICIT_VR_LITTLE_ENDIAN], YES), null);
    assert.equal(chooseSyntax(EXPLICIT_VR_LITTLE_ENDIAN, [], YES), null);
  });

  await t.step("takes the first wish that can be met, in the client's order", () => {
    assert.deepEqual(chooseSyntax(JPEG_2000, [JPEG_BASELINE, JPEG_2000, "*"], NO), {
      transferSyntax: JPEG_2000,
      convert: false,
    });
    assert.deepEqual(chooseSyntax(JPEG_2000, [JPEG_BASELINE, "*"], NO), {
      transferSyntax: JPEG_2000,
      convert: false,
    });
    assert.deepEqual(
      chooseSyntax(IMPLICIT_VR_LITTLE_ENDIAN, [EXPLICIT_VR_LITTLE_ENDIAN, "*"], NO),
      { transferSyntax: IMPLICIT_VR_LITTLE_ENDIAN, convert: false },
    );
    assert.deepEqual(
      chooseSyntax(IMPLICIT_VR_LITTLE_ENDIAN, ["*", EXPLICIT_VR_LITTLE_ENDIAN], YES),
      { transferSyntax: IMPLICIT_VR_LITTLE_ENDIAN, convert: false },
    );
  });
});
