/**
 * dicomweb-client (the JavaScript library OHIF uses for DICOMweb; pinned in tools/e2e/package.json)
 * against this server over HTTP, with the studies in a real S3 server: search at every level, retrieve,
 * metadata, frames, bulkdata and store. The library speaks XMLHttpRequest: tests/_xhr_polyfill.ts
 * provides it on top of fetch. Expected values come from parsing the files with dcmjs, not from our code.
 *
 * Needs `npm ci --prefix tools/e2e` (deno task test installs it): fails without it under CI=true, else skipped.
 */

import { skipBecause } from "../_skip.ts";
import assert from "node:assert/strict";
import dcmjs from "dcmjs";
import { parseConfig } from "../../lib/config/config.ts";
import type { Catalog } from "../../lib/catalog/catalog.ts";
import { memoryCatalog, type TestServer, testServer } from "../_server.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { buildInstance, type CorpusFile, md5, pydicomCorpus } from "../_corpus.ts";
import { startS3 } from "../_s3server.ts";
import { installXhrPolyfill } from "../_xhr_polyfill.ts";

const AET = "CLIENT";
const LIBRARY = new URL(
  "../../tools/e2e/node_modules/dicomweb-client/build/dicomweb-client.es.js",
  import.meta.url,
);
const FILES = [
  "CT_small.dcm", // native, explicit VR LE
  "MR_small.dcm", // MR series of three: native, JPEG-LS, JPEG 2000
  "MR_small_jpeg_ls_lossless.dcm",
  "MR_small_jp2klossless.dcm",
  "SC_rgb_jpeg_dcmtk.dcm", // JPEG baseline
  "SC_rgb_rle_2frame.dcm", // RLE, 2 frames (same series as the JPEG one)
  "rtdose.dcm", // native multiframe (15), stored as implicit VR LE
];

type Json = Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string; InlineBinary?: string }>;

/** The part of dicomweb-client's `api.DICOMwebClient` used here. */
interface DicomwebClient {
  searchForStudies(options?: { queryParams?: Record<string, string> }): Promise<Json[]>;
  searchForSeries(
    options?: { studyInstanceUID?: string; queryParams?: Record<string, string> },
  ): Promise<Json[]>;
  searchForInstances(
    options?: { studyInstanceUID?: string; seriesInstanceUID?: string; queryParams?: Record<string, string> },
  ): Promise<Json[]>;
  retrieveStudy(options: Uids & Media): Promise<ArrayBuffer[]>;
  retrieveSeries(options: Uids & Media): Promise<ArrayBuffer[]>;
  retrieveInstance(options: Uids & Media): Promise<ArrayBuffer>;
  retrieveStudyMetadata(options: Uids): Promise<Json[]>;
  retrieveSeriesMetadata(options: Uids): Promise<Json[]>;
  retrieveInstanceMetadata(options: Uids): Promise<Json[]>;
  retrieveInstanceFrames(options: Uids & Media & { frameNumbers: number[] }): Promise<ArrayBuffer[]>;
  retrieveBulkData(
    options: { BulkDataURI: string; byteRange?: [number, number] } & Media,
  ): Promise<ArrayBuffer[]>;
  storeInstances(options: { datasets: ArrayBuffer[]; studyInstanceUID?: string }): Promise<string>;
  /** What retrieveStudy/Series/Instance call; used directly because 0.11.3 rejects their `mediaTypes`. */
  _httpGetMultipartApplicationDicom(
    url: string,
    mediaTypes: Media["mediaTypes"],
    params: false,
    request: object,
  ): Promise<ArrayBuffer[]>;
}
interface Uids {
  studyInstanceUID: string;
  seriesInstanceUID?: string;
  sopInstanceUID?: string;
}
interface Media {
  mediaTypes?: { mediaType: string; transferSyntaxUID?: string }[];
}

/** One corpus file as dcmjs reads it. */
interface Expected {
  file: CorpusFile;
  study: string;
  series: string;
  sop: string;
  patientName: string;
  modality: string;
  /** Native: all frames in one buffer; encapsulated: one buffer per frame. */
  pixelData: Uint8Array[];
  frames: number;
  encapsulated: boolean;
}

