/**
 * The catalog contract: what every catalog backend (lib/catalog/catalog.ts) must do, written against the
 * `Catalog` interface only. A backend's test calls {@linkcode catalogContract} with a way to open an empty
 * catalog; `sqlite_catalog_test.ts` does it for SQLite, and the next backend runs the same suite.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Catalog, ChangeFeedEntry, SearchRow } from "../../lib/catalog/catalog.ts";
import { type Level, parseSearch } from "../../lib/catalog/qido_query.ts";
import { parseBuffer } from "../../lib/dicom/part10.ts";
import type { ObjectInfo } from "../../lib/store/store.ts";
import { buildPart10 } from "../_dicom_fixtures.ts";
import { generatedCorpus, STUDIES } from "../_qido_fixtures.ts";

/** Opens an empty catalog of the backend under test. */
export type OpenCatalog = (options?: { bulkDataThreshold?: number }) => Promise<Catalog>;

/** The generated QIDO corpus, as the contract files it. */
export const files = generatedCorpus();
const infoOf = (key: string, bytes: Uint8Array, etag = "e1"): ObjectInfo => ({
  key,
  size: bytes.length,
  etag,
});

/** Files every generated instance under `aet`. */
export async function filled(catalog: Catalog, aet = "A"): Promise<void> {
  for (const f of files) {
    await catalog.recordInstance(aet, "a", infoOf(f.key, f.bytes), parseBuffer(f.bytes, f.key));
  }
}

/** Everything a search can see of one AET, level by level. */
async function everything(catalog: Catalog, aet = "A") {
  const query = { aet, filters: [], limit: 1000, offset: 0 };
  return {
    status: (await catalog.status(aet)).map((s) => ({ ...s, completeAt: undefined })),
    failures: await catalog.failures(aet),
    studies: await catalog.search({ ...query, level: "study" }),
    series: await catalog.search({ ...query, level: "series" }),
    instances: await catalog.search({ ...query, level: "instance" }),
  };
}

