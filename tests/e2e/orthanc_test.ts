/**
 * Orthanc (Debian's `orthanc` + `orthanc-dicomweb`) as a DICOMweb client of this server, with the studies in a
 * real S3 server: Orthanc searches us (QIDO-RS), retrieves a study from us (WADO-RS) and pushes one to us
 * (STOW-RS); instances arrive byte-identical (compared by SOP Instance UID, whole-file and Pixel Data hashes).
 *
 * Needs Orthanc: fails without it under CI=true, else skipped with the reason printed.
 */

import { skipBecause } from "../_skip.ts";
import assert from "node:assert/strict";
import dcmjs from "dcmjs";
import { parseConfig } from "../../lib/config/config.ts";
import type { Catalog } from "../../lib/catalog/catalog.ts";
import type { Crawler } from "../../lib/catalog/crawler.ts";
import { memoryCatalog, testHandler } from "../_server.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { type CorpusFile, md5, pydicomCorpus } from "../_corpus.ts";
import { orthancMissing, startOrthanc } from "../_orthanc.ts";
import { startS3 } from "../_s3server.ts";

const AET = "ORTHANC";
/** In our bucket for Orthanc to retrieve: a CT, and a JPEG + multiframe RLE study. */
const OURS = ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm"];
/** Given to Orthanc to push to us: one NM series, JPEG 2000 and 12-bit JPEG. */
const THEIRS = ["JPEG2000.dcm", "JPGExtended.dcm"];

const corpus = await pydicomCorpus();
const missing = await (async () => {
  const problems: string[] = [];
  const orthanc = await orthancMissing();
  if (orthanc) problems.push(orthanc);
  const names = new Set(corpus.map((f) => f.name));
  const absent = [...OURS, ...THEIRS].filter((f) => !names.has(f));
  if (absent.length > 0) problems.push(`tests/testdata/pydicom lacks ${absent.join(", ")}`);
  return problems.length > 0 ? problems.join("; ") : undefined;
})();
if (missing) skipBecause("the Orthanc end-to-end test", missing);

const file = (name: string) => corpus.find((f) => f.name === name)!;
const uidsOf = (f: CorpusFile) => {
  const [study, series, name] = f.key.split("/");
  return { study, series, sop: name.slice(0, -4) };
};

/** Pixel Data (all frames or fragments, concatenated) of a Part 10 file, as dcmjs reads it. */
async function pixelHash(bytes: Uint8Array): Promise<string> {
  const dict = dcmjs.data.DicomMessage.readFile(bytes.slice().buffer).dict as Record<
    string,
    { Value?: ArrayBuffer[] }
  >;
  const parts = (dict["7FE00010"]?.Value ?? []).map((b) => new Uint8Array(b));
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return await md5(all);
}

function sopOf(bytes: Uint8Array): string {
  const dict = dcmjs.data.DicomMessage.readFile(bytes.slice().buffer).dict as Record<
    string,
    { Value: string[] }
  >;
  return dict["00080018"].Value[0];
}

