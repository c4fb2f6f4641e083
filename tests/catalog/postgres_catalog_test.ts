/**
 * The catalog contract (_catalog_contract.ts) on PostgreSQL, on a throw-away cluster (tests/_postgres.ts), and
 * what sharing adds: migrations once under N concurrent starts, a newer schema refused, the database clock's
 * leases across two catalogs, changes announced to the other catalogs, and a database that goes away and
 * comes back.
 *
 * Needs Debian's `postgresql`: fails without it under CI=true, else skipped with one line naming it.
 */

import assert from "node:assert/strict";
import postgres from "postgres";
import {
  CatalogMismatchError,
  openPostgresCatalog,
  parsePostgresUrl,
  SchemaTooNewError,
} from "../../lib/catalog/postgres_catalog.ts";
import { type CatalogChange, CatalogUnavailableError } from "../../lib/catalog/catalog.ts";
import { SCHEMA_VERSION } from "../../lib/catalog/postgres_schema.ts";
import { parseBuffer } from "../../lib/dicom/part10.ts";
import type { Catalog } from "../../lib/catalog/catalog.ts";
import { buildPart10 } from "../_dicom_fixtures.ts";
import { catalogContract, files, filled } from "./_catalog_contract.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "../_postgres.ts";
import { skipBecause } from "../_skip.ts";

const missing = await postgresMissing();
if (missing) skipBecause("the PostgreSQL catalog tests", missing);

const cluster: TestPostgres | undefined = missing ? undefined : await startPostgres();
// deno-lint-ignore require-await
async function pg(): Promise<TestPostgres> {
  return cluster!;
}

if (!missing) {
  catalogContract("PostgresCatalog", async (options) => {
    const url = await (await pg()).createDatabase("contract");
    return await openPostgresCatalog(url, { ...options, log: () => {} });
  });
}

