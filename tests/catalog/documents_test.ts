import assert from "node:assert/strict";
import { type DicomJson, stringifyDicomJson } from "../../lib/dicom/dicom_json.ts";
import { parseBuffer, parseObject } from "../../lib/dicom/part10.ts";
import { pydicomCorpus } from "../_corpus.ts";
import { generatedCorpus } from "../_qido_fixtures.ts";
import { documentText, headerJson, resolveBulkDataUris } from "../../lib/catalog/documents.ts";

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

Deno.test("documentText() writes exactly what stringifyDicomJson() writes", async () => {
  const headers = generatedCorpus().map((f) => parseBuffer(f.bytes, f.key));
  for (const f of await pydicomCorpus()) {
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
