import assert from "node:assert/strict";
import { parseConfig } from "../../lib/config/config.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { parseObject } from "../../lib/dicom/part10.ts";
import { parseInstanceKey } from "../../lib/dicom/uid.ts";
import { pydicomCorpus } from "../_corpus.ts";
import { generatedCorpus, searchServer, SR_DOC, STUDIES, value } from "../_qido_fixtures.ts";
import { testHandler } from "../_server.ts";

type Json = Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string }>;

const server = await searchServer(generatedCorpus());
const A = "/aets/QIDO";
const ALL_STUDIES = ["2.25.1003", "2.25.1002", "2.25.1006", "2.25.1001", "2.25.1004", "2.25.1005"];

async function uids(path: string, tag: string): Promise<string[]> {
  const r = await server.get(path);
  assert.equal(r.status, 200, `${path}: ${r.text}`);
  assert.equal(r.headers.get("content-type"), "application/dicom+json; charset=utf-8");
  return (r.body as Json[]).map((row) => value(row, tag) as string);
}

/** [query, expected UIDs in order]; a string instead of a list means 400 whose message matches it. */
type Case = [string, string[] | RegExp];

async function table(t: Deno.TestContext, path: string, tag: string, cases: Case[]): Promise<void> {
  for (const [query, expected] of cases) {
    await t.step(`${path}?${query}`, async () => {
      const url = `${A}${path}${query === "" ? "" : "?" + query}`;
      if (expected instanceof RegExp) {
        const r = await server.get(url);
        assert.equal(r.status, 400, r.text);
        assert.match((r.body as { error: string }).error, expected);
        return;
      }
      assert.deepEqual(await uids(url, tag), expected);
    });
  }
}

