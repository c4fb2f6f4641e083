/**
 * Bad input: a seeded, time-bounded fuzz run per parser (tests/e2e/_fuzz.ts) — no crash, no hang, no unbounded
 * memory, only clean errors of the expected kinds — and path/key injection against the running handler and
 * the FileStore: nothing in a URL, a header or a stored DICOM file reads or writes outside its bucket.
 *
 * `FUZZ_SEED` (default 20251128) and `FUZZ_SECONDS` (per target, default 5) change the run.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../../lib/config/config.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { buildInstance } from "../_corpus.ts";
import { fuzz, type FuzzReport, TARGET_NAMES } from "./_fuzz.ts";
import { testHandler } from "../_server.ts";
import { concatBytes } from "../../lib/util/bytes.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20251128);
const SECONDS = Number(Deno.env.get("FUZZ_SECONDS") ?? 5);
const PER_INPUT_MS = 3_000;
const reports: FuzzReport[] = [];

for (const name of TARGET_NAMES) {
  Deno.test(`fuzz ${name}: no crash, no hang, only expected errors (seed ${SEED}, ${SECONDS} s)`, async () => {
    const report = await fuzz(name, { seed: SEED, seconds: SECONDS, perInputMs: PER_INPUT_MS });
    reports.push(report);
    console.log(
      `fuzz ${name}: ${report.tried} inputs from ${report.seeds} seeds in ${report.seconds} s, ` +
        `${report.failures.length} failures, peak RSS ${report.peakRssMb} MiB${
          report.hang ? `, HANG at input ${report.hang.index}` : ""
        }`,
    );
    for (const failure of report.failures.slice(0, 5)) {
      console.log(
        `  input ${failure.index} (${failure.length} bytes, first bytes ${
          failure.preview.slice(0, 120)
        }):\n  ${failure.error.replaceAll("\n", "\n  ")}`,
      );
    }
    assert.equal(
      report.hang,
      undefined,
      `input ${report.hang?.index} ran over ${PER_INPUT_MS} ms (rebuild it with inputAt("${name}", ${SEED}, ${report.hang?.index}))`,
    );
    assert.deepEqual(
      report.failures.map((f) => f.index),
      [],
      `unexpected errors; rebuild an input with inputAt("${name}", ${SEED}, index)`,
    );
    assert.ok(report.tried > 0);
    assert.ok(report.peakRssMb < 2048, `RSS reached ${report.peakRssMb} MiB`);
  });
}

Deno.test("the fuzz harness reports unexpected errors and stops a hung input", async () => {
  const report = await fuzz("selftest", { seed: 1, seconds: 10, perInputMs: 300 });
  assert.deepEqual(report.failures.map((f) => f.index), [3]);
  assert.match(report.failures[0].error, /^TypeError: unexpected kind/);
  assert.equal(report.hang?.index, 5, "the endless loop was caught and the worker terminated");
});

// ---------------------------------------------------------------------------------------------------
// Path and key injection

const SECRET = "TOP-SECRET-OUTSIDE-THE-BUCKET";

interface Jail {
  root: string;
  /** Sibling of the data folder, holding files nothing may read or overwrite. */
  outside: string;
  store: FileStore;
  close(): Promise<void>;
}

async function jail(): Promise<Jail> {
  const top = await Deno.makeTempDir({ prefix: "jail-" });
  const root = `${top}/data`;
  const outside = `${top}/outside`;
  await Deno.mkdir(`${root}/pacs`, { recursive: true });
  await Deno.mkdir(`${root}/other`, { recursive: true });
  await Deno.mkdir(outside, { recursive: true });
  // Files a traversal would find: next to the data folder, at the root of the data folder, in another bucket.
  const secret = buildInstance({ study: "1.2.3", series: "1.2.3.4", sop: "1.2.3.4.5", patientName: SECRET });
  for (const dir of [`${outside}/1.2.3/1.2.3.4`, `${root}/other/1.2.3/1.2.3.4`]) {
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(`${dir}/1.2.3.4.5.dcm`, secret);
  }
  await Deno.writeTextFile(`${outside}/passwd`, SECRET);
  await Deno.writeTextFile(`${root}/.catalog.sqlite`, SECRET);
  const mine = buildInstance({
    study: "2.25.1",
    series: "2.25.1.1",
    sop: "2.25.1.1.1",
    patientName: "Visible^Ok",
  });
  await Deno.mkdir(`${root}/pacs/2.25.1/2.25.1.1`, { recursive: true });
  await Deno.writeFile(`${root}/pacs/2.25.1/2.25.1.1/2.25.1.1.1.dcm`, mine);
  return { root, outside, store: new FileStore(root), close: () => Deno.remove(top, { recursive: true }) };
}

/** Every file under `dir` (relative paths). */
async function tree(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = `${prefix}${entry.name}`;
    if (entry.isDirectory) out.push(...await tree(`${dir}/${entry.name}`, `${path}/`));
    else out.push(path);
  }
  return out.sort();
}

