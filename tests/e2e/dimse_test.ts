/**
 * The DIMSE service against real peers: dcmtk's echoscu, storescu (every keyed file of the pydicom corpus),
 * findscu (each level, wildcards, dates, lists), movescu to a storescp the test starts (pending responses,
 * C-CANCEL, unknown destination), getscu; and Debian's Orthanc both ways (it stores to us, queries us and moves
 * from us to itself). Data sets arrive byte-exact: nothing is transcoded.
 *
 * Needs dcmtk (and Orthanc for its test): fails without them under CI=true, else skipped with the reason.
 */

import assert from "node:assert/strict";
import { skipBecause } from "../_skip.ts";
import { buildInstance, type CorpusFile, pydicomCorpus } from "../_corpus.ts";
import {
  datasetOf,
  dcmtkMissing,
  filesIn,
  run,
  startDicomOrthanc,
  startStorescp,
  startTestDimse,
  type TestDimse,
  type TestStorescp,
} from "../_dimse_peers.ts";
import { orthancMissing } from "../_orthanc.ts";
import { parseBuffer } from "../../lib/dicom/part10.ts";
import { getString } from "../../lib/dicom/dataset.ts";
import { readFileMeta } from "../../lib/dicom/file_meta.ts";

const missing = await dcmtkMissing();
if (missing) skipBecause("the DIMSE end-to-end tests", missing);
const orthancAbsent = await orthancMissing();
if (orthancAbsent) skipBecause("the Orthanc DIMSE end-to-end test", orthancAbsent);

const CORPUS = new URL("../testdata/pydicom/", import.meta.url);
const corpus = await pydicomCorpus();
/** Files the manifest marks as structurally malformed: refused, like STOW-RS refuses them. */
const malformed = new Set(
  (await Deno.readTextFile(new URL("MANIFEST.md", CORPUS))).split("\n")
    .map((line) => line.split("|").map((c) => c.trim()))
    .filter((cells) => cells.length > 8 && /^MALFORMED:/.test(cells[7]))
    .map((cells) => cells[1]),
);
const path = (f: CorpusFile) => new URL(`files/${f.name}`, CORPUS).pathname;
const byName = (name: string) => corpus.find((f) => f.name === name)!;
const MR_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457";
const CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322";

/** storescu's option proposing a file's own transfer syntax (so that it sends the file as it is). */
const PROPOSE: Record<string, string> = {
  "1.2.840.10008.1.2": "-xi",
  "1.2.840.10008.1.2.1": "-xe",
  "1.2.840.10008.1.2.2": "-xb",
  "1.2.840.10008.1.2.1.99": "-xd",
  "1.2.840.10008.1.2.5": "-xr",
  "1.2.840.10008.1.2.4.50": "-xy",
  "1.2.840.10008.1.2.4.51": "-xx",
  "1.2.840.10008.1.2.4.70": "-xs",
  "1.2.840.10008.1.2.4.80": "-xt",
  "1.2.840.10008.1.2.4.81": "-xu",
  "1.2.840.10008.1.2.4.90": "-xv",
  "1.2.840.10008.1.2.4.91": "-xw",
};

/** storescu of one file, proposing its own transfer syntax. */
function storescu(port: number, file: CorpusFile, aet: string, aec: string) {
  const propose = PROPOSE[file.transferSyntax] ?? "-x=";
  return run("storescu", ["-R", propose, "-aet", aet, "-aec", aec, "127.0.0.1", String(port), path(file)]);
}

/**
 * Sends each file with storescu to us and to a bit-preserving dcmtk storescp (the reference for what storescu
 * put on the wire: dcmtk re-encodes some files, e.g. drops Data Set Trailing Padding), four associations at once.
 */