Deno.test({
  name: "Orthanc searches, retrieves from and stores to us over DICOMweb, byte-identical",
  ignore: missing !== undefined,
  sanitizeResources: false, // s3rver's and Orthanc's pipes close asynchronously
  sanitizeOps: false,
  async fn(t) {
    if (missing) throw new Error(`Cannot run the Orthanc end-to-end test: ${missing}`);
    const s3 = await startS3();
    const store = new S3Store({
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    let server: Deno.HttpServer | undefined;
    let orthanc: Awaited<ReturnType<typeof startOrthanc>> | undefined;
    let catalog: Catalog | undefined;
    let crawler: Crawler | undefined;
    const requests: string[] = [];
    try {
      const bucket = s3.uniqueBucket("orthanc");
      await s3.createBucket(bucket);
      for (const name of OURS) {
        const f = file(name);
        await store.put(bucket, f.key, f.bytes, { size: f.bytes.length });
      }
      const config = parseConfig({ PORT: "0", AETS: `${AET}=${bucket}` });
      catalog = await memoryCatalog({ bulkDataThreshold: config.bulkDataThreshold });
      const app = testHandler({
        store,
        config,
        capabilities: { reEncode: true },
        catalog,
        handler: { log: () => {} },
      });
      crawler = app.services.crawler!;
      await crawler.crawl(AET, { waitForInstances: true }); // as the server does at start
      const handler = app.handler;
      server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
        const response = await handler(request);
        const url = new URL(request.url);
        const accept = request.headers.get("accept") ?? "";
        const why = response.status >= 400 ? ` ${await response.clone().text()}` : "";
        requests.push(`${request.method} ${url.pathname}${url.search} [${accept}] ${response.status}${why}`);
        return response;
      });
      const root = `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}/aets/${AET}/`;
      orthanc = await startOrthanc({ servers: { us: root } });
      const o = orthanc;
      const seen = () => `\nour server saw:\n  ${requests.slice(-20).join("\n  ")}`;

      await t.step("QIDO-RS: Orthanc lists our studies", async () => {
        const studies = await o.rest<Record<string, { Value?: unknown }>[]>(
          "POST",
          "/dicom-web/servers/us/qido",
          {
            Uri: "/studies",
          },
        );
        // Orthanc answers in its own JSON: {"0020000D": {"Name": "StudyInstanceUID", "Value": "1.2..."}}.
        const found = studies.map((s) => {
          const value = s["0020000D"]?.Value;
          return String(Array.isArray(value) ? value[0] : value);
        }).sort();
        const expected = [...new Set(OURS.map((n) => uidsOf(file(n)).study))].sort();
        assert.deepEqual(found, expected, `studies seen through Orthanc${seen()}`);
      });

      await t.step("WADO-RS: Orthanc retrieves our studies, byte-identical", async () => {
        const studies = [...new Set(OURS.map((n) => uidsOf(file(n)).study))];
        for (const study of studies) {
          await o.rest("POST", "/dicom-web/servers/us/retrieve", { Resources: [{ Study: study }] })
            .catch((error) => {
              throw new Error(`${error.message}${seen()}`);
            });
        }
        const ids = await o.rest<string[]>("GET", "/instances");
        const arrived = new Map<string, Uint8Array>();
        for (const id of ids) {
          const bytes = await o.bytes(`/instances/${id}/file`);
          arrived.set(sopOf(bytes), bytes);
        }
        assert.deepEqual(
          [...arrived.keys()].sort(),
          OURS.map((n) => uidsOf(file(n)).sop).sort(),
          "SOP Instance UIDs",
        );
        for (const name of OURS) {
          const f = file(name);
          const got = arrived.get(uidsOf(f).sop)!;
          assert.equal(await pixelHash(got), await pixelHash(f.bytes), `${name}: Pixel Data hash`);
          assert.equal(await md5(got), await md5(f.bytes), `${name}: whole file byte-identical`);
        }
      });

      await t.step("STOW-RS: Orthanc pushes a study to us, byte-identical", async () => {
        let study = "";
        for (const name of THEIRS) {
          const uploaded = await o.rest<{ ParentStudy: string }>("POST", "/instances", file(name).bytes);
          study = uploaded.ParentStudy;
        }
        await o.rest("POST", "/dicom-web/servers/us/stow", { Resources: [study] }).catch((error) => {
          throw new Error(`${error.message}${seen()}`);
        });
        for (const name of THEIRS) {
          const f = file(name);
          const stored = await store.get(bucket, f.key);
          assert.ok(stored, `${name}: stored under ${f.key}${seen()}`);
          const bytes = new Uint8Array(await new Response(stored.body).arrayBuffer());
          assert.equal(sopOf(bytes), uidsOf(f).sop);
          assert.equal(await pixelHash(bytes), await pixelHash(f.bytes), `${name}: Pixel Data hash`);
          assert.equal(await md5(bytes), await md5(f.bytes), `${name}: whole file byte-identical`);
        }
        // ...and searchable at once.
        const { study: uid } = uidsOf(file(THEIRS[0]));
        const found = await o.rest<unknown[]>("POST", "/dicom-web/servers/us/qido", {
          Uri: "/studies",
          Arguments: { StudyInstanceUID: uid },
        });
        assert.equal(found.length, 1, `the pushed study is found by QIDO-RS${seen()}`);
      });
      console.log(`${o.version}: ${requests.length} requests to our server`);
    } finally {
      await orthanc?.stop();
      await server?.shutdown();
      await crawler?.stop();
      await catalog?.close();
      await store.close?.();
      await s3.stop();
    }
  },
});
