import assert from "node:assert/strict";
import { parseMatcher, parseSearch, QueryError, type SearchOptions } from "../../lib/catalog/qido_query.ts";
import {
  matchDataset,
  matchPersonName,
  normalizeDate,
  normalizeDateTime,
  normalizePn,
  normalizeTime,
} from "../../lib/catalog/matching.ts";

const STUDY_SEARCH: SearchOptions = {
  level: "study",
  matchable: ["study"],
  defaultLimit: 100,
  maxLimit: 1000,
};

Deno.test("parseMatcher() parses every matching form", async (t) => {
  const cases: [string, string, unknown][] = [
    ["", "LO", { kind: "universal" }],
    ['""', "LO", { kind: "empty" }],
    ["ABC", "LO", { kind: "single", value: "ABC" }],
    [" ABC ", "SH", { kind: "single", value: "ABC" }],
    ["AB*", "LO", { kind: "wildcard", pattern: "AB*" }],
    ["A?C", "SH", { kind: "wildcard", pattern: "A?C" }],
    ["*", "LO", { kind: "universal" }],
    ["1.2.3,1.2.4", "UI", { kind: "list", values: ["1.2.3", "1.2.4"] }],
    ["1.2.3\\1.2.4", "UI", { kind: "list", values: ["1.2.3", "1.2.4"] }],
    ["CT,MR", "CS", { kind: "list", values: ["CT", "MR"] }],
    ["20240101", "DA", { kind: "range", from: "20240101", to: "20240101" }],
    ["20240101-20241231", "DA", { kind: "range", from: "20240101", to: "20241231" }],
    ["20240101-", "DA", { kind: "range", from: "20240101", to: undefined }],
    ["-20241231", "DA", { kind: "range", from: undefined, to: "20241231" }],
    ["1230", "TM", { kind: "range", from: "123000.000000", to: "123059.999999" }],
    ["08-0930", "TM", { kind: "range", from: "080000.000000", to: "093059.999999" }],
    ["20240101-20240102", "DT", {
      kind: "range",
      from: "20240101000000.000000",
      to: "20240102235959.999999",
    }],
    ["20240101120000-0500", "DT", {
      kind: "range",
      from: "20240101120000.000000",
      to: "20240101120000.999999",
    }],
    ["12", "IS", { kind: "number", value: 12 }],
    ["müller^jürgen", "PN", { kind: "single", value: "MULLER^JURGEN" }],
    ["*bra*", "PN", { kind: "wildcard", pattern: "*BRA*" }],
  ];
  for (const [value, vr, expected] of cases) {
    await t.step(
      `${vr} ${JSON.stringify(value)}`,
      () => assert.deepEqual(parseMatcher("X", value, vr), expected),
    );
  }
  const bad: [string, string, RegExp][] = [
    ["2024*", "DA", /wildcards are not allowed on DA/],
    ["1.2.*", "UI", /wildcards are not allowed on UI/],
    ["1.02.3", "UI", /not a valid UID/],
    ["20241301", "DA", /not a DA value/],
    ["20241231-20240101", "DA", /ends before it starts/],
    ["2024-01-01", "DA", /use a DA value or range/],
    ["-", "DA", /at least one end/],
    ["2561", "TM", /not a TM value/],
    ["abc", "IS", /use a number/],
    ["1*", "IS", /wildcards are not allowed/],
  ];
  for (const [value, vr, message] of bad) {
    await t.step(`${vr} ${JSON.stringify(value)} is rejected`, () => {
      assert.throws(
        () => parseMatcher("X", value, vr),
        (e) => e instanceof QueryError && message.test(e.message),
      );
    });
  }
});

Deno.test("normalizers fold dates, times, date-times and names", () => {
  assert.equal(normalizeDate("2024.01.02"), "20240102");
  assert.equal(normalizeDate("2024012"), undefined);
  assert.equal(normalizeTime("12:30:15"), "123015.000000");
  assert.equal(normalizeTime("123015.5"), "123015.500000");
  assert.equal(normalizeTime("123015.5", true), "123015.599999");
  assert.equal(normalizeTime("12", true), "125959.999999");
  assert.equal(normalizeDateTime("2024", true), "20241231235959.999999");
  assert.equal(normalizeDateTime("20240102+0100"), "20240102000000.000000");
  assert.equal(normalizePn(" Müller ^ Jürgen ^^ "), "MULLER^JURGEN");
  assert.equal(normalizePn("Ñúñez^José=ヌニェス^ホセ"), "NUNEZ^JOSE=ヌニェス^ホセ");
});