Deno.test("path injection: traversal in AETs, UIDs, frames and bulkdata paths never leaves the bucket", async () => {
  const j = await jail();
  try {
    const before = { outside: await tree(j.outside), root: await tree(j.root) };
    for (const aets of [undefined, "PACS=pacs"]) {
      const config = parseConfig(aets ? { AETS: aets } : {});
      const { handler } = testHandler({
        store: j.store,
        config,
        capabilities: { reEncode: true },
        handler: { log: () => {} },
      });
      const aetsTried = [
        "..",
        "%2e%2e",
        "..%2Foutside",
        "..%2F..%2Foutside",
        "pacs%2F..%2Fother",
        "%2E%2E%5Coutside",
        ".",
        "other%00",
        "..%252F",
      ];
      const uids = [
        "..",
        "%2e%2e",
        "..%2F..%2F..%2Foutside%2F1.2.3",
        "1.2.3%2F..%2F..",
        "1.2.3%00",
        "1.2.3%5C..",
        "%2F1.2.3",
        "1.2.3/../../1.2.3",
      ];
      const paths: string[] = [];
      for (const aet of aetsTried) {
        paths.push(
          `/aets/${aet}/studies/1.2.3`,
          `/aets/${aet}/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/metadata`,
        );
      }
      for (const uid of uids) {
        paths.push(
          `/aets/pacs/studies/${uid}`,
          `/aets/pacs/studies/2.25.1/series/${uid}/metadata`,
          `/aets/pacs/studies/2.25.1/series/2.25.1.1/instances/${uid}`,
          `/aets/pacs/studies/2.25.1/series/2.25.1.1/instances/2.25.1.1.1/frames/${uid}`,
          `/aets/pacs/studies/2.25.1/series/2.25.1.1/instances/2.25.1.1.1/bulkdata/${uid}`,
          `/aets/pacs/studies/2.25.1/series/2.25.1.1/instances/2.25.1.1.1/bulkdata/..%2F..%2F..%2F..%2Foutside%2Fpasswd`,
          `/aets/pacs/studies?StudyInstanceUID=${uid}`,
        );
      }
      const accepts = [
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        "application/dicom+json",
        "application/octet-stream",
      ];
      for (const path of paths) {
        for (const accept of accepts) {
          const response = await handler(
            new Request(`http://127.0.0.1${path}`, {
              headers: { accept, "x-forwarded-host": "../../..", host: "..%2F" },
            }),
          );
          const body = new TextDecoder("latin1").decode(await response.arrayBuffer());
          assert.ok(
            !body.includes(SECRET),
            `${path} (${accept}) returned data from outside the bucket: ${response.status}`,
          );
          assert.ok(response.status < 500, `${path}: ${response.status} ${body.slice(0, 200)}`);
        }
      }
      const visible = await handler(
        new Request(`http://127.0.0.1/aets/${aets ? "PACS" : "pacs"}/studies/2.25.1/metadata`),
      );
      assert.equal(visible.status, 200, "the legitimate object is still served");
      assert.match(await visible.text(), /Visible\^Ok/);
      const list = await (await handler(new Request("http://127.0.0.1/aets"))).json();
      assert.ok(!list.some((n: string) => n.startsWith(".")), `hidden folders are not AETs: ${list}`);
    }
    assert.deepEqual(await tree(j.outside), before.outside, "nothing written outside");
    assert.deepEqual(await tree(j.root), before.root, "nothing written inside either");
  } finally {
    await j.close();
  }
});

