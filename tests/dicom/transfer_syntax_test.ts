import assert from "node:assert/strict";
import {
  DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
  DEFLATED_SYNTAXES,
  encodingOf,
  EXPLICIT_VR_BIG_ENDIAN,
  EXPLICIT_VR_LITTLE_ENDIAN,
  IMPLICIT_VR_LITTLE_ENDIAN,
  LOSSY_SYNTAXES,
  NATIVE_SYNTAXES,
  RLE_LOSSLESS,
} from "../../lib/dicom/transfer_syntax.ts";

Deno.test("transfer syntaxes: encodings and the native, deflated and lossy sets", async (t) => {
  await t.step("encodingOf() is implicit LE, explicit BE, or explicit LE for every other syntax", () => {
    assert.deepEqual(encodingOf(IMPLICIT_VR_LITTLE_ENDIAN), { explicit: false, little: true });
    assert.deepEqual(encodingOf(EXPLICIT_VR_BIG_ENDIAN), { explicit: true, little: false });
    for (
      const uid of [
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        RLE_LOSSLESS,
        "1.2.840.10008.1.2.4.50",
      ]
    ) {
      assert.deepEqual(encodingOf(uid), { explicit: true, little: true }, uid);
    }
  });

  await t.step("the four native syntaxes; deflated ones include JPIP Referenced Deflate", () => {
    assert.deepEqual(
      [...NATIVE_SYNTAXES].sort(),
      [
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
      ].sort(),
    );
    assert.deepEqual([...DEFLATED_SYNTAXES].sort(), [
      DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
      "1.2.840.10008.1.2.4.95",
    ]);
  });

  await t.step("lossy: JPEG baseline is, RLE and the native syntaxes are not", () => {
    assert.ok(LOSSY_SYNTAXES.has("1.2.840.10008.1.2.4.50"));
    for (const uid of [RLE_LOSSLESS, "1.2.840.10008.1.2.4.70", ...NATIVE_SYNTAXES]) {
      assert.ok(!LOSSY_SYNTAXES.has(uid), uid);
    }
  });
});
