/**
 * Accept headers as browsers and common clients really send them, at every route that negotiates: none may be
 * a 400 (that is kept for what cannot be understood at all), and any header that accepts everything (`* / *`,
 * or Java's bare `*`) must get the resource.
 */

import assert from "node:assert/strict";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { memoryCatalog, testHandler } from "../_server.ts";
import { pydicomCorpus } from "../_corpus.ts";

/** Real headers, with where they come from. */
const ACCEPTS: [string, string | null][] = [
  [
    "Chrome, navigation",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8," +
    "application/signed-exchange;v=b3;q=0.7",
  ],
  [
    "Firefox, navigation",
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/png,image/svg+xml,*/*;q=0.8",
  ],
  ["Safari, navigation", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
  ["Chrome, <img>", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"],
  ["Firefox, <img>", "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"],
  ["fetch(), curl, python-requests", "*/*"],
  ["Go net/http (no header)", null],
  ["Java HttpURLConnection", "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"],
  ["axios", "application/json, text/plain, */*"],
  [
    "Internet Explorer",
    "image/jpeg, application/x-ms-application, image/gif, application/xaml+xml, image/pjpeg, application/x-ms-xbap, */*",
  ],
  ["q=1. and a fallback", "application/dicom+json;q=1., */*;q=0.1"],
  ["the same range twice", "application/dicom+json, application/dicom+json, */*"],
  ["images with odd q-values", "image/jpeg;q=0.9, image/png;q=.5, */*;q=.1"],
  ["OHIF frames", "multipart/related; type=application/octet-stream; transfer-syntax=*"],
  ["OHIF metadata and search", "application/dicom+json, application/json"],
  ["dicomweb-client retrieve", 'multipart/related; type="application/dicom"; transfer-syntax=*'],
  ["a parameter without a value", "application/dicom+json; charset, */*;q=0.5"],
];

const acceptsAll = (accept: string | null) => accept === null || /(^|,)\s*\*(\/\*)?\s*(;|,|$)/.test(accept);

Deno.test("Accept headers of real browsers and clients at every negotiating route", async (t) => {
  const ct = (await pydicomCorpus()).find((f) => f.name === "CT_small.dcm")!;
  const store = new MemoryStore(["pacs"]);
  await store.put("pacs", ct.key, ct.bytes);
  const [study, series, sop] = ct.key.replace(/\.dcm$/, "").split("/");
  const app = testHandler({ store, config: { AETS: "PACS=pacs" }, catalog: await memoryCatalog() });
  await app.services.crawler!.crawl("PACS", { waitForInstances: true });
  const s = `/aets/PACS/studies/${study}`;
  const i = `${s}/series/${series}/instances/${sop}`;
  const routes = [
    s,
    `${s}/series/${series}`,
    i,
    `${s}/metadata`,
    `${i}/metadata`,
    `${i}/frames/1`,
    `${i}/bulkdata/7FE00010`,
    `${i}/rendered`,
    `${i}/thumbnail`,
    `${s}/thumbnail`,
    "/aets/PACS/studies",
    "/aets/PACS/series",
    `${s}/instances`,
  ];
  for (const [who, accept] of ACCEPTS) {
    await t.step(`${who}: ${accept ?? "(none)"}`, async () => {
      for (const route of routes) {
        const response = await app.fetch(route, accept === null ? {} : { headers: { accept } });
        const body = await response.text();
        const what = `${route}: ${response.status} ${body.slice(0, 200)}`;
        assert.notEqual(response.status, 400, what);
        assert.ok(response.status < 500, what);
        if (acceptsAll(accept)) {
          assert.equal(response.status, 200, what);
          if (route.startsWith("/aets/PACS/s") && !route.includes(study)) {
            assert.ok(body.includes(study), what);
          }
        } else assert.ok([200, 406].includes(response.status), what);
      }
    });
  }
  await t.step("what cannot be understood at all is still a 400 naming the problem", async () => {
    for (const accept of ["application", "application/dicom+json; q=high", 'multipart/related; type="x']) {
      const response = await app.fetch(`${s}/metadata`, { headers: { accept } });
      assert.equal(response.status, 400, accept);
      assert.match((await response.json()).error, /Accept/);
    }
  });
});
