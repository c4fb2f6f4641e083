/**
 * Who may do what, in the order a request meets it. Authentication (authenticator.ts) by OIDC/OAuth2 bearer
 * JWTs, static API tokens or HTTP Basic, or none on loopback; authorization (grants.ts) per AET and action
 * (`read` = search, retrieve and the change feed, `write` = store, `delete` = DELETE; write does not imply
 * delete) from token scopes (`dicomweb:read:PACS`) and a static table (`AUTH_GRANTS`); limits (limits.ts).
 * `POST /admin/events` also takes `EVENTS_TOKEN` (a bearer token or `?token=`), which opens nothing else.
 *
 * Every decision is made from the URL, the method and the credentials alone, before the store is touched:
 * a caller who may not see an AET gets the same 403 whether or not it exists.
 *
 * {@linkcode RequestGuard} puts the pieces in the order a request meets them: header size (431),
 * authentication (401), authorization (403), per-client concurrency (429), body limits (413, 408) and the
 * response deadline (504).
 *
 * The secrets these settings take are made by `deno task auth` (lib/cli/auth.ts).
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";
import { HttpError } from "../http/errors.ts";
import {
  checkHeaderSize,
  ClientLimiter,
  limitRequestBody,
  type LimitsConfig,
  releaseWhenDone,
  withDeadline,
} from "./limits.ts";
import type { ObjectStore } from "../store/store.ts";
import { clientAddress, honoursForwarded, type Peer, type TrustedProxies } from "./proxies.ts";
import { ReadBudget } from "../store/read_budget.ts";
import { type Access, accessOf, allows, type Principal, visibleAets } from "./grants.ts";
import type { AuthConfig } from "./auth_config.ts";
import { Authenticator, type AuthenticatorOptions } from "./authenticator.ts";

// ---------------------------------------------------------------------------------------------------
// Types and settings

/** What the guard learned about a request, for the audit log and `GET /aets`. */
export interface RequestContext {
  /** What the request needs: an AET and an action, or nothing. */
  access: Access;
  /** The client address (the peer, or the forwarded address from a trusted proxy). */
  client: string;
  /** Set once authentication succeeded. */
  principal?: Principal;
  /** Whether `Forwarded` / `X-Forwarded-*` may be believed for this request (see `TRUSTED_PROXIES`). */
  trustForwarded: boolean;
}

/** What {@linkcode RequestGuard} needs from the configuration. */
export interface GuardConfig {
  /** Route prefix. */
  basePath: string;
  /** Authentication settings. */
  auth: AuthConfig;
  /** Request limits. */
  limits: LimitsConfig;
  /** Proxies whose forwarded headers count. */
  trustedProxies: TrustedProxies;
  /** Largest request body (`STOW_MAX_BYTES`). */
  stowMaxBytes: number;
  /** `EVENTS_TOKEN`: the secret of `POST /admin/events` (bearer token or `?token=`). */
  eventsToken?: string;
}

/** The path (below `BASE_PATH`) bucket event notifications are POSTed to. */
export const EVENTS_PATH = "/admin/events";

/** The principal of a request that presented `EVENTS_TOKEN`: it may post bucket events, nothing else. */
const EVENTS_PRINCIPAL: Principal = { subject: "events-token", method: "token", grants: [] };

/** Whether `a` equals `b`, in time independent of where they differ. */
function sameSecret(a: string, b: string): boolean {
  const x = createHash("sha256").update(a).digest();
  const y = createHash("sha256").update(b).digest();
  return timingSafeEqual(x, y);
}

/** The peer info `Deno.serve` passes as the handler's second argument. */
export interface ServeInfo {
  /** The TCP peer (Deno.serve's `remoteAddr`). */
  remoteAddr?: Peer | { transport?: string; hostname?: string; port?: number };
}

/**
 * Runs each request through the checks in order: header size (431), authentication (401), authorization
 * from the AET and action (403), per-client concurrency (429), request body size and time (413, 408), the
 * response deadline (504) and the store read budget. Throws `HttpError`s for the caller's error→response
 * conversion; health checks and CORS preflights pass through unauthenticated.
 *
 * @example
 * ```ts ignore
 * const guard = new RequestGuard(config);
 * const store = guard.store(services.store);       // counts reads against the per-request budget
 * response = await guard.run(request, info, () => dispatch(request));
 * ```
 */
export class RequestGuard {
  /** The settings. */
  readonly config: GuardConfig;
  /** Who is asking. */
  readonly authenticator: Authenticator;
  /** Requests in flight per client. */
  readonly limiter: ClientLimiter;
  /** Bytes open from the store per request. */
  readonly reads: ReadBudget;
  readonly #contexts = new WeakMap<Request, RequestContext>();

  /** A guard for `config`. */
  constructor(config: GuardConfig, options: AuthenticatorOptions = {}) {
    this.config = config;
    this.authenticator = new Authenticator(config.auth, options);
    this.limiter = new ClientLimiter(config.limits.clientConcurrency);
    this.reads = new ReadBudget(config.limits.readBudgetBytes);
  }

  /** Whether authentication is on. */
  get enabled(): boolean {
    return this.authenticator.enabled;
  }

  /** `store` with reads counted against the current request's budget (`REQUEST_READ_BUDGET_MB`). */
  store(store: ObjectStore): ObjectStore {
    return this.reads.store(store);
  }

