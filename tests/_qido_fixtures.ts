/**
 * Generated studies for search tests: several patients (accents, case, a UTF-8 name with ideographic and
 * a Latin-1 one), dates and times (one study without), modalities (a PET/CT, an MR with an SR series, a SEG),
 * sequences to match into, and helpers to load them into a store and crawl them. No patient data.
 */

import { AetRegistry } from "../lib/objects/aets.ts";
import type { Catalog } from "../lib/catalog/catalog.ts";
import { parseConfig } from "../lib/config/config.ts";
import { openCrawler } from "../lib/app/open.ts";
import { memoryCatalog, testHandler } from "./_server.ts";
import { MemoryStore } from "../lib/store/memory_store.ts";
import type { ObjectStore } from "../lib/store/store.ts";
import { buildPart10, type Fx } from "./_dicom_fixtures.ts";
import type { CorpusFile } from "./_corpus.ts";

export const CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2";
export const MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4";
export const PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128";
export const SR_DOC = "1.2.840.10008.5.1.4.1.1.88.22";
export const SEG = "1.2.840.10008.5.1.4.1.1.66.4";
export const SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7";

/** One generated series. */
export interface GenSeries {
  uid: string;
  modality: string;
  number: number;
  description: string;
  sopClass: string;
  instances: number;
  ppsDate?: string;
  ppsTime?: string;
  requestedProcedureId?: string;
  frames?: number;
  /** Pixel bytes per instance (default 32); above the bulk threshold they become BulkDataURIs. */
  pixelBytes?: number;
}

/** One generated study. */
export interface GenStudy {
  uid: string;
  patientName: string;
  charset?: "ISO_IR 100" | "ISO_IR 192";
  patientId: string;
  birthDate: string;
  sex: string;
  date?: string;
  time?: string;
  accession: string;
  referring?: string;
  studyId: string;
  description: string;
  procedureCode?: string;
  series: GenSeries[];
}

const s = (
  uid: string,
  modality: string,
  number: number,
  instances: number,
  extra: Partial<GenSeries> = {},
): GenSeries => ({
  uid,
  modality,
  number,
  instances,
  description: `${modality} SERIES ${number}`,
  sopClass: { CT: CT_IMAGE, MR: MR_IMAGE, PT: PET_IMAGE, SR: SR_DOC, SEG: SEG }[modality] ?? SC_IMAGE,
  ...extra,
});

/** The generated studies (6 studies, 11 series, 18 instances). */
export const STUDIES: GenStudy[] = [
  {
    uid: "2.25.1001",
    patientName: "ABRAHAM^Brad",
    patientId: "PID001",
    birthDate: "19600101",
    sex: "M",
    date: "20240101",
    time: "083000",
    accession: "ACC001",
    referring: "WELBY^MARCUS",
    studyId: "S1",
    description: "CT CHEST",
    procedureCode: "P100",
    series: [
      s("2.25.1001.1", "CT", 1, 1, { description: "SCOUT", ppsDate: "20240101", ppsTime: "083500" }),
      s("2.25.1001.2", "CT", 2, 3, {
        description: "AXIAL 5mm",
        ppsDate: "20240101",
        ppsTime: "084000",
        pixelBytes: 2048,
      }),
    ],
  },
  {
    uid: "2.25.1002",
    patientName: "Müller^Jürgen",
    charset: "ISO_IR 100",
    patientId: "PID002",
    birthDate: "19550101",
    sex: "M",
    date: "20240615",
    time: "143015.5",
    accession: "ACC002",
    referring: "Kildare^James",
    studyId: "S2",
    description: "MR BRAIN",
    procedureCode: "P200",
    series: [
      s("2.25.1002.1", "MR", 1, 2, { ppsDate: "20240615", ppsTime: "1431" }),
      s("2.25.1002.2", "MR", 2, 2, { ppsDate: "20240615", ppsTime: "1445" }),
      s("2.25.1002.3", "SR", 100, 1),
    ],
  },
  {
    uid: "2.25.1003",
    patientName: "brandt^anna",
    patientId: "PID003",
    birthDate: "19780930",
    sex: "F",
    date: "20241231",
    time: "235959",
    accession: "ACC003",
    referring: "WELBY^MARCUS",
    studyId: "S3",
    description: "PET CT WHOLE BODY",
    procedureCode: "P300",
    series: [s("2.25.1003.1", "CT", 1, 2), s("2.25.1003.2", "PT", 2, 2)],
  },
  {
    uid: "2.25.1004",
    patientName: "Ñúñez^José=ヌニェス^ホセ",
    charset: "ISO_IR 192",
    patientId: "PID004",
    birthDate: "19900215",
    sex: "O",
    date: "20230115",
    time: "0930",
    accession: "",
    studyId: "S4",
    description: "CT ABDOMEN",
    series: [
      s("2.25.1004.3", "CT", 3, 2, { ppsDate: "20230115", ppsTime: "093500", requestedProcedureId: "RP44" }),
    ],
  },
  {
    uid: "2.25.1005",
    patientName: "DOE^JOHN^M",
    patientId: "PID005",
    birthDate: "19700101",
    sex: "M",
    accession: "ACC005",
    studyId: "S5",
    description: "NO DATE",
    series: [s("2.25.1005.1", "OT", 1, 1)],
  },
  {
    uid: "2.25.1006",
    patientName: "Doe^Jane",
    patientId: "PID006",
    birthDate: "19710202",
    sex: "F",
    date: "20240101",
    time: "120000",
    accession: "ACC006",
    referring: "Kildare^James",
    studyId: "S6",
    description: "CT + SEG",
    series: [s("2.25.1006.1", "CT", 1, 1), s("2.25.1006.2", "SEG", 2, 1, { frames: 3 })],
  },
];

