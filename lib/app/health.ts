/**
 * Health (not PS3.18): `GET /healthz` (the process answers), `GET /readyz` (every AET's bucket answers; names
 * left out when authentication is on) and `GET /aets` (the AETs the caller may see).
 *
 * `/readyz` also asks a catalog database (PostgreSQL) whether it answers, within 2 s. A catalog that does not
 * answer makes the server `degraded`, still 200: retrieval and STOW need only the store, and failing readiness
 * on every replica at once (they share the database) would take retrieval down with search. The body says
 * what is wrong (`catalog.problem`), and QIDO answers 503 meanwhile. A store that does not answer is 503.
 *
 * @module
 */

import type { Services } from "../dicomweb/services.ts";
import type { Handler } from "../http/router.ts";
import type { RequestGuard } from "../security/request_guard.ts";

/** The health handlers. */
export interface HealthHandlers {
  /** `GET /healthz`: the process answers. */
  healthz: Handler;
  /** `GET /readyz`: every AET's bucket answers. */
  readyz: Handler;
  /** `GET /aets`: the AETs the caller may see. */
  aets: Handler;
}

/** The health handlers of a server; `guard` hides AETs and bucket names from callers who may not see them. */
export function healthHandlers(services: Services, guard: RequestGuard): HealthHandlers {
  return {
    healthz: () => json({ status: "ok" }),
    readyz: () => ready(services, guard.enabled),
    aets: ({ request }) => listAets(services, guard, request),
  };
}

function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value) + "\n", {
    status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

async function listAets(services: Services, guard: RequestGuard, request: Request): Promise<Response> {
  const entries = await services.aets.entries();
  return json(guard.visibleAets(request, entries.map(([aet]) => aet)));
}

async function ready(services: Services, redact: boolean): Promise<Response> {
  const response = await readiness(services);
  if (!redact) return response;
  const { status } = await response.json(); // with authentication on: no AET or bucket names
  return json({ status }, response.status);
}

/** Whether the catalog's database answers: undefined when it does (or is embedded), else why not. */
async function catalogProblem(services: Services): Promise<string | undefined> {
  const check = services.catalog?.check?.bind(services.catalog);
  if (check === undefined) return undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      check(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("The catalog database did not answer within 2 s")), 2_000);
      }),
    ]);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  } finally {
    clearTimeout(timer);
  }
}

async function readiness(services: Services): Promise<Response> {
  const catalogCheck = catalogProblem(services);
  try {
    const entries = await services.aets.entries();
    const problems: string[] = [];
    await Promise.all(entries.map(async ([aet, bucket]) => {
      try {
        await services.store.check(bucket, { signal: AbortSignal.timeout(5_000) });
      } catch (error) {
        problems.push(
          `AET ${aet} (bucket ${bucket}): ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    }));
    const problem = await catalogCheck;
    const catalog = services.catalog && {
      kind: services.catalog.kind,
      status: problem === undefined ? "ready" : "unavailable",
      problem,
    };
    if (problems.length > 0) return json({ status: "unavailable", problems: problems.sort(), catalog }, 503);
    return json({
      status: problem === undefined ? "ready" : "degraded",
      store: services.store.kind,
      aets: entries.length,
      catalog,
    });
  } catch (error) {
    return json(
      { status: "unavailable", problems: [error instanceof Error ? error.message : String(error)] },
      503,
    );
  }
}