Deno.test("QIDO /studies matching table: every key × every matching form", async (t) => {
  await table(t, "/studies", "0020000D", [
    ["", ALL_STUDIES],
    // StudyDate (DA): single, ranges, universal, empty, by tag, errors
    ["StudyDate=20240101", ["2.25.1006", "2.25.1001"]],
    ["StudyDate=20240101-20241231", ["2.25.1003", "2.25.1002", "2.25.1006", "2.25.1001"]],
    ["StudyDate=20240601-", ["2.25.1003", "2.25.1002"]],
    ["StudyDate=-20240101", ["2.25.1006", "2.25.1001", "2.25.1004"]],
    ["StudyDate=", ALL_STUDIES],
    ['StudyDate=""', ["2.25.1005"]],
    ["00080020=20230115", ["2.25.1004"]],
    ["StudyDate=2024*", /wildcards are not allowed on DA/],
    ["StudyDate=20241301", /Invalid StudyDate="20241301"/],
    ["StudyDate=20241231-20240101", /ends before it starts/],
    // StudyTime (TM)
    ["StudyTime=0800-0900", ["2.25.1001"]],
    ["StudyTime=0930", ["2.25.1004"]],
    ["StudyTime=1430-1431", ["2.25.1002"]],
    ["StudyTime=2359-", ["2.25.1003"]],
    ["StudyTime=-0900", ["2.25.1001"]],
    ["StudyTime=25", /Invalid StudyTime/],
    // AccessionNumber (SH)
    ["AccessionNumber=ACC002", ["2.25.1002"]],
    ["AccessionNumber=ACC00*", ["2.25.1003", "2.25.1002", "2.25.1006", "2.25.1001", "2.25.1005"]],
    ["AccessionNumber=ACC00?", ["2.25.1003", "2.25.1002", "2.25.1006", "2.25.1001", "2.25.1005"]],
    ["AccessionNumber=acc002", []],
    ['AccessionNumber=""', ["2.25.1004"]],
    ["AccessionNumber=", ALL_STUDIES],
    // ModalitiesInStudy (CS, from the series)
    ["ModalitiesInStudy=CT", ["2.25.1003", "2.25.1006", "2.25.1001", "2.25.1004"]],
    ["ModalitiesInStudy=PT", ["2.25.1003"]],
    ["ModalitiesInStudy=CT,MR", ["2.25.1003", "2.25.1002", "2.25.1006", "2.25.1001", "2.25.1004"]],
    ["ModalitiesInStudy=MR%5CSR", ["2.25.1002"]],
    ["ModalitiesInStudy=S*", ["2.25.1002", "2.25.1006"]],
    ["00080061=OT", ["2.25.1005"]],
    // ReferringPhysicianName (PN)
    ["ReferringPhysicianName=WELBY%5EMARCUS", ["2.25.1003", "2.25.1001"]],
    ["ReferringPhysicianName=welby*", ["2.25.1003", "2.25.1001"]],
    ["ReferringPhysicianName=Kil*", ["2.25.1002", "2.25.1006"]],
    ['ReferringPhysicianName=""', ["2.25.1004", "2.25.1005"]],
    ["ReferringPhysicianName=marcus&fuzzymatching=true", ["2.25.1003", "2.25.1001"]],
    // PatientName (PN): case- and accent-insensitive; fuzzy per component
    ["PatientName=ABRAHAM%5EBrad", ["2.25.1001"]],
    ["PatientName=abraham%5Ebrad", ["2.25.1001"]],
    ["PatientName=MULLER%5EJURGEN", ["2.25.1002"]],
    ["PatientName=M%C3%BCller%5EJ%C3%BCrgen", ["2.25.1002"]],
    ["PatientName=Doe*", ["2.25.1006", "2.25.1005"]],
    ["PatientName=*BRA*", ["2.25.1003", "2.25.1001"]],
    ["PatientName=*bra*&fuzzymatching=true", ["2.25.1003", "2.25.1001"]],
    ["PatientName=joh&fuzzymatching=true", ["2.25.1005"]],
    ["PatientName=joh", []],
    ["PatientName=doe%5Eja&fuzzymatching=true", ["2.25.1006"]],
    ["PatientName=nunez&fuzzymatching=true", ["2.25.1004"]],
    ["PatientName=%E3%83%8C%E3%83%8B%E3%82%A7%E3%82%B9*", ["2.25.1004"]],
    ["PatientName=%C3%91%C3%BA%C3%B1ez%5EJos%C3%A9", ["2.25.1004"]],
    ["PatientName=?oe%5Ejane", ["2.25.1006"]],
    ["PatientName=*", ALL_STUDIES],
    // PatientID (LO), also by tag as OHIF sends it
    ["PatientID=PID003", ["2.25.1003"]],
    ["00100020=PID003", ["2.25.1003"]],
    ["00100020=", ALL_STUDIES],
    ["PatientID=PID00*", ALL_STUDIES],
    ["PatientID=pid003", []],
    // StudyInstanceUID (UI): single, lists, errors
    ["StudyInstanceUID=2.25.1002", ["2.25.1002"]],
    ["StudyInstanceUID=2.25.1002,2.25.1005", ["2.25.1002", "2.25.1005"]],
    ["StudyInstanceUID=2.25.1002%5C2.25.1003", ["2.25.1003", "2.25.1002"]],
    ["0020000D=2.25.1004", ["2.25.1004"]],
    ["StudyInstanceUID=2.25.10*", /wildcards are not allowed on UI/],
    ["StudyInstanceUID=abc", /not a valid UID/],
    // StudyID (SH)
    ["StudyID=S4", ["2.25.1004"]],
    ["StudyID=S?", ALL_STUDIES],
    // other study attributes, through the stored JSON; sequences
    ["StudyDescription=CT*", ["2.25.1006", "2.25.1001", "2.25.1004"]],
    ["PatientSex=F", ["2.25.1003", "2.25.1006"]],
    ["PatientBirthDate=19500101-19600101", ["2.25.1002", "2.25.1001"]],
    ["00081032.00080100=P200", ["2.25.1002"]],
    ["ProcedureCodeSequence.CodeValue=P*", ["2.25.1003", "2.25.1002", "2.25.1001"]],
    ["ProcedureCodeSequence.CodeValue=", ALL_STUDIES],
    // combinations are ANDed
    ["PatientName=Doe*&StudyDate=20240101", ["2.25.1006"]],
    ["ModalitiesInStudy=CT&ReferringPhysicianName=WELBY*&StudyDate=20240101-20241231", [
      "2.25.1003",
      "2.25.1001",
    ]],
    // bad parameters name themselves
    ["FooBar=1", /Unknown attribute "FooBar"/],
    ["limit=ten", /Invalid limit="ten"/],
    ["offset=x", /Invalid offset="x"/],
    ["fuzzymatching=maybe", /Invalid fuzzymatching/],
    ["includefield=Nope", /Unknown attribute "Nope" in includefield/],
  ]);
});