const utf8 = new TextEncoder();
const latin1 = (text: string) => Uint8Array.from([...text].map((c) => c.charCodeAt(0) & 0xff));

/** The elements of one generated instance, in tag order. */
export function instanceElements(study: GenStudy, series: GenSeries, index: number): Fx[] {
  const sop = `${series.uid}.${index + 1}`;
  const text = (value: string) => study.charset === "ISO_IR 192" ? utf8.encode(value) : latin1(value);
  const pad = (bytes: Uint8Array) => bytes.length % 2 ? Uint8Array.from([...bytes, 0x20]) : bytes;
  const image = series.modality !== "SR";
  const frames = series.frames ?? 1;
  const elements: Fx[] = [
    ...(study.charset ? [{ tag: 0x00080005, vr: "CS", value: study.charset }] : []),
    { tag: 0x00080016, vr: "UI", value: series.sopClass },
    { tag: 0x00080018, vr: "UI", value: sop },
    ...(study.date ? [{ tag: 0x00080020, vr: "DA", value: study.date }] : []),
    ...(study.date ? [{ tag: 0x00080021, vr: "DA", value: study.date }] : []),
    ...(study.time ? [{ tag: 0x00080030, vr: "TM", value: study.time }] : []),
    { tag: 0x00080050, vr: "SH", value: study.accession },
    { tag: 0x00080060, vr: "CS", value: series.modality },
    ...(study.referring ? [{ tag: 0x00080090, vr: "PN", value: study.referring }] : []),
    { tag: 0x00081030, vr: "LO", value: study.description },
    ...(study.procedureCode
      ? [{
        tag: 0x00081032,
        vr: "SQ",
        value: [[
          { tag: 0x00080100, vr: "SH", value: study.procedureCode },
          { tag: 0x00080102, vr: "SH", value: "LOCAL" },
          { tag: 0x00080104, vr: "LO", value: `Procedure ${study.procedureCode}` },
        ]],
      }]
      : []),
    { tag: 0x0008103e, vr: "LO", value: series.description },
    { tag: 0x00100010, vr: "PN", value: pad(text(study.patientName)) },
    { tag: 0x00100020, vr: "LO", value: study.patientId },
    { tag: 0x00100030, vr: "DA", value: study.birthDate },
    { tag: 0x00100040, vr: "CS", value: study.sex },
    { tag: 0x0020000d, vr: "UI", value: study.uid },
    { tag: 0x0020000e, vr: "UI", value: series.uid },
    { tag: 0x00200010, vr: "SH", value: study.studyId },
    { tag: 0x00200011, vr: "IS", value: String(series.number) },
    { tag: 0x00200013, vr: "IS", value: String(index + 1) },
  ];
  if (image) {
    elements.push(
      { tag: 0x00280002, vr: "US", value: [1] },
      { tag: 0x00280004, vr: "CS", value: "MONOCHROME2" },
      ...(frames > 1 ? [{ tag: 0x00280008, vr: "IS", value: String(frames) }] : []),
      { tag: 0x00280010, vr: "US", value: [4] },
      { tag: 0x00280011, vr: "US", value: [4] },
      { tag: 0x00280100, vr: "US", value: [16] },
      { tag: 0x00280101, vr: "US", value: [16] },
      { tag: 0x00280102, vr: "US", value: [15] },
      { tag: 0x00280103, vr: "US", value: [0] },
    );
  }
  if (series.ppsDate) elements.push({ tag: 0x00400244, vr: "DA", value: series.ppsDate });
  if (series.ppsTime) elements.push({ tag: 0x00400245, vr: "TM", value: series.ppsTime });
  if (series.requestedProcedureId) {
    elements.push({
      tag: 0x00400275,
      vr: "SQ",
      value: [[
        { tag: 0x00400009, vr: "SH", value: `SPS-${series.requestedProcedureId}` },
        { tag: 0x00401001, vr: "SH", value: series.requestedProcedureId },
      ]],
    });
  }
  if (image) {
    elements.push({ tag: 0x7fe00010, vr: "OW", value: new Uint8Array((series.pixelBytes ?? 32) * frames) });
  }
  return elements;
}

