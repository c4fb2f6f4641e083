import assert from "node:assert/strict";
import { type DicomJson, stringifyDicomJson } from "../../lib/dicom/dicom_json.ts";
import {
  matchDataset,
  matchPersonName,
  normalizeDate,
  normalizeDateTime,
  normalizePn,
  normalizeTime,
  parseMatcher,
  parseSearch,
  QueryError,
  type SearchOptions,
} from "../../lib/catalog/matching.ts";
import { parseBuffer, parseObject } from "../../lib/dicom/part10.ts";
import { openSqliteCatalog, type SqliteCatalog } from "../../lib/catalog/sqlite_catalog.ts";
import type { ObjectInfo } from "../../lib/store/store.ts";
import { sharedCorpus } from "../_corpus.ts";
import { buildPart10 } from "../_dicom_fixtures.ts";
import { generatedCorpus, STUDIES } from "../_qido_fixtures.ts";
import { documentText, headerJson, resolveBulkDataUris } from "../../lib/catalog/documents.ts";

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

Deno.test("resolveBulkDataUris() makes stored relative URIs absolute", () => {
  const text =
    '{"00091010":{"vr":"OB","BulkDataURI":"bulkdata/00091010"},"00100010":{"vr":"PN","Value":[{"Alphabetic":"\\"BulkDataURI\\":\\""}]}}';
  const out = JSON.parse(resolveBulkDataUris(text, "http://h/aets/A/studies/1/series/2/instances/3"));
  assert.equal(
    out["00091010"].BulkDataURI,
    "http://h/aets/A/studies/1/series/2/instances/3/bulkdata/00091010",
  );
  assert.equal(out["00100010"].Value[0].Alphabetic, '"BulkDataURI":"');
});

// ---- the SQLite catalog itself ----

const files = generatedCorpus();
const infoOf = (key: string, bytes: Uint8Array, etag = "e1"): ObjectInfo => ({
  key,
  size: bytes.length,
  etag,
});

async function filled(catalog: SqliteCatalog, aet = "A"): Promise<void> {
  for (const f of files) {
    await catalog.recordInstance(aet, "a", infoOf(f.key, f.bytes), parseBuffer(f.bytes, f.key));
  }
}

Deno.test("SqliteCatalog records instances, counts series and studies, forgets removed ones", async () => {
  const catalog = await openSqliteCatalog(":memory:");
  try {
    await filled(catalog);
    const [status] = await catalog.status("A");
    assert.equal(status.objects, files.length);
    assert.equal(status.indexed, files.length);
    assert.equal(status.studies, STUDIES.length);
    assert.equal(status.series, STUDIES.flatMap((s) => s.series).length);
    const query = { aet: "A", level: "study" as const, filters: [], limit: 100, offset: 0 };
    const study = (await catalog.search({ ...query, study: "2.25.1002" }))[0];
    assert.deepEqual([study.studySeries, study.studyInstances, study.modalities], [3, 5, ["MR", "SR"]]);

    await catalog.removeInstance("A", "2.25.1002/2.25.1002.3/2.25.1002.3.1.dcm");
    const after = (await catalog.search({ ...query, study: "2.25.1002" }))[0];
    assert.deepEqual([after.studySeries, after.studyInstances, after.modalities], [2, 4, ["MR"]]);
    // The series' representative is removed: another instance takes over, from its stored JSON.
    await catalog.removeInstance("A", "2.25.1002/2.25.1002.1/2.25.1002.1.1.dcm");
    const series = await catalog.search({ ...query, level: "series", study: "2.25.1002" });
    assert.deepEqual(series.map((r) => [r.series, r.seriesInstances]), [["2.25.1002.1", 1], [
      "2.25.1002.2",
      2,
    ]]);
    for (const f of files.filter((f) => f.key.startsWith("2.25.1002/"))) {
      await catalog.removeInstance("A", f.key);
    }
    assert.deepEqual(await catalog.search({ ...query, study: "2.25.1002" }), []);

    const stored = await catalog.instanceMetadata("A", "2.25.1001", "2.25.1001.2");
    assert.equal(stored.length, 3);
    const json = JSON.parse(stored[0].json);
    assert.equal(json["7FE00010"].BulkDataURI, "bulkdata/7FE00010");
    assert.equal(stored[0].etag, "e1");
  } finally {
    await catalog.close();
  }
});