Deno.test("matchPersonName() is case- and accent-insensitive, fuzzy per component", async (t) => {
  const name = normalizePn("Ñúñez^José Luis=ヌニェス^ホセ");
  const cases: [string, boolean, boolean][] = [
    ["NUNEZ^JOSE LUIS", false, true],
    ["ñúñez^josé luis", false, true],
    ["nunez", false, false],
    ["nunez", true, true],
    ["luis", true, true],
    ["nu^jo", true, true],
    ["jo^nu", true, false],
    ["*ez^jo*", false, true],
    ["ヌニェス*", false, true],
    ["*bra*", true, false],
  ];
  for (const [query, fuzzy, expected] of cases) {
    await t.step(`${query} fuzzy=${fuzzy}`, () => {
      const matcher = parseMatcher("PatientName", query, "PN");
      assert.equal(matchPersonName(name, matcher, fuzzy), expected);
    });
  }
});

Deno.test("matchDataset() matches into sequences, multi-valued and empty attributes", () => {
  const data = {
    "00081032": {
      vr: "SQ",
      Value: [{ "00080100": { vr: "SH", Value: ["P1"] } }, { "00080100": { vr: "SH", Value: ["P2"] } }],
    },
    "00080061": { vr: "CS", Value: ["CT", "PT"] },
    "00080050": { vr: "SH" },
  };
  const filter = (query: string) => parseSearch(new URLSearchParams(query), STUDY_SEARCH).filters[0];
  assert.equal(matchDataset(data, filter("00081032.00080100=P2")), true);
  assert.equal(matchDataset(data, filter("ProcedureCodeSequence.CodeValue=P3")), false);
  assert.equal(matchDataset(data, filter('AccessionNumber=""')), true);
  assert.equal(matchDataset(data, filter('StudyID=""')), true);
  assert.equal(matchDataset(data, filter("AccessionNumber=A*")), false);
});

Deno.test("parseSearch() reads includefield, fuzzymatching, limit and offset and names bad parameters", async (t) => {
  await t.step("includefield lists, repeats, tags and all", () => {
    const q = parseSearch(
      new URLSearchParams(
        "includefield=00081030,StudyID&includefield=PatientAge&includefield=all&limit=5&offset=10",
      ),
      STUDY_SEARCH,
    );
    assert.deepEqual(q.include, [0x00081030, 0x00200010, 0x00101010]);
    assert.equal(q.includeAll, true);
    assert.equal(q.limit, 5);
    assert.equal(q.offset, 10);
    assert.equal(q.serverLimit, false);
  });
  await t.step("limit above the maximum is cut with a warning", () => {
    const q = parseSearch(new URLSearchParams("limit=5000"), STUDY_SEARCH);
    assert.equal(q.limit, 1000);
    assert.equal(q.serverLimit, true);
    assert.match(q.warnings[0], /above the maximum of 1000/);
  });
  await t.step("attributes of other levels are ignored with a warning", () => {
    const q = parseSearch(new URLSearchParams("Modality=CT&includefield=00080060"), STUDY_SEARCH);
    assert.equal(q.filters.length, 0);
    assert.equal(q.warnings.length, 2);
  });
  const bad: [string, RegExp][] = [
    ["limit=abc", /Invalid limit="abc"/],
    ["limit=0", /Invalid limit=0/],
    ["offset=-1", /Invalid offset="-1"/],
    ["fuzzymatching=yes", /Invalid fuzzymatching/],
    ["FooBar=1", /Unknown attribute "FooBar"/],
    ["includefield=NoSuchKeyword", /Unknown attribute "NoSuchKeyword" in includefield/],
    ["StudyDate=20240101-2024", /Invalid StudyDate=/],
    ["PatientName.FamilyName=x", /Unknown attribute|is not a sequence/],
    ["00100010.00100020=x", /not a sequence/],
    ["ProcedureCodeSequence=x", /a sequence takes an empty value/],
  ];
  for (const [query, message] of bad) {
    await t.step(query, () => {
      assert.throws(() => parseSearch(new URLSearchParams(query), STUDY_SEARCH), (e) => {
        return e instanceof QueryError && message.test(e.message);
      });
    });
  }
});
