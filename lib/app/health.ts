/**
 * Health (not PS3.18): `GET /healthz` (the process answers), `GET /readyz` (every AET's bucket answers; names
 * left out when authentication is on) and `GET /aets` (the AETs the caller may see).
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

async function readiness(services: Services): Promise<Response> {
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
    if (problems.length > 0) return json({ status: "unavailable", problems: problems.sort() }, 503);
    return json({ status: "ready", store: services.store.kind, aets: entries.length });
  } catch (error) {
    return json(
      { status: "unavailable", problems: [error instanceof Error ? error.message : String(error)] },
      503,
    );
  }
}
