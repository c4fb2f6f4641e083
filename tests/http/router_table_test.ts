/**
 * The router's index (segments compared instead of URLPattern where a pattern is plain segments and
 * parameters, literal segments checked before URLPattern elsewhere) changes nothing that matches: every route of the real table (lib/app/routes.ts, with the viewer, at the root and under a
 * BASE_PATH) against sample paths and near misses, each method, compared with trying every URLPattern in
 * order as the router did before the index.
 */

import assert from "node:assert/strict";
import { type Handler, type Match, Router } from "../../lib/http/router.ts";
import { addRoutes } from "../../lib/app/routes.ts";
import { RequestGuard } from "../../lib/security/request_guard.ts";
import { routedServer } from "../dicomweb/_routed.ts";

type Methods = Partial<Record<"GET" | "POST" | "PUT" | "DELETE", Handler>>;

/** The route table as `addRoutes` adds it. */
async function realTable(): Promise<[string, Methods][]> {
  const viewer = await Deno.makeTempDir({ prefix: "router-viewer-" });
  const routed = await routedServer({ aet: "PACS", bucket: "pacs", crawl: false, env: { VIEWER: viewer } });
  try {
    const table: [string, Methods][] = [];
    const recorder = {
      add(path: string, methods: Methods) {
        table.push([path, methods]);
        return recorder;
      },
    };
    addRoutes(recorder as unknown as Router, routed.services, { guard: new RequestGuard(routed.config) });
    return table;
  } finally {
    await routed.close();
    await Deno.remove(viewer, { recursive: true });
  }
}

/** The router before the index: every pattern tried in order. */
function reference(base: string, table: [string, Methods][]): (method: string, url: URL) => Match {
  const routes = table.map(([path, methods]) => ({
    pattern: new URLPattern({ pathname: base + path }),
    methods: new Map(Object.entries(methods).filter(([, h]) => h !== undefined)) as Map<string, Handler>,
  }));
  return (method, url) => {
    const all = new Map<string, Handler>();
    let matched = false;
    for (const { pattern, methods } of routes) {
      const result = pattern.exec({ pathname: url.pathname });
      if (!result) continue;
      matched = true;
      const handler = methods.get(method) ?? (method === "HEAD" ? methods.get("GET") : undefined);
      if (handler) {
        const params: Record<string, string> = {};
        for (const [name, value] of Object.entries(result.pathname.groups)) {
          if (value !== undefined) params[name] = value;
        }
        return { kind: "found", handler, params };
      }
      for (const [m, h] of methods) if (!all.has(m)) all.set(m, h);
    }
    if (!matched) return { kind: "none" };
    const allow = [...all.keys()];
    if (all.has("GET")) allow.push("HEAD");
    allow.push("OPTIONS");
    return { kind: "method", allow };
  };
}

/** A path for `pattern` with sample values, and near misses of it. */
function samples(pattern: string): string[] {
  const values = [
    "1.2.840.10008.1",
    "A%20B",
    "x",
    "PACS",
    "%",
    "%zz",
    "é",
    "a|b",
    "[x]",
    "a:b",
    "*",
    "(",
    "~.-_",
  ];
  const out: string[] = [];
  for (const value of values) {
    const path = pattern
      .replace(/:(\w+)\((\.[+*])\)/g, (_, _name, regex) => regex === ".*" ? "" : `a/b/${value}`)
      .replace(/:(\w+)/g, value);
    out.push(path, `${path}/`, `${path}/extra`, path.slice(0, path.lastIndexOf("/")), `${path}x`);
    out.push(path.toUpperCase(), path.replace(/\/[^/]*$/, "//"), path.replace(/^\/[^/]+/, "/nope"));
    out.push(path.replace(/\/aets\/[^/]+/, "/aets/"), path.replace(/\/aets\/[^/]+/, "/aets/P%2FQ"));
  }
  return out;
}

Deno.test("Router: the indexed router matches and misses exactly as every URLPattern tried in order", async (t) => {
  const table = await realTable();
  assert.ok(table.length > 30, `${table.length} routes`);
  assert.ok(table.some(([path]) => path.includes("(")), "the table has a pattern with a regex group");
  const methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];
  for (const base of ["", "/dicomweb", "/a/b-c"]) {
    await t.step(`base path "${base}"`, () => {
      const router = new Router(base);
      for (const [path, handlers] of table) router.add(path, handlers);
      const before = reference(base, table);
      const paths = new Set<string>(["/", "", "/viewer", "/viewer/", "/viewer/a/b.js", "/healthz/", "/aets"]);
      for (const [path] of table) for (const sample of samples(path)) paths.add(sample);
      const counts = { found: 0, method: 0, none: 0 };
      for (const path of paths) {
        for (const prefix of base === "" ? [""] : [base, "", `${base}x`]) {
          const url = new URL(`http://localhost${prefix}${path}`);
          for (const method of methods) {
            const want = before(method, url);
            const got = router.match(method, url);
            assert.deepEqual(got, want, `${method} ${url.pathname}`);
            counts[want.kind]++;
          }
        }
      }
      // every kind of answer was compared, many times
      assert.ok(counts.found > 200 && counts.method > 200 && counts.none > 1000, JSON.stringify(counts));
    });
  }

  await t.step("patterns the index cannot read are still matched by URLPattern", () => {
    const h: Handler = () => new Response();
    const router = new Router()
      .add("/files/:path(.*)", { GET: h })
      .add("/opt/:id?", { GET: h })
      .add("/img/:name.png", { GET: h })
      .add("/any/*", { GET: h })
      .add("/x{/y}?/z", { GET: h });
    const found = (path: string) => router.match("GET", new URL(`http://localhost${path}`)).kind;
    for (
      const path of ["/files/", "/files/a/b/c", "/opt", "/opt/7", "/img/a.png", "/any/1/2", "/x/z", "/x/y/z"]
    ) {
      assert.equal(found(path), "found", path);
    }
    for (const path of ["/opt/7/8", "/img/a.jpg", "/x/q/z", "/files"]) {
      assert.equal(found(path), "none", path);
    }
  });
});
