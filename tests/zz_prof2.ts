import { openSqliteCatalog } from "../lib/sqlite_catalog.ts";
import { parseBuffer } from "../lib/part10.ts";
import { parseSearch } from "../lib/matching.ts";
import { buildPart10 } from "./_dicom_fixtures.ts";
const FAMILY = ["SMITH", "MÜLLER", "GARCÍA", "NGUYEN", "XAVIER", "DOE", "BRAUN", "ROSSI", "KOWALSKI", "DIXON", "OLSEN", "PÉREZ"];
const catalog = await openSqliteCatalog(":memory:");
for (let s = 0; s < 10000; s++) {
  const sop = `2.25.88.${s}.1.1`;
  const key = `2.25.88.${s}/2.25.88.${s}.1/${sop}.dcm`;
  const bytes = buildPart10([
    { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.2" },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x00080020, vr: "DA", value: `20${String(10 + s % 15)}0101` },
    { tag: 0x00080030, vr: "TM", value: "101010" },
    { tag: 0x00080050, vr: "SH", value: `ACC${s}` },
    { tag: 0x00080060, vr: "CS", value: "CT" },
    { tag: 0x00081030, vr: "LO", value: `STUDY ${s}` },
    { tag: 0x00100010, vr: "PN", value: `${FAMILY[s % 12]}^ANNA` },
    { tag: 0x00100020, vr: "LO", value: `PID${s}` },
    { tag: 0x0020000d, vr: "UI", value: `2.25.88.${s}` },
    { tag: 0x0020000e, vr: "UI", value: `2.25.88.${s}.1` },
  ]);
  await catalog.recordInstance("A", "a", { key, size: 1, etag: "e" }, parseBuffer(bytes, key));
}
for (const q of ["PatientName=*X*&limit=101", "PatientName=*BRA*&fuzzymatching=true&limit=101", "limit=101", "PatientID=PID1234", "StudyDescription=STUDY 12*&limit=101"]) {
  const query = parseSearch(new URLSearchParams(q), { level: "study", matchable: ["study"], defaultLimit: 100, maxLimit: 1000 });
  let rows;
  const t = performance.now();
  for (let i = 0; i < 50; i++) rows = await catalog.search({ aet: "A", level: "study", filters: query.filters, limit: query.limit + 1, offset: 0 });
  console.log(q, rows!.length, ((performance.now() - t) / 50).toFixed(2), "ms");
}
const { DatabaseSync } = await import("node:sqlite");
// deno-lint-ignore no-explicit-any
const db = (catalog as any);