Deno.test("SqliteCatalog files layout and UID problems as ignored / failed with the reason", async () => {
  const catalog = await openSqliteCatalog(":memory:");
  try {
    const f = files[0];
    const header = parseBuffer(f.bytes, f.key);
    assert.equal(
      await catalog.recordInstance("A", "a", infoOf("notes/readme.dcm", f.bytes), header),
      "ignored",
    );
    assert.equal(
      await catalog.recordInstance("A", "a", infoOf("2.25.9/2.25.9.1/2.25.9.1.1.dcm", f.bytes), header),
      "failed",
    );
    await catalog.recordFailure(
      "A",
      infoOf("2.25.8/2.25.8.1/2.25.8.1.1.dcm", f.bytes),
      "Cannot parse: DICM missing",
    );
    const failures = await catalog.failures("A");
    assert.deepEqual(failures.map((p) => [p.key, p.state]), [
      ["2.25.8/2.25.8.1/2.25.8.1.1.dcm", "failed"],
      ["2.25.9/2.25.9.1/2.25.9.1.1.dcm", "failed"],
      ["notes/readme.dcm", "ignored"],
    ]);
    assert.match(failures[1].error, /StudyInstanceUID 2\.25\.1001 does not match the key \(2\.25\.9\)/);
    assert.match(failures[2].error, /Key is not/);
    assert.deepEqual(
      await catalog.search({ aet: "A", level: "study", filters: [], limit: 10, offset: 0 }),
      [],
    );
  } finally {
    await catalog.close();
  }
});

Deno.test("SqliteCatalog listing: merge by key, deletions, changed ETags, STOW during a crawl survives", async () => {
  const catalog = await openSqliteCatalog(":memory:");
  try {
    const [a, b, c] = files.slice(0, 3).map((f) => infoOf(f.key, f.bytes));
    let ticket = (await catalog.beginCrawl("A", "a", "me", 60_000))!;
    assert.deepEqual(await catalog.applyListing(ticket, [a, b]), {
      added: 2,
      changed: 0,
      unchanged: 0,
      ignored: 0,
    });
    assert.deepEqual(await catalog.applyListing(ticket, [c, infoOf("x.txt", new Uint8Array(1))]), {
      added: 1,
      changed: 0,
      unchanged: 0,
      ignored: 1,
    });
    assert.equal(await catalog.finishListing(ticket), 0);
    await catalog.endCrawl(ticket, { complete: true });
    assert.equal((await catalog.pendingObjects("A", {}, 10)).length, 3);

    // Second crawl: b changed, c deleted, and a STOW writes d while the listing runs (after it started).
    await new Promise((r) => setTimeout(r, 2));
    ticket = (await catalog.beginCrawl("A", "a", "me", 60_000))!;
    const d = files[5];
    await catalog.recordInstance("A", "a", infoOf(d.key, d.bytes), parseBuffer(d.bytes, d.key));
    assert.deepEqual(
      await catalog.applyListing(ticket, [a, { ...b, etag: "e2" }, infoOf("x.txt", new Uint8Array(1))]),
      {
        added: 0,
        changed: 1,
        unchanged: 2,
        ignored: 0,
      },
    );
    assert.equal(await catalog.finishListing(ticket), 1);
    await catalog.endCrawl(ticket, { complete: true });
    const keys = (await catalog.instanceMetadata("A", d.key.split("/")[0])).map((s) => s.key);
    assert.ok(keys.includes(d.key), "the instance stored during the crawl is kept");
    const pending = (await catalog.pendingObjects("A", {}, 10)).map((p) => [p.key, p.etag]);
    assert.deepEqual(pending, [[a.key, "e1"], [b.key, "e2"]]);

    // Out-of-order listings are refused rather than deleting rows.
    ticket = (await catalog.beginCrawl("A", "a", "me", 60_000))!;
    await assert.rejects(catalog.applyListing(ticket, [b, a]), /not in ascending key order/);
  } finally {
    await catalog.close();
  }
});

Deno.test("SqliteCatalog leases: one crawler per AET; a new bucket clears the AET", async () => {
  const catalog = await openSqliteCatalog(":memory:");
  try {
    await filled(catalog);
    const held = await catalog.beginCrawl("A", "a", "one", 60_000);
    assert.ok(held);
    assert.equal(await catalog.beginCrawl("A", "a", "two", 60_000), undefined);
    assert.equal((await catalog.status("A"))[0].crawlingBy, "one");
    await catalog.endCrawl(held, { complete: true });
    const next = await catalog.beginCrawl("A", "other-bucket", "two", 60_000);
    assert.ok(next);
    const [status] = await catalog.status("A");
    assert.deepEqual([status.bucket, status.objects, status.studies], ["other-bucket", 0, 0]);
  } finally {
    await catalog.close();
  }
});