function expect(file: CorpusFile): Expected {
  const message = dcmjs.data.DicomMessage.readFile(file.bytes.slice().buffer);
  const dict = message.dict as Record<string, { Value?: unknown[] }>;
  const [study, series, name] = file.key.split("/");
  const name0 = dict["00100010"]?.Value?.[0] as { Alphabetic?: string } | string | undefined;
  const ts = (message.meta as Record<string, { Value: string[] }>)["00020010"].Value[0];
  return {
    file,
    study,
    series,
    sop: name.slice(0, -4),
    patientName: typeof name0 === "string" ? name0 : name0?.Alphabetic ?? "",
    modality: String(dict["00080060"]?.Value?.[0] ?? ""),
    pixelData: (dict["7FE00010"]?.Value as ArrayBuffer[] ?? []).map((b) => new Uint8Array(b)),
    frames: Number(dict["00280008"]?.Value?.[0] ?? 1),
    encapsulated: !["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"].includes(ts),
  };
}

const value = (json: Json, tag: string) => json[tag]?.Value?.[0];
const uids = (list: Json[], tag: string) => list.map((j) => String(value(j, tag))).sort();
const unique = <T>(items: T[]) => [...new Set(items)].sort();
const bytes = (buffer: ArrayBuffer) => new Uint8Array(buffer);

async function requirements(corpus: CorpusFile[]): Promise<string | undefined> {
  const problems: string[] = [];
  try {
    await Deno.stat(LIBRARY);
  } catch {
    problems.push("dicomweb-client is not installed: npm ci --prefix tools/e2e");
  }
  const names = new Set(corpus.map((f) => f.name));
  const absent = FILES.filter((f) => !names.has(f));
  if (absent.length > 0) problems.push(`tests/testdata/pydicom lacks ${absent.join(", ")}`);
  return problems.length > 0 ? problems.join("; ") : undefined;
}

const corpus = await pydicomCorpus();
const missing = await requirements(corpus);
if (missing) skipBecause("the dicomweb-client test", missing);

