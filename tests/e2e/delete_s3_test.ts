/**
 * DELETE over HTTP against a real S3 server (s3rver; Ceph RGW in CI via TEST_S3_ENDPOINT): an instance, a
 * series and a study leave the bucket (listed with the trailing `/`: the study whose UID extends the deleted
 * one stays), QIDO-RS, retrieve and metadata agree as soon as the 204 is sent, and objects the catalog has not
 * indexed yet go too.
 */

import assert from "node:assert/strict";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import { generatedCorpus, type GenStudy, putAll, STUDIES } from "../_qido_fixtures.ts";
import { startS3 } from "../_s3server.ts";
import { memoryCatalog, testServer } from "../_server.ts";

const AET = "DELS3";

Deno.test({
  name: "DELETE at each level on S3",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const s3 = await startS3();
    const bucket = s3.uniqueBucket("delete");
    await s3.createBucket(bucket);
    const store = new S3Store({
      endpoint: s3.endpoint,
      region: s3.region,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    const base = STUDIES[1];
    const twin: GenStudy = {
      ...base,
      uid: `${base.uid}1`,
      series: base.series.map((s) => ({ ...s, uid: s.uid.replace(base.uid, `${base.uid}1`) })),
    };
    const files = generatedCorpus([base, twin]);
    await putAll(store, bucket, files);
    const catalog = await memoryCatalog();
    const server = testServer({ store, config: { AETS: `${AET}=${bucket}`, CRAWL_INTERVAL: "0" }, catalog });
    const keys = async () => {
      const out: string[] = [];
      for await (const info of store.list(bucket, "")) out.push(info.key);
      return out;
    };
    const call = async (path: string, method = "GET") => {
      const response = await fetch(`${server.url}${path}`, { method });
      const text = await response.text();
      return {
        status: response.status,
        body: text.startsWith("[") || text.startsWith("{") ? JSON.parse(text) : text,
      };
    };
    try {
      await server.services.crawler!.crawl(AET);
      await server.services.crawler!.ensureIndexed(AET, {});
      const [series1, series2] = base.series.map((s) => s.uid);
      const sop = `${series1}.1`;

      await t.step("an instance", async () => {
        const path = `/aets/${AET}/studies/${base.uid}/series/${series1}/instances/${sop}`;
        assert.equal((await call(path)).status, 200);
        assert.equal((await call(path, "DELETE")).status, 204);
        assert.ok(!(await keys()).includes(`${base.uid}/${series1}/${sop}.dcm`));
        assert.equal((await call(path)).status, 404);
        assert.equal((await call(`${path}/metadata`)).status, 404);
        assert.deepEqual((await call(`/aets/${AET}/instances?SOPInstanceUID=${sop}`)).body, []);
        assert.equal((await call(path, "DELETE")).status, 404);
      });

      await t.step("a series, with an object put after the crawl (not indexed) among it", async () => {
        const extra = generatedCorpus([{
          ...base,
          series: [{ ...base.series[1], instances: base.series[1].instances + 1 }],
        }])
          .at(-1)!;
        await store.put(bucket, extra.key, extra.bytes);
        assert.equal(
          (await call(`/aets/${AET}/studies/${base.uid}/series/${series2}`, "DELETE")).status,
          204,
        );
        assert.ok((await keys()).every((key) => !key.startsWith(`${base.uid}/${series2}/`)));
        assert.equal((await call(`/aets/${AET}/studies/${base.uid}/series/${series2}/metadata`)).status, 404);
      });

      await t.step("a study: its UID's extension stays", async () => {
        assert.equal((await call(`/aets/${AET}/studies/${base.uid}`, "DELETE")).status, 204);
        const left = await keys();
        assert.ok(left.every((key) => !key.startsWith(`${base.uid}/`)));
        assert.deepEqual(
          left,
          files.filter((f) => f.key.startsWith(`${twin.uid}/`)).map((f) => f.key).sort(),
        );
        assert.equal((await call(`/aets/${AET}/studies/${base.uid}`)).status, 404);
        const studies = (await call(`/aets/${AET}/studies`)).body as Record<string, { Value: string[] }>[];
        assert.deepEqual(studies.map((s) => s["0020000D"].Value[0]), [twin.uid]);
        const feed = (await call(`/aets/${AET}/changefeed?includemetadata=false&limit=200`)).body as {
          Action: string;
        }[];
        const filesOfBase = files.filter((f) => f.key.startsWith(`${base.uid}/`)).length;
        assert.equal(feed.filter((e) => e.Action === "delete").length, filesOfBase);
      });
    } finally {
      await server.close();
      await catalog.close();
      await store.close?.();
      await s3.stop();
    }
  },
});