Deno.test({
  name: "PostgresCatalog: migrations, leases across replicas, changes, outages",
  ignore: missing !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const server = await pg();

    await t.step("parsePostgresUrl() hides the password and takes sslmode apart", () => {
      const parsed = parsePostgresUrl(
        "postgresql://u:secret@db.example:6432/pacs?sslmode=verify-full&application_name=x",
      );
      assert.equal(
        parsed.shown,
        "postgresql://u@db.example:6432/pacs?application_name=x&sslmode=verify-full",
      );
      assert.equal(parsed.ssl, "verify-full");
      assert.ok(!parsed.url.includes("sslmode"));
      assert.equal(parsePostgresUrl("postgres://u@h/d?sslmode=require").ssl, "require");
      assert.equal(parsePostgresUrl("postgres://u@h/d").ssl, false);
      assert.throws(() => parsePostgresUrl("postgres://u@h/d?sslmode=maybe"), /sslmode=maybe is not known/);
      assert.throws(() => parsePostgresUrl("mysql://u@h/d"), /Not a postgres:\/\/ URL/);
      assert.throws(() => parsePostgresUrl("postgres://u@h"), /names no database/);
    });

    await t.step("five replicas starting together migrate once; a newer schema is refused", async () => {
      const url = await server.createDatabase("migrate");
      const logs: string[] = [];
      const catalogs = await Promise.all(
        Array.from({ length: 5 }, () => openPostgresCatalog(url, { log: (line) => logs.push(line) })),
      );
      assert.equal(logs.filter((l) => /migrated from version 0/.test(l)).length, 1, logs.join("\n"));
      await Promise.all(catalogs.map((c) => c.status()));
      await Promise.all(catalogs.map((c) => c.close()));
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      try {
        assert.deepEqual([...await sql`SELECT version FROM catalog_schema`], [{ version: SCHEMA_VERSION }]);
        await sql`UPDATE catalog_schema SET version = ${SCHEMA_VERSION + 1}`;
      } finally {
        await sql.end();
      }
      await assert.rejects(
        openPostgresCatalog(url, { log: () => {} }),
        (error: Error) =>
          error instanceof SchemaTooNewError &&
          /has schema version \d+, newer than this server's \d+/.test(error.message),
      );
    });

    await t.step("another bulk data threshold over a filled catalog is refused", async () => {
      const url = await server.createDatabase("threshold");
      const catalog = await openPostgresCatalog(url, { log: () => {} });
      await filled(catalog);
      await catalog.close();
      await assert.rejects(
        openPostgresCatalog(url, { bulkDataThreshold: 10, log: () => {} }),
        (error: Error) =>
          error instanceof CatalogMismatchError && /BULKDATA_THRESHOLD=1024/.test(error.message),
      );
    });

    await t.step("after a bulk of writes the catalog refreshes the planner's statistics itself", async () => {
      const analyzed = async (url: string) => {
        const sql = postgres(url, { max: 1, onnotice: () => {} });
        try {
          const [row] = await sql<{ count: number }[]>`SELECT analyze_count::int AS count
            FROM pg_stat_user_tables WHERE relname = 'studies'`;
          return row.count;
        } finally {
          await sql.end();
        }
      };
      for (const [after, expected] of [[0, 0], [files.length - 1, 1]]) {
        const url = await server.createDatabase("analyze");
        const catalog = await openPostgresCatalog(url, { log: () => {}, analyzeAfterRows: after });
        try {
          await filled(catalog); // one write per instance
          const until = Date.now() + 5000;
          while (await analyzed(url) < expected && Date.now() < until) {
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
          assert.equal(await analyzed(url), expected, `analyzeAfterRows ${after}`);
        } finally {
          await catalog.close();
        }
      }
    });

    await t.step("two replicas: one lease, shared status, changes announced to the other", async () => {
      const url = await server.createDatabase("replicas");
      const a = await openPostgresCatalog(url, { log: () => {} });
      const b = await openPostgresCatalog(url, { log: () => {} });
      try {
        const heard: CatalogChange[] = [];
        b.onChange((change) => heard.push(change));
        const ownHeard: CatalogChange[] = [];
        a.onChange((change) => ownHeard.push(change));
        await new Promise((r) => setTimeout(r, 200)); // LISTEN is set up
        const ticket = await a.beginCrawl("A", "a", "replica-a", 60_000);
        assert.ok(ticket);
        assert.equal(await b.beginCrawl("A", "a", "replica-b", 60_000), undefined);
        assert.equal((await b.status("A"))[0].crawlingBy, "replica-a");
        await a.endCrawl(ticket, { complete: true });
        const f = files[0];
        await a.recordInstance(
          "A",
          "a",
          { key: f.key, size: f.bytes.length, etag: "e1" },
          parseBuffer(f.bytes, f.key),
        );
        const until = Date.now() + 5000;
        while (heard.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
        assert.deepEqual(heard, [{ aet: "A", bucket: "a", keys: [f.key] }]);
        assert.deepEqual(ownHeard, [], "a replica does not hear its own changes");
        const found = await b.search({ aet: "A", level: "instance", filters: [], limit: 10, offset: 0 });
        assert.deepEqual(found.map((r) => r.sop), [f.key.split("/")[2].slice(0, -4)]);
        assert.equal(await b.completedAt("A"), ticket.startedAt);
        // a DELETE on one replica: the other hears the keys (and drops their cached headers), and its own
        // change feed listeners hear nothing (webhooks go out from the replica that made the change)
        const fed: number[] = [];
        b.onFeed((entries) => fed.push(...entries.map((e) => e.sequence)));
        assert.equal(await a.removeInstances("A", [f.key]), 1);
        const until2 = Date.now() + 5000;
        while (heard.length < 2 && Date.now() < until2) await new Promise((r) => setTimeout(r, 20));
        assert.deepEqual(heard[1], { aet: "A", bucket: "a", keys: [f.key] });
        assert.deepEqual(
          await b.search({ aet: "A", level: "instance", filters: [], limit: 10, offset: 0 }),
          [],
        );
        assert.equal((await b.latestChange("A", false))?.action, "delete");
        assert.deepEqual(fed, []);
      } finally {
        await a.close();
        await b.close();
      }
    });

    await t.step("the database goes away: 503 at once, back by itself when it returns", async () => {
      const url = await server.createDatabase("outage");
      const logs: string[] = [];
      const catalog = await openPostgresCatalog(url, { log: (line) => logs.push(line), probeMs: 100 });
      try {
        await filled(catalog);
        await server.pause();
        await assert.rejects(
          catalog.status(),
          (error: Error) =>
            error instanceof CatalogUnavailableError && error.message.includes(catalog.location),
        );
        const started = performance.now();
        await assert.rejects(catalog.check(), CatalogUnavailableError);
        assert.ok(performance.now() - started < 1000, "a known outage fails at once");
        assert.equal(catalog.pool().down, true);
        await server.resume();
        const until = Date.now() + 10_000;
        for (;;) {
          try {
            await catalog.check();
            break;
          } catch (error) {
            if (Date.now() > until) throw error;
            await new Promise((r) => setTimeout(r, 50));
          }
        }
        assert.equal((await catalog.status("A"))[0].indexed, files.length);
        assert.ok(logs.some((l) => /answers again/.test(l)), logs.join("\n"));
      } finally {
        await catalog.close();
      }
    });

    await t.step(
      "a batch of new and re-stored instances is filed as one call per instance would",
      async () => {
        // recordInstances() files a batch of distinct keys, all indexable, in a few statements for the whole batch
        // (the STOW-RS path): its series rows, counts and change feed must be those of filing item by item.
        const instance = (study: number, series: number, sop: number, modality: string, etag = "e1") => {
          const st = `2.25.70${study}`, se = `${st}.${series}`, uid = `${se}.${sop}`;
          const key = `${st}/${se}/${uid}.dcm`;
          const bytes = buildPart10([
            {
              tag: 0x00080016,
              vr: "UI",
              value: sop % 2 ? "1.2.840.10008.5.1.4.1.1.2" : "1.2.840.10008.5.1.4.1.1.4",
            },
            { tag: 0x00080018, vr: "UI", value: uid },
            { tag: 0x00080020, vr: "DA", value: `2020010${study}` },
            { tag: 0x00080060, vr: "CS", value: modality },
            { tag: 0x0008103e, vr: "LO", value: `SERIES ${series} ${etag}` },
            { tag: 0x00100010, vr: "PN", value: `DOE^${etag.toUpperCase()}` },
            { tag: 0x0020000d, vr: "UI", value: st },
            { tag: 0x0020000e, vr: "UI", value: se },
            { tag: 0x00200011, vr: "IS", value: String(series) },
            { tag: 0x00200013, vr: "IS", value: String(10 - sop) },
          ], { sopInstanceUid: uid });
          return { info: { key, size: bytes.length, etag }, header: parseBuffer(bytes, key) };
        };
        const batches = [
          [
            instance(1, 1, 1, "CT"),
            instance(1, 1, 2, "CT"),
            instance(1, 2, 1, "MR"),
            instance(1, 1, 3, "CT"),
            instance(2, 1, 1, "US"),
          ],
          [
            instance(1, 1, 4, "CT"), // a new instance before its series' representative's new version
            instance(1, 1, 1, "PT", "e2"), // the representative, a new version: the series row follows it
            instance(1, 1, 2, "CT"), // the same version again: no change feed entry
            instance(1, 3, 2, "SR"), // a new series of two, the first filed represents it
            instance(1, 3, 1, "SR"),
            instance(3, 1, 1, "CR"), // a new study
            instance(2, 1, 2, "US", "e2"),
          ],
          [instance(2, 1, 1, "US", "e3"), instance(1, 2, 1, "MR")],
        ];
        const one = await openPostgresCatalog(await server.createDatabase("one"), { log: () => {} });
        const batched = await openPostgresCatalog(await server.createDatabase("batched"), { log: () => {} });
        const state = async (catalog: Catalog) => {
          const query = { aet: "A", filters: [], limit: 1000, offset: 0 };
          const feed = await catalog.changeFeed({ aet: "A", limit: 100, offset: 0, includeMetadata: true });
          return {
            status: (await catalog.status("A")).map((s) => ({ ...s, completeAt: undefined })),
            studies: await catalog.search({ ...query, level: "study" }),
            series: await catalog.search({ ...query, level: "series" }),
            instances: await catalog.search({ ...query, level: "instance" }),
            metadata: await catalog.instanceMetadata("A", "2.25.701"),
            feed: feed.map((entry) => ({ ...entry, time: 0 })),
          };
        };
        try {
          for (const batch of batches) {
            const outcomes = [];
            for (const { info, header } of batch) {
              outcomes.push(await one.recordInstance("A", "a", info, header));
            }
            assert.deepEqual(
              await batched.recordInstances("A", "a", batch),
              outcomes.map((value) => ({ status: "fulfilled", value })),
            );
            assert.deepEqual(await state(batched), await state(one));
          }
          const [study] = await batched.search({
            aet: "A",
            level: "study",
            study: "2.25.701",
            filters: [],
            limit: 1,
            offset: 0,
          });
          assert.deepEqual([study.studySeries, study.studyInstances, study.modalities], [3, 7, [
            "MR",
            "PT",
            "SR",
          ]]);
          const series = await batched.search({
            aet: "A",
            level: "series",
            study: "2.25.701",
            filters: [],
            limit: 9,
            offset: 0,
          });
          assert.deepEqual(series.map((s) => [s.series, s.seriesInstances]), [
            ["2.25.701.1", 4],
            ["2.25.701.2", 1],
            ["2.25.701.3", 2],
          ]);
          const feed = await batched.changeFeed({ aet: "A", limit: 100, offset: 0, includeMetadata: false });
          assert.equal(feed.length, 5 + 6 + 1);
          assert.deepEqual(feed.filter((e) => e.sop === "2.25.701.1.1").map((e) => e.state), [
            "replaced",
            "current",
          ]);
        } finally {
          await one.close();
          await batched.close();
        }
      },
    );

    await t.step("a locked table is bounded by the timeout", async () => {
      const url = await server.createDatabase("locked");
      const catalog = await openPostgresCatalog(url, { log: () => {}, timeoutMs: 500 });
      const locker = postgres(url, { max: 1, onnotice: () => {} });
      try {
        await filled(catalog);
        let release!: () => void;
        const held = new Promise<void>((r) => release = r);
        const lock = locker.begin(async (tx) => {
          await tx`LOCK TABLE studies IN ACCESS EXCLUSIVE MODE`;
          await held;
        });
        await new Promise((r) => setTimeout(r, 100));
        await assert.rejects(
          catalog.search({ aet: "A", level: "study", filters: [], limit: 10, offset: 0 }),
          (error: Error) =>
            error instanceof CatalogUnavailableError && /did not answer a search within/.test(error.message),
        );
        release();
        await lock;
        assert.equal(
          (await catalog.search({ aet: "A", level: "study", filters: [], limit: 10, offset: 0 })).length > 0,
          true,
        );
      } finally {
        await locker.end();
        await catalog.close();
      }
    });
  },
});

Deno.test({
  name: "PostgreSQL test cluster stops",
  ignore: missing !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await cluster?.stop();
  },
});
