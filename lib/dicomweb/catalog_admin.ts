/**
 * Catalog administration (not PS3.18): `GET /admin/index` shows each AET's catalog state, crawl progress and
 * the objects that could not be indexed; `POST /admin/index[?aet=AET]` starts a crawl (202).
 *
 * With a shared catalog (PostgreSQL, several replicas) everything but `crawl` comes from the database and is
 * the same on every replica: the counts, `completeAt`, `lastError`, `crawlingBy` (the replica holding the
 * crawl lease, as its `replica` name) and the failures. `crawl` is what this replica's own crawler has done
 * (its last crawl may be `skipped`: another replica held the lease). `POST` on any replica starts a crawl
 * there, or leaves it to the replica already crawling.
 *
 * @module
 */

import type { Handler, RouteContext } from "../http/router.ts";
import { bucketOf, catalogOf, crawlerOf, type Services } from "./services.ts";

/** The handlers of `/admin/index`. */
export interface CatalogAdminHandlers {
  /** `GET /admin/index[?aet=AET]` */
  status: Handler;
  /** `POST /admin/index[?aet=AET]` */
  start: Handler;
}

/** The catalog administration handlers over `services.catalog` (503 without one). */
export function catalogAdminHandlers(services: Services): CatalogAdminHandlers {
  return { status: (ctx) => indexStatus(services, ctx), start: (ctx) => startIndex(services, ctx) };
}

async function startIndex(services: Services, ctx: RouteContext): Promise<Response> {
  catalogOf(services); // 503 without a catalog
  const aet = ctx.url.searchParams.get("aet");
  const indexer = crawlerOf(services);
  let aets: string[];
  if (aet !== null) {
    await bucketOf(services, aet);
    aets = [aet];
  } else {
    aets = (await services.aets.entries()).map(([name]) => name);
  }
  for (const name of aets) {
    indexer.crawl(name).catch((error) =>
      services.log?.(`catalog ${name}: crawl failed: ${(error as Error).message}`)
    );
  }
  return json({ status: "started", aets }, 202);
}

async function indexStatus(services: Services, ctx: RouteContext): Promise<Response> {
  const catalog = catalogOf(services);
  const aet = ctx.url.searchParams.get("aet") ?? undefined;
  const indexer = crawlerOf(services);
  const progress = new Map(indexer.progress().map((p) => [p.aet, p]));
  const stored = await catalog.status(aet);
  const names = new Set(
    [...stored.map((s) => s.aet), ...progress.keys()].filter((a) => aet === undefined || a === aet),
  );
  const aets = [...names].sort().map((name) => {
    const status = stored.find((s) => s.aet === name);
    const live = progress.get(name);
    return {
      aet: name,
      ...status,
      completeAt: status?.completeAt === undefined ? undefined : new Date(status.completeAt).toISOString(),
      crawl: live && {
        phase: live.phase,
        listed: live.listed,
        headersRead: live.headersRead,
        headerBytes: live.headerBytes,
        failed: live.failed,
        instancesPending: live.instancesPending,
        last: live.last && {
          ...live.last,
          startedAt: new Date(live.last.startedAt).toISOString(),
          finishedAt: live.last.finishedAt === undefined
            ? undefined
            : new Date(live.last.finishedAt).toISOString(),
        },
      },
    };
  });
  const failures = await catalog.failures(aet, 1000);
  return json({
    catalog: { kind: catalog.kind, location: catalog.location },
    replica: indexer.owner,
    aets,
    failures,
  });
}

function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}