Deno.test("QIDO series matching table, in a study and across studies", async (t) => {
  const inStudy = ["2.25.1002.1", "2.25.1002.2", "2.25.1002.3"];
  await table(t, "/studies/2.25.1002/series", "0020000E", [
    ["", inStudy],
    ["Modality=MR", ["2.25.1002.1", "2.25.1002.2"]],
    ["Modality=SR", ["2.25.1002.3"]],
    ["Modality=M?", ["2.25.1002.1", "2.25.1002.2"]],
    ["Modality=MR,SR", inStudy],
    ["00080060=SR", ["2.25.1002.3"]],
    ["SeriesInstanceUID=2.25.1002.2", ["2.25.1002.2"]],
    ["SeriesInstanceUID=2.25.1002.1,2.25.1002.3", ["2.25.1002.1", "2.25.1002.3"]],
    ["SeriesInstanceUID=2.25.1002.*", /wildcards are not allowed on UI/],
    ["SeriesNumber=100", ["2.25.1002.3"]],
    ["SeriesNumber=abc", /Invalid SeriesNumber="abc": use a number/],
    ["PerformedProcedureStepStartDate=20240615", ["2.25.1002.1", "2.25.1002.2"]],
    ['PerformedProcedureStepStartDate=""', ["2.25.1002.3"]],
    ["PerformedProcedureStepStartTime=1440-1500", ["2.25.1002.2"]],
    ["PerformedProcedureStepStartTime=1431", ["2.25.1002.1"]],
    ["SeriesDescription=*2", ["2.25.1002.2"]],
    ["StudyDate=20240615", inStudy],
    ["StudyDate=20240101", []],
  ]);
  await table(t, "/series", "0020000E", [
    ["Modality=CT", ["2.25.1003.1", "2.25.1006.1", "2.25.1001.1", "2.25.1001.2", "2.25.1004.3"]],
    ["PatientID=PID002", inStudy],
    ["StudyDate=20240101", ["2.25.1006.1", "2.25.1006.2", "2.25.1001.1", "2.25.1001.2"]],
    ["StudyInstanceUID=2.25.1006&SeriesNumber=2", ["2.25.1006.2"]],
    ["RequestAttributesSequence.RequestedProcedureID=RP44", ["2.25.1004.3"]],
    ["00400275.00401001=RP*", ["2.25.1004.3"]],
    ["PatientName=*bra*&Modality=PT", ["2.25.1003.2"]],
  ]);
});

Deno.test("QIDO instance matching table: series, study and all instances (filled lazily)", async (t) => {
  await table(t, "/studies/2.25.1001/series/2.25.1001.2/instances", "00080018", [
    ["", ["2.25.1001.2.1", "2.25.1001.2.2", "2.25.1001.2.3"]],
    ["InstanceNumber=2", ["2.25.1001.2.2"]],
    ["00200013=3", ["2.25.1001.2.3"]],
    ["SOPInstanceUID=2.25.1001.2.3", ["2.25.1001.2.3"]],
    ["SOPInstanceUID=2.25.1001.2.3,2.25.1001.2.1", ["2.25.1001.2.1", "2.25.1001.2.3"]],
    ["SOPClassUID=1.2.840.10008.5.1.4.1.1.2", ["2.25.1001.2.1", "2.25.1001.2.2", "2.25.1001.2.3"]],
    ["SOPClassUID=1.2.840.10008.5.1.4.1.1.4", []],
    ["Rows=4", ["2.25.1001.2.1", "2.25.1001.2.2", "2.25.1001.2.3"]],
    ["InstanceNumber=x", /use a number/],
  ]);
  await table(t, "/studies/2.25.1002/instances", "00080018", [
    ["", ["2.25.1002.1.1", "2.25.1002.1.2", "2.25.1002.2.1", "2.25.1002.2.2", "2.25.1002.3.1"]],
    [`SOPClassUID=${SR_DOC}`, ["2.25.1002.3.1"]],
    ["Modality=SR", ["2.25.1002.3.1"]],
  ]);
  await table(t, "/instances", "00080018", [
    ["SOPInstanceUID=2.25.1006.2.1", ["2.25.1006.2.1"]],
    ["PatientID=PID001", ["2.25.1001.1.1", "2.25.1001.2.1", "2.25.1001.2.2", "2.25.1001.2.3"]],
    ["StudyInstanceUID=2.25.1004", ["2.25.1004.3.1", "2.25.1004.3.2"]],
    ["limit=3", ["2.25.1003.1.1", "2.25.1003.1.2", "2.25.1003.2.1"]],
  ]);
});

