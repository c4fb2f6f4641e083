/**
 * Legacy objects (issue #16.4): a data set written without File Meta, or with a File Meta that does not name
 * its transfer syntax, is served like any other — its syntax inferred from the first element as dcmtk and
 * pydicom do. Retrieval sends a whole Part 10 file (the File Meta written for it), so what a client saves is
 * readable anywhere. An object that is not DICOM at all stays a 5xx naming it.
 */

import assert from "node:assert/strict";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { readFileMeta } from "../../lib/dicom/file_meta.ts";
import { concatBytes } from "../../lib/util/bytes.ts";
import { testHandler } from "../_server.ts";
import { pydicomCorpus } from "../_corpus.ts";
import { dropTransferSyntax, EBE, ELE, ILE } from "../_dicom_fixtures.ts";
import { boundaryOf, parseMultipart } from "../_multipart_parser.ts";

const corpus = await pydicomCorpus();
const SOURCES = [["MR_small.dcm", ELE], ["MR_small_implicit.dcm", ILE], [
  "MR_small_bigendian.dcm",
  EBE,
]] as const;

/** The same data set three ways: as written by pydicom, without File Meta, and with one lacking (0002,0010). */
async function buckets(name: string) {
  const file = corpus.find((f) => f.name === name)!;
  const meta = readFileMeta(file.bytes, name, true)!;
  const dataset = file.bytes.subarray(meta.end);
  const variants = {
    original: file.bytes,
    raw: dataset,
    noSyntax: concatBytes([dropTransferSyntax(file.bytes.subarray(0, meta.end)), dataset]),
  };
  const store = new MemoryStore(Object.keys(variants).map((v) => v.toLowerCase()));
  for (const [bucket, bytes] of Object.entries(variants)) {
    await store.put(bucket.toLowerCase(), file.key, bytes);
  }
  const app = testHandler({ store, config: { AETS: "ORIGINAL=original,RAW=raw,NOSYNTAX=nosyntax" } });
  const [study, series, sop] = file.key.replace(/\.dcm$/, "").split("/");
  const path = (aet: string, tail = "") =>
    `/aets/${aet}/studies/${study}/series/${series}/instances/${sop}${tail}`;
  return { app, meta, dataset, path };
}

async function fetchBytes(
  app: { fetch: (p: string, i?: RequestInit) => Promise<Response> },
  path: string,
  accept: string,
) {
  const response = await app.fetch(path, { headers: { accept } });
  const body = new Uint8Array(await response.arrayBuffer());
  assert.equal(
    response.status,
    200,
    `${path} (${accept}): ${new TextDecoder().decode(body.subarray(0, 300))}`,
  );
  return { response, body };
}

function onlyPart(response: Response, body: Uint8Array) {
  const parts = parseMultipart(body, boundaryOf(response.headers.get("content-type"))).parts;
  assert.equal(parts.length, 1);
  return parts[0];
}

const RETRIEVE = {
  asStored: 'multipart/related; type="application/dicom"; transfer-syntax=*',
  default: 'multipart/related; type="application/dicom"',
};
const FRAMES = {
  asStored: "multipart/related; type=application/octet-stream; transfer-syntax=*",
  default: "multipart/related; type=application/octet-stream",
};

Deno.test("legacy objects are served like any other", async (t) => {
  for (const [name, syntax] of SOURCES) {
    const { app, meta, dataset, path } = await buckets(name);
    for (const aet of ["RAW", "NOSYNTAX"]) {
      await t.step(
        `${name} ${aet === "RAW" ? "without File Meta" : "with File Meta lacking (0002,0010)"}`,
        async (t) => {
          await t.step(
            "retrieve sends a whole Part 10 file whose File Meta and Content-Type agree",
            async () => {
              for (const [how, accept] of Object.entries(RETRIEVE)) {
                const { response, body } = await fetchBytes(app, path(aet), accept);
                const part = onlyPart(response, body);
                const sent = readFileMeta(part.body, "part", true)!;
                assert.ok(sent !== null && !sent.inferred, `${how}: a File Meta naming the syntax`);
                assert.equal(
                  part.headers["content-type"],
                  `application/dicom; transfer-syntax=${sent.transferSyntaxUid}`,
                );
                assert.deepEqual(
                  [sent.sopClassUid, sent.sopInstanceUid],
                  [meta.sopClassUid, meta.sopInstanceUid],
                  `${how}: SOP Class and Instance UIDs from the data set`,
                );
                // As stored: the data set byte for byte behind the new File Meta, in the syntax inferred.
                if (how === "asStored") {
                  assert.equal(sent.transferSyntaxUid, syntax);
                  assert.deepEqual(part.body.subarray(sent.end), dataset);
                }
                // What the client saved reads back as the original does.
                const original = await fetchBytes(app, path("ORIGINAL"), accept);
                const originalPart = onlyPart(original.response, original.body);
                assert.deepEqual(
                  part.body.subarray(sent.end),
                  originalPart.body.subarray(readFileMeta(originalPart.body, "o", true)!.end),
                  how,
                );
              }
            },
          );

          await t.step("metadata, frames and rendered are the original's", async () => {
            const json = async (aet: string) =>
              (await fetchBytes(app, path(aet, "/metadata"), "application/dicom+json")).body;
            assert.deepEqual(
              JSON.parse(
                new TextDecoder().decode(await json(aet)).replaceAll(`/aets/${aet}/`, "/aets/ORIGINAL/"),
              ),
              JSON.parse(new TextDecoder().decode(await json("ORIGINAL"))),
            );
            for (const [how, accept] of Object.entries(FRAMES)) {
              const got = await fetchBytes(app, path(aet, "/frames/1"), accept);
              const want = await fetchBytes(app, path("ORIGINAL", "/frames/1"), accept);
              const [gotPart, wantPart] = [
                onlyPart(got.response, got.body),
                onlyPart(want.response, want.body),
              ];
              assert.equal(gotPart.headers["content-type"], wantPart.headers["content-type"], how);
              assert.deepEqual(gotPart.body, wantPart.body, `frame 1 ${how}`);
            }
            const image = (aet: string) => fetchBytes(app, path(aet, "/rendered"), "image/png");
            assert.deepEqual((await image(aet)).body, (await image("ORIGINAL")).body, "rendered PNG");
          });
        },
      );
    }
  }

  await t.step("an object that is not DICOM stays a 5xx naming it", async () => {
    const file = corpus.find((f) => f.name === "MR_small.dcm")!;
    const store = new MemoryStore(["pacs"]);
    await store.put("pacs", file.key, new TextEncoder().encode("<html>not DICOM</html>\n".repeat(20)));
    const app = testHandler({ store, config: { AETS: "PACS=pacs" } });
    const [study, series, sop] = file.key.replace(/\.dcm$/, "").split("/");
    const base = `/aets/PACS/studies/${study}/series/${series}/instances/${sop}`;
    for (
      const [tail, accept] of [["", RETRIEVE.asStored], ["/metadata", "application/dicom+json"], [
        "/frames/1",
        FRAMES.asStored,
      ]]
    ) {
      const response = await app.fetch(base + tail, { headers: { accept } });
      const text = await response.text();
      assert.ok(response.status >= 500, `${tail}: ${response.status}`);
      assert.ok(text.includes(file.key), `${tail}: ${text}`);
    }
  });
});
