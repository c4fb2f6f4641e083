/**
 * `deno task import` (lib/cli/import.ts) run as a subprocess, as a user runs it: real files from the pydicom
 * corpus under any names in nested folders, built instances (one large enough to be streamed), a non-DICOM
 * file, a zip archive made here, a DICOMDIR set made by dcmtk's dcmmkdir, a conflicting object and re-runs;
 * into a local DATA_DIR and into S3 (s3rver).
 *
 * @module
 */

import assert from "node:assert/strict";
import { GetObjectCommand, ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3";
import { FetchHttpHandler } from "@smithy/fetch-http-handler";
import { buildInstance } from "../_corpus.ts";
import { corpusDir, hasCommand } from "../_dicom_fixtures.ts";
import { startS3 } from "../_s3server.ts";
import { skipFor } from "../_skip.ts";
import { openSqliteCatalog } from "../../lib/catalog/sqlite_catalog.ts";
import { filesUnder, type ImportRun, layoutKey, runImport, sh, summary } from "./_import.ts";

const CORPUS = corpusDir();

/** The same bytes? (Compares by SHA-256 so that failures print short.) */
async function digest(bytes: Uint8Array): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Built instances of one study: three small and one of 3 MB (past the 1 MiB the ingest reads whole). */
function builtStudy(study: string): { name: string; bytes: Uint8Array }[] {
  const files = [1, 2, 3].map((i) => ({
    name: `IM00000${i}`,
    bytes: buildInstance({ study, series: `${study}.1`, sop: `${study}.1.${i}` }),
  }));
  files.push({
    name: "BIG0001",
    bytes: buildInstance({
      study,
      series: `${study}.2`,
      sop: `${study}.2.1`,
      pixelBytes: 1024 * 1024,
      frames: 3,
    }),
  });
  return files;
}

/** The rejected files a run listed, by name, with their reasons. */
function rejections(run: ImportRun): Map<string, string> {
  const result = new Map<string, string>();
  for (const line of run.lines) {
    const match = /^rejected (.+?): (.+)$/.exec(line);
    if (match) result.set(match[1], match[2]);
  }
  return result;
}

function explain(run: ImportRun): string {
  return `exit ${run.code}\n--- stdout\n${run.stdout}--- stderr\n${run.stderr}`;
}

Deno.test("deno task import into a local DATA_DIR: folders, archives, DICOMDIR sets, conflicts, re-runs", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "import-test-" });
  const data = `${tmp}/data`;
  const env = { DATA_DIR: data, CATALOG_PATH: `${data}/catalog.sqlite` };
  try {
    // a modality's dump: the corpus under names without extensions, in nested folders, and a text file
    const sources = new Map<string, Uint8Array>(); // path → bytes
    let n = 0;
    for await (const entry of Deno.readDir(CORPUS)) {
      const folder = `${tmp}/in/dump/${n % 3 === 0 ? "A" : "B/C"}`;
      await Deno.mkdir(folder, { recursive: true });
      const path = `${folder}/IMG${String(++n).padStart(5, "0")}`;
      const bytes = await Deno.readFile(`${CORPUS}/${entry.name}`);
      await Deno.writeFile(path, bytes);
      sources.set(path, bytes);
    }
    for (const file of builtStudy("2.25.777")) {
      await Deno.writeFile(`${tmp}/in/dump/${file.name}`, file.bytes);
      sources.set(`${tmp}/in/dump/${file.name}`, file.bytes);
    }
    await Deno.writeTextFile(`${tmp}/in/dump/notes.txt`, "Patient transferred to ward 3; images follow\n");
    await Deno.writeTextFile(`${tmp}/in/dump/.DS_Store`, "\0\0\0\x01Bud1");
    const byDigest = new Map<string, string>();
    for (const [path, bytes] of sources) byDigest.set(await digest(bytes), path);

    let first: { imported: number; skipped: number; rejected: number };
    await t.step(
      "a folder: every valid file byte-exact under its layout key, the others rejected with the reason",
      async () => {
        const run = await runImport([`${tmp}/in/dump`, "--aet", "DUMP"], env, data);
        first = summary(run);
        const rejected = rejections(run);
        assert.equal(run.code, 1, explain(run));
        assert.ok(run.lines.some((l) => l === `Created the AET DUMP: folder ${data}/DUMP`), explain(run));
        assert.equal(first.skipped, 0);
        assert.equal(first.imported + first.rejected, sources.size + 1, explain(run)); // + notes.txt
        assert.equal(rejected.size, first.rejected, explain(run));
        assert.match(
          rejected.get(`${tmp}/in/dump/notes.txt`) ?? "",
          /not a DICOM Part 10 file \("DICM" missing at offset 128\)/,
        );
        for (const reason of rejected.values()) assert.ok(reason.length > 10, reason);
        assert.ok(first.imported >= 35, explain(run)); // the corpus's valid files and the built study
        const stored = await filesUnder(`${data}/DUMP`);
        assert.equal(stored.size, first.imported);
        for (const [key, bytes] of stored) {
          const source = byDigest.get(await digest(bytes));
          assert.ok(source, `${key} is byte-exact the copy of a source file`);
          assert.equal(key, await layoutKey(bytes));
          assert.ok(!rejected.has(source));
        }
        for (const file of builtStudy("2.25.777")) {
          assert.ok(stored.has(await layoutKey(file.bytes)), file.name);
        }
        // the catalog was filled as objects landed: QIDO-RS finds them without a crawl
        const catalog = await openSqliteCatalog(env.CATALOG_PATH);
        try {
          const [status] = await catalog.status("DUMP");
          assert.equal(status.indexed, first.imported);
          assert.ok(status.studies >= 10, `${status.studies} studies`);
          // and the change feed has one create per imported instance (import goes through Ingest → catalog)
          const feed = await catalog.changeFeed({
            aet: "DUMP",
            offset: 0,
            limit: 100_000,
            includeMetadata: false,
          });
          assert.equal(feed.length, first.imported);
          assert.ok(feed.every((entry) => entry.action === "create" && entry.state === "current"));
        } finally {
          await catalog.close();
        }
      },
    );

    await t.step(
      "a re-run writes nothing: every stored file is skipped, the rejected ones rejected again",
      async () => {
        const before = await Deno.stat(`${data}/DUMP/${await layoutKey(builtStudy("2.25.777")[0].bytes)}`);
        const run = await runImport([`${tmp}/in/dump`, "--aet", "DUMP"], env, data);
        assert.deepEqual(
          summary(run),
          { imported: 0, skipped: first.imported, rejected: first.rejected },
          explain(run),
        );
        assert.equal(run.code, 1);
        const after = await Deno.stat(`${data}/DUMP/${await layoutKey(builtStudy("2.25.777")[0].bytes)}`);
        assert.equal(after.mtime?.getTime(), before.mtime?.getTime(), "not rewritten");
      },
    );

    await t.step(
      "a different object under a stored key is a conflict, left alone; --overwrite replaces it",
      async () => {
        const original = builtStudy("2.25.777")[1].bytes;
        const changed = original.slice();
        changed[changed.length - 1] ^= 0xff; // a pixel differs, the UIDs are the same
        await Deno.mkdir(`${tmp}/in/changed`);
        await Deno.writeFile(`${tmp}/in/changed/IM000002`, changed);
        const key = `${data}/DUMP/${await layoutKey(original)}`;
        const run = await runImport([`${tmp}/in/changed`, "--aet", "DUMP"], env, data);
        assert.equal(run.code, 1, explain(run));
        assert.deepEqual(summary(run), { imported: 0, skipped: 0, rejected: 1 });
        assert.match(
          rejections(run).get(`${tmp}/in/changed/IM000002`) ?? "",
          /stored already with different content/,
        );
        assert.ok(run.lines.some((l) => l.includes("--overwrite replaces it")), explain(run));
        assert.deepEqual(await Deno.readFile(key), original, "left alone");
        const again = await runImport([`${tmp}/in/changed`, "--aet", "DUMP", "--overwrite"], env, data);
        assert.equal(again.code, 0, explain(again));
        assert.deepEqual(summary(again), { imported: 1, skipped: 0, rejected: 0 });
        assert.deepEqual(await Deno.readFile(key), changed, "replaced");
        await runImport([`${tmp}/in/dump/IM000002`, "--aet", "DUMP", "--overwrite"], env, data); // put it back
        assert.deepEqual(await Deno.readFile(key), original);
      },
    );

    await t.step(
      "a zip archive: entries streamed (deflated and stored) into their keys; exit 0",
      async () => {
        if (!hasCommand("zip")) return void skipFor("import of a zip archive", "zip", "apt-get install zip");
        const study = builtStudy("2.25.888");
        await Deno.mkdir(`${tmp}/zipped/export/DICOM`, { recursive: true });
        for (const file of study) await Deno.writeFile(`${tmp}/zipped/export/DICOM/${file.name}`, file.bytes);
        await Deno.writeTextFile(`${tmp}/zipped/export/.DS_Store`, "x");
        await sh("zip", ["-qr", `${tmp}/export.zip`, "export"], `${tmp}/zipped`);
        await sh("zip", ["-q0", `${tmp}/export.zip`, "export/DICOM/BIG0001"], `${tmp}/zipped`); // stored, not deflated
        const run = await runImport([`${tmp}/export.zip`, "--aet", "ZIPPED"], env, data);
        assert.equal(run.code, 0, explain(run));
        assert.deepEqual(summary(run), { imported: study.length, skipped: 0, rejected: 0 });
        const stored = await filesUnder(`${data}/ZIPPED`);
        assert.equal(stored.size, study.length);
        for (const file of study) {
          assert.deepEqual(stored.get(await layoutKey(file.bytes)), file.bytes, file.name);
        }
        const again = await runImport([`${tmp}/export.zip`, "--aet", "ZIPPED"], env, data);
        assert.deepEqual(summary(again), { imported: 0, skipped: study.length, rejected: 0 }, explain(again));
        assert.equal(again.code, 0);
      },
    );

    await t.step(
      "a damaged zip archive: the damaged entry is rejected and nothing is written for it",
      async () => {
        if (!hasCommand("zip")) {
          return void skipFor("import of a zip archive", "zip", "apt-get install zip");
        }
        const file = builtStudy("2.25.999")[3]; // 3 MB: streamed to the store while it is read
        await Deno.mkdir(`${tmp}/zip2`);
        await Deno.writeFile(`${tmp}/zip2/BIG`, file.bytes);
        await sh("zip", ["-q0", `${tmp}/damaged.zip`, "BIG"], `${tmp}/zip2`);
        const bytes = await Deno.readFile(`${tmp}/damaged.zip`);
        bytes[2_000_000] ^= 0xff; // inside the entry's data: only its CRC-32 tells
        await Deno.writeFile(`${tmp}/damaged.zip`, bytes);
        await Deno.writeFile(`${tmp}/truncated.zip`, bytes.subarray(0, 1000));
        const run = await runImport(
          [`${tmp}/damaged.zip`, `${tmp}/truncated.zip`, "--aet", "DAMAGED"],
          env,
          data,
        );
        assert.equal(run.code, 1, explain(run));
        assert.deepEqual(summary(run), { imported: 0, skipped: 0, rejected: 2 });
        const rejected = rejections(run);
        assert.match(rejected.get(`${tmp}/damaged.zip:BIG`) ?? "", /CRC/, explain(run));
        assert.match(rejected.get(`${tmp}/truncated.zip`) ?? "", /Cannot read the zip archive/, explain(run));
        assert.equal((await filesUnder(`${data}/DAMAGED`)).size, 0);
      },
    );

    await t.step(
      "a DICOMDIR set (dcmmkdir): the DICOMDIR is not an instance, the files it lists are imported",
      async () => {
        if (!hasCommand("dcmmkdir")) {
          return void skipFor("import of a DICOMDIR set", "dcmmkdir", "apt-get install dcmtk");
        }
        const set = `${tmp}/cd`;
        await Deno.mkdir(`${set}/IMAGES`, { recursive: true });
        const names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"];
        for (const [i, name] of names.entries()) {
          await Deno.copyFile(`${CORPUS}/${name}`, `${set}/IMAGES/IM00000${i + 1}`);
        }
        await sh("dcmmkdir", ["+r", "+I", "+D", "DICOMDIR", "IMAGES"], set);
        // given as the DICOMDIR itself, as a user reading a CD would
        const run = await runImport([`${set}/DICOMDIR`, "--aet", "CDROM"], env, data);
        assert.equal(run.code, 0, explain(run));
        assert.deepEqual(summary(run), { imported: names.length, skipped: 0, rejected: 0 });
        assert.ok(
          run.lines.some((l) => l.startsWith("1 DICOMDIR file not imported")),
          explain(run),
        );
        const stored = await filesUnder(`${data}/CDROM`);
        for (const name of names) {
          const bytes = await Deno.readFile(`${CORPUS}/${name}`);
          assert.deepEqual(stored.get(await layoutKey(bytes)), bytes, name);
        }
        assert.equal(stored.size, names.length);
      },
    );

    await t.step(
      "the AET: the only one by default, an error listing them when there are several",
      async () => {
        const solo = { DATA_DIR: `${tmp}/solo`, CATALOG_PATH: "off" };
        await Deno.mkdir(`${tmp}/solo/ONLY`, { recursive: true });
        const file = `${tmp}/in/dump/IM000001`;
        const run = await runImport([file], solo, `${tmp}/solo`);
        assert.equal(run.code, 0, explain(run));
        assert.deepEqual(summary(run), { imported: 1, skipped: 0, rejected: 0 });
        await Deno.mkdir(`${tmp}/solo/OTHER`);
        const several = await runImport([file], solo, `${tmp}/solo`);
        assert.equal(several.code, 2, explain(several));
        assert.match(several.stderr, /Several AETs: choose one with --aet \(ONLY, OTHER\)/);
        const none = await runImport([file], { DATA_DIR: `${tmp}/none`, CATALOG_PATH: "off" }, `${tmp}/none`);
        assert.equal(none.code, 2);
        assert.match(none.stderr, /There is no AET .* yet: name one with --aet NAME/);
        const fixed = await runImport(
          [file, "--aet", "NOPE"],
          { ...solo, AETS: "ONLY,OTHER" },
          `${tmp}/solo`,
        );
        assert.equal(fixed.code, 2);
        assert.match(fixed.stderr, /Unknown AET NOPE: AETS lists ONLY, OTHER/);
      },
    );

    await t.step(
      "arguments: a missing path is rejected; no path or an unknown option is a usage error",
      async () => {
        const run = await runImport(
          [`${tmp}/nowhere`, `${tmp}/in/dump/IM000001`, "--aet", "DUMP"],
          env,
          data,
        );
        assert.equal(run.code, 1, explain(run));
        assert.deepEqual(summary(run), { imported: 0, skipped: 1, rejected: 1 });
        assert.match(rejections(run).get(`${tmp}/nowhere`) ?? "", /No such file or folder/);
        for (const args of [[], ["--aet", "DUMP"], [`${tmp}/in`, "--frobnicate"], [`${tmp}/in`, "--aet"]]) {
          const bad = await runImport(args, env, data);
          assert.equal(bad.code, 2, explain(bad));
          assert.match(bad.stderr, /Usage: deno task import PATH/);
        }
      },
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("deno task import into S3: the same keys and bytes in the AET's bucket, a re-run skips", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "import-s3-test-" });
  const s3 = await startS3();
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    requestHandler: new FetchHttpHandler(),
  });
  try {
    const bucket = s3.uniqueBucket("import");
    await s3.createBucket(bucket);
    const env = {
      S3_ENDPOINT: s3.endpoint,
      AWS_ACCESS_KEY_ID: s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
      S3_REGION: s3.region,
      DATA_DIR: `${tmp}/data`,
      CATALOG_PATH: `${tmp}/catalog.sqlite`,
    };
    const study = builtStudy("2.25.555");
    await Deno.mkdir(`${tmp}/in`);
    for (const file of study) await Deno.writeFile(`${tmp}/in/${file.name}`, file.bytes);
    await Deno.copyFile(`${CORPUS}/CT_small.dcm`, `${tmp}/in/CT`);
    const expected = [...study.map((f) => f.bytes), await Deno.readFile(`${CORPUS}/CT_small.dcm`)];

    const run = await runImport([`${tmp}/in`, "--aet", bucket], env, tmp);
    assert.equal(run.code, 0, explain(run));
    assert.deepEqual(summary(run), { imported: expected.length, skipped: 0, rejected: 0 });
    const listed = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
    assert.deepEqual(
      (listed.Contents ?? []).map((o) => o.Key).sort(),
      (await Promise.all(expected.map(layoutKey))).sort(),
    );
    for (const bytes of expected) {
      const object = await client.send(new GetObjectCommand({ Bucket: bucket, Key: await layoutKey(bytes) }));
      assert.deepEqual(new Uint8Array(await object.Body!.transformToByteArray()), bytes);
    }
    const again = await runImport([`${tmp}/in`, "--aet", bucket], env, tmp);
    assert.equal(again.code, 0, explain(again));
    assert.deepEqual(summary(again), { imported: 0, skipped: expected.length, rejected: 0 });

    const unknown = await runImport([`${tmp}/in`, "--aet", "NO-SUCH-BUCKET"], env, tmp);
    assert.equal(unknown.code, 2, explain(unknown));
    assert.match(unknown.stderr, /Unknown AET NO-SUCH-BUCKET: .*Create the bucket/);
  } finally {
    client.destroy();
    await s3.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});