Deno.test("QIDO answers OHIF's request shapes verbatim", async (t) => {
  const list = "/studies?limit=101&offset=0&fuzzymatching=true&includefield=00081030%2C00080060";
  await t.step("study list with each filter", async () => {
    assert.deepEqual(await uids(`${A}${list}&PatientName=*BRA*`, "0020000D"), ["2.25.1003", "2.25.1001"]);
    assert.deepEqual(await uids(`${A}${list}&StudyDate=20240101-20241231`, "0020000D"), [
      "2.25.1003",
      "2.25.1002",
      "2.25.1006",
      "2.25.1001",
    ]);
    assert.deepEqual(await uids(`${A}${list}&AccessionNumber=*ACC002*`, "0020000D"), ["2.25.1002"]);
    assert.deepEqual(await uids(`${A}${list}&ModalitiesInStudy=PT`, "0020000D"), ["2.25.1003"]);
    assert.deepEqual(await uids(`${A}${list}&00100020=*PID004*`, "0020000D"), ["2.25.1004"]);
  });
  await t.step("every study of the list has a valued ModalitiesInStudy and the defaults", async () => {
    const r = await server.get(`${A}${list}`);
    for (const row of r.body as Json[]) {
      assert.ok((row["00080061"].Value ?? []).length > 0, "ModalitiesInStudy has values");
      for (
        const tag of [
          "00080020",
          "00080050",
          "00080056",
          "00081190",
          "00100010",
          "00100020",
          "0020000D",
          "00200010",
          "00201206",
          "00201208",
          "00081030",
        ]
      ) {
        if (tag === "00080020" && value(row, "0020000D") === "2.25.1005") continue;
        assert.ok(row[tag], `${value(row, "0020000D")} has ${tag}`);
      }
    }
  });
  await t.step("opening a study: study by UID, then its series with OHIF's includefields", async () => {
    assert.deepEqual(await uids(`${A}/studies?StudyInstanceUID=2.25.1002`, "0020000D"), ["2.25.1002"]);
    const r = await server.get(
      `${A}/studies/2.25.1002/series?includefield=00080021%2C00080031%2C0008103E%2C00200011`,
    );
    assert.equal(r.status, 200);
    const rows = r.body as Json[];
    assert.deepEqual(rows.map((row) => value(row, "00200011")), [1, 2, 100]);
    assert.equal(value(rows[0], "00080021"), "20240615");
    assert.equal(value(rows[0], "0008103E"), "MR SERIES 1");
    assert.equal(value(rows[0], "0020000D"), "2.25.1002");
    assert.equal(value(rows[0], "00201209"), 2);
    assert.equal(r.headers.get("warning"), null);
  });
});

