import assert from "node:assert/strict";
import {
  checkUid,
  instanceKey,
  isValidUid,
  MAX_UID_LENGTH,
  parseInstanceKey,
  seriesPrefix,
  studyPrefix,
} from "../../lib/dicom/uid.ts";

/** A valid UID of exactly `length` characters. */
function uidOfLength(length: number): string {
  const head = "1.2.";
  return head + "9".repeat(length - head.length);
}

Deno.test("isValidUid()", async (t) => {
  await t.step("accepts well-formed UIDs", () => {
    for (const uid of ["1", "0", "1.2", "1.2.840.10008.1.2.1", "2.25.123456789012345678901234567890"]) {
      assert.equal(isValidUid(uid), true, uid);
    }
  });

  await t.step("allows a component that is exactly 0", () => {
    assert.equal(isValidUid("1.0.3"), true);
    assert.equal(isValidUid("0.0"), true);
    assert.equal(isValidUid("1.2.0"), true);
  });

  await t.step("rejects components with leading zeros", () => {
    for (const uid of ["1.02.3", "01.2", "1.2.00", "1.2.007"]) assert.equal(isValidUid(uid), false, uid);
  });

  await t.step("rejects empty components and empty strings", () => {
    for (const uid of ["", ".", "1..2", ".1.2", "1.2.", "1.2..", "..", "1.2..3"]) {
      assert.equal(isValidUid(uid), false, JSON.stringify(uid));
    }
  });

  await t.step("rejects letters, separators, encoded slashes and whitespace", () => {
    for (
      const uid of [
        "1.2.a",
        "abc",
        "1.2/3",
        "1.2%2F3",
        "1.2%2f3",
        "%2F",
        "1.2 3",
        " 1.2",
        "1.2\n",
        "1.2\0",
        "1,2",
        "-1.2",
        "1.2e3",
        "../1.2",
        "１.２", // full-width digits
      ]
    ) {
      assert.equal(isValidUid(uid), false, JSON.stringify(uid));
    }
  });

  await t.step("accepts 64 characters and rejects 65", () => {
    assert.equal(MAX_UID_LENGTH, 64);
    assert.equal(uidOfLength(64).length, 64);
    assert.equal(isValidUid(uidOfLength(64)), true);
    assert.equal(isValidUid(uidOfLength(65)), false);
    assert.equal(isValidUid(uidOfLength(200)), false);
  });
});

Deno.test("checkUid()", async (t) => {
  await t.step("returns a valid UID unchanged", () => {
    assert.equal(checkUid("1.2.3", "StudyInstanceUID"), "1.2.3");
  });

  await t.step("throws a RangeError naming the attribute and the value", () => {
    assert.throws(() => checkUid("1.2.a", "StudyInstanceUID"), (error: unknown) => {
      assert.ok(error instanceof RangeError);
      assert.match(error.message, /StudyInstanceUID/);
      assert.match(error.message, /"1\.2\.a"/);
      return true;
    });
  });

  await t.step("explains each kind of problem", () => {
    assert.throws(() => checkUid("", "SeriesInstanceUID"), /SeriesInstanceUID.*empty/);
    assert.throws(() => checkUid(uidOfLength(65), "SOPInstanceUID"), /65 characters/);
    assert.throws(() => checkUid("1.02", "SOPInstanceUID"), /leading zeros/);
    assert.throws(() => checkUid("1..2", "SOPInstanceUID"), /non-empty/);
    assert.throws(() => checkUid("1.2%2F3", "SOPInstanceUID"), /only digits and dots/);
  });

  await t.step("shortens very long values in the message", () => {
    assert.throws(() => checkUid("9".repeat(5000), "StudyInstanceUID"), (error: unknown) => {
      assert.ok(error instanceof RangeError);
      assert.ok(error.message.length < 300, `message has ${error.message.length} chars`);
      return true;
    });
  });
});

Deno.test("instanceKey() / seriesPrefix() / studyPrefix()", async (t) => {
  await t.step("lays keys out as {study}/{series}/{sop}.dcm", () => {
    assert.equal(instanceKey("1.2.3", "4.5", "6.7"), "1.2.3/4.5/6.7.dcm");
  });

  await t.step("prefixes end in '/'", () => {
    assert.equal(studyPrefix("1.2.3"), "1.2.3/");
    assert.equal(seriesPrefix("1.2.3", "4.5"), "1.2.3/4.5/");
  });

  await t.step("a study prefix never matches keys of a study whose UID extends it", () => {
    const prefix = studyPrefix("1.2.3");
    assert.equal(instanceKey("1.2.34", "5", "6").startsWith(prefix), false);
    assert.equal(instanceKey("1.2.3.4", "5", "6").startsWith(prefix), false);
    assert.equal("1.2.34.dcm".startsWith(prefix), false);
    assert.equal(instanceKey("1.2.3", "5", "6").startsWith(prefix), true);
  });

  await t.step("a series prefix never matches a series whose UID extends it", () => {
    const prefix = seriesPrefix("1.2.3", "4.5");
    assert.equal(instanceKey("1.2.3", "4.56", "7").startsWith(prefix), false);
    assert.equal(instanceKey("1.2.3", "4.5.6", "7").startsWith(prefix), false);
    assert.equal(instanceKey("1.2.3", "4.5", "7").startsWith(prefix), true);
  });

  await t.step("an instance key never is a prefix of another instance's key", () => {
    const a = instanceKey("1.2.3", "4.5", "1.2.3");
    const b = instanceKey("1.2.3", "4.5", "1.2.34");
    assert.equal(b.startsWith(a), false);
    assert.equal(a.startsWith(b), false);
  });
});

Deno.test("parseInstanceKey()", async (t) => {
  await t.step("round-trips instanceKey()", () => {
    const uids = { study: "1.2.840.1", series: "1.2.840.1.2", instance: "1.2.840.1.2.3" };
    assert.deepEqual(parseInstanceKey(instanceKey(uids.study, uids.series, uids.instance)), uids);
  });

  await t.step("returns null for keys off the layout", () => {
    for (
      const key of [
        "1.2.3/4.5/6.7", // no .dcm
        "1.2.3/4.5/6.7.DCM",
        "1.2.3/6.7.dcm", // two levels
        "a/1.2.3/4.5/6.7.dcm", // four levels
        "1.2.3/4.5/6.7/.dcm",
        "1.2.3//6.7.dcm",
        "1.2.3/4.5/.dcm",
        "1.2.a/4.5/6.7.dcm",
        "1.2.3/4.05/6.7.dcm",
        "1.2.3/4.5/6..7.dcm",
        "unkeyed/x/y.dcm",
        ".dcm",
        "",
        "1.2.3/4.5/6.7.dcm.tmp",
        "/1.2.3/4.5/6.7.dcm",
      ]
    ) {
      assert.equal(parseInstanceKey(key), null, JSON.stringify(key));
    }
  });

  await t.step("rejects a key whose UID is longer than 64 characters", () => {
    assert.equal(parseInstanceKey(`1.2/3.4/${uidOfLength(65)}.dcm`), null);
    assert.notEqual(parseInstanceKey(`1.2/3.4/${uidOfLength(64)}.dcm`), null);
  });
});