Deno.test({
  name: "dicomweb-client searches, retrieves, reads metadata, frames and bulkdata, and stores",
  ignore: missing !== undefined,
  sanitizeResources: false, // s3rver's pipes close asynchronously
  sanitizeOps: false,
  async fn(t) {
    if (missing) throw new Error(`Cannot run the dicomweb-client test: ${missing}`);
    const { api } = await import(LIBRARY.href) as {
      api: { DICOMwebClient: new (o: object) => DicomwebClient };
    };
    const expected = FILES.map((name) => expect(corpus.find((f) => f.name === name)!));
    const s3 = await startS3();
    const store = new S3Store({
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    const restore = installXhrPolyfill();
    let server: TestServer | undefined;
    let catalog: Catalog | undefined;
    try {
      const bucket = s3.uniqueBucket("client");
      await s3.createBucket(bucket);
      for (const e of expected) {
        await store.put(bucket, e.file.key, e.file.bytes, { size: e.file.bytes.length });
      }
      const config = parseConfig({ PORT: "0", AETS: `${AET}=${bucket}` });
      catalog = await memoryCatalog({ bulkDataThreshold: config.bulkDataThreshold });
      server = testServer({
        store,
        config,
        capabilities: { reEncode: true },
        catalog,
        handler: { log: () => {}, freeSentChunks: true }, // served as main.ts serves
      });
      await server.services.crawler!.crawl(AET, { waitForInstances: true }); // as the server does at start
      const url = `${server.url}/aets/${AET}`;
      const client = new api.DICOMwebClient({
        url,
        singlepart: "",
        verbose: false,
        // The library rejects with a bare "request failed": say what the server answered.
        errorInterceptor: (
          error: Error & { status?: number; response?: unknown; request?: { responseURL?: string } },
        ) => {
          const body = error.response instanceof ArrayBuffer
            ? new TextDecoder().decode(error.response)
            : typeof error.response === "string"
            ? error.response
            : JSON.stringify(error.response);
          error.message = `${error.request?.responseURL}: ${error.status} ${body.slice(0, 500)}`;
        },
      });

      const studies = unique(expected.map((e) => e.study));
      const ct = expected.find((e) => e.file.name === "CT_small.dcm")!;
      const mr = expected.filter((e) => e.file.name.startsWith("MR_"));
      const jpeg = expected.find((e) => e.file.name === "SC_rgb_jpeg_dcmtk.dcm")!;
      const rle = expected.find((e) => e.file.name === "SC_rgb_rle_2frame.dcm")!;
      const dose = expected.find((e) => e.file.name === "rtdose.dcm")!;

      await t.step("search: studies, series and instances, in and across studies", async () => {
        assert.deepEqual(uids(await client.searchForStudies(), "0020000D"), studies);
        const found = await client.searchForStudies({ queryParams: { PatientName: "CompressedSamples*" } });
        assert.deepEqual(uids(found, "0020000D"), unique([ct.study, mr[0].study]), "PatientName wildcard");
        const one = await client.searchForStudies({ queryParams: { StudyInstanceUID: ct.study } });
        assert.deepEqual(uids(one, "0020000D"), [ct.study]);
        assert.equal(
          (value(one[0], "00100010") as { Alphabetic: string }).Alphabetic,
          ct.patientName,
          "PatientName as a PN object",
        );
        assert.deepEqual(one[0]["00080061"]?.Value, ["CT"], "ModalitiesInStudy");
        assert.equal((await client.searchForStudies({ queryParams: { limit: "1" } })).length, 1, "limit");

        for (const study of studies) {
          const mine = expected.filter((e) => e.study === study);
          const series = await client.searchForSeries({ studyInstanceUID: study });
          assert.deepEqual(uids(series, "0020000E"), unique(mine.map((e) => e.series)), `series of ${study}`);
          assert.deepEqual(
            unique(series.map((s) => String(value(s, "00080060")))),
            unique(mine.map((e) => e.modality)),
          );
          for (const seriesUid of unique(mine.map((e) => e.series))) {
            const instances = await client.searchForInstances({
              studyInstanceUID: study,
              seriesInstanceUID: seriesUid,
            });
            assert.deepEqual(
              uids(instances, "00080018"),
              unique(mine.filter((e) => e.series === seriesUid).map((e) => e.sop)),
              `instances of ${seriesUid}`,
            );
          }
          const inStudy = await client.searchForInstances({ studyInstanceUID: study });
          assert.deepEqual(
            uids(inStudy, "00080018"),
            unique(mine.map((e) => e.sop)),
            `instances of study ${study}`,
          );
        }
        assert.deepEqual(
          uids(await client.searchForSeries(), "0020000E"),
          unique(expected.map((e) => e.series)),
        );
        assert.deepEqual(
          uids(await client.searchForInstances(), "00080018"),
          unique(expected.map((e) => e.sop)),
        );
        const byModality = await client.searchForSeries({ queryParams: { Modality: "MR" } });
        assert.deepEqual(uids(byModality, "0020000E"), [mr[0].series], "series by Modality across studies");
      });

      // dicomweb-client 0.11.3's retrieveStudy/Series/Instance throw "Media type application/ is not supported"
      // for any `mediaTypes`; the method they call takes them (Accept: ...; type="application/dicom"; transfer-syntax=*).
      const asStored = (path: string) =>
        client._httpGetMultipartApplicationDicom(
          `${url}${path}`,
          [{ mediaType: "application/dicom", transferSyntaxUID: "*" }],
          false,
          {},
        );
      const sortedMd5s = async (parts: ArrayBuffer[]) =>
        (await Promise.all(parts.map((p) => md5(bytes(p))))).sort();

      await t.step("retrieve: study, series and instance, byte-exact with transfer-syntax=*", async () => {
        for (const study of studies) {
          const mine = expected.filter((e) => e.study === study);
          const parts = await asStored(`/studies/${study}`);
          assert.deepEqual(
            await sortedMd5s(parts),
            await sortedMd5s(mine.map((e) => e.file.bytes.slice().buffer)),
          );
        }
        const series = await asStored(`/studies/${mr[0].study}/series/${mr[0].series}`);
        assert.deepEqual(
          await sortedMd5s(series),
          await sortedMd5s(mr.map((e) => e.file.bytes.slice().buffer)),
        );
        for (const e of expected) {
          const [instance] = await asStored(`/studies/${e.study}/series/${e.series}/instances/${e.sop}`);
          assert.equal(await md5(bytes(instance)), await md5(e.file.bytes), `${e.file.name} byte-exact`);
        }
        // The library's default Accept (no transfer-syntax): an explicit VR LE file comes back as it is.
        const plain = await client.retrieveInstance({
          studyInstanceUID: ct.study,
          seriesInstanceUID: ct.series,
          sopInstanceUID: ct.sop,
        });
        assert.equal(
          await md5(bytes(plain)),
          await md5(ct.file.bytes),
          "default Accept, explicit VR LE file",
        );
        // ...and every instance of a study arrives as a Part 10 file with its own SOP Instance UID.
        const all = await client.retrieveStudy({ studyInstanceUID: mr[0].study });
        const sops = all.map((part) => {
          assert.equal(new TextDecoder().decode(bytes(part).subarray(128, 132)), "DICM");
          const dict = dcmjs.data.DicomMessage.readFile(part).dict as Record<string, { Value: string[] }>;
          return dict["00080018"].Value[0];
        });
        assert.deepEqual(sops.sort(), unique(mr.map((e) => e.sop)));
      });

      await t.step("metadata: study, series and instance", async () => {
        const study = await client.retrieveStudyMetadata({ studyInstanceUID: jpeg.study });
        assert.deepEqual(uids(study, "00080018"), unique([jpeg.sop, rle.sop]));
        const series = await client.retrieveSeriesMetadata({
          studyInstanceUID: mr[0].study,
          seriesInstanceUID: mr[0].series,
        });
        assert.deepEqual(uids(series, "00080018"), unique(mr.map((e) => e.sop)));
        for (const e of expected) {
          const [instance] = await client.retrieveInstanceMetadata({
            studyInstanceUID: e.study,
            seriesInstanceUID: e.series,
            sopInstanceUID: e.sop,
          });
          assert.equal(value(instance, "00080018"), e.sop);
          assert.equal(value(instance, "0020000D"), e.study);
          assert.equal(value(instance, "00080060"), e.modality);
          assert.equal(
            (value(instance, "00100010") as { Alphabetic?: string })?.Alphabetic ?? "",
            e.patientName,
          );
          assert.ok(instance["7FE00010"]?.BulkDataURI, `${e.file.name}: Pixel Data as a BulkDataURI`);
        }
      });

      const frames = (e: Expected, frameNumbers: number[], mediaTypes?: Media["mediaTypes"]) =>
        client.retrieveInstanceFrames({
          studyInstanceUID: e.study,
          seriesInstanceUID: e.series,
          sopInstanceUID: e.sop,
          frameNumbers,
          mediaTypes,
        });
      const nativeFrame = (e: Expected, n: number) => {
        const size = e.pixelData[0].length / e.frames;
        return e.pixelData[0].subarray((n - 1) * size, n * size);
      };

      await t.step(
        "frames: default Accept, transfer-syntax=*, several media types, frame lists",
        async () => {
          // Default Accept (multipart/related; type="application/octet-stream"): native pixels as stored.
          const [ctFrame] = await frames(ct, [1]);
          assert.equal(await md5(bytes(ctFrame)), await md5(nativeFrame(ct, 1)), "CT frame 1");
          const doseFrames = await frames(dose, [1, 2, 15]);
          assert.equal(doseFrames.length, 3);
          for (const [i, n] of [1, 2, 15].entries()) {
            assert.equal(
              await md5(bytes(doseFrames[i])),
              await md5(nativeFrame(dose, n)),
              `RTDOSE frame ${n}`,
            );
          }
          // transfer-syntax=*: compressed frames exactly as stored (OHIF decodes them in the browser).
          const any = [{ mediaType: "application/octet-stream", transferSyntaxUID: "*" }];
          for (const e of [jpeg, ...mr.filter((m) => m.encapsulated)]) {
            const [frame] = await frames(e, [1], any);
            assert.equal(
              await md5(bytes(frame)),
              await md5(e.pixelData[0]),
              `${e.file.name} frame 1 as stored`,
            );
          }
          const rleFrames = await frames(rle, [2, 1], any);
          assert.equal(
            await md5(bytes(rleFrames[0])),
            await md5(rle.pixelData[1]),
            "RLE frame 2, in the order asked",
          );
          assert.equal(await md5(bytes(rleFrames[1])), await md5(rle.pixelData[0]), "RLE frame 1");
          // Several media types, as OHIF offers them: the stored JPEG is one of them.
          const [jpegFrame] = await frames(jpeg, [1], [
            { mediaType: "image/jpeg", transferSyntaxUID: "1.2.840.10008.1.2.4.50" },
            { mediaType: "application/octet-stream", transferSyntaxUID: "1.2.840.10008.1.2.1" },
          ]);
          assert.equal(await md5(bytes(jpegFrame)), await md5(jpeg.pixelData[0]), "JPEG frame by image/jpeg");
        },
      );

      await t.step("bulkdata: the BulkDataURI from the metadata, whole and a byte range", async () => {
        const [instance] = await client.retrieveInstanceMetadata({
          studyInstanceUID: ct.study,
          seriesInstanceUID: ct.series,
          sopInstanceUID: ct.sop,
        });
        const uri = instance["7FE00010"].BulkDataURI!;
        assert.ok(uri.startsWith("http://127.0.0.1:"), `absolute BulkDataURI: ${uri}`);
        const [whole] = await client.retrieveBulkData({ BulkDataURI: uri });
        assert.equal(await md5(bytes(whole)), await md5(ct.pixelData[0]), "Pixel Data by its BulkDataURI");
        const [part] = await client.retrieveBulkData({ BulkDataURI: uri, byteRange: [100, 1123] });
        assert.equal(
          await md5(bytes(part)),
          await md5(ct.pixelData[0].subarray(100, 1124)),
          "Range bytes=100-1123",
        );
        // Any other bulk value the metadata points at works too.
        for (const [tag, attribute] of Object.entries(instance)) {
          if (!attribute.BulkDataURI || tag === "7FE00010") continue;
          const [other] = await client.retrieveBulkData({ BulkDataURI: attribute.BulkDataURI });
          assert.ok(other.byteLength > 0, `${tag} by its BulkDataURI`);
        }
      });

      await t.step("store: STOW-RS, then found by search and retrieved byte-exact", async () => {
        const study = "2.25.31337";
        const made = [1, 2].map((i) =>
          buildInstance({
            study,
            series: `${study}.1`,
            sop: `${study}.1.${i}`,
            patientName: "Client^Stored",
            modality: "CT",
            frames: i,
          })
        );
        const response = await client.storeInstances({ datasets: made.map((m) => m.slice().buffer) });
        const body = JSON.parse(response) as Json;
        const referenced = (body["00081199"]?.Value ?? []) as Json[];
        assert.deepEqual(
          uids(referenced, "00081155"),
          [`${study}.1.1`, `${study}.1.2`],
          "ReferencedSOPSequence",
        );
        assert.equal(body["00081198"], undefined, "no FailedSOPSequence");
        const parts = await asStored(`/studies/${study}`);
        assert.deepEqual(await sortedMd5s(parts), await sortedMd5s(made.map((m) => m.slice().buffer)));
        // The catalog may index asynchronously: poll briefly.
        let found: Json[] = [];
        for (let i = 0; i < 50 && found.length === 0; i++) {
          found = await client.searchForStudies({ queryParams: { StudyInstanceUID: study } });
          if (found.length === 0) await new Promise((resolve) => setTimeout(resolve, 100));
        }
        assert.deepEqual(uids(found, "0020000D"), [study], "the stored study is found by QIDO");
        // POST /studies/{study}: an instance of that study is stored.
        const third = buildInstance({ study, series: `${study}.2`, sop: `${study}.2.1`, modality: "MR" });
        const into = JSON.parse(
          await client.storeInstances({ datasets: [third.slice().buffer], studyInstanceUID: study }),
        );
        assert.deepEqual(uids((into["00081199"]?.Value ?? []) as Json[], "00081155"), [`${study}.2.1`]);
        const [back] = await asStored(`/studies/${study}/series/${study}.2`);
        assert.equal(await md5(bytes(back)), await md5(third), "stored into its study, byte-exact");
      });
    } finally {
      restore();
      await server?.close();
      await catalog?.close();
      await store.close?.();
      await s3.stop();
    }
  },
});