Deno.test("key injection: FileStore refuses keys and buckets that would leave its folder", async () => {
  const j = await jail();
  try {
    const before = await tree(j.outside);
    const badKeys = [
      "../outside/passwd",
      "../../outside/passwd",
      "1.2.3/../../other/1.2.3/1.2.3.4/1.2.3.4.5.dcm",
      "/etc/passwd",
      "1.2.3\\..\\..\\x.dcm",
      "1.2.3/./x.dcm",
      "1.2.3//x.dcm",
      "a\0b.dcm",
      ".hidden.dcm",
      "1.2.3/.tmp-x.dcm",
      "",
    ];
    const badBuckets = ["..", ".", "../outside", "pacs/../other", "", "/", "pacs\0", ".catalog.sqlite"];
    const attempt = async (what: string, fn: () => Promise<unknown>) => {
      try {
        const result = await fn();
        const text = result === null || result === undefined ? "" : JSON.stringify(result);
        assert.ok(!text.includes(SECRET), `${what} reached outside data`);
        if (result && typeof result === "object" && "body" in result) {
          const bytes = new TextDecoder("latin1").decode(
            await new Response((result as { body: ReadableStream }).body).arrayBuffer(),
          );
          assert.ok(!bytes.includes(SECRET), `${what} read a file outside its bucket`);
        }
        return "ok";
      } catch (error) {
        assert.ok(
          error instanceof RangeError || error instanceof TypeError || (error as Error).name === "StoreError",
          `${what}: unexpected ${(error as Error).name}: ${(error as Error).message}`,
        );
        return "refused";
      }
    };
    const outcomes: string[] = [];
    for (const key of badKeys) {
      outcomes.push(await attempt(`get ${key}`, () => j.store.get("pacs", key)));
      outcomes.push(await attempt(`head ${key}`, () => j.store.head("pacs", key)));
      outcomes.push(
        await attempt(`put ${key}`, () => j.store.put("pacs", key, new TextEncoder().encode("pwned"))),
      );
      outcomes.push(await attempt(`delete ${key}`, () => j.store.delete("pacs", key)));
      outcomes.push(
        await attempt(`list ${key}`, async () => await Array.fromAsync(j.store.list("pacs", key))),
      );
    }
    for (const bucket of badBuckets) {
      outcomes.push(
        await attempt(`bucket ${bucket} get`, () => j.store.get(bucket, "1.2.3/1.2.3.4/1.2.3.4.5.dcm")),
      );
      outcomes.push(
        await attempt(
          `bucket ${bucket} put`,
          () => j.store.put(bucket, "9.9/9.9.9/9.9.9.9.dcm", new Uint8Array(4)),
        ),
      );
      outcomes.push(
        await attempt(`bucket ${bucket} list`, async () => await Array.fromAsync(j.store.list(bucket, ""))),
      );
      outcomes.push(await attempt(`bucket ${bucket} check`, () => j.store.check(bucket)));
    }
    assert.deepEqual(await tree(j.outside), before, "nothing written or deleted outside the data folder");
    const written = (await tree(j.root)).filter((p) => p.includes("pwned") || /9\.9\.9\.9/.test(p));
    assert.deepEqual(written, [], "no bad key was written anywhere");
    console.log(
      `key injection: ${outcomes.length} attempts, ${
        outcomes.filter((o) => o === "refused").length
      } refused, none escaped`,
    );
  } finally {
    await j.close();
  }
});

Deno.test("STOW-RS: UIDs with odd characters inside stored files cannot choose where they are written", async () => {
  const j = await jail();
  try {
    const config = parseConfig({ AETS: "PACS=pacs" });
    const { handler } = testHandler({
      store: j.store,
      config,
      capabilities: { reEncode: true },
      handler: { log: () => {} },
    });
    const before = { outside: await tree(j.outside), other: await tree(`${j.root}/other`) };
    const evil = [
      { study: "../../outside", series: "1.2", sop: "1.2.3" },
      { study: "1.2.3", series: "../../../outside", sop: "passwd" },
      { study: "1.2.3", series: "1.2.3.4", sop: "../../../other/1.2.3/1.2.3.4/1.2.3.4.5" },
      { study: "1.2.3/../../..", series: "1.2.3.4", sop: "1.2.3.4.9" },
      { study: "1.2.3", series: "1.2.3.4", sop: "1.2.3.4.9\\..\\..\\x" },
      { study: "1.2.3", series: "1.2.3.4", sop: "/etc/passwd" },
      { study: "1.2.3", series: "1.2.3.4", sop: ".hidden" },
      { study: "1.2.3", series: "1.2.3.4", sop: "1.2.3.4.%2e%2e" },
    ];
    const boundary = "evil-boundary";
    const parts = evil.map((uids) =>
      concatBytes([
        new TextEncoder().encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
        buildInstance({ ...uids, patientName: "Evil^Upload" }),
        new TextEncoder().encode("\r\n"),
      ])
    );
    const body = concatBytes([...parts, new TextEncoder().encode(`--${boundary}--\r\n`)]);
    for (
      const path of [
        "/aets/PACS/studies",
        "/aets/PACS/studies/1.2.3",
        "/aets/PACS/studies/..%2F..%2Foutside",
        "/aets/..%2Fother/studies",
      ]
    ) {
      const response = await handler(
        new Request(`http://127.0.0.1${path}`, {
          method: "POST",
          headers: { "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}` },
          body: body as Uint8Array<ArrayBuffer>,
        }),
      );
      const text = await response.text();
      assert.ok(response.status < 500, `${path}: ${response.status} ${text.slice(0, 300)}`);
      assert.ok(
        response.status !== 200,
        `${path}: none of these instances may be stored: ${text.slice(0, 300)}`,
      );
    }
    assert.deepEqual(await tree(j.outside), before.outside, "nothing written outside the data folder");
    assert.deepEqual(
      await tree(`${j.root}/other`),
      before.other,
      "nothing written into another AET's bucket",
    );
    for (const path of await tree(`${j.root}/pacs`)) {
      assert.match(path, /^[0-9.]+\/[0-9.]+\/[0-9.]+\.dcm$/, `stored under a bad key: ${path}`);
    }
  } finally {
    await j.close();
  }
});

Deno.test("fuzz summary", () => {
  const tried = reports.reduce((n, r) => n + r.tried, 0);
  const failures = reports.reduce((n, r) => n + r.failures.length + (r.hang ? 1 : 0), 0);
  console.log(
    `fuzz summary: ${tried} inputs fuzzed over ${reports.length} targets (${
      reports.map((r) => `${r.target} ${r.tried}`).join(", ")
    }), ` +
      `seed ${SEED}, ${failures} failures`,
  );
});