Deno.test("QIDO returns the default, computed and included attributes per level", async (t) => {
  await t.step("study: counts, modalities, absolute RetrieveURL, availability, charset", async () => {
    const r = await server.get(`${A}/studies?StudyInstanceUID=2.25.1002,2.25.1001`, {
      "x-forwarded-host": "pacs.example.org",
      "x-forwarded-proto": "https",
    });
    const [mr, ct] = r.body as Json[];
    assert.deepEqual(mr["00080061"].Value, ["MR", "SR"]);
    assert.equal(value(mr, "00201206"), 3);
    assert.equal(value(mr, "00201208"), 5);
    assert.equal(value(mr, "00080056"), "ONLINE");
    assert.equal(value(mr, "00081190"), "https://pacs.example.org/aets/QIDO/studies/2.25.1002");
    assert.deepEqual(value(mr, "00100010"), { Alphabetic: "Müller^Jürgen" });
    assert.equal(value(mr, "00080005"), "ISO_IR 192", "non-ASCII text: UTF-8 declared");
    assert.equal(ct["00080005"], undefined, "ASCII only: no Specific Character Set");
    assert.equal(mr["00081032"], undefined, "not a default");
  });
  await t.step("includefield=all and single includefields", async () => {
    const [all] = (await server.get(`${A}/studies?StudyInstanceUID=2.25.1001&includefield=all`))
      .body as Json[];
    assert.ok(all["00081032"], "ProcedureCodeSequence with all");
    assert.equal(all["00080060"], undefined, "series attributes are not study attributes");
    const [one] =
      (await server.get(`${A}/studies?StudyInstanceUID=2.25.1001&includefield=ProcedureCodeSequence`))
        .body as Json[];
    assert.ok(one["00081032"]);
    const [matched] = (await server.get(`${A}/studies?StudyInstanceUID=2.25.1001&PatientSex=M`))
      .body as Json[];
    assert.equal(value(matched, "00100040"), "M", "matching keys are returned");
  });
  await t.step("SOPClassesInStudy only when asked for, one value per class in the study", async () => {
    const path = `${A}/studies?StudyInstanceUID=2.25.1002`;
    const [plain] = (await server.get(path)).body as Json[];
    assert.equal(plain["00080062"], undefined, "not a default return key");
    const expected = ["1.2.840.10008.5.1.4.1.1.4", SR_DOC].sort(); // the MR series and the SR
    for (const include of ["SOPClassesInStudy", "00080062", "all"]) {
      const [row] = (await server.get(`${path}&includefield=${include}`)).body as Json[];
      assert.deepEqual(row["00080062"], { vr: "UI", Value: expected }, include);
    }
    const [series] =
      (await server.get(`${A}/series?SeriesInstanceUID=2.25.1002.1&includefield=SOPClassesInStudy`))
        .body as Json[];
    assert.deepEqual(series["00080062"]?.Value, expected, "on /series with the study attributes");
  });
  await t.step("/series adds the study attributes; /studies/{s}/series does not", async () => {
    const [cross] = (await server.get(`${A}/series?SeriesInstanceUID=2.25.1003.2`)).body as Json[];
    assert.equal(value(cross, "00100020"), "PID003");
    assert.equal(value(cross, "00201206"), 2);
    assert.equal(value(cross, "00081190"), "http://localhost/aets/QIDO/studies/2.25.1003/series/2.25.1003.2");
    const [inStudy] = (await server.get(`${A}/studies/2.25.1003/series?SeriesInstanceUID=2.25.1003.2`))
      .body as Json[];
    assert.equal(inStudy["00100020"], undefined);
    assert.equal(value(inStudy, "00201209"), 2);
  });
  await t.step("instances: defaults, frames, parents per resource, absolute BulkDataURIs", async () => {
    const [seg] = (await server.get(`${A}/instances?SOPInstanceUID=2.25.1006.2.1`)).body as Json[];
    assert.equal(value(seg, "00280008"), 3);
    assert.equal(value(seg, "00080016"), "1.2.840.10008.5.1.4.1.1.66.4");
    assert.equal(value(seg, "00100020"), "PID006", "study attributes on /instances");
    assert.equal(value(seg, "00080060"), "SEG", "series attributes on /instances");
    assert.equal(
      value(seg, "00081190"),
      "http://localhost/aets/QIDO/studies/2.25.1006/series/2.25.1006.2/instances/2.25.1006.2.1",
    );
    const [inSeries] = (await server.get(`${A}/studies/2.25.1006/series/2.25.1006.2/instances`))
      .body as Json[];
    assert.equal(inSeries["00100020"], undefined);
    assert.equal(inSeries["00080060"], undefined);
    assert.equal(value(inSeries, "00200013"), 1);
    assert.deepEqual(
      [value(inSeries, "00280010"), value(inSeries, "00280011"), value(inSeries, "00280100")],
      [4, 4, 16],
    );
    const [inStudy] = (await server.get(`${A}/studies/2.25.1006/instances?SeriesInstanceUID=2.25.1006.2`))
      .body as Json[];
    assert.equal(value(inStudy, "00080060"), "SEG", "series attributes on /studies/{s}/instances");
    const [all] =
      (await server.get(`${A}/studies/2.25.1001/series/2.25.1001.2/instances?limit=1&includefield=all`))
        .body as Json[];
    assert.equal(
      all["7FE00010"].BulkDataURI,
      "http://localhost/aets/QIDO/studies/2.25.1001/series/2.25.1001.2/instances/2.25.1001.2.1/bulkdata/7FE00010",
    );
  });
});