/** The generated studies as Part 10 objects keyed `{study}/{series}/{sop}.dcm`. */
export function generatedCorpus(studies: GenStudy[] = STUDIES): CorpusFile[] {
  const files: CorpusFile[] = [];
  for (const study of studies) {
    for (const series of study.series) {
      for (let i = 0; i < series.instances; i++) {
        const sop = `${series.uid}.${i + 1}`;
        files.push({
          key: `${study.uid}/${series.uid}/${sop}.dcm`,
          name: `generated ${sop}`,
          transferSyntax: "1.2.840.10008.1.2.1",
          bytes: buildPart10(instanceElements(study, series, i), {
            sopClassUid: series.sopClass,
            sopInstanceUid: sop,
          }),
        });
      }
    }
  }
  return files;
}

/** Writes files into a bucket. */
export async function putAll(
  store: ObjectStore,
  bucket: string,
  files: { key: string; bytes: Uint8Array }[],
): Promise<void> {
  for (const f of files) await store.put(bucket, f.key, f.bytes, { size: f.bytes.length });
}

/** A handler over a memory store holding `files` in AET `aet`, with a catalog crawled (series + instances). */
export async function searchServer(
  files: { key: string; bytes: Uint8Array }[],
  options: {
    aet?: string;
    env?: Record<string, string>;
    crawl?: boolean;
    store?: ObjectStore;
    catalog?: Catalog;
  } = {},
) {
  const aet = options.aet ?? "QIDO";
  const store = options.store ?? new MemoryStore([aet.toLowerCase()]);
  await putAll(store, aet.toLowerCase(), files);
  const config = parseConfig({ AETS: `${aet}=${aet.toLowerCase()}`, ...options.env });
  const aets = new AetRegistry(store, { configured: config.aets });
  const catalog = options.catalog ?? await memoryCatalog({ bulkDataThreshold: config.bulkDataThreshold });
  const logs: string[] = [];
  const log = (line: string) => logs.push(line);
  const crawler = openCrawler(config, { store, aets, catalog, log, eagerInstances: false });
  if (options.crawl !== false) {
    await crawler.crawl(aet);
    await crawler.ensureIndexed(aet, {});
  }
  const { handler } = testHandler({
    store,
    config,
    aets,
    capabilities: { reEncode: true },
    catalog,
    crawler,
    handler: { log },
  });
  const get = async (path: string, headers: Record<string, string> = {}) => {
    const response = await handler(new Request(`http://localhost${path}`, { headers }));
    const text = await response.text();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    return { status: response.status, headers: response.headers, body, text };
  };
  return {
    aet,
    store,
    catalog,
    crawler,
    handler,
    logs,
    get,
    async close() {
      await crawler.stop();
      await catalog.close();
    },
  };
}

/** The value of one attribute of a DICOM JSON result (its first value unless `all`). */
export function value(result: Record<string, { Value?: unknown[] }>, tag: string): unknown {
  return result[tag]?.Value?.[0];
}