  /** What the guard recorded about `request` (undefined before {@linkcode RequestGuard.run}). */
  contextOf(request: Request): RequestContext | undefined {
    return this.#contexts.get(request);
  }

  /** The authenticated caller of `request`, if any. */
  principalOf(request: Request): Principal | undefined {
    return this.#contexts.get(request)?.principal;
  }

  /** The AETs of `names` the caller of `request` may see (all of them when authentication is off). */
  visibleAets(request: Request, names: readonly string[]): string[] {
    const principal = this.principalOf(request);
    if (!this.enabled) return [...names];
    return principal === undefined ? [] : visibleAets(principal, names);
  }

  /**
   * For `POST /admin/events` with `EVENTS_TOKEN` set: the events principal when the request presents the
   * token (`Authorization: Bearer TOKEN` or `?token=TOKEN`: Ceph RGW's HTTP push sends no Authorization
   * header); a 401 when it presents none or a wrong one and authentication is off; undefined otherwise
   * (authentication decides: the admin grant may post too).
   */
  #eventsPrincipal(request: Request, url: URL): Principal | undefined {
    const token = this.config.eventsToken;
    if (token === undefined || url.pathname !== this.config.basePath + EVENTS_PATH) return undefined;
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.get("authorization") ?? "")?.[1];
    const query = url.searchParams.get("token");
    const presented = query ?? bearer;
    if (presented !== undefined && sameSecret(presented, token)) return EVENTS_PRINCIPAL;
    if (this.enabled && query === null) return undefined; // the caller's own credentials (the admin grant)
    throw new HttpError(
      401,
      presented === undefined
        ? `${EVENTS_PATH} needs EVENTS_TOKEN: add ?token=EVENTS_TOKEN to the push endpoint URL, or send it as a bearer token`
        : `${EVENTS_PATH}: the token is not EVENTS_TOKEN`,
      { headers: { "www-authenticate": 'Bearer realm="events"' } },
    );
  }

  /**
   * Checks `request` and runs `next` with it (its body limited when it has one). The response body keeps
   * the client's concurrency slot until it is sent or cancelled.
   */
  async run(
    request: Request,
    info: ServeInfo | undefined,
    next: (request: Request) => Promise<Response> | Response,
  ): Promise<Response> {
    const url = new URL(request.url);
    const access = accessOf(url.pathname, request.method, this.config.basePath);
    const peer = info?.remoteAddr && "hostname" in info.remoteAddr && info.remoteAddr.hostname !== undefined
      ? { hostname: info.remoteAddr.hostname, port: info.remoteAddr.port }
      : undefined;
    const context: RequestContext = {
      access,
      client: clientAddress(request.headers, peer, this.config.trustedProxies),
      trustForwarded: honoursForwarded(peer, this.config.trustedProxies),
    };
    this.#contexts.set(request, context);
    checkHeaderSize(request.headers, this.config.limits);
    if (access.kind === "public") {
      return await next(context.trustForwarded ? request : withoutForwarded(request));
    }

    const principal = this.#eventsPrincipal(request, url) ?? await this.authenticator.authenticate(request);
    context.principal = principal;
    if (access.kind === "aet" && !allows(principal, access.action, access.aet)) {
      // The same answer whether or not the AET exists: nothing is looked up before this point.
      throw new HttpError(
        403,
        `Forbidden: ${principal.subject} may not ${access.action} AET "${access.aet}"`,
      );
    }
    if (
      access.kind === "server" && principal !== EVENTS_PRINCIPAL &&
      !allows(principal, access.action, undefined)
    ) {
      throw new HttpError(
        403,
        `Forbidden: ${principal.subject} may not ${access.action} server-wide resources`,
      );
    }
    const key = principal.method === "none"
      ? `addr:${context.client}`
      : `sub:${principal.method}:${principal.subject}`;
    const release = this.limiter.acquire(key);
    try {
      const forwarded = context.trustForwarded ? request : withoutForwarded(request);
      const limited = limitRequestBody(forwarded, {
        maxBytes: this.config.stowMaxBytes,
        timeoutMs: this.config.limits.bodyTimeoutMs,
      });
      this.#contexts.set(forwarded, context);
      this.#contexts.set(limited, context);
      const response = await withDeadline(
        this.reads.scope(() => next(limited)),
        this.config.limits.responseTimeoutMs,
      );
      return releaseWhenDone(response, release);
    } catch (error) {
      release();
      throw error;
    }
  }
}

const FORWARDED_HEADERS = [
  "forwarded",
  "x-forwarded-for",
  "x-forwarded-host",
  "x-forwarded-proto",
  "x-forwarded-port",
  "x-forwarded-prefix",
  "x-real-ip",
];

/**
 * `request` without `Forwarded` / `X-Forwarded-*` / `X-Real-IP` (for peers that are not trusted proxies), so
 * nothing downstream (e.g. `publicBase`) can be steered by them. Returned as is when it has none.
 */
export function withoutForwarded(request: Request): Request {
  if (!FORWARDED_HEADERS.some((name) => request.headers.has(name))) return request;
  const headers = new Headers(request.headers);
  for (const name of FORWARDED_HEADERS) headers.delete(name);
  return new Request(request.url, {
    method: request.method,
    headers,
    body: request.body,
    // @ts-ignore: needed by the fetch spec for stream bodies; Deno accepts and ignores it
    duplex: "half",
  });
}
