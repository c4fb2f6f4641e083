/**
 * The change feed over HTTP (the Azure DICOM service's v2 shape): fed by STOW-RS, a crawl that finds an object
 * written by another tool, and DELETE; time windows, offset and limit, includemetadata, /latest, bad parameters,
 * and the read grant.
 */

import assert from "node:assert/strict";
import { makeToken } from "../../lib/security/passwords.ts";
import { generatedCorpus, STUDIES } from "../_qido_fixtures.ts";
import { routedServer } from "./_routed.ts";

const AET = "FEED";
const BUCKET = "feed";
const encoder = new TextEncoder();

interface Entry {
  Sequence: number;
  StudyInstanceUid: string;
  SeriesInstanceUid: string;
  SopInstanceUid: string;
  Action: string;
  Timestamp: string;
  State: string;
  Metadata?: Record<string, { vr: string; Value?: unknown[]; BulkDataURI?: string }>;
}

function stowBody(files: { bytes: Uint8Array }[], boundary: string): Uint8Array<ArrayBuffer> {
  const chunks: Uint8Array[] = [];
  for (const f of files) {
    chunks.push(
      encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
      f.bytes,
      encoder.encode("\r\n"),
    );
  }
  chunks.push(encoder.encode(`--${boundary}--\r\n`));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

Deno.test("GET /aets/{aet}/changefeed: STOW, a crawl's discovery and DELETE, in the Azure v2 shape", async (t) => {
  const [first, ...rest] = generatedCorpus([STUDIES[0]]);
  const server = await routedServer({ aet: AET, bucket: BUCKET, crawl: false });
  try {
    const feed = async (query = ""): Promise<Entry[]> => {
      const response = await server.fetch(`/aets/${AET}/changefeed${query}`);
      assert.equal(response.status, 200, await response.clone().text());
      assert.match(response.headers.get("content-type") ?? "", /^application\/json/);
      return await response.json();
    };

    await t.step("empty: [] and /latest 204", async () => {
      assert.deepEqual(await feed(), []);
      assert.equal((await server.fetch(`/aets/${AET}/changefeed/latest`)).status, 204);
    });

    const before = new Date();
    await t.step("STOW-RS: one create per stored instance, with its metadata", async () => {
      const response = await server.fetch(`/aets/${AET}/studies`, {
        method: "POST",
        headers: { "content-type": 'multipart/related; type="application/dicom"; boundary=b0' },
        body: stowBody(rest, "b0"),
      });
      assert.equal(response.status, 200, await response.text());
      const entries = await feed();
      assert.equal(entries.length, rest.length);
      const keys = entries.map((e) => `${e.StudyInstanceUid}/${e.SeriesInstanceUid}/${e.SopInstanceUid}.dcm`);
      assert.deepEqual(keys.sort(), rest.map((f) => f.key).sort());
      for (const e of entries) {
        assert.deepEqual(Object.keys(e), [
          "Sequence",
          "StudyInstanceUid",
          "SeriesInstanceUid",
          "SopInstanceUid",
          "Action",
          "Timestamp",
          "State",
          "Metadata",
        ]);
        assert.equal(e.Action, "create");
        assert.equal(e.State, "current");
        assert.match(e.Timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
        assert.ok(Date.parse(e.Timestamp) >= before.getTime() - 5000);
        assert.equal(e.Metadata!["00080018"].Value![0], e.SopInstanceUid);
      }
      const bulk = entries.flatMap((e) => Object.values(e.Metadata!)).find((v) => v.BulkDataURI);
      if (bulk) assert.match(bulk.BulkDataURI!, /^http:\/\/localhost\/aets\/FEED\/studies\/.*\/bulkdata\//);
      for (let i = 1; i < entries.length; i++) assert.ok(entries[i].Sequence > entries[i - 1].Sequence);
    });

    await t.step("a crawl that finds an object written by another tool records a create", async () => {
      await server.store.put(BUCKET, first.key, first.bytes);
      await server.crawler.crawl(AET);
      await server.crawler.ensureIndexed(AET, {});
      const latest = await (await server.fetch(`/aets/${AET}/changefeed/latest?includemetadata=false`))
        .json() as Entry;
      assert.equal(latest.Action, "create");
      assert.equal(
        `${latest.StudyInstanceUid}/${latest.SeriesInstanceUid}/${latest.SopInstanceUid}.dcm`,
        first.key,
      );
      assert.equal(latest.Metadata, undefined);
    });

    await t.step("DELETE: a delete entry; every entry of the instance says deleted", async () => {
      const [study, series, file] = first.key.split("/");
      const sop = file.slice(0, -4);
      const response = await server.fetch(`/aets/${AET}/studies/${study}/series/${series}/instances/${sop}`, {
        method: "DELETE",
      });
      assert.equal(response.status, 204);
      const entries = (await feed()).filter((e) => e.SopInstanceUid === sop);
      assert.deepEqual(entries.map((e) => [e.Action, e.State]), [["create", "deleted"], [
        "delete",
        "deleted",
      ]]);
      assert.equal(entries[1].Metadata, undefined);
      const latest = await (await server.fetch(`/aets/${AET}/changefeed/latest`)).json() as Entry;
      assert.equal(latest.Sequence, entries[1].Sequence);
    });

    await t.step("offset, limit and time windows", async () => {
      const all = await feed("?includemetadata=false");
      assert.equal(all.length, rest.length + 2);
      assert.deepEqual(await feed("?offset=1&limit=2&includemetadata=false"), all.slice(1, 3));
      assert.deepEqual(await feed(`?offset=${all.length}`), []);
      const cut = all[all.length - 1].Timestamp;
      const after = await feed(`?startTime=${encodeURIComponent(cut)}&includemetadata=false`);
      assert.ok(after.length >= 1 && after.every((e) => e.Timestamp >= cut));
      assert.deepEqual(await feed(`?endTime=${encodeURIComponent(before.toISOString().slice(0, 10))}`), []);
      assert.deepEqual(await feed("?startTime=2999-01-01"), []);
    });

    await t.step("bad parameters: 400 saying what to send", async () => {
      for (
        const query of [
          "?startTime=yesterday",
          "?endTime=2026-13-45T00:00:00Z",
          "?limit=0",
          "?limit=201",
          "?offset=-1",
          "?includemetadata=maybe",
          "?startTime=2026-02-01&endTime=2026-01-01",
        ]
      ) {
        const response = await server.fetch(`/aets/${AET}/changefeed${query}`);
        assert.equal(response.status, 400, query);
        assert.match((await response.json()).error, /use|after/, query);
      }
      assert.equal((await server.fetch(`/aets/NOPE/changefeed`)).status, 404);
    });
  } finally {
    await server.close();
  }
});

Deno.test("the change feed needs the read grant", async () => {
  const reader = await makeToken();
  const deleter = await makeToken();
  const server = await routedServer({
    aet: AET,
    bucket: BUCKET,
    files: generatedCorpus([STUDIES[1]]),
    env: {
      AUTH: "token",
      AUTH_TOKENS: `reader:${reader.sha256},deleter:${deleter.sha256}`,
      AUTH_GRANTS: `reader:read:${AET} deleter:delete:${AET}`,
    },
  });
  try {
    const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
    assert.equal((await server.fetch(`/aets/${AET}/changefeed`, as(deleter.token))).status, 403);
    assert.equal((await server.fetch(`/aets/${AET}/changefeed`)).status, 401);
    const response = await server.fetch(`/aets/${AET}/changefeed`, as(reader.token));
    assert.equal(response.status, 200);
    assert.equal((await response.json()).length, STUDIES[1].series.reduce((n, s) => n + s.instances, 0));
  } finally {
    await server.close();
  }
});
