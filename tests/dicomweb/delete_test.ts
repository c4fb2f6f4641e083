/**
 * DELETE at study, series and instance level over a memory store and the catalog (SQLite, or PostgreSQL with
 * TEST_POSTGRES_URL): 204/404, the bucket as the truth (objects not indexed yet go too), prefix safety,
 * QIDO/retrieve/metadata agreeing at once, the `delete` grant, a failure half-way and its repetition, and one
 * audit line per deleted instance.
 */

import assert from "node:assert/strict";
import { makeToken } from "../../lib/security/passwords.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { type ObjectStore, StoreError } from "../../lib/store/store.ts";
import { generatedCorpus, type GenStudy, STUDIES } from "../_qido_fixtures.ts";
import { routedServer } from "./_routed.ts";
import { delegating } from "../_stores.ts";

const AET = "DEL";
const BUCKET = "del";

/** Two studies whose UIDs are prefixes of each other's: 2.25.1001 must never touch 2.25.10011. */
const TWIN: GenStudy = {
  ...STUDIES[0],
  uid: `${STUDIES[0].uid}1`,
  series: STUDIES[0].series.map((s) => ({
    ...s,
    uid: `${s.uid.replace(STUDIES[0].uid, `${STUDIES[0].uid}1`)}`,
  })),
};

/** The corpus with its twin, over a memory store (or `store`), crawled unless `crawl` is false. */
function fixture(options: { env?: Record<string, string>; store?: ObjectStore; crawl?: boolean } = {}) {
  return routedServer({
    aet: AET,
    bucket: BUCKET,
    files: generatedCorpus([STUDIES[0], TWIN, STUDIES[1]]),
    ...options,
  });
}

async function keys(store: ObjectStore): Promise<string[]> {
  const out: string[] = [];
  for await (const info of store.list(BUCKET, "")) out.push(info.key);
  return out;
}

async function json(response: Response): Promise<unknown> {
  const text = await response.text();
  return text === "" ? undefined : JSON.parse(text);
}

const STUDY = STUDIES[0].uid;
const SERIES = STUDIES[0].series[0].uid;

Deno.test("DELETE removes studies, series and instances from the bucket and the catalog", async (t) => {
  const f = await fixture();
  try {
    const before = await keys(f.store);

    await t.step("an instance: 204, the object and its row gone, its siblings kept", async () => {
      const sop = `${SERIES}.1`;
      const path = `/aets/${AET}/studies/${STUDY}/series/${SERIES}/instances/${sop}`;
      const response = await f.fetch(path, { method: "DELETE" });
      assert.equal(response.status, 204, await response.text());
      assert.ok(!(await keys(f.store)).includes(`${STUDY}/${SERIES}/${sop}.dcm`));
      assert.equal((await f.fetch(path)).status, 404);
      assert.equal((await f.fetch(`${path}/metadata`)).status, 404);
      const found = await json(await f.fetch(`/aets/${AET}/instances?SOPInstanceUID=${sop}`)) as unknown[];
      assert.equal(found?.length ?? 0, 0);
      const rest = await json(await f.fetch(`/aets/${AET}/studies/${STUDY}/series/${SERIES}/instances`));
      assert.equal((rest as unknown[]).length, STUDIES[0].series[0].instances - 1);
      assert.equal((await f.fetch(path, { method: "DELETE" })).status, 404, "twice: nothing left");
    });

    await t.step("one audit line per deleted instance, besides none for the request here", () => {
      const lines = f.audit.filter((r) => r.action === "delete");
      assert.equal(lines.length, 1);
      assert.equal(lines[0].instance, `${SERIES}.1`);
      assert.equal(lines[0].series, SERIES);
      assert.equal(lines[0].study, STUDY);
      assert.equal(lines[0].who, "anonymous");
    });

    await t.step("a study: every series goes, the study whose UID extends it stays", async () => {
      const response = await f.fetch(`/aets/${AET}/studies/${STUDY}`, { method: "DELETE" });
      assert.equal(response.status, 204);
      const left = await keys(f.store);
      assert.ok(left.every((key) => !key.startsWith(`${STUDY}/`)));
      assert.deepEqual(
        left.filter((key) => key.startsWith(`${TWIN.uid}/`)),
        before.filter((key) => key.startsWith(`${TWIN.uid}/`)),
      );
      assert.ok(left.some((key) => key.startsWith(`${TWIN.uid}/`)));
      const studies = await json(await f.fetch(`/aets/${AET}/studies`)) as Record<string, unknown>[];
      const uids = studies.map((s) => (s["0020000D"] as { Value: string[] }).Value[0]);
      assert.ok(!uids.includes(STUDY));
      assert.ok(uids.includes(TWIN.uid));
      assert.equal((await f.fetch(`/aets/${AET}/studies/${STUDY}/metadata`)).status, 404);
      const expected = STUDIES[0].series.reduce((n, s) => n + s.instances, 0) - 1;
      assert.equal(f.audit.filter((r) => r.action === "delete").length, 1 + expected);
    });

    await t.step("a series of another study", async () => {
      const other = STUDIES[1];
      const series = other.series[0].uid;
      const response = await f.fetch(`/aets/${AET}/studies/${other.uid}/series/${series}`, {
        method: "DELETE",
      });
      assert.equal(response.status, 204);
      assert.ok((await keys(f.store)).every((key) => !key.startsWith(`${other.uid}/${series}/`)));
      const left = await json(await f.fetch(`/aets/${AET}/studies/${other.uid}/series`)) as unknown[];
      assert.equal(left?.length ?? 0, other.series.length - 1);
    });

    await t.step("nothing there: 404; bad UIDs: 400", async () => {
      assert.equal((await f.fetch(`/aets/${AET}/studies/9.9.9`, { method: "DELETE" })).status, 404);
      assert.equal((await f.fetch(`/aets/${AET}/studies/1.02`, { method: "DELETE" })).status, 400);
      assert.equal((await f.fetch(`/aets/NOPE/studies/9.9.9`, { method: "DELETE" })).status, 404);
    });
  } finally {
    await f.close();
  }
});

