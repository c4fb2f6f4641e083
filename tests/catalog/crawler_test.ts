import assert from "node:assert/strict";
import { AetRegistry } from "../../lib/objects/aets.ts";
import { Crawler } from "../../lib/catalog/crawler.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { openSqliteCatalog, type SqliteCatalog } from "../../lib/catalog/sqlite_catalog.ts";
import { type ObjectStore, StoreError } from "../../lib/store/store.ts";
import { buildPart10 } from "../_dicom_fixtures.ts";
import { generatedCorpus, instanceElements, putAll, STUDIES } from "../_qido_fixtures.ts";
import { delegating, observe, type ObservedStore } from "../_stores.ts";

const AET = "CRAWL";
const BUCKET = "crawl";
const files = generatedCorpus();
const SERIES = STUDIES.flatMap((s) => s.series).length;

interface Setup {
  store: ObservedStore;
  catalog: SqliteCatalog;
  crawler: Crawler;
  logs: string[];
  gets(): string[];
  close(): Promise<void>;
}

async function setup(
  backing: ObjectStore,
  options: { catalogPath?: string; eager?: boolean; progressInterval?: number } = {},
): Promise<Setup> {
  await putAll(backing, BUCKET, files);
  const store = observe(backing);
  const catalog = await openSqliteCatalog(options.catalogPath ?? ":memory:");
  const aets = new AetRegistry(store, { configured: new Map([[AET, BUCKET]]) });
  const logs: string[] = [];
  const crawler = new Crawler({
    store,
    aets,
    catalog,
    log: (line) => logs.push(line),
    eagerInstances: options.eager ?? false,
    progressInterval: options.progressInterval,
  });
  return {
    store,
    catalog,
    crawler,
    logs,
    gets: () => store.calls.filter((c) => c.startsWith("get ")),
    async close() {
      await crawler.stop();
      await catalog.close();
    },
  };
}

const studyRows = (catalog: SqliteCatalog) =>
  catalog.search({ aet: AET, level: "study", filters: [], limit: 100, offset: 0 });

function backends(): [string, () => Promise<{ store: ObjectStore; cleanup(): Promise<void> }>][] {
  return [
    ["memory", () => Promise.resolve({ store: new MemoryStore([BUCKET]), cleanup: () => Promise.resolve() })],
    ["local folder", async () => {
      const dir = await Deno.makeTempDir({ prefix: "crawler-" });
      await Deno.mkdir(`${dir}/${BUCKET}`);
      return { store: new FileStore(dir), cleanup: () => Deno.remove(dir, { recursive: true }) };
    }],
  ];
}