async function storeAll(t: TestDimse, reference: TestStorescp, files: CorpusFile[]) {
  const results: { file: CorpusFile; code: number; output: string; sent?: Uint8Array }[] = [];
  const queue = [...files];
  await Promise.all([0, 1, 2, 3].map(async () => {
    for (let file = queue.shift(); file; file = queue.shift()) {
      const r = await storescu(t.port, file, "MODALITY", "PACS");
      await storescu(reference.port, file, "MODALITY", "REF");
      const sop = file.key.split("/")[2].slice(0, -4);
      const copy = (await filesIn(reference.dir)).find((f) => f.endsWith(sop));
      const sent = copy ? datasetOf(await Deno.readFile(copy)) : undefined;
      results.push({ file, code: r.code, output: r.output, sent });
    }
  }));
  return results;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function stored(t: TestDimse, key: string): Promise<Uint8Array | undefined> {
  const object = await t.store.get("PACS", key);
  return object ? new Uint8Array(await new Response(object.body).arrayBuffer()) : undefined;
}

/** findscu with `-X`: the responses' data sets, parsed. */
async function find(t: TestDimse, model: "-P" | "-S", keys: string[]) {
  const dir = await Deno.makeTempDir({ prefix: "findscu-" });
  try {
    const args = [model, "-aet", "WORKSTATION", "-aec", "PACS", "-X", "-od", dir];
    for (const key of keys) args.push("-k", key);
    const r = await run("findscu", [...args, "127.0.0.1", String(t.port)]);
    assert.equal(r.code, 0, r.output);
    const out = [];
    for (const file of await filesIn(dir)) {
      out.push(parseBuffer(await Deno.readFile(file), file).dataset);
    }
    return { datasets: out, output: r.output };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "DIMSE against dcmtk: echo, store every corpus file, find, move, get, cancel, grants",
  ignore: missing !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const storescp = await startStorescp("DEST", ["+B"]);
    const dimse = await startTestDimse({
      dimse: {
        DIMSE_PEERS:
          `MODALITY@127.0.0.1:104 WORKSTATION@127.0.0.1:105 RO@127.0.0.1:106 DEST@127.0.0.1:${storescp.port}`,
      },
      config: { AUTH_GRANTS: "RO:read:PACS" },
    });
    try {
      await t.step("C-ECHO; association rejections name the AE title", async () => {
        const ok = await run("echoscu", [
          "-aet",
          "MODALITY",
          "-aec",
          "PACS",
          "127.0.0.1",
          String(dimse.port),
        ]);
        assert.equal(ok.code, 0, ok.output);
        const called = await run("echoscu", [
          "-aet",
          "MODALITY",
          "-aec",
          "NOPE",
          "127.0.0.1",
          String(dimse.port),
        ]);
        assert.notEqual(called.code, 0);
        assert.match(called.output, /Called AE Title Not Recognized/);
        const calling = await run("echoscu", [
          "-aet",
          "STRANGER",
          "-aec",
          "PACS",
          "127.0.0.1",
          String(dimse.port),
        ]);
        assert.notEqual(calling.code, 0);
        assert.match(calling.output, /Calling AE Title Not Recognized/);
      });

      await t.step(
        "storescu of every keyed corpus file: the data set sent is the data set stored",
        async () => {
          const reference = await startStorescp("REF", ["+B"]);
          let results;
          try {
            results = await storeAll(dimse, reference, corpus);
          } finally {
            await reference.stop();
          }
          let exact = 0;
          for (const { file, code, output, sent } of results) {
            const bytes = await stored(dimse, file.key);
            if (sent === undefined) { // dcmtk cannot read it (a truncated file): nothing was sent
              assert.ok(malformed.has(file.name), `${file.name} was not sent:\n${output}`);
              assert.equal(bytes, undefined, `${file.name} was not sent and must not be stored`);
              continue;
            }
            assert.equal(code, 0, output);
            assert.ok(bytes, `${file.name} stored under ${file.key}`);
            assert.deepEqual(datasetOf(bytes), sent, `${file.name}: the data set stored is the one sent`);
            if (equal(sent, datasetOf(file.bytes))) exact++;
            const meta = readFileMeta(bytes, file.key, true)!;
            assert.equal(meta.transferSyntaxUid, file.transferSyntax, file.name);
            assert.equal(
              meta.sopInstanceUid,
              file.key.split("/")[2].slice(0, -4),
              `${file.name}: Affected SOP UID`,
            );
          }
          // storescu sends most files untouched: those are then stored byte-exact with the file
          assert.ok(exact >= 20, `${exact} files stored byte-exact with the original`);
          // a retry of the same bytes is a success; the catalog sees the instances at once
          const again = await storescu(dimse.port, byName("CT_small.dcm"), "MODALITY", "PACS");
          assert.equal(again.code, 0, again.output);
          assert.doesNotMatch(again.output, /Warning|Failed/);
          const rows = await dimse.services.catalog!.search({
            aet: "PACS",
            level: "instance",
            study: MR_STUDY,
            filters: [],
            limit: 100,
            offset: 0,
          });
          assert.ok(rows.length >= 6, `MR study instances searchable: ${rows.length}`);
        },
      );

      await t.step("a read-only calling AE is refused storing (0124): nothing stored", async () => {
        const dir = await Deno.makeTempDir({ prefix: "dimse-ro-" });
        try {
          const uids = { study: "2.25.1001", series: "2.25.1002", sop: "2.25.1003" };
          await Deno.writeFile(`${dir}/ro.dcm`, buildInstance(uids));
          const r = await run("storescu", [
            "-v",
            "-aet",
            "RO",
            "-aec",
            "PACS",
            "127.0.0.1",
            String(dimse.port),
            `${dir}/ro.dcm`,
          ]);
          assert.match(r.output, /Status: 0x124/i);
          assert.equal(await stored(dimse, `${uids.study}/${uids.series}/${uids.sop}.dcm`), undefined);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      });

      await t.step("findscu at each level: wildcards, dates, lists, computed keys", async () => {
        const patients = await find(dimse, "-P", [
          "QueryRetrieveLevel=PATIENT",
          "PatientName=Compressed*CT1",
          "PatientID",
          "NumberOfPatientRelatedStudies",
        ]);
        assert.equal(patients.datasets.length, 1, patients.output);
        assert.match(getString(patients.datasets[0], 0x00100010)!, /^CompressedSamples/);
        assert.equal(getString(patients.datasets[0], 0x00201200), "1");

        const studies = await find(dimse, "-S", [
          "QueryRetrieveLevel=STUDY",
          "StudyDate=20040101-20041231",
          "StudyInstanceUID",
          "ModalitiesInStudy",
          "NumberOfStudyRelatedInstances",
          "PatientName",
        ]);
        const uids = studies.datasets.map((d) => getString(d, 0x0020000d)).sort();
        assert.ok(uids.includes(CT_STUDY) && uids.includes(MR_STUDY), uids.join());
        const mr = studies.datasets.find((d) => getString(d, 0x0020000d) === MR_STUDY)!;
        assert.equal(getString(mr, 0x00080061), "MR");
        assert.equal(getString(mr, 0x00080052), "STUDY");

        const none = await find(dimse, "-S", ["QueryRetrieveLevel=STUDY", "StudyDate=19000101-19001231"]);
        assert.equal(none.datasets.length, 0);

        const series = await find(dimse, "-S", [
          "QueryRetrieveLevel=SERIES",
          `StudyInstanceUID=${MR_STUDY}`,
          "Modality=M?",
          "SeriesInstanceUID",
          "NumberOfSeriesRelatedInstances",
        ]);
        assert.equal(series.datasets.length, 1, series.output);
        assert.ok(Number(getString(series.datasets[0], 0x00201209)) >= 6);

        const sops = [
          "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457",
          "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5458",
        ];
        const images = await find(dimse, "-S", [
          "QueryRetrieveLevel=IMAGE",
          `StudyInstanceUID=${MR_STUDY}`,
          `SOPInstanceUID=${sops.join("\\")}`,
          "InstanceNumber",
        ]);
        assert.deepEqual(images.datasets.map((d) => getString(d, 0x00080018)).sort(), sops);

        const bad = await run("findscu", [
          "-S",
          "-aet",
          "WORKSTATION",
          "-aec",
          "PACS",
          "-k",
          "QueryRetrieveLevel=STUDY",
          "-k",
          "StudyDate=notadate",
          "-v",
          "127.0.0.1",
          String(dimse.port),
        ]);
        assert.match(bad.output, /Error: DataSetDoesNotMatchSOPClass/);
      });

      await t.step("movescu to storescp: pending responses with counts, byte-exact", async () => {
        const m = await run("movescu", [
          "-v",
          "-S",
          "-aet",
          "WORKSTATION",
          "-aec",
          "PACS",
          "-aem",
          "DEST",
          "-k",
          "QueryRetrieveLevel=STUDY",
          "-k",
          `StudyInstanceUID=${MR_STUDY}`,
          "127.0.0.1",
          String(dimse.port),
        ]);
        assert.equal(m.code, 0, m.output);
        assert.match(m.output, /Received Move Response 1 \(Pending\)/);
        assert.match(m.output, /Received Final Move Response \(Success\)/);
        const inStudy = [];
        for (const f of corpus) {
          if (f.key.startsWith(MR_STUDY + "/") && await stored(dimse, f.key)) inStudy.push(f);
        }
        assert.equal(inStudy.length, 7);
        const received = await filesIn(storescp.dir);
        assert.equal(received.length, inStudy.length, received.join("\n"));
        for (const file of inStudy) {
          const sop = file.key.split("/")[2].slice(0, -4);
          const got = received.find((r) => r.endsWith(sop));
          assert.ok(got, `${file.name} received`);
          const ours = datasetOf((await stored(dimse, file.key))!);
          assert.deepEqual(datasetOf(await Deno.readFile(got)), ours, `${file.name} sent as stored`);
        }
      });

      await t.step(
        "C-MOVE to an unknown destination is A801; C-CANCEL stops between sub-operations",
        async () => {
          const unknown = await run("movescu", [
            "-S",
            "-aet",
            "WORKSTATION",
            "-aec",
            "PACS",
            "-aem",
            "NOWHERE",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            `StudyInstanceUID=${MR_STUDY}`,
            "127.0.0.1",
            String(dimse.port),
          ]);
          assert.match(unknown.output, /MoveDestinationUnknown/);
          const cancel = await run("movescu", [
            "-v",
            "-S",
            "--cancel",
            "1",
            "-aet",
            "WORKSTATION",
            "-aec",
            "PACS",
            "-aem",
            "DEST",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            `StudyInstanceUID=${MR_STUDY}`,
            "127.0.0.1",
            String(dimse.port),
          ]);
          assert.match(cancel.output, /Final Move Response \(Cancel/, cancel.output);
        },
      );

      await t.step("getscu: C-GET on the same association, byte-exact", async () => {
        const dir = await Deno.makeTempDir({ prefix: "getscu-" });
        try {
          const g = await run("getscu", [
            "-S",
            "-aet",
            "WORKSTATION",
            "-aec",
            "PACS",
            "+B",
            "-od",
            dir,
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            `StudyInstanceUID=${CT_STUDY}`,
            "-k",
            "SeriesInstanceUID=1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322",
            "127.0.0.1",
            String(dimse.port),
          ]);
          assert.equal(g.code, 0, g.output);
          const files = await filesIn(dir);
          assert.equal(files.length, 1, g.output);
          const ours = datasetOf((await stored(dimse, byName("CT_small.dcm").key))!);
          assert.deepEqual(datasetOf(await Deno.readFile(files[0])), ours);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      });
    } finally {
      await dimse.close();
      await storescp.stop();
    }
  },
});

Deno.test({
  name: "DIMSE with Orthanc: it stores to us, queries us, and moves from us to itself",
  ignore: missing !== undefined || orthancAbsent !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    if (orthancAbsent) throw new Error(`Cannot run the Orthanc DIMSE test: ${orthancAbsent}`);
    const ourPort = (() => {
      const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const p = (l.addr as Deno.NetAddr).port;
      l.close();
      return p;
    })();
    const reference = await startStorescp("REF", ["+B"]);
    const orthanc = await startDicomOrthanc("ORTHANC", {
      us: ["PACS", "127.0.0.1", ourPort],
      ref: ["REF", "127.0.0.1", reference.port],
    });
    const dimse = await startTestDimse({
      dimse: { DIMSE_PORT: String(ourPort), DIMSE_PEERS: `ORTHANC@127.0.0.1:${orthanc.dicomPort}` },
    });
    try {
      const given = [byName("JPEG2000.dcm"), byName("MR_small_bigendian.dcm")];
      await t.step(
        "Orthanc stores to us (C-STORE SCU): the data set it sends is the one stored",
        async () => {
          const ids: string[] = [];
          for (const file of given) {
            ids.push((await orthanc.rest<{ ID: string }>("POST", "/instances", file.bytes)).ID);
          }
          await orthanc.rest("POST", "/modalities/us/store", { Resources: ids, Synchronous: true });
          // the same to a bit-preserving storescp: what Orthanc puts on the wire (it re-encodes sequences)
          await orthanc.rest("POST", "/modalities/ref/store", { Resources: ids, Synchronous: true });
          const sent = await filesIn(reference.dir);
          for (const file of given) {
            const bytes = await stored(dimse, file.key);
            assert.ok(bytes, `${file.name} stored`);
            const sop = file.key.split("/")[2].slice(0, -4);
            const copy = sent.find((f) => f.endsWith(sop));
            assert.ok(copy, `${file.name} reached the reference`);
            assert.deepEqual(datasetOf(bytes), datasetOf(await Deno.readFile(copy)), `${file.name} as sent`);
          }
        },
      );

      await t.step("Orthanc queries us (C-FIND SCU)", async () => {
        const query = await orthanc.rest<{ ID: string }>("POST", "/modalities/us/query", {
          Level: "Series",
          Query: { StudyInstanceUID: MR_STUDY, Modality: "MR", SeriesInstanceUID: "" },
        });
        const answers = await orthanc.rest<string[]>("GET", `/queries/${query.ID}/answers`);
        assert.equal(answers.length, 1);
        const content = await orthanc.rest<Record<string, { Value: string }>>(
          "GET",
          `/queries/${query.ID}/answers/0/content`,
        );
        assert.equal(content["0008,0060"].Value, "MR");
      });

      await t.step("Orthanc moves from us to itself (we are its C-STORE SCU): byte-exact", async () => {
        const ct = byName("CT_small.dcm");
        const r = await run("storescu", [
          "-R",
          "-aet",
          "ORTHANC",
          "-aec",
          "PACS",
          "127.0.0.1",
          String(ourPort),
          path(ct),
        ]);
        assert.equal(r.code, 0, r.output);
        await orthanc.rest("POST", "/modalities/us/move", {
          Level: "Study",
          Resources: [{ StudyInstanceUID: CT_STUDY }],
          TargetAet: "ORTHANC",
          Synchronous: true,
        });
        // Orthanc files what it received just after answering the C-STORE: look until it shows
        let found: string[] = [];
        for (let i = 0; i < 100 && found.length === 0; i++) {
          found = await orthanc.rest<string[]>("POST", "/tools/find", {
            Level: "Instance",
            Query: { SOPInstanceUID: ct.key.split("/")[2].slice(0, -4) },
          });
          if (found.length === 0) await new Promise((resolve) => setTimeout(resolve, 100));
        }
        assert.equal(found.length, 1, `${dimse.logs.join("\n")}\n${orthanc.log()}`);
        const bytes = await orthanc.bytes(`/instances/${found[0]}/file`);
        assert.deepEqual(
          datasetOf(bytes),
          datasetOf((await stored(dimse, ct.key))!),
          "Orthanc holds what we sent",
        );
      });
    } finally {
      await dimse.close();
      await orthanc.stop();
      await reference.stop();
    }
  },
});

Deno.test({
  name: "DIMSE over DICOM TLS (DIMSE_TLS with the server's certificate): echoscu and storescu +tls",
  ignore: missing !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "dimse-tls-" });
    const made = await run("openssl", [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      `${dir}/key.pem`,
      "-out",
      `${dir}/cert.pem`,
      "-days",
      "1",
      "-subj",
      "/CN=localhost",
    ]);
    assert.equal(made.code, 0, made.output);
    const dimse = await startTestDimse({
      config: { TLS_CERT_FILE: `${dir}/cert.pem`, TLS_KEY_FILE: `${dir}/key.pem` },
      dimse: { DIMSE_PEERS: "MODALITY@127.0.0.1:104", DIMSE_TLS: "true" },
    });
    try {
      const port = String(dimse.port);
      const tls = ["+tla", "-ic", "-aet", "MODALITY", "-aec", "PACS", "127.0.0.1", port];
      const echo = await run("echoscu", tls);
      assert.equal(echo.code, 0, echo.output);
      const plain = await run("echoscu", ["-aet", "MODALITY", "-aec", "PACS", "127.0.0.1", port]);
      assert.notEqual(plain.code, 0, "a plain TCP association is not accepted on the TLS port");
      const ct = byName("CT_small.dcm");
      const store = await run("storescu", [...tls, path(ct)]);
      assert.equal(store.code, 0, store.output);
      assert.ok(await stored(dimse, ct.key), "stored over TLS");
    } finally {
      await dimse.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
