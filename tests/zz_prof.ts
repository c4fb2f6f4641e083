import { openSqliteCatalog } from "../lib/sqlite_catalog.ts";
import { parseBuffer } from "../lib/part10.ts";
import { headerJson, instanceRecord } from "../lib/catalog.ts";
import { buildPart10 } from "./_dicom_fixtures.ts";
const mk = (s: number) => {
  const sop = `2.25.88.${s}.1.1`;
  return { key: `2.25.88.${s}/2.25.88.${s}.1/${sop}.dcm`, bytes: buildPart10([
    { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.2" },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x00080020, vr: "DA", value: "20200101" },
    { tag: 0x00100010, vr: "PN", value: "DOE^JOHN" },
    { tag: 0x0020000d, vr: "UI", value: `2.25.88.${s}` },
    { tag: 0x0020000e, vr: "UI", value: `2.25.88.${s}.1` },
  ]) };
};
const items = Array.from({ length: 2000 }, (_, i) => mk(i));
let t = performance.now();
const headers = items.map((i) => parseBuffer(i.bytes, i.key));
console.log("parse", (performance.now() - t) / 2000);
t = performance.now();
const jsons = headers.map((h) => headerJson(h, 1024));
console.log("json", (performance.now() - t) / 2000);
t = performance.now();
jsons.map((j) => instanceRecord(j));
console.log("record", (performance.now() - t) / 2000);
const catalog = await openSqliteCatalog(":memory:");
t = performance.now();
for (let i = 0; i < 2000; i++) await catalog.recordInstance("A", "a", { key: items[i].key, size: 1, etag: "e" }, headers[i]);
console.log("recordInstance", (performance.now() - t) / 2000);