for (const [name, make] of backends()) {
  Deno.test(`Crawler (${name}) reads one header per series, then instances lazily, then nothing when unchanged`, async (t) => {
    const { store: backing, cleanup } = await make();
    const s = await setup(backing);
    try {
      await t.step(
        "first crawl: one ranged header read per series, study/series search complete",
        async () => {
          const report = await s.crawler.crawl(AET);
          assert.equal(report.outcome, "complete");
          assert.equal(report.listed, files.length);
          assert.equal(report.seriesHeaders, SERIES);
          const gets = s.gets();
          assert.equal(gets.length, SERIES);
          assert.ok(gets.every((g) => / \d+-\d+$/.test(g)), `ranged reads only: ${gets.join(", ")}`);
          assert.equal(s.store.calls.filter((c) => c.startsWith("list")).length, 1);
          const studies = await studyRows(s.catalog);
          assert.equal(studies.length, STUDIES.length);
          const byUid = new Map(studies.map((r) => [r.study, r]));
          for (const study of STUDIES) {
            const row = byUid.get(study.uid)!;
            assert.equal(row.studySeries, study.series.length);
            assert.equal(row.studyInstances, study.series.reduce((n, se) => n + se.instances, 0));
          }
          const [status] = await s.catalog.status(AET);
          assert.equal(status.pending, files.length - SERIES);
          assert.ok(status.completeAt !== undefined);
          assert.match(s.logs.at(-1)!, /crawl of crawl done .* 18 objects listed .* 11 series headers read/);
        },
      );

      await t.step("instance rows are filled lazily, for the series asked for only", async () => {
        s.store.calls.length = 0;
        assert.equal(await s.crawler.ensureIndexed(AET, { study: "2.25.1001", series: "2.25.1001.2" }), 0);
        assert.deepEqual(
          s.gets().map((g) => g.split(" ")[1]).sort(),
          ["2.25.1001/2.25.1001.2/2.25.1001.2.2.dcm", "2.25.1001/2.25.1001.2/2.25.1001.2.3.dcm"],
        );
        const stored = await s.catalog.instanceMetadata(AET, "2.25.1001", "2.25.1001.2");
        assert.equal(stored.length, 3);
        s.store.calls.length = 0;
        await s.crawler.ensureIndexed(AET, { study: "2.25.1001", series: "2.25.1001.2" });
        assert.deepEqual(s.gets(), [], "already indexed: no reads");
      });

      await t.step("second crawl of an unchanged bucket reads no object", async () => {
        s.store.calls.length = 0;
        const report = await s.crawler.crawl(AET);
        assert.deepEqual([report.unchanged, report.added, report.changed, report.deleted], [
          files.length,
          0,
          0,
          0,
        ]);
        assert.deepEqual(s.gets(), []);
        assert.deepEqual(s.store.calls, ["list "]);
      });

      await t.step("a changed object is re-read; a new one is found; deleted ones disappear", async () => {
        const study = STUDIES[0];
        const changed = buildPart10(
          instanceElements(study, { ...study.series[0], description: "SCOUT RENAMED" }, 0),
        );
        const scoutKey = "2.25.1001/2.25.1001.1/2.25.1001.1.1.dcm";
        await backing.put(BUCKET, scoutKey, changed);
        const extra = generatedCorpus([{
          ...STUDIES[4],
          uid: "2.25.1099",
          series: [{ ...STUDIES[4].series[0], uid: "2.25.1099.1" }],
        }]);
        await putAll(backing, BUCKET, extra);
        for (const f of files.filter((f) => f.key.startsWith("2.25.1003/"))) {
          await backing.delete(BUCKET, f.key);
        }
        await backing.delete(BUCKET, "2.25.1002/2.25.1002.3/2.25.1002.3.1.dcm");

        s.store.calls.length = 0;
        const report = await s.crawler.crawl(AET);
        assert.deepEqual([report.added, report.changed, report.deleted], [1, 1, 5]);
        assert.deepEqual(s.gets().map((g) => g.split(" ")[1]).sort(), [scoutKey, extra[0].key]);
        const studies = new Map((await studyRows(s.catalog)).map((r) => [r.study, r]));
        assert.equal(studies.has("2.25.1003"), false);
        assert.equal(studies.has("2.25.1099"), true);
        assert.deepEqual(studies.get("2.25.1002")!.modalities, ["MR"]);
        assert.equal(studies.get("2.25.1002")!.studyInstances, 4);
        const series = await s.catalog.search({
          aet: AET,
          level: "series",
          study: "2.25.1001",
          filters: [],
          limit: 10,
          offset: 0,
        });
        assert.equal(series[0].seriesJson!["0008103E"].Value![0], "SCOUT RENAMED");
      });
    } finally {
      await s.close();
      await cleanup();
    }
  });
}

Deno.test("Crawler records unreadable and misplaced objects with the reason and never re-reads them", async () => {
  const backing = new MemoryStore([BUCKET]);
  await backing.put(
    BUCKET,
    "2.25.5/2.25.5.1/2.25.5.1.1.dcm",
    new TextEncoder().encode("not DICOM at all, just text"),
  );
  await backing.put(BUCKET, "notes/readme.txt", new TextEncoder().encode("hello"));
  // A real instance under another instance's key: its UIDs do not match.
  await backing.put(BUCKET, "2.25.6/2.25.6.1/2.25.6.1.1.dcm", files[0].bytes);
  const s = await setup(backing);
  try {
    const report = await s.crawler.crawl(AET);
    assert.equal(report.outcome, "complete");
    assert.equal(report.failed, 2);
    assert.equal(report.ignored, 1);
    const failures = await s.catalog.failures(AET);
    assert.deepEqual(failures.map((f) => [f.key, f.state]), [
      ["2.25.5/2.25.5.1/2.25.5.1.1.dcm", "failed"],
      ["2.25.6/2.25.6.1/2.25.6.1.1.dcm", "failed"],
      ["notes/readme.txt", "ignored"],
    ]);
    assert.match(failures[0].error, /^Not readable DICOM: /);
    assert.match(failures[1].error, /does not match the key/);
    assert.ok(s.logs.some((l) => l.includes("cannot index 2.25.5/2.25.5.1/2.25.5.1.1.dcm")));
    assert.equal((await studyRows(s.catalog)).length, STUDIES.length, "the good objects are all indexed");

    s.store.calls.length = 0;
    await s.crawler.crawl(AET);
    assert.deepEqual(s.gets(), [], "failed objects are not read again while their ETag is the same");
  } finally {
    await s.close();
  }
});