Deno.test("QIDO pages are stable and warn when the server cuts", async (t) => {
  await t.step("limit/offset pages concatenate to the whole list", async () => {
    const pages: string[] = [];
    for (let offset = 0; offset < 8; offset += 2) {
      pages.push(...await uids(`${A}/studies?limit=2&offset=${offset}`, "0020000D"));
    }
    assert.deepEqual(pages, ALL_STUDIES);
    const series: string[] = [];
    for (let offset = 0; offset < 12; offset += 5) {
      series.push(...await uids(`${A}/series?limit=5&offset=${offset}`, "0020000E"));
    }
    assert.deepEqual(series, await uids(`${A}/series`, "0020000E"));
    assert.equal(new Set(series).size, 11);
  });
  await t.step("a client limit that truncates gives no warning; the maximum does", async () => {
    const r = await server.get(`${A}/studies?limit=2`);
    assert.equal(r.headers.get("warning"), null);
    const capped = await server.get(`${A}/studies?limit=100000`);
    assert.match(
      capped.headers.get("warning")!,
      /^299 localhost "limit=100000 is above the maximum of 1000: using 1000"$/,
    );
  });
  await t.step("the default limit warns that more results exist", async () => {
    const small = await searchServer(generatedCorpus(), {
      aet: "SMALL",
      env: { QIDO_DEFAULT_LIMIT: "2", QIDO_MAX_LIMIT: "3" },
    });
    try {
      const r = await small.get("/aets/SMALL/studies");
      assert.equal((r.body as Json[]).length, 2);
      assert.match(
        r.headers.get("warning")!,
        /The number of results exceeded the maximum supported by the server/,
      );
      const cut = await small.get("/aets/SMALL/studies?limit=10");
      assert.equal((cut.body as Json[]).length, 3);
      assert.match(
        cut.headers.get("warning")!,
        /above the maximum of 3.*, 299 localhost "The number of results exceeded/,
      );
      const exact = await small.get("/aets/SMALL/studies?limit=3&offset=3");
      assert.equal((exact.body as Json[]).length, 3);
      assert.equal(exact.headers.get("warning"), null);
    } finally {
      await small.close();
    }
  });
  await t.step("ignored parameters are named in a warning", async () => {
    const r = await server.get(`${A}/studies?Modality=CT&_=12345`);
    assert.deepEqual(await uids(`${A}/studies?Modality=CT`, "0020000D"), ALL_STUDIES);
    assert.match(
      r.headers.get("warning")!,
      /Modality is a series attribute, not a key of a study search: ignored/,
    );
    assert.match(r.headers.get("warning")!, /Parameter _ does not change search results/);
  });
});

Deno.test("QIDO errors: unknown AET 404, nothing found [], bad Accept 406, no catalog 503, bad path UID 400", async () => {
  const unknown = await server.get("/aets/NOPE/studies");
  assert.equal(unknown.status, 404);
  assert.match((unknown.body as { error: string }).error, /Unknown AET "NOPE"/);
  const none = await server.get(`${A}/studies?PatientID=nobody`);
  assert.deepEqual([none.status, none.text], [200, "[]"]);
  const noSeries = await server.get(`${A}/studies/2.25.4242/series`);
  assert.deepEqual([noSeries.status, noSeries.text], [200, "[]"]);
  assert.equal((await server.get(`${A}/studies`, { accept: "image/png" })).status, 406);
  assert.equal((await server.get(`${A}/studies`, { accept: "application/json" })).status, 200);
  assert.equal((await server.get(`${A}/studies/1.02/series`)).status, 400);

  const store = new MemoryStore(["x"]);
  const config = parseConfig({ AETS: "X=x" });
  const { handler } = testHandler({ store, config });
  const r = await handler(new Request("http://localhost/aets/X/studies"));
  assert.equal(r.status, 503);
  assert.match((await r.json()).error, /without a catalog/);
});

Deno.test("QIDO on a fresh catalog starts the first crawl and waits for it", async () => {
  const fresh = await searchServer(generatedCorpus(), { aet: "FRESH", crawl: false });
  try {
    assert.deepEqual(await fresh.catalog.status(), []);
    const r = await fresh.get("/aets/FRESH/studies?limit=3");
    assert.equal(r.status, 200);
    assert.equal((r.body as Json[]).length, 3);
    assert.equal(r.headers.get("warning"), null);
    // Instance rows: only the representative of each series is indexed so far.
    const pending = async () => (await fresh.catalog.status("FRESH"))[0].pending;
    assert.equal(await pending(), 7);
    const incomplete = await fresh.get("/aets/FRESH/instances");
    assert.match(incomplete.headers.get("warning")!, /Not every instance of FRESH is indexed yet/);
    const series = await fresh.get("/aets/FRESH/studies/2.25.1001/series/2.25.1001.2/instances");
    assert.equal((series.body as Json[]).length, 3);
    assert.equal(await pending(), 5, "the two other instances of that series were read, nothing else");
  } finally {
    await fresh.close();
  }
});

