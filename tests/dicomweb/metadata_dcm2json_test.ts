/**
 * The server's metadata (PS3.18 Annex F, as `/metadata` serves it, BulkDataURIs and all) against dcmtk's
 * `dcm2json -fc`, over every corpus file dcm2json reads (issue #16.7). Where dcm2json inlines a value that the
 * server sends as a BulkDataURI (above BULKDATA_THRESHOLD, and top-level Pixel Data always), the URI is
 * fetched and its bytes must be dcm2json's InlineBinary: little endian, odd lengths padded. What remains is
 * what tests/testdata/DCM2JSON-DIFFERENCES.md lists (the character set attribute, an item's own character set,
 * number spellings), compared as tests/dicom/dicom_json_test.ts does.
 */

import assert from "node:assert/strict";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { testHandler } from "../_server.ts";
import { pydicomCorpus } from "../_corpus.ts";
import { corpusDir, hasCommand } from "../_dicom_fixtures.ts";
import { skipFor } from "../_skip.ts";
import type { DicomJson } from "../../lib/dicom/dicom_json.ts";

/** Differences dcm2json-DIFFERENCES.md documents, by file: paths that may differ. */
const KNOWN: Record<string, string[]> = {
  // dcm2json ignores the item's own Specific Character Set (ISO 2022 IR 13/87) and decodes the item as UTF-8.
  "chrSQEncoding.dcm": ["/00321064/Value/0/00100010/Value/0"],
};

async function run(command: string, args: string[]): Promise<{ code: number; stdout: string }> {
  const output = await new Deno.Command(command, { args, stdout: "piped", stderr: "null" }).output();
  return { code: output.code, stdout: new TextDecoder().decode(output.stdout) };
}

Deno.test("/metadata against dcm2json over the corpus, BulkDataURIs fetched", async (t) => {
  if (!hasCommand("dcm2json") || !hasCommand("dcmodify")) {
    skipFor(t.name, "dcmtk (dcm2json, dcmodify)", "apt-get install dcmtk");
    return;
  }
  const files = await pydicomCorpus();
  const store = new MemoryStore(["meta"]);
  for (const f of files) await store.put("meta", f.key, f.bytes);
  const app = testHandler({ store, config: { AETS: "META=meta" } });
  let fetched = 0;
  let compared = 0;
  const tmp = await Deno.makeTempDir();
  try {
    const results = await Promise.all(files.map(async (file) => {
      let result = await run("dcm2json", ["-fc", corpusDir() + file.name]);
      let pixelStripped = false;
      if (result.code === 81) {
        // "InlineBinary encoding not supported for compressed pixel data": compare everything else.
        const copy = `${tmp}/${file.name}`;
        await Deno.copyFile(corpusDir() + file.name, copy);
        await run("dcmodify", ["-nb", "-q", "-ea", "(7fe0,0010)", copy]);
        result = await run("dcm2json", ["-fc", copy]);
        pixelStripped = true;
      }
      return { file, result, pixelStripped };
    }));
    for (const { file, result, pixelStripped } of results) {
      // Unreadable for dcm2json: malformed files, ISO 2022 IR 87 (no iconv).
      if (result.code !== 0) continue;
      await t.step(file.name, async () => {
        const [study, series, sop] = file.key.slice(0, -4).split("/");
        const response = await app.fetch(
          `/aets/META/studies/${study}/series/${series}/instances/${sop}/metadata`,
        );
        assert.equal(response.status, 200);
        const [ours] = await response.json() as DicomJson[];
        if (pixelStripped) {
          delete ours["7FE00010"]; // frames_bulkdata_s3_test.ts and ohif_pixels_test.ts check it
          delete ours["FFFCFFFC"]; // dcmodify drops the trailing padding when it rewrites the file
        }
        const differences: string[] = [];
        await compare(ours, JSON.parse(result.stdout), "", differences);
        const remaining = differences.filter((d) => !(KNOWN[file.name] ?? []).some((k) => d.startsWith(k)));
        assert.deepEqual(remaining, []);
        compared++;
      });
    }
  } finally {
    await app.close();
    await Deno.remove(tmp, { recursive: true });
  }
  assert.ok(compared >= 30, `dcm2json read most of the corpus (${compared} files)`);
  assert.ok(fetched > 0, "some values were BulkDataURIs");

  async function compare(ours: unknown, theirs: unknown, path: string, out: string[]): Promise<void> {
    if (typeof ours === "number" && typeof theirs === "number") {
      if (ours !== theirs && Math.fround(ours) !== Math.fround(theirs)) {
        out.push(`${path}: ${ours} != ${theirs}`);
      }
      return;
    }
    if (ours === null || theirs === null || typeof ours !== "object" || typeof theirs !== "object") {
      if (ours !== theirs) out.push(`${path}: ${JSON.stringify(ours)} != ${JSON.stringify(theirs)}`);
      return;
    }
    const a = ours as Record<string, unknown>;
    const b = theirs as Record<string, unknown>;
    if (typeof a.BulkDataURI === "string" && typeof b.InlineBinary === "string") {
      // The value the URI answers with must be dcm2json's inline one.
      const bulk = await app.fetch(new URL(a.BulkDataURI).pathname, {
        headers: { accept: "application/octet-stream" },
      });
      const bytes = new Uint8Array(await bulk.arrayBuffer());
      const inline = Uint8Array.from(atob(b.InlineBinary), (c) => c.charCodeAt(0));
      if (bulk.status !== 200 || bytes.length !== inline.length || bytes.some((x, i) => x !== inline[i])) {
        out.push(
          `${path}: ${a.BulkDataURI} answered ${bulk.status} with ${bytes.length} bytes unlike dcm2json's ${inline.length}`,
        );
      }
      if (a.vr !== b.vr) out.push(`${path}/vr: ${a.vr} != ${b.vr}`);
      fetched++;
      return;
    }
    for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (key === "00080005") continue; // dcm2json rewrites it to "ISO_IR 192" (it converts to UTF-8)
      await compare(a[key], b[key], `${path}/${key}`, out);
    }
  }
});