Deno.test("openSqliteCatalog() keeps a file, rebuilds a foreign one and falls back to memory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/catalog.sqlite`;
    let catalog = await openSqliteCatalog(path);
    await filled(catalog);
    await catalog.close();
    catalog = await openSqliteCatalog(path);
    assert.equal((await catalog.status("A"))[0].indexed, files.length);
    await catalog.close();

    // Another bulk data threshold: the stored JSON would differ, so the file is emptied.
    catalog = await openSqliteCatalog(path, { bulkDataThreshold: 10 });
    assert.deepEqual(await catalog.status(), []);
    await catalog.close();

    // Not a database at all, and an unwritable place: both fall back to memory with a warning.
    await Deno.writeTextFile(
      `${dir}/junk.sqlite`,
      "this is not a database, just text that is long enough to check",
    );
    for (const bad of [`${dir}/junk.sqlite`, `${dir}/no/such/dir/catalog.sqlite`]) {
      const warnings: string[] = [];
      catalog = await openSqliteCatalog(bad, { log: (line) => warnings.push(line) });
      assert.equal(catalog.location, ":memory:");
      assert.match(warnings[0], /Using an in-memory catalog/);
      await filled(catalog);
      await catalog.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SqliteCatalog stores binary values per the bulk data threshold", async () => {
  const bytes = buildPart10([
    { tag: 0x00080018, vr: "UI", value: "2.25.7.1.1" },
    { tag: 0x0020000d, vr: "UI", value: "2.25.7" },
    { tag: 0x0020000e, vr: "UI", value: "2.25.7.1" },
    { tag: 0x00091010, vr: "LO", value: "CREATOR" },
    { tag: 0x00091011, vr: "OB", value: new Uint8Array(16) },
    { tag: 0x00091012, vr: "OB", value: new Uint8Array(64) },
  ]);
  const catalog = await openSqliteCatalog(":memory:", { bulkDataThreshold: 32 });
  try {
    const key = "2.25.7/2.25.7.1/2.25.7.1.1.dcm";
    await catalog.recordInstance(
      "A",
      "a",
      infoOf(key, bytes),
      parseBuffer(bytes, key, { bulkThreshold: 32 }),
    );
    const [stored] = await catalog.instanceMetadata("A", "2.25.7");
    const json = JSON.parse(stored.json);
    assert.equal(typeof json["00091011"].InlineBinary, "string");
    assert.equal(json["00091012"].BulkDataURI, "bulkdata/00091012");
  } finally {
    await catalog.close();
  }
});

/** Everything a search can see of one AET, level by level. */
async function everything(catalog: SqliteCatalog, aet = "A") {
  const query = { aet, filters: [], limit: 1000, offset: 0 };
  return {
    status: (await catalog.status(aet)).map((s) => ({ ...s, completeAt: undefined })),
    failures: await catalog.failures(aet),
    studies: await catalog.search({ ...query, level: "study" }),
    series: await catalog.search({ ...query, level: "series" }),
    instances: await catalog.search({ ...query, level: "instance" }),
  };
}

