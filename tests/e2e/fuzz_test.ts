/**
 * Bad input: a seeded, time-bounded fuzz run of every target of tests/e2e/_fuzz.ts (the Part 10 reader,
 * Part10Check, File Meta, DICOM JSON, multipart, Accept, QIDO, the DIMSE PDU, command and identifier parsers,
 * and the whole handler) — no crash, no hang, no unbounded memory, only the parsers' typed errors — the
 * inputs that once crashed (tests/testdata/fuzz/), and path/key injection against the running handler and the
 * FileStore: nothing in a URL, a header or a stored DICOM file reads or writes outside its bucket.
 *
 * `FUZZ_SEED` (default 20251128) and `FUZZ_SECONDS` (per target, default 1.5) change the run; `deno task fuzz`
 * (bench/fuzz.ts) is the long run. A crashing input is written to .artifacts/fuzz/ for replay.
 */

import assert from "node:assert/strict";
import { parseConfig } from "../../lib/config/config.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { buildInstance } from "../_corpus.ts";
import {
  describeError,
  fuzz,
  fuzzTarget,
  inputAt,
  replay,
  TARGET_NAMES,
  type TargetReport,
} from "./_fuzz.ts";
import { testHandler } from "../_server.ts";
import { concatBytes } from "../../lib/util/bytes.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20251128);
const SECONDS = Number(Deno.env.get("FUZZ_SECONDS") ?? 1.5);
const PER_INPUT_MS = 3_000;
const reports: TargetReport[] = [];

async function saveInput(name: string, index: number, input: Uint8Array, error: string): Promise<string> {
  const dir = new URL("../../.artifacts/fuzz/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  const file = new URL(`${name}-seed${SEED}-input${index}.bin`, dir);
  await Deno.writeFile(file, input);
  await Deno.writeTextFile(new URL(`${name}-seed${SEED}-input${index}.txt`, dir), error);
  return file.pathname;
}

for (const name of TARGET_NAMES) {
  Deno.test(`fuzz ${name}: no crash, no hang, only typed errors (seed ${SEED}, ${SECONDS} s)`, async () => {
    const report = await fuzzTarget(name, { seed: SEED, seconds: SECONDS, perInputMs: PER_INPUT_MS });
    reports.push(report);
    console.log(
      `fuzz ${name}: ${report.inputs} inputs from ${report.seeds} seeds in ${report.seconds} s, ` +
        `${report.failureCount} crashes, ${report.hangs.length} hangs, ${report.slow.length} slow, ` +
        `peak heap ${report.peakHeapMb} MiB, peak RSS ${report.peakRssMb} MiB`,
    );
    for (const failure of report.failures.slice(0, 5)) {
      const file = failure.index >= 0
        ? await saveInput(name, failure.index, failure.input, failure.error)
        : "";
      console.log(`  input ${failure.index} (${failure.input.length} bytes${file && `, saved to ${file}`}):`);
      console.log(`  ${failure.error.replaceAll("\n", "\n  ")}`);
    }
    for (const hang of report.hangs) {
      console.log(
        `  input ${hang.index} hung: saved to ${await saveInput(name, hang.index, hang.input, "hang")}`,
      );
    }
    assert.deepEqual(
      report.hangs.map((h) => h.index),
      [],
      `inputs ran over ${PER_INPUT_MS * 10} ms alone (replay: deno task fuzz --replay FILE)`,
    );
    assert.deepEqual(
      report.failures.map((f) => f.index),
      [],
      `untyped errors (replay: deno task fuzz --replay FILE, or inputAt("${name}", ${SEED}, index))`,
    );
    assert.ok(report.inputs > 0);
    assert.ok(report.peakHeapMb < 512, `the worker's heap reached ${report.peakHeapMb} MiB`);
    assert.ok(report.peakRssMb < 2048, `RSS reached ${report.peakRssMb} MiB`);
  });
}

Deno.test("the fuzz harness reports untyped errors with their input and stops a hung input", async (t) => {
  await t.step("fuzz() stops at the endless loop of input 5 and reports input 3's TypeError", async () => {
    const report = await fuzz("selftest", { seed: 1, seconds: 10, perInputMs: 300 });
    assert.deepEqual(report.failures.map((f) => f.index), [3], "input 2's MalformedError is a typed error");
    assert.match(report.failures[0].error, /^TypeError: unexpected kind/);
    assert.deepEqual(report.failures[0].input, await inputAt("selftest", 1, 3), "the whole input is kept");
    assert.equal(report.hang?.index, 5, "the endless loop was caught and the worker terminated");
  });
  await t.step("fuzzTarget() confirms the hang, goes on after it and stops at maxInputs", async () => {
    const report = await fuzzTarget("selftest", { seed: 1, seconds: 20, perInputMs: 200, maxInputs: 8 });
    assert.deepEqual(report.hangs.map((h) => h.index), [5]);
    assert.ok(report.hangs[0].ms >= 2000, "confirmed with ten times the deadline");
    assert.equal(report.inputs, 8);
    assert.equal(report.failureCount, 1);
  });
  await t.step("replay() runs one input again with the run's random choices", async () => {
    const error = await replay("multipart", SEED, 7, await inputAt("multipart", SEED, 7));
    assert.equal(error, undefined);
    await assert.rejects(() => replay("nope", 1, 1, new Uint8Array(1)), /No fuzz target nope/);
  });
});

Deno.test("fuzz regressions: every input under tests/testdata/fuzz/ runs through its target without a crash", async (t) => {
  const dir = new URL("../testdata/fuzz/", import.meta.url);
  let count = 0;
  for await (const entry of Deno.readDir(dir)) {
    const match = /^([a-z0-9]+)-seed(\d+)-input(\d+)\.bin$/.exec(entry.name);
    if (!match) continue;
    count++;
    await t.step(entry.name, async () => {
      const [, target, seed, index] = match;
      const input = await Deno.readFile(new URL(entry.name, dir));
      const error = await replay(target, Number(seed), Number(index), input);
      assert.equal(error, undefined, `${entry.name}: ${describeError(error)}`);
    });
  }
  assert.ok(count > 0, "tests/testdata/fuzz/ holds the inputs that once crashed");
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
  const tried = reports.reduce((n, r) => n + r.inputs, 0);
  const failures = reports.reduce((n, r) => n + r.failureCount + r.hangs.length, 0);
  console.log(
    `fuzz summary: ${tried} inputs fuzzed over ${reports.length} targets (${
      reports.map((r) => `${r.target} ${r.inputs}`).join(", ")
    }), seed ${SEED}, ${failures} failures`,
  );
});