Deno.test("DELETE: the bucket is the truth: objects not indexed yet are deleted too", async () => {
  const f = await fixture({ crawl: false });
  try {
    const response = await f.fetch(`/aets/${AET}/studies/${STUDY}`, { method: "DELETE" });
    assert.equal(response.status, 204);
    assert.ok((await keys(f.store)).every((key) => !key.startsWith(`${STUDY}/`)));
    assert.ok((await keys(f.store)).some((key) => key.startsWith(`${TWIN.uid}/`)));
  } finally {
    await f.close();
  }
});

Deno.test("DELETE needs the delete grant: write does not imply it", async () => {
  const writer = await makeToken();
  const deleter = await makeToken();
  const f = await fixture({
    env: {
      AUTH: "token",
      AUTH_TOKENS: `writer:${writer.sha256},deleter:${deleter.sha256}`,
      AUTH_GRANTS: `writer:write:${AET} writer:read:${AET} deleter:delete:${AET}`,
    },
  });
  try {
    const path = `/aets/${AET}/studies/${STUDY}/series/${SERIES}/instances/${SERIES}.1`;
    const as = (token: string) => ({ method: "DELETE", headers: { authorization: `Bearer ${token}` } });
    const refused = await f.fetch(path, as(writer.token));
    assert.equal(refused.status, 403);
    assert.match(await refused.text(), /may not delete/);
    assert.ok((await keys(f.store)).includes(`${STUDY}/${SERIES}/${SERIES}.1.dcm`));
    assert.equal((await f.fetch(path, { method: "DELETE" })).status, 401);
    assert.equal((await f.fetch(path, as(deleter.token))).status, 204);
    assert.ok(!(await keys(f.store)).includes(`${STUDY}/${SERIES}/${SERIES}.1.dcm`));
    // delete alone does not read
    assert.equal(
      (await f.fetch(`/aets/${AET}/studies`, { headers: { authorization: `Bearer ${deleter.token}` } }))
        .status,
      403,
    );
    assert.equal(f.audit.find((r) => r.action === "delete")?.who, "deleter");
  } finally {
    await f.close();
  }
});

Deno.test("DELETE: an S3 failure half-way answers 5xx naming what remains; repeating completes it", async () => {
  const inner = new MemoryStore([BUCKET]);
  let failing = true;
  let deletes = 0;
  const store = delegating(inner, {
    delete: (b, k, o) => {
      if (failing && ++deletes > 2) {
        return Promise.reject(new StoreError("unavailable", `S3 ${b} is not reachable (injected)`));
      }
      return inner.delete(b, k, o);
    },
  });
  const f = await fixture({ store });
  try {
    const path = `/aets/${AET}/studies/${STUDY}`;
    const total = STUDIES[0].series.reduce((n, s) => n + s.instances, 0);
    const first = await f.fetch(path, { method: "DELETE" });
    assert.equal(first.status, 503);
    const body = await json(first) as { error: string };
    assert.match(body.error, new RegExp(`2 of ${total} instances deleted, ${total - 2} remain`));
    assert.match(body.error, /Repeat the DELETE/);
    assert.equal((await keys(f.store)).filter((key) => key.startsWith(`${STUDY}/`)).length, total - 2);
    // what was deleted is gone from search already; what remains is still found
    const found = await json(await f.fetch(`/aets/${AET}/studies/${STUDY}/instances`)) as unknown[];
    assert.equal(found.length, total - 2);
    failing = false;
    assert.equal((await f.fetch(path, { method: "DELETE" })).status, 204);
    assert.equal((await keys(f.store)).filter((key) => key.startsWith(`${STUDY}/`)).length, 0);
    assert.equal((await f.fetch(`/aets/${AET}/studies?StudyInstanceUID=${STUDY}`)).status, 200);
    assert.deepEqual(await json(await f.fetch(`/aets/${AET}/studies?StudyInstanceUID=${STUDY}`)) ?? [], []);
  } finally {
    await f.close();
  }
});
