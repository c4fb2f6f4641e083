/**
 * Authorization: grants (`SUBJECT:ACTION:AET`, or OAuth scopes `dicomweb:read:AET`), whether a principal may
 * act on an AET, which AETs it may see, and the access a request needs from its path and method.
 *
 * @module
 */

/**
 * What a request does to an AET: `read` (search, retrieve, the change feed), `write` (store) or `delete`
 * (DELETE of studies, series, instances). Each is granted on its own: `write` does not imply `delete`.
 */
export type Action = "read" | "write" | "delete";

/** A permission: an action (or `*`) on an AET (or `*` for every AET). */
export interface Grant {
  /** What may be done: read, write, delete, or all of them (`*`). */
  action: Action | "*";
  /** On which AET (`*`: all). */
  aet: string;
}

/** How a caller proved who they are. */
export type AuthMethod = "jwt" | "token" | "basic";

/** An authenticated caller. */
export interface Principal {
  /** The JWT subject (`OIDC_SUBJECT_CLAIM`), the token name or the user name; `anonymous` with `AUTH=none`. */
  subject: string;
  /** How the principal authenticated. */
  method: AuthMethod | "none";
  /** What it may do. */
  grants: readonly Grant[];
}

/**
 * The grants named by OAuth2 scopes: `dicomweb:ACTION:AET` with ACTION `read`, `write`, `delete` or `*` and AET a name
 * or `*`; `dicomweb:*` is everything. Other scopes are ignored.
 *
 * @example
 * ```ts
 * import { grantsFromScopes } from "./grants.ts";
 * grantsFromScopes("openid dicomweb:read:PACS dicomweb:write:*");
 * // [{ action: "read", aet: "PACS" }, { action: "write", aet: "*" }]
 * ```
 */
export function grantsFromScopes(scopes: unknown): Grant[] {
  const list = typeof scopes === "string"
    ? scopes.split(/\s+/)
    : Array.isArray(scopes)
    ? scopes.filter((s): s is string => typeof s === "string")
    : [];
  const grants: Grant[] = [];
  for (const scope of list) {
    if (scope === "dicomweb:*") {
      grants.push({ action: "*", aet: "*" });
      continue;
    }
    const m = /^dicomweb:(read|write|delete|\*):([A-Za-z0-9_.\-]{1,64}|\*)$/.exec(scope);
    if (m) grants.push({ action: m[1] as Grant["action"], aet: m[2] });
  }
  return grants;
}

/**
 * Whether `principal` may do `action` on `aet`; `aet` undefined asks about server-wide routes, which only
 * grants on `*` cover.
 */
export function allows(principal: Principal, action: Action, aet: string | undefined): boolean {
  return principal.grants.some((g) =>
    (g.action === "*" || g.action === action) && (g.aet === "*" || (aet !== undefined && g.aet === aet))
  );
}

/** The AETs of `names` that `principal` may read, write or delete in, in the given order. */
export function visibleAets(principal: Principal, names: readonly string[]): string[] {
  return names.filter((aet) =>
    allows(principal, "read", aet) || allows(principal, "write", aet) || allows(principal, "delete", aet)
  );
}

// ---------------------------------------------------------------------------------------------------
// Which access a request asks for

/** What a request needs, decided from its path and method alone. */
export type Access =
  | { kind: "public" }
  | { kind: "list" }
  | { kind: "aet"; aet: string; action: Action }
  | { kind: "server"; action: Action };

/**
 * Classifies a request: health checks and CORS preflights are public; `GET /aets` needs any authenticated
 * caller (and is filtered); `/aets/{aet}/...` needs `read` (GET, HEAD), `delete` (DELETE) or `write` (other
 * methods) on that AET,
 * taken from the raw path segment exactly as the router passes it on; anything else is server-wide.
 *
 * @example
 * ```ts
 * import { accessOf } from "./grants.ts";
 * accessOf("/dicomweb/aets/PACS/studies", "POST", "/dicomweb"); // { kind: "aet", aet: "PACS", action: "write" }
 * accessOf("/readyz", "GET", ""); // { kind: "public" }
 * ```
 */
export function accessOf(pathname: string, method: string, basePath: string): Access {
  const verb = method.toUpperCase();
  const action: Action = verb === "GET" || verb === "HEAD" ? "read" : verb === "DELETE" ? "delete" : "write";
  if (verb === "OPTIONS") return { kind: "public" };
  if (basePath !== "" && !pathname.startsWith(basePath + "/")) return { kind: "server", action };
  const rest = pathname.slice(basePath.length);
  if (rest === "/healthz" || rest === "/readyz") {
    return verb === "GET" || verb === "HEAD" ? { kind: "public" } : { kind: "server", action };
  }
  if (rest === "/aets" || rest === "/aets/") {
    return action === "read" ? { kind: "list" } : { kind: "server", action };
  }
  const m = /^\/aets\/([^/]+)(?:\/|$)/.exec(rest);
  if (m) return { kind: "aet", aet: m[1], action };
  return { kind: "server", action };
}

// ---------------------------------------------------------------------------------------------------
// Passwords and tokens