Deno.test("SqliteCatalog.recordInstances() files a batch as one call per instance would", async () => {
  const one = await openSqliteCatalog(":memory:");
  const batched = await openSqliteCatalog(":memory:");
  try {
    const f = files[0];
    const header = parseBuffer(f.bytes, f.key);
    // every instance, one replaced by a later version, one key outside the layout, one with another's UIDs
    const items = [
      ...files.map((f) => ({ info: infoOf(f.key, f.bytes), header: parseBuffer(f.bytes, f.key) })),
      { info: infoOf(f.key, f.bytes, "e2"), header },
      { info: infoOf("notes/readme.dcm", f.bytes), header },
      { info: infoOf("2.25.9/2.25.9.1/2.25.9.1.1.dcm", f.bytes), header },
    ];
    const outcomes = [];
    for (const { info, header } of items) outcomes.push(await one.recordInstance("A", "a", info, header));
    const results = await batched.recordInstances("A", "a", items);
    assert.deepEqual(results, outcomes.map((value) => ({ status: "fulfilled", value })));
    assert.deepEqual(outcomes.slice(-3), ["indexed", "ignored", "failed"]);
    assert.deepEqual(await everything(batched), await everything(one));
    assert.equal((await batched.status("A"))[0].studies, STUDIES.length);

    // a second batch into the same series: counts follow, the series keep their representative
    const more = buildPart10([
      { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.2" },
      { tag: 0x00080018, vr: "UI", value: `${f.key.split("/")[1]}.99` },
      { tag: 0x0020000d, vr: "UI", value: f.key.split("/")[0] },
      { tag: 0x0020000e, vr: "UI", value: f.key.split("/")[1] },
    ]);
    const key = `${f.key.split("/").slice(0, 2).join("/")}/${f.key.split("/")[1]}.99.dcm`;
    const item = { info: infoOf(key, more), header: parseBuffer(more, key) };
    await one.recordInstance("A", "a", item.info, item.header);
    assert.deepEqual(await batched.recordInstances("A", "a", [item]), [{
      status: "fulfilled",
      value: "indexed",
    }]);
    assert.deepEqual(await everything(batched), await everything(one));
  } finally {
    await one.close();
    await batched.close();
  }
});

Deno.test("SqliteCatalog.recordInstances(): an instance that cannot be filed fails alone", async () => {
  const catalog = await openSqliteCatalog(":memory:");
  try {
    const [a, b] = files;
    const results = await catalog.recordInstances("A", "a", [
      { info: infoOf(a.key, a.bytes), header: parseBuffer(a.bytes, a.key) },
      // not a parsed header: it cannot be turned into DICOM JSON
      { info: infoOf(b.key, b.bytes), header: {} as ReturnType<typeof parseBuffer> },
    ]);
    assert.equal(results[0].status, "fulfilled");
    assert.equal(results[1].status, "rejected");
    assert.deepEqual((await catalog.instanceMetadata("A", a.key.split("/")[0])).map((s) => s.key), [a.key]);
    assert.deepEqual(await catalog.recordInstances("A", "a", []), []);
    // recordInstance rejects with the reason
    await assert.rejects(
      catalog.recordInstance("A", "a", infoOf(b.key, b.bytes), {} as ReturnType<typeof parseBuffer>),
    );

    // the whole batch cannot be written: every item is rejected with the reason, nothing is half-written
    await catalog.close();
    const closed = await catalog.recordInstances("A", "a", [
      { info: infoOf(b.key, b.bytes), header: parseBuffer(b.bytes, b.key) },
    ]);
    assert.equal(closed[0].status, "rejected");
  } finally {
    await catalog.close();
  }
});

Deno.test("documentText() writes exactly what stringifyDicomJson() writes", async () => {
  const headers = generatedCorpus().map((f) => parseBuffer(f.bytes, f.key));
  for (const f of await sharedCorpus()) {
    try {
      headers.push(await parseObject(f.bytes, f.name));
    } catch {
      // the corpus holds broken files on purpose
    }
  }
  assert.ok(headers.length > 20);
  for (const header of headers) {
    for (const threshold of [0, 1024, 1 << 30]) {
      const json = headerJson(header, threshold);
      assert.equal(documentText(json), stringifyDicomJson(json));
    }
  }
  // keys JavaScript orders its own way (all digits: first), keys added out of order, at the top and in items
  const item = { "30060022": { vr: "IS", Value: [1] }, "00081150": { vr: "UI", Value: ["1.2"] } };
  const cases: DicomJson[] = [
    { "30060020": { vr: "SQ", Value: [item] }, "00100010": { vr: "PN", Value: [{ Alphabetic: "A^B" }] } },
    { "00200013": { vr: "IS", Value: [2] }, "00080018": { vr: "UI", Value: ["1.2.3"] } },
    {
      "00080018": { vr: "UI" },
      "0040A730": { vr: "SQ", Value: [{ "0040A160": { vr: "UT" }, "0040A040": { vr: "CS" } }] },
    },
    { "00080018": { vr: "UI", Value: ["1.2"] }, "7FE00010": { vr: "OW", BulkDataURI: "bulkdata/7FE00010" } },
  ];
  for (const json of cases) assert.equal(documentText(json), stringifyDicomJson(json));
  assert.equal(documentText(cases[3]), JSON.stringify(cases[3]));
  assert.match(documentText(cases[0]), /^\{"00100010":.*"30060020":\{"vr":"SQ","Value":\[\{"00081150":/);
});