Deno.test("Admin: POST /admin/index starts a crawl (202), GET reports progress and failures", async () => {
  const admin = await searchServer([
    ...generatedCorpus(),
    { key: "2.25.77/2.25.77.1/2.25.77.1.1.dcm", bytes: new TextEncoder().encode("garbage") },
  ], { aet: "ADMIN", crawl: false });
  try {
    const post = await admin.handler(
      new Request("http://localhost/admin/index?aet=ADMIN", { method: "POST" }),
    );
    assert.equal(post.status, 202);
    assert.deepEqual(await post.json(), { status: "started", aets: ["ADMIN"] });
    assert.equal(await admin.crawler.ready("ADMIN", 5_000), true);
    const r = await admin.get("/admin/index");
    const body = r.body as { aets: Record<string, unknown>[]; failures: { key: string; error: string }[] };
    assert.equal(body.aets[0].aet, "ADMIN");
    assert.equal(body.aets[0].studies, STUDIES.length);
    assert.equal((body.aets[0].crawl as { last: { outcome: string } }).last.outcome, "complete");
    assert.deepEqual(body.failures.map((f) => f.key), ["2.25.77/2.25.77.1/2.25.77.1.1.dcm"]);
    assert.match(body.failures[0].error, /^Not readable DICOM: /);
    const bad = await admin.handler(new Request("http://localhost/admin/index?aet=NOPE", { method: "POST" }));
    assert.equal(bad.status, 404);
    await bad.body?.cancel();
  } finally {
    await admin.close();
  }
});

Deno.test({
  name: "QIDO over the pydicom corpus: every readable file is searchable, unreadable ones are reported",
  async fn() {
    const corpus = await pydicomCorpus();
    const shared = await searchServer(corpus, { aet: "SHARED" });
    try {
      const expectedFailures: string[] = [];
      const studies = new Map<string, number>();
      for (const f of corpus) {
        const uids = parseInstanceKey(f.key)!;
        let ok = true;
        try {
          const header = await parseObject(f.bytes, f.key);
          const text = (tag: number) => {
            const el = header.dataset.elements.get(tag);
            return el?.bytes ? new TextDecoder().decode(el.bytes).replace(/[\0 ]+$/, "") : undefined;
          };
          ok = text(0x0020000d) === uids.study && text(0x0020000e) === uids.series &&
            text(0x00080018) === uids.instance;
        } catch {
          ok = false;
        }
        if (!ok) expectedFailures.push(f.key);
        else studies.set(uids.study, (studies.get(uids.study) ?? 0) + 1);
      }
      const failures = await shared.catalog.failures("SHARED");
      assert.deepEqual(failures.map((p) => p.key).sort(), expectedFailures.sort());
      for (const [study, count] of studies) {
        const r = await shared.get(`/aets/SHARED/studies?StudyInstanceUID=${study}`);
        const rows = r.body as Json[];
        assert.equal(rows.length, 1, `study ${study}`);
        assert.equal(value(rows[0], "00201208"), count, `instances of ${study}`);
        const instances = await shared.get(`/aets/SHARED/studies/${study}/instances`);
        assert.equal((instances.body as Json[]).length, count);
      }
      // Names in every character set of the corpus come back as UTF-8 and match accent-insensitively.
      const all = (await shared.get("/aets/SHARED/studies?includefield=all&limit=1000")).body as Json[];
      assert.equal(all.length, studies.size);
      const chinese = all.filter((row) => JSON.stringify(row["00100010"] ?? {}).match(/[\u4e00-\u9fff]/));
      assert.ok(chinese.length > 0, "a Chinese name decoded");
      assert.ok(chinese.every((row) => value(row, "00080005") === "ISO_IR 192"));
    } finally {
      await shared.close();
    }
  },
});

Deno.test("QIDO test server closes", async () => {
  await server.close();
});