/** Registers the contract suite for one backend. */
export function catalogContract(name: string, open: OpenCatalog): void {
  Deno.test(`${name} passes the catalog contract`, async (t) => {
    await t.step("records instances, counts series and studies, forgets removed ones", async () => {
      const catalog = await open();
      try {
        await filled(catalog);
        const [status] = await catalog.status("A");
        assert.equal(status.objects, files.length);
        assert.equal(status.indexed, files.length);
        assert.equal(status.studies, STUDIES.length);
        assert.equal(status.series, STUDIES.flatMap((s) => s.series).length);
        const query = { aet: "A", level: "study" as const, filters: [], limit: 100, offset: 0 };
        const study = (await catalog.search({ ...query, study: "2.25.1002" }))[0];
        assert.deepEqual([study.studySeries, study.studyInstances, study.modalities], [3, 5, ["MR", "SR"]]);

        await catalog.removeInstance("A", "2.25.1002/2.25.1002.3/2.25.1002.3.1.dcm");
        const after = (await catalog.search({ ...query, study: "2.25.1002" }))[0];
        assert.deepEqual([after.studySeries, after.studyInstances, after.modalities], [2, 4, ["MR"]]);
        // The series' representative is removed: another instance takes over, from its stored JSON.
        await catalog.removeInstance("A", "2.25.1002/2.25.1002.1/2.25.1002.1.1.dcm");
        const series = await catalog.search({ ...query, level: "series", study: "2.25.1002" });
        assert.deepEqual(series.map((r) => [r.series, r.seriesInstances]), [["2.25.1002.1", 1], [
          "2.25.1002.2",
          2,
        ]]);
        for (const f of files.filter((f) => f.key.startsWith("2.25.1002/"))) {
          await catalog.removeInstance("A", f.key);
        }
        assert.deepEqual(await catalog.search({ ...query, study: "2.25.1002" }), []);

        const stored = await catalog.instanceMetadata("A", "2.25.1001", "2.25.1001.2");
        assert.equal(stored.length, 3);
        const json = JSON.parse(stored[0].json);
        assert.equal(json["7FE00010"].BulkDataURI, "bulkdata/7FE00010");
        assert.equal(stored[0].etag, "e1");
      } finally {
        await catalog.close();
      }
    });

    await t.step(
      "objectKeys() and removeInstances(): a study, a series, an instance; never a longer UID",
      async () => {
        const catalog = await open();
        try {
          await filled(catalog);
          const [twin] = generatedCorpus([{
            ...STUDIES[1],
            uid: "2.25.10021",
            series: [{ ...STUDIES[1].series[0], uid: "2.25.10021.1", instances: 1 }],
          }]);
          const twinKey = twin.key;
          await catalog.recordInstance(
            "A",
            "a",
            infoOf(twinKey, twin.bytes),
            parseBuffer(twin.bytes, twin.key),
          );
          const inStudy = files.filter((f) => f.key.startsWith("2.25.1002/")).map((f) => f.key).sort();
          assert.deepEqual(await catalog.objectKeys("A", { study: "2.25.1002" }), inStudy);
          const series = inStudy[0].split("/")[1];
          assert.deepEqual(
            await catalog.objectKeys("A", { study: "2.25.1002", series }),
            inStudy.filter((key) => key.split("/")[1] === series),
          );
          const sop = inStudy[0].split("/")[2].slice(0, -4);
          assert.deepEqual(await catalog.objectKeys("A", { study: "2.25.1002", series, sop }), [inStudy[0]]);
          assert.deepEqual(await catalog.objectKeys("B", { study: "2.25.1002" }), []);
          assert.equal(await catalog.removeInstances("A", [...inStudy, "9/9/9.dcm"]), inStudy.length);
          assert.equal(await catalog.removeInstances("A", []), 0);
          assert.deepEqual(await catalog.objectKeys("A", { study: "2.25.1002" }), []);
          assert.deepEqual(await catalog.objectKeys("A", { study: "2.25.10021" }), [twinKey]);
          const query = { aet: "A", level: "study" as const, filters: [], limit: 100, offset: 0 };
          const studies = (await catalog.search(query)).map((row) => row.study);
          assert.ok(!studies.includes("2.25.1002"));
          assert.ok(studies.includes("2.25.10021"));
          assert.deepEqual(await catalog.search({ ...query, level: "series", study: "2.25.1002" }), []);
          assert.deepEqual(await catalog.instanceMetadata("A", "2.25.1002"), []);
        } finally {
          await catalog.close();
        }
      },
    );

    await t.step(
      "the change feed: creates, replacements, deletes, windows, paging, metadata, listeners",
      async () => {
        const catalog = await open();
        try {
          const heard: ChangeFeedEntry[] = [];
          catalog.onFeed((entries) => heard.push(...entries));
          const before = Date.now();
          await filled(catalog);
          const all = await catalog.changeFeed({ aet: "A", offset: 0, limit: 1000, includeMetadata: false });
          assert.equal(all.length, files.length);
          assert.deepEqual(
            heard.map((e) => e.sequence),
            all.map((e) => e.sequence),
            "listeners hear each once",
          );
          for (let i = 1; i < all.length; i++) assert.ok(all[i].sequence > all[i - 1].sequence);
          assert.ok(
            all.every((e) => e.action === "create" && e.state === "current" && e.metadata === undefined),
          );
          assert.ok(all.every((e) => e.time >= before - 5000 && e.time <= Date.now() + 5000));
          assert.deepEqual(
            all.map((e) => `${e.study}/${e.series}/${e.sop}.dcm`),
            files.map((f) => f.key),
          );
          // paging and windows
          const page = await catalog.changeFeed({ aet: "A", offset: 2, limit: 3, includeMetadata: false });
          assert.deepEqual(page.map((e) => e.sequence), all.slice(2, 5).map((e) => e.sequence));
          assert.deepEqual(
            await catalog.changeFeed({
              aet: "A",
              startTime: Date.now() + 60_000,
              offset: 0,
              limit: 10,
              includeMetadata: false,
            }),
            [],
          );
          assert.deepEqual(
            await catalog.changeFeed({
              aet: "A",
              endTime: before - 60_000,
              offset: 0,
              limit: 10,
              includeMetadata: false,
            }),
            [],
          );
          assert.deepEqual(
            await catalog.changeFeed({ aet: "B", offset: 0, limit: 10, includeMetadata: false }),
            [],
          );
          assert.equal(await catalog.latestChange("B", false), undefined);
          const [withJson] = await catalog.changeFeed({
            aet: "A",
            offset: 0,
            limit: 1,
            includeMetadata: true,
          });
          const stored = (await catalog.instanceMetadata("A", withJson.study, withJson.series))
            .find((i) => i.sop === withJson.sop)!;
          assert.equal(withJson.metadata, stored.json);

          // the same version again: nothing; a new version: create, the old entry replaced
          const f = files[0];
          await catalog.recordInstance("A", "a", infoOf(f.key, f.bytes), parseBuffer(f.bytes, f.key));
          assert.equal((await catalog.latestChange("A", false))!.sequence, all.at(-1)!.sequence);
          await catalog.recordInstance("A", "a", infoOf(f.key, f.bytes, "e2"), parseBuffer(f.bytes, f.key));
          const replaced = await catalog.latestChange("A", true);
          assert.equal(replaced!.action, "create");
          assert.equal(replaced!.state, "current");
          assert.ok(replaced!.metadata?.startsWith("{"));
          const first =
            (await catalog.changeFeed({ aet: "A", offset: 0, limit: 1, includeMetadata: true }))[0];
          assert.equal(first.state, "replaced");
          assert.equal(first.metadata, undefined, "no metadata for an entry that is not current");

          // deleted: every entry of the instance says so, and the delete is the latest
          await catalog.removeInstances("A", [f.key]);
          const deleted = (await catalog.latestChange("A", true))!;
          assert.deepEqual(
            [deleted.action, deleted.state, deleted.sop, deleted.metadata],
            ["delete", "deleted", first.sop, undefined],
          );
          const ofKey =
            (await catalog.changeFeed({ aet: "A", offset: 0, limit: 1000, includeMetadata: false }))
              .filter((e) => e.sop === first.sop);
          assert.deepEqual(ofKey.map((e) => `${e.action}:${e.state}`), [
            "create:deleted",
            "create:deleted",
            "delete:deleted",
          ]);
          await catalog.removeInstances("A", [f.key]);
          assert.equal(
            (await catalog.latestChange("A", false))!.sequence,
            deleted.sequence,
            "a row gone: no entry",
          );
          assert.equal(heard.at(-1)!.sequence, deleted.sequence);

          // a crawl: listed objects are not announced until indexed; an indexed one not listed any more is deleted
          const ticket = (await catalog.beginCrawl("A", "a", "me", 60_000))!;
          await new Promise((resolve) => setTimeout(resolve, 5));
          const crawl = await catalog.beginCrawl("A", "a", "me", 60_000);
          const listed = files.slice(2).map((x) => infoOf(x.key, x.bytes));
          await catalog.applyListing(crawl ?? ticket, [...listed, infoOf("9.9/9.9.9/9.9.9.9.dcm", f.bytes)]);
          await catalog.finishListing(crawl ?? ticket);
          const tail = await catalog.changeFeed({
            aet: "A",
            startTime: deleted.time,
            offset: 0,
            limit: 1000,
            includeMetadata: false,
          });
          assert.deepEqual(
            tail.filter((e) => e.sequence > deleted.sequence).map((e) => `${e.action} ${e.sop}`),
            [`delete ${files[1].key.split("/")[2].slice(0, -4)}`],
          );
        } finally {
          await catalog.close();
        }
      },
    );

    await t.step("pages at every level are slices of the whole ordered result, filtered or not", async () => {
      const catalog = await open();
      try {
        await filled(catalog);
        const keyOf = (row: SearchRow) => `${row.study}/${row.series ?? ""}/${row.sop ?? ""}`;
        for (const level of ["study", "series", "instance"] as const) {
          for (const params of ["", "StudyDate=19000101-"]) {
            const { filters } = parseSearch(new URLSearchParams(params), {
              level,
              matchable: ["study", "series", "instance"].slice(
                0,
                ["study", "series", "instance"].indexOf(level) + 1,
              ) as Level[],
              defaultLimit: 1000,
              maxLimit: 1000,
            });
            const query = { aet: "A", level, filters, limit: 1000, offset: 0 };
            const all = (await catalog.search(query)).map(keyOf);
            assert.ok(all.length > 3, `${level} ${params}: ${all.length} rows`);
            for (const [offset, limit] of [[1, 2], [2, 3], [all.length - 1, 5], [all.length, 5], [0, 0]]) {
              const page = (await catalog.search({ ...query, offset, limit })).map(keyOf);
              assert.deepEqual(
                page,
                all.slice(offset, offset + limit),
                `${level} ${params} offset=${offset}`,
              );
            }
          }
        }
      } finally {
        await catalog.close();
      }
    });

    await t.step("files layout and UID problems as ignored / failed with the reason", async () => {
      const catalog = await open();
      try {
        const f = files[0];
        const header = parseBuffer(f.bytes, f.key);
        assert.equal(
          await catalog.recordInstance("A", "a", infoOf("notes/readme.dcm", f.bytes), header),
          "ignored",
        );
        assert.equal(
          await catalog.recordInstance("A", "a", infoOf("2.25.9/2.25.9.1/2.25.9.1.1.dcm", f.bytes), header),
          "failed",
        );
        await catalog.recordFailure(
          "A",
          infoOf("2.25.8/2.25.8.1/2.25.8.1.1.dcm", f.bytes),
          "Cannot parse: DICM missing",
        );
        const failures = await catalog.failures("A");
        assert.deepEqual(failures.map((p) => [p.key, p.state]), [
          ["2.25.8/2.25.8.1/2.25.8.1.1.dcm", "failed"],
          ["2.25.9/2.25.9.1/2.25.9.1.1.dcm", "failed"],
          ["notes/readme.dcm", "ignored"],
        ]);
        assert.match(failures[1].error, /StudyInstanceUID 2\.25\.1001 does not match the key \(2\.25\.9\)/);
        assert.match(failures[2].error, /Key is not/);
        assert.deepEqual(
          await catalog.search({ aet: "A", level: "study", filters: [], limit: 10, offset: 0 }),
          [],
        );
      } finally {
        await catalog.close();
      }
    });

    await t.step(
      "listing: merge by key, deletions, changed ETags, STOW during a crawl survives",
      async () => {
        const catalog = await open();
        try {
          const [a, b, c] = files.slice(0, 3).map((f) => infoOf(f.key, f.bytes));
          let ticket = (await catalog.beginCrawl("A", "a", "me", 60_000))!;
          assert.deepEqual(await catalog.applyListing(ticket, [a, b]), {
            added: 2,
            changed: 0,
            unchanged: 0,
            ignored: 0,
          });
          assert.deepEqual(await catalog.applyListing(ticket, [c, infoOf("x.txt", new Uint8Array(1))]), {
            added: 1,
            changed: 0,
            unchanged: 0,
            ignored: 1,
          });
          assert.equal(await catalog.finishListing(ticket), 0);
          await catalog.endCrawl(ticket, { complete: true });
          assert.equal((await catalog.pendingObjects("A", {}, 10)).length, 3);

          // Second crawl: b changed, c deleted, and a STOW writes d while the listing runs (after it started).
          await new Promise((r) => setTimeout(r, 2));
          ticket = (await catalog.beginCrawl("A", "a", "me", 60_000))!;
          const d = files[5];
          await catalog.recordInstance("A", "a", infoOf(d.key, d.bytes), parseBuffer(d.bytes, d.key));
          assert.deepEqual(
            await catalog.applyListing(ticket, [a, { ...b, etag: "e2" }, infoOf("x.txt", new Uint8Array(1))]),
            {
              added: 0,
              changed: 1,
              unchanged: 2,
              ignored: 0,
            },
          );
          assert.equal(await catalog.finishListing(ticket), 1);
          await catalog.endCrawl(ticket, { complete: true });
          const keys = (await catalog.instanceMetadata("A", d.key.split("/")[0])).map((s) => s.key);
          assert.ok(keys.includes(d.key), "the instance stored during the crawl is kept");
          const pending = (await catalog.pendingObjects("A", {}, 10)).map((p) => [p.key, p.etag]);
          assert.deepEqual(pending, [[a.key, "e1"], [b.key, "e2"]]);

          // Out-of-order listings are refused rather than deleting rows.
          ticket = (await catalog.beginCrawl("A", "a", "me", 60_000))!;
          await assert.rejects(catalog.applyListing(ticket, [b, a]), /not in ascending key order/);
        } finally {
          await catalog.close();
        }
      },
    );

    await t.step("leases: one crawler per AET; a new bucket clears the AET", async () => {
      const catalog = await open();
      try {
        await filled(catalog);
        const held = await catalog.beginCrawl("A", "a", "one", 60_000);
        assert.ok(held);
        assert.equal(await catalog.beginCrawl("A", "a", "two", 60_000), undefined);
        assert.equal((await catalog.status("A"))[0].crawlingBy, "one");
        await catalog.endCrawl(held, { complete: true });
        const next = await catalog.beginCrawl("A", "other-bucket", "two", 60_000);
        assert.ok(next);
        const [status] = await catalog.status("A");
        assert.deepEqual([status.bucket, status.objects, status.studies], ["other-bucket", 0, 0]);
      } finally {
        await catalog.close();
      }
    });

    await t.step("stores binary values per the bulk data threshold", async () => {
      const bytes = buildPart10([
        { tag: 0x00080018, vr: "UI", value: "2.25.7.1.1" },
        { tag: 0x0020000d, vr: "UI", value: "2.25.7" },
        { tag: 0x0020000e, vr: "UI", value: "2.25.7.1" },
        { tag: 0x00091010, vr: "LO", value: "CREATOR" },
        { tag: 0x00091011, vr: "OB", value: new Uint8Array(16) },
        { tag: 0x00091012, vr: "OB", value: new Uint8Array(64) },
      ]);
      const catalog = await open({ bulkDataThreshold: 32 });
      try {
        const key = "2.25.7/2.25.7.1/2.25.7.1.1.dcm";
        await catalog.recordInstance(
          "A",
          "a",
          infoOf(key, bytes),
          parseBuffer(bytes, key, { bulkThreshold: 32 }),
        );
        const [stored] = await catalog.instanceMetadata("A", "2.25.7");
        const json = JSON.parse(stored.json);
        assert.equal(typeof json["00091011"].InlineBinary, "string");
        assert.equal(json["00091012"].BulkDataURI, "bulkdata/00091012");
      } finally {
        await catalog.close();
      }
    });

    await t.step("recordInstances() files a batch as one call per instance would", async () => {
      const one = await open();
      const batched = await open();
      try {
        const f = files[0];
        const header = parseBuffer(f.bytes, f.key);
        // every instance, one replaced by a later version, one key outside the layout, one with another's UIDs
        const items = [
          ...files.map((f) => ({ info: infoOf(f.key, f.bytes), header: parseBuffer(f.bytes, f.key) })),
          { info: infoOf(f.key, f.bytes, "e2"), header },
          { info: infoOf("notes/readme.dcm", f.bytes), header },
          { info: infoOf("2.25.9/2.25.9.1/2.25.9.1.1.dcm", f.bytes), header },
        ];
        const outcomes = [];
        for (const { info, header } of items) outcomes.push(await one.recordInstance("A", "a", info, header));
        const results = await batched.recordInstances("A", "a", items);
        assert.deepEqual(results, outcomes.map((value) => ({ status: "fulfilled", value })));
        assert.deepEqual(outcomes.slice(-3), ["indexed", "ignored", "failed"]);
        assert.deepEqual(await everything(batched), await everything(one));
        assert.equal((await batched.status("A"))[0].studies, STUDIES.length);

        // a second batch into the same series: counts follow, the series keep their representative
        const more = buildPart10([
          { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.2" },
          { tag: 0x00080018, vr: "UI", value: `${f.key.split("/")[1]}.99` },
          { tag: 0x0020000d, vr: "UI", value: f.key.split("/")[0] },
          { tag: 0x0020000e, vr: "UI", value: f.key.split("/")[1] },
        ]);
        const key = `${f.key.split("/").slice(0, 2).join("/")}/${f.key.split("/")[1]}.99.dcm`;
        const item = { info: infoOf(key, more), header: parseBuffer(more, key) };
        await one.recordInstance("A", "a", item.info, item.header);
        assert.deepEqual(await batched.recordInstances("A", "a", [item]), [{
          status: "fulfilled",
          value: "indexed",
        }]);
        assert.deepEqual(await everything(batched), await everything(one));
      } finally {
        await one.close();
        await batched.close();
      }
    });

    await t.step("recordInstances(): an instance that cannot be filed fails alone", async () => {
      const catalog = await open();
      try {
        const [a, b] = files;
        const results = await catalog.recordInstances("A", "a", [
          { info: infoOf(a.key, a.bytes), header: parseBuffer(a.bytes, a.key) },
          // not a parsed header: it cannot be turned into DICOM JSON
          { info: infoOf(b.key, b.bytes), header: {} as ReturnType<typeof parseBuffer> },
        ]);
        assert.equal(results[0].status, "fulfilled");
        assert.equal(results[1].status, "rejected");
        assert.deepEqual((await catalog.instanceMetadata("A", a.key.split("/")[0])).map((s) => s.key), [
          a.key,
        ]);
        assert.deepEqual(await catalog.recordInstances("A", "a", []), []);
        // recordInstance rejects with the reason
        await assert.rejects(
          catalog.recordInstance("A", "a", infoOf(b.key, b.bytes), {} as ReturnType<typeof parseBuffer>),
        );

        // the whole batch cannot be written: every item is rejected with the reason, nothing is half-written
        await catalog.close();
        const closed = await catalog.recordInstances("A", "a", [
          { info: infoOf(b.key, b.bytes), header: parseBuffer(b.bytes, b.key) },
        ]);
        assert.equal(closed[0].status, "rejected");
      } finally {
        await catalog.close();
      }
    });

    await t.step(
      "a lease is renewed by its owner and taken over once it expires; completedAt and seriesToRead follow the crawl",
      async () => {
        const catalog = await open();
        try {
          assert.equal(await catalog.completedAt("A"), undefined);
          const first = (await catalog.beginCrawl("A", "a", "one", 40))!;
          assert.ok(await catalog.renewCrawl(first, 40));
          assert.equal(
            await catalog.beginCrawl("A", "a", "two", 60_000),
            undefined,
            "a live lease is not taken",
          );
          await new Promise((resolve) => setTimeout(resolve, 80));
          const second = await catalog.beginCrawl("A", "a", "two", 60_000);
          assert.ok(second, "an expired lease is taken over by another owner");
          assert.equal(await catalog.renewCrawl(first, 40), false, "the first owner has lost its lease");
          const listed = files.slice(0, 4).map((f) => infoOf(f.key, f.bytes));
          await catalog.applyListing(second, listed);
          assert.equal(await catalog.finishListing(second), 0);
          const expected = [...new Set(listed.map((info) => info.key.split("/").slice(0, 2).join("/")))]
            .sort();
          const toRead = await catalog.seriesToRead("A", 100);
          assert.deepEqual(toRead.map((s) => `${s.study}/${s.series}`).sort(), expected);
          for (const s of toRead) assert.ok(s.info.key.startsWith(`${s.study}/${s.series}/`));
          await catalog.endCrawl(second, { complete: true });
          assert.equal(await catalog.completedAt("A"), second.startedAt);
          assert.equal((await catalog.status("A"))[0].crawlingBy, undefined);
        } finally {
          await catalog.close();
        }
      },
    );
  });
}