Deno.test("Crawler fills instance rows in the background and logs progress at most every interval", async () => {
  const s = await setup(new MemoryStore([BUCKET]), { eager: true, progressInterval: 0 });
  try {
    await s.crawler.crawl(AET, { waitForInstances: true });
    const [status] = await s.catalog.status(AET);
    assert.deepEqual([status.indexed, status.pending], [files.length, 0]);
    assert.equal(s.gets().length, files.length, "every object read exactly once");
    assert.ok(s.logs.some((l) => /instance headers: \d+\/7 \(\d+\/s, ETA/.test(l)), s.logs.join("\n"));
    assert.ok(s.logs.some((l) => /series headers: \d+\/11/.test(l)));
    const progress = s.crawler.progress()[0];
    assert.equal(progress.phase, "idle");
    assert.equal(progress.headersRead, files.length);
  } finally {
    await s.close();
  }
  const quiet = await setup(new MemoryStore([BUCKET]), { eager: true, progressInterval: 60_000 });
  try {
    await quiet.crawler.crawl(AET, { waitForInstances: true });
    assert.equal(quiet.logs.length, 2, `only the summaries: ${quiet.logs.join("\n")}`);
  } finally {
    await quiet.close();
  }
});

Deno.test("Crawler: between the crawl and its background instance pass the phase never reads idle", async () => {
  // A networked catalog (PostgreSQL) answers status() a round trip later; a poller that saw "idle" in that gap
  // took the AET for done while instance headers were still pending (CI, search_postgres_test).
  const s = await setup(new MemoryStore([BUCKET]), { eager: true, progressInterval: 60_000 });
  const status = s.catalog.status.bind(s.catalog);
  s.catalog.status = async (aet) => {
    await new Promise((resolve) => setTimeout(resolve, 50));
    return status(aet);
  };
  try {
    const report = await s.crawler.crawl(AET);
    assert.equal(report.outcome, "complete");
    const [pending] = await status(AET);
    assert.ok(pending.pending > 0, "instances are still pending right after the crawl");
    assert.equal(s.crawler.progress()[0].phase, "instances");
    await s.crawler.crawl(AET, { waitForInstances: true });
    assert.equal((await status(AET))[0].pending, 0);
    assert.equal(s.crawler.progress()[0].phase, "idle");
  } finally {
    await s.close();
  }
});

Deno.test("Crawler: a background pass with nothing left to read ends idle, however soon it ends", async () => {
  // The re-crawl of an unchanged bucket starts a pass that finds nothing pending and ends before the crawl has
  // settled; it must not leave the phase at "instances" (CI, search_s3_test: "Crawl did not finish").
  const backing = new MemoryStore([BUCKET]);
  // an unreadable object too: the pass has nothing to read, not even it (its failure is on record)
  await backing.put(BUCKET, "2.25.66/2.25.66.1/2.25.66.1.1.dcm", new TextEncoder().encode("not DICOM"));
  const s = await setup(backing, { eager: true, progressInterval: 60_000 });
  try {
    await s.crawler.crawl(AET, { waitForInstances: true });
    const again = await s.crawler.crawl(AET); // as POST /admin/index does: the pass runs on by itself
    assert.equal(again.unchanged, files.length + 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(s.crawler.progress()[0].phase, "idle");
  } finally {
    await s.close();
  }
});

Deno.test("Crawler skips an AET whose lease another process holds, and joins a running crawl", async () => {
  const s = await setup(new MemoryStore([BUCKET]));
  try {
    const held = (await s.catalog.beginCrawl(AET, BUCKET, "other-process", 60_000))!;
    const report = await s.crawler.crawl(AET);
    assert.equal(report.outcome, "skipped");
    await s.catalog.endCrawl(held, { complete: false });
    const [a, b] = [s.crawler.crawl(AET), s.crawler.crawl(AET)];
    assert.equal(a, b, "one crawl per AET at a time");
    assert.equal((await a).outcome, "complete");
  } finally {
    await s.close();
  }
});

Deno.test("Crawler keeps its lease while one step outlasts it (a slow listing page); a stalled holder loses it", async (t) => {
  const backing = new MemoryStore([BUCKET]);
  await putAll(backing, BUCKET, files);
  const LEASE = 150;
  let pause = 0;
  const slow = delegating(backing, {
    async *list(b, p, o) {
      // the first page takes three leases to come back, as a listing under load can
      await new Promise((r) => setTimeout(r, pause));
      yield* backing.list(b, p, o);
    },
  });
  const catalog = await openSqliteCatalog(":memory:");
  const crawler = new Crawler({
    store: slow,
    aets: new AetRegistry(slow, { configured: new Map([[AET, BUCKET]]) }),
    catalog,
    log: () => {},
    leaseMs: LEASE,
    owner: "slow-replica",
  });
  try {
    await t.step("another process cannot take a lease whose holder is alive but waiting", async () => {
      pause = LEASE * 3;
      const crawl = crawler.crawl(AET);
      await new Promise((r) => setTimeout(r, LEASE * 2));
      assert.equal(await catalog.beginCrawl(AET, BUCKET, "other-replica", 60_000), undefined);
      const report = await crawl;
      assert.equal(report.outcome, "complete", report.error);
      assert.equal(report.listed, files.length);
    });
    await t.step(
      "a holder whose event loop stalls past its lease loses it to another and writes nothing",
      async () => {
        pause = LEASE * 3;
        const crawl = crawler.crawl(AET);
        await new Promise((r) => setTimeout(r, LEASE / 2));
        const stalledUntil = performance.now() + LEASE * 2;
        while (performance.now() < stalledUntil) {
          // a stalled event loop: no timer runs, so nothing renews the lease
        }
        // in the same task, before any timer: the lease has run out and another process takes it
        const other = await catalog.beginCrawl(AET, BUCKET, "other-replica", 60_000);
        assert.ok(other, "the expired lease is taken");
        const report = await crawl;
        assert.equal(report.outcome, "failed");
        assert.equal(report.error, "The crawl lease was lost");
        assert.equal(report.added + report.changed + report.unchanged + report.deleted, 0, "nothing written");
        await catalog.endCrawl(other, { complete: false });
      },
    );
  } finally {
    await crawler.stop();
    await catalog.close();
  }
});

Deno.test("Crawler rebuilds everything after the catalog file is deleted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "catalog-" });
  const path = `${dir}/.catalog.sqlite`;
  const backing = new MemoryStore([BUCKET]);
  try {
    let s = await setup(backing, { catalogPath: path });
    await s.crawler.crawl(AET);
    const before = await studyRows(s.catalog);
    await s.close();
    for (const suffix of ["", "-wal", "-shm"]) await Deno.remove(path + suffix).catch(() => {});

    s = await setup(backing, { catalogPath: path });
    try {
      assert.deepEqual(await s.catalog.status(), []);
      const report = await s.crawler.crawl(AET);
      assert.equal(report.added, files.length);
      assert.equal(s.gets().length, SERIES);
      assert.deepEqual(await studyRows(s.catalog), before);
    } finally {
      await s.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Crawler.start() crawls now and on the interval; stop() ends it", async () => {
  const s = await setup(new MemoryStore([BUCKET]));
  try {
    s.crawler.start(3600);
    assert.equal(await s.crawler.ready(AET, 5_000), true);
    assert.equal((await studyRows(s.catalog)).length, STUDIES.length);
  } finally {
    await s.close();
  }
});

Deno.test("Crawler reports a store failure without blaming objects; ready() answers at once", async () => {
  const backing = new MemoryStore([BUCKET]);
  await putAll(backing, BUCKET, files.slice(0, 2));
  const broken = delegating(backing, {
    get: () => Promise.reject(new StoreError("unavailable", "Cannot reach the store: connection refused")),
  });
  const catalog = await openSqliteCatalog(":memory:");
  const logs: string[] = [];
  const crawler = new Crawler({
    store: broken,
    aets: new AetRegistry(broken, { configured: new Map([[AET, BUCKET]]) }),
    catalog,
    log: (line) => logs.push(line),
  });
  try {
    assert.equal(await crawler.ready(AET, 60_000), false);
    const last = crawler.progress()[0].last!;
    assert.equal(last.outcome, "failed");
    assert.match(last.error!, /connection refused/);
    assert.deepEqual(await catalog.failures(AET), [], "no object is recorded as failed");
    assert.equal((await catalog.status(AET))[0].lastError, "Cannot reach the store: connection refused");
    assert.ok(logs.some((l) => /crawl of crawl failed: Cannot reach the store/.test(l)));
  } finally {
    await crawler.stop();
    await catalog.close();
  }
});
