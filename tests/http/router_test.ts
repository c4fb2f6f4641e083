import assert from "node:assert/strict";
import { type Handler, Router } from "../../lib/http/router.ts";

const ok: Handler = () => new Response("get");
const post: Handler = () => new Response("post");

function url(path: string): URL {
  return new URL(path, "http://localhost");
}

Deno.test("Router", async (t) => {
  await t.step("match() finds the handler and its path parameters", () => {
    const router = new Router().add("/aets/:aet/studies/:study", { GET: ok });
    const match = router.match("GET", url("/aets/PACS/studies/1.2.3"));
    assert.equal(match.kind, "found");
    if (match.kind !== "found") return;
    assert.equal(match.handler, ok);
    assert.deepEqual(match.params, { aet: "PACS", study: "1.2.3" });
  });

  await t.step("match() leaves percent-encoding in parameters for the handler to validate", () => {
    const router = new Router().add("/aets/:aet/studies/:study", { GET: ok });
    const match = router.match("GET", url("/aets/A%20B/studies/1.2%2F3"));
    assert.equal(match.kind, "found");
    if (match.kind === "found") assert.deepEqual(match.params, { aet: "A%20B", study: "1.2%2F3" });
  });

  await t.step("match() matches whole paths only", () => {
    const router = new Router().add("/aets/:aet/studies/:study", { GET: ok });
    assert.equal(router.match("GET", url("/aets/PACS/studies")).kind, "none");
    assert.equal(router.match("GET", url("/aets/PACS/studies/1.2.3/series")).kind, "none");
    assert.equal(router.match("GET", url("/aets/PACS/studies/1.2.3/extra/x")).kind, "none");
    assert.equal(router.match("GET", url("/xaets/PACS/studies/1.2.3")).kind, "none");
  });

  await t.step("match() picks the route whose pattern fits, in the order added", () => {
    const study: Handler = () => new Response("study");
    const series: Handler = () => new Response("series");
    const router = new Router()
      .add("/aets/:aet/studies/:study", { GET: study })
      .add("/aets/:aet/studies/:study/series/:series", { GET: series });
    const m1 = router.match("GET", url("/aets/A/studies/1"));
    const m2 = router.match("GET", url("/aets/A/studies/1/series/2"));
    assert.ok(m1.kind === "found" && m1.handler === study);
    assert.ok(m2.kind === "found" && m2.handler === series);
    if (m2.kind === "found") assert.deepEqual(m2.params, { aet: "A", study: "1", series: "2" });
  });

  await t.step("match() serves HEAD with the GET handler", () => {
    const router = new Router().add("/healthz", { GET: ok });
    const match = router.match("HEAD", url("/healthz"));
    assert.ok(match.kind === "found" && match.handler === ok);
  });

  await t.step("match() does not serve HEAD when there is no GET", () => {
    const router = new Router().add("/studies", { POST: post });
    const match = router.match("HEAD", url("/studies"));
    assert.equal(match.kind, "method");
  });

  await t.step("match() answers a known path with an unknown method with the allowed methods", () => {
    const router = new Router().add("/studies", { GET: ok, POST: post });
    const match = router.match("DELETE", url("/studies"));
    assert.equal(match.kind, "method");
    if (match.kind === "method") {
      assert.deepEqual([...match.allow].sort(), ["GET", "HEAD", "OPTIONS", "POST"]);
    }

    const getOnly = new Router().add("/healthz", { GET: ok }).match("POST", url("/healthz"));
    assert.ok(getOnly.kind === "method");
    if (getOnly.kind === "method") assert.deepEqual([...getOnly.allow].sort(), ["GET", "HEAD", "OPTIONS"]);

    const postOnly = new Router().add("/studies", { POST: post }).match("GET", url("/studies"));
    assert.ok(postOnly.kind === "method");
    if (postOnly.kind === "method") assert.deepEqual([...postOnly.allow].sort(), ["OPTIONS", "POST"]);
  });

  await t.step("match() returns none for unknown paths", () => {
    const router = new Router().add("/healthz", { GET: ok });
    assert.deepEqual(router.match("GET", url("/nope")), { kind: "none" });
    assert.deepEqual(router.match("GET", url("/")), { kind: "none" });
  });

  await t.step("a basePath prefixes every route", () => {
    const router = new Router("/dicomweb").add("/aets/:aet/studies/:study", { GET: ok });
    assert.equal(router.match("GET", url("/aets/A/studies/1")).kind, "none");
    const match = router.match("GET", url("/dicomweb/aets/A/studies/1"));
    assert.equal(match.kind, "found");
    if (match.kind === "found") assert.deepEqual(match.params, { aet: "A", study: "1" });
    assert.equal(router.match("GET", url("/dicomwebx/aets/A/studies/1")).kind, "none");
    assert.equal(router.match("POST", url("/dicomweb/aets/A/studies/1")).kind, "method");
  });

  await t.step("match() ignores the query string", () => {
    const router = new Router().add("/aets", { GET: ok });
    assert.equal(router.match("GET", url("/aets?x=1")).kind, "found");
  });
});
