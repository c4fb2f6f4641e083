/**
 * Who may do what. Authentication by OIDC/OAuth2 bearer JWTs (verified against the issuer's JWKS), static
 * API tokens (stored as SHA-256 hex) or HTTP Basic (PBKDF2-SHA256 password hashes), or none on loopback;
 * authorization per AET and action (`read` = search and retrieve, `write` = store) from token scopes
 * (`dicomweb:read:PACS`) and a static table (`AUTH_GRANTS`).
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

import { createRemoteJWKSet, customFetch, errors as joseErrors, type JWTPayload, jwtVerify } from "jose";
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
import {
  clientAddress,
  honoursForwarded,
  isLoopbackHost,
  type Peer,
  type TrustedProxies,
} from "./proxies.ts";
import { settingsReader } from "../util/settings.ts";
import { ReadBudget } from "../store/read_budget.ts";
import { AET_PATTERN } from "../http/urls.ts";

// ---------------------------------------------------------------------------------------------------
// Types and settings

/** What a request does to an AET: `read` (search, retrieve) or `write` (store). */
export type Action = "read" | "write";

/** A permission: an action (or `*`) on an AET (or `*` for every AET). */
export interface Grant {
  action: Action | "*";
  aet: string;
}

/** How a caller proved who they are. */
export type AuthMethod = "jwt" | "token" | "basic";

/** An authenticated caller. */
export interface Principal {
  /** The JWT subject (`OIDC_SUBJECT_CLAIM`), the token name or the user name; `anonymous` with `AUTH=none`. */
  subject: string;
  method: AuthMethod | "none";
  grants: readonly Grant[];
}

/** OIDC / OAuth2 bearer JWT settings. */
export interface OidcConfig {
  /** Expected `iss`, exactly (no trailing slash added or removed). */
  issuer: string;
  /** Accepted `aud` values: the token must name at least one. */
  audience: string[];
  /** The JWKS URL; undefined = discovered from `{issuer}/.well-known/openid-configuration`. */
  jwksUrl?: string;
  /** Leeway for `exp` and `nbf`, in seconds. */
  clockSkewSeconds: number;
  /** Claim holding the scopes (space-separated string or array); `scp` is read too. */
  scopeClaim: string;
  /** Claim naming the caller (for `AUTH_GRANTS` and the audit log). */
  subjectClaim: string;
  /** Accepted JWS algorithms (asymmetric only). */
  algorithms: string[];
}

/** A parsed `pbkdf2-sha256:ITERATIONS:SALT:HASH` password hash. */
export interface PasswordHash {
  iterations: number;
  salt: Uint8Array;
  hash: Uint8Array;
}

/** The authentication and authorization settings, validated. */
export interface AuthConfig {
  /** Enabled methods; empty = `AUTH=none`. */
  methods: AuthMethod[];
  /** `ALLOW_UNAUTHENTICATED`: lets `AUTH=none` bind to a non-loopback address. */
  allowUnauthenticated: boolean;
  /** Realm in `WWW-Authenticate` (`AUTH_REALM`). */
  realm: string;
  oidc?: OidcConfig;
  /** `AUTH_TOKENS`: name and lower-case SHA-256 hex of each API token. */
  tokens: { name: string; sha256: string }[];
  /** `AUTH_USERS`: user name → password hash. */
  users: Map<string, PasswordHash>;
  /** `AUTH_GRANTS`: subject (or `*` = any authenticated caller) → grants. */
  grants: Map<string, Grant[]>;
}

/** The names {@linkcode parseAuthConfig} reads (add them to `CONFIG_NAMES`). */
export const AUTH_CONFIG_NAMES = [
  "AUTH",
  "ALLOW_UNAUTHENTICATED",
  "AUTH_REALM",
  "OIDC_ISSUER",
  "OIDC_AUDIENCE",
  "OIDC_JWKS_URL",
  "OIDC_CLOCK_SKEW_SECONDS",
  "OIDC_SCOPE_CLAIM",
  "OIDC_SUBJECT_CLAIM",
  "OIDC_ALGORITHMS",
  "AUTH_TOKENS",
  "AUTH_USERS",
  "AUTH_GRANTS",
] as const;

const ASYMMETRIC = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
  "Ed25519",
];
const DEFAULT_ALGORITHMS = ASYMMETRIC.filter((a) => a !== "Ed25519");
/** A valid subject name: a token's or user's name in `AUTH_TOKENS`, `AUTH_USERS` and `AUTH_GRANTS`. */
export const NAME_PATTERN = /^[A-Za-z0-9_.@+\-]{1,128}$/;
/** Fewest PBKDF2 iterations accepted in `AUTH_USERS`. */
export const MIN_ITERATIONS = 100_000;
/** Iterations of hashes made by {@linkcode hashPassword} (OWASP 2023 for PBKDF2-HMAC-SHA256). */
export const DEFAULT_ITERATIONS = 600_000;

/** Options for {@linkcode parseAuthConfig}. */
export interface ParseAuthOptions {
  /** The bind address (`HOSTNAME`): `AUTH=none` is refused off loopback without `ALLOW_UNAUTHENTICATED`. */
  hostname: string;
  /** Set where the server is public whatever `HOSTNAME` says (e.g. Deno Deploy). */
  public?: boolean;
}

/**
 * Validates the authentication settings; problems are pushed onto `problems`.
 *
 * @example
 * ```ts
 * import { parseAuthConfig } from "./auth.ts";
 * const problems: string[] = [];
 * parseAuthConfig({ AUTH: "none" }, problems, { hostname: "0.0.0.0" });
 * problems[0].startsWith("AUTH=none while HOSTNAME=0.0.0.0"); // true
 * ```
 */
export function parseAuthConfig(
  env: Record<string, string | undefined>,
  problems: string[],
  options: ParseAuthOptions,
): AuthConfig {
  const s = settingsReader(env, problems);
  const rawAuth = (s.get("AUTH") ?? "none").toLowerCase();
  const methods: AuthMethod[] = [];
  if (rawAuth !== "none") {
    for (const item of rawAuth.split(",").map((m) => m.trim()).filter((m) => m !== "")) {
      const method = item === "oidc" ? "jwt" : item;
      if (method !== "jwt" && method !== "token" && method !== "basic") {
        s.problem(
          `AUTH=${JSON.stringify(env.AUTH)} is not valid: use none, or a comma list of jwt, token, basic`,
        );
      } else if (!methods.includes(method)) methods.push(method);
    }
  }
  const allowUnauthenticated = s.boolean("ALLOW_UNAUTHENTICATED", false);
  if (rawAuth === "none" && !allowUnauthenticated) {
    if (options.public) {
      s.problem(
        `AUTH=none on a public deployment: anyone could read every study. Set AUTH (jwt, token, basic), ` +
          `or ALLOW_UNAUTHENTICATED=true if an authenticating proxy is in front`,
      );
    } else if (!isLoopbackHost(options.hostname)) {
      s.problem(
        `AUTH=none while HOSTNAME=${options.hostname} is not a loopback address: anyone on the network could read ` +
          `every study. Set AUTH (jwt, token, basic), bind to 127.0.0.1, or set ALLOW_UNAUTHENTICATED=true if an ` +
          `authenticating proxy is in front`,
      );
    }
  }
  const realm = s.get("AUTH_REALM") ?? "dicomweb";
  if (!/^[\x20-\x7e]{1,100}$/.test(realm) || realm.includes('"') || realm.includes("\\")) {
    s.problem(
      `AUTH_REALM=${JSON.stringify(realm)} is not valid: use printable ASCII without quotes or backslashes`,
    );
  }

  let oidc: OidcConfig | undefined;
  if (methods.includes("jwt")) {
    const issuer = s.get("OIDC_ISSUER");
    const checkUrl = (name: string, value: string | undefined): boolean => {
      if (value === undefined) return false;
      try {
        const url = new URL(value);
        if (
          url.protocol === "https:" ||
          (url.protocol === "http:" && isLoopbackHost(url.hostname.replace(/^\[|\]$/g, "")))
        ) {
          return true;
        }
        s.problem(`${name}=${JSON.stringify(value)} is not valid: use https (plain http only on loopback)`);
      } catch {
        s.problem(`${name}=${JSON.stringify(value)} is not valid: use an absolute https URL`);
      }
      return false;
    };
    if (issuer === undefined) {
      s.problem(
        `AUTH=jwt needs OIDC_ISSUER: the issuer URL your tokens carry in "iss", e.g. https://idp.example.org/realms/pacs`,
      );
    } else checkUrl("OIDC_ISSUER", issuer);
    const audience = (s.get("OIDC_AUDIENCE") ?? "").split(",").map((a) => a.trim()).filter((a) => a !== "");
    if (audience.length === 0) {
      s.problem(
        `AUTH=jwt needs OIDC_AUDIENCE: the "aud" value(s) tokens for this server carry, e.g. dicomweb`,
      );
    }
    const jwksUrl = s.get("OIDC_JWKS_URL");
    if (jwksUrl !== undefined) checkUrl("OIDC_JWKS_URL", jwksUrl);
    const algorithms = (s.get("OIDC_ALGORITHMS") ?? DEFAULT_ALGORITHMS.join(",")).split(",").map((a) =>
      a.trim()
    )
      .filter((a) => a !== "");
    for (const alg of algorithms) {
      if (!ASYMMETRIC.includes(alg)) {
        s.problem(
          `OIDC_ALGORITHMS entry ${JSON.stringify(alg)} is not valid: use asymmetric algorithms (${
            ASYMMETRIC.join(", ")
          }); ` +
            `HS* and none cannot be checked against a JWKS`,
        );
      }
    }
    oidc = {
      issuer: issuer ?? "",
      audience,
      jwksUrl,
      clockSkewSeconds: s.integer("OIDC_CLOCK_SKEW_SECONDS", 30, 0, 300),
      scopeClaim: s.get("OIDC_SCOPE_CLAIM") ?? "scope",
      subjectClaim: s.get("OIDC_SUBJECT_CLAIM") ?? "sub",
      algorithms,
    };
  }

  const tokens: AuthConfig["tokens"] = [];
  const rawTokens = s.get("AUTH_TOKENS");
  if (rawTokens !== undefined) {
    for (const entry of rawTokens.split(",").map((e) => e.trim()).filter((e) => e !== "")) {
      const colon = entry.lastIndexOf(":");
      const name = entry.slice(0, colon);
      const hex = entry.slice(colon + 1).toLowerCase();
      if (colon < 0 || !NAME_PATTERN.test(name) || !/^[0-9a-f]{64}$/.test(hex)) {
        s.problem(
          `AUTH_TOKENS entry ${JSON.stringify(redactSecret(entry))} is not valid: use NAME:SHA256HEX ` +
            `(make one with: deno task auth token NAME)`,
        );
      } else if (tokens.some((t) => t.name === name || t.sha256 === hex)) {
        s.problem(`AUTH_TOKENS lists ${name} (or its token) twice: name each token once`);
      } else tokens.push({ name, sha256: hex });
    }
  }
  if (methods.includes("token") && tokens.length === 0) {
    s.problem(
      `AUTH=token needs AUTH_TOKENS: NAME:SHA256HEX entries (make one with: deno task auth token NAME)`,
    );
  }

  const users = new Map<string, PasswordHash>();
  const rawUsers = s.get("AUTH_USERS");
  if (rawUsers !== undefined) {
    for (const entry of rawUsers.split(",").map((e) => e.trim()).filter((e) => e !== "")) {
      const colon = entry.indexOf(":");
      const name = entry.slice(0, colon);
      const hash = colon < 0 ? undefined : parsePasswordHash(entry.slice(colon + 1));
      if (colon < 0 || !NAME_PATTERN.test(name) || hash === undefined) {
        s.problem(
          `AUTH_USERS entry for ${JSON.stringify(colon < 0 ? "?" : name)} is not valid: use ` +
            `NAME:pbkdf2-sha256:ITERATIONS:SALT:HASH (make one with: deno task auth hash NAME)`,
        );
      } else if (hash.iterations < MIN_ITERATIONS) {
        s.problem(
          `AUTH_USERS entry for ${name} uses ${hash.iterations} iterations: use at least ${MIN_ITERATIONS}`,
        );
      } else if (users.has(name)) {
        s.problem(`AUTH_USERS lists ${name} twice: name each user once`);
      } else users.set(name, hash);
    }
  }
  if (methods.includes("basic") && users.size === 0) {
    s.problem(
      `AUTH=basic needs AUTH_USERS: NAME:HASH entries (make one with: deno task auth hash NAME)`,
    );
  }

  const grants = new Map<string, Grant[]>();
  const rawGrants = s.get("AUTH_GRANTS");
  if (rawGrants !== undefined) {
    for (const entry of rawGrants.split(/[\s,]+/).filter((e) => e !== "")) {
      const grant = parseGrantEntry(entry);
      if (grant === undefined) {
        s.problem(
          `AUTH_GRANTS entry ${
            JSON.stringify(entry)
          } is not valid: use SUBJECT:ACTION:AET with ACTION read, write ` +
            `or *, and AET a name or * (e.g. alice:read:PACS, ohif:read:*)`,
        );
      } else grants.set(grant.subject, [...(grants.get(grant.subject) ?? []), grant.grant]);
    }
  }
  for (const name of [...tokens.map((t) => t.name), ...users.keys()]) {
    if (!grants.has(name) && !grants.has("*")) {
      s.problem(
        `${name} (AUTH_TOKENS/AUTH_USERS) has no grants, so it may do nothing: add e.g. ${name}:read:* to AUTH_GRANTS`,
      );
    }
  }
  return { methods, allowUnauthenticated, realm, oidc, tokens, users, grants };
}

function redactSecret(entry: string): string {
  const colon = entry.lastIndexOf(":");
  return colon < 0 ? "…" : `${entry.slice(0, colon)}:…`;
}

function parseGrantEntry(entry: string): { subject: string; grant: Grant } | undefined {
  const last = entry.lastIndexOf(":");
  const middle = entry.lastIndexOf(":", last - 1);
  if (last < 0 || middle <= 0) return undefined;
  const subject = entry.slice(0, middle);
  const action = entry.slice(middle + 1, last);
  const aet = entry.slice(last + 1);
  if (action !== "read" && action !== "write" && action !== "*") return undefined;
  if (aet !== "*" && !AET_PATTERN.test(aet)) return undefined;
  return { subject, grant: { action, aet } };
}

/**
 * The grants named by OAuth2 scopes: `dicomweb:ACTION:AET` with ACTION `read`, `write` or `*` and AET a name
 * or `*`; `dicomweb:*` is everything. Other scopes are ignored.
 *
 * @example
 * ```ts
 * import { grantsFromScopes } from "./auth.ts";
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
    const m = /^dicomweb:(read|write|\*):([A-Za-z0-9_.\-]{1,64}|\*)$/.exec(scope);
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

/** The AETs of `names` that `principal` may read or write, in the given order. */
export function visibleAets(principal: Principal, names: readonly string[]): string[] {
  return names.filter((aet) => allows(principal, "read", aet) || allows(principal, "write", aet));
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
 * caller (and is filtered); `/aets/{aet}/...` needs `read` (GET, HEAD) or `write` (other methods) on that AET,
 * taken from the raw path segment exactly as the router passes it on; anything else is server-wide.
 *
 * @example
 * ```ts
 * import { accessOf } from "./auth.ts";
 * accessOf("/dicomweb/aets/PACS/studies", "POST", "/dicomweb"); // { kind: "aet", aet: "PACS", action: "write" }
 * accessOf("/readyz", "GET", ""); // { kind: "public" }
 * ```
 */
export function accessOf(pathname: string, method: string, basePath: string): Access {
  const verb = method.toUpperCase();
  const action: Action = verb === "GET" || verb === "HEAD" ? "read" : "write";
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

const encoder = new TextEncoder();

function toBase64Url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

function fromBase64Url(text: string): Uint8Array | undefined {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) return undefined;
  try {
    const s = atob(text.replaceAll("-", "+").replaceAll("_", "/") + "===".slice((text.length + 3) % 4));
    return Uint8Array.from(s, (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

function hex(bytes: ArrayBuffer | Uint8Array): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Compares without an early exit, so the time taken says nothing about where two values differ. */
export function constantTimeEqual(a: Uint8Array | string, b: Uint8Array | string): boolean {
  const x = typeof a === "string" ? encoder.encode(a) : a;
  const y = typeof b === "string" ? encoder.encode(b) : b;
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

/** Lower-case hex SHA-256 of the UTF-8 text: what `AUTH_TOKENS` stores. */
export async function sha256Hex(text: string): Promise<string> {
  return hex(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

/**
 * Parses `pbkdf2-sha256:ITERATIONS:SALT:HASH` (SALT at least 16 bytes and HASH 32 bytes, both base64url
 * without padding); undefined when malformed.
 */
export function parsePasswordHash(text: string): PasswordHash | undefined {
  const m = /^pbkdf2-sha256:(\d{1,9}):([A-Za-z0-9_-]+):([A-Za-z0-9_-]+)$/.exec(text);
  if (!m) return undefined;
  const salt = fromBase64Url(m[2]);
  const hash = fromBase64Url(m[3]);
  if (!salt || salt.length < 16 || !hash || hash.length !== 32) return undefined;
  return { iterations: Number(m[1]), salt, hash };
}

async function pbkdf2(password: string, salt: Uint8Array, iterations: number): Promise<Uint8Array> {
  const key = await crypto.subtle.importKey("raw", encoder.encode(password), "PBKDF2", false, ["deriveBits"]);
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: salt as Uint8Array<ArrayBuffer>, iterations },
    key,
    256,
  );
  return new Uint8Array(bits);
}

/**
 * Makes a password hash for `AUTH_USERS`: `pbkdf2-sha256:ITERATIONS:SALT:HASH`, a random 16-byte salt.
 *
 * @example
 * ```ts
 * import { hashPassword, verifyPassword } from "./auth.ts";
 * const hash = await hashPassword("s3cret", 100_000);
 * await verifyPassword("s3cret", hash); // true
 * ```
 */
export async function hashPassword(password: string, iterations = DEFAULT_ITERATIONS): Promise<string> {
  const salt = crypto.getRandomValues(new Uint8Array(16));
  return `pbkdf2-sha256:${iterations}:${toBase64Url(salt)}:${
    toBase64Url(await pbkdf2(password, salt, iterations))
  }`;
}

/** Whether `password` matches `hash` (a string or a parsed hash); constant-time comparison. */
export async function verifyPassword(password: string, hash: string | PasswordHash): Promise<boolean> {
  const parsed = typeof hash === "string" ? parsePasswordHash(hash) : hash;
  if (parsed === undefined) return false;
  return constantTimeEqual(await pbkdf2(password, parsed.salt, parsed.iterations), parsed.hash);
}

/** A fresh API token (32 random bytes, base64url) and the SHA-256 hex that goes into `AUTH_TOKENS`. */
export async function makeToken(): Promise<{ token: string; sha256: string }> {
  const token = toBase64Url(crypto.getRandomValues(new Uint8Array(32)));
  return { token, sha256: await sha256Hex(token) };
}

// ---------------------------------------------------------------------------------------------------
// Authentication

/** Options for {@linkcode Authenticator}. */
export interface AuthenticatorOptions {
  /** For OIDC discovery and JWKS requests (default: global fetch). */
  fetch?: typeof fetch;
  /** Minimum milliseconds between two JWKS downloads triggered by an unknown `kid` (default 30 000). */
  jwksCooldownMs?: number;
  /** Milliseconds a downloaded JWKS is used before it is fetched again (default 600 000). */
  jwksMaxAgeMs?: number;
  /** Milliseconds a verified user name + password is remembered, sparing PBKDF2 (default 300 000; 0 = off). */
  passwordCacheMs?: number;
}

const MAX_CACHED_PASSWORDS = 10_000;
const PBKDF2_CONCURRENCY = 2;

/** Turns credentials into a {@linkcode Principal}, or throws 401 (bad credentials) / 503 (issuer unreachable). */
export class Authenticator {
  readonly config: AuthConfig;
  readonly #options: AuthenticatorOptions;
  #jwks?: Promise<ReturnType<typeof createRemoteJWKSet>>;
  readonly #passwordKey = crypto.getRandomValues(new Uint8Array(32));
  #hmacKey?: Promise<CryptoKey>;
  readonly #verified = new Map<string, number>();
  #pbkdf2Running = 0;
  readonly #pbkdf2Queue: (() => void)[] = [];
  readonly #dummy: PasswordHash;

  constructor(config: AuthConfig, options: AuthenticatorOptions = {}) {
    this.config = config;
    this.#options = options;
    const iterations = config.users.values().next().value?.iterations ?? MIN_ITERATIONS;
    this.#dummy = { iterations, salt: new Uint8Array(16), hash: new Uint8Array(32) };
  }

  /** Whether any authentication method is on (`AUTH` is not `none`). */
  get enabled(): boolean {
    return this.config.methods.length > 0;
  }

  /** The `WWW-Authenticate` value for a 401: one challenge per enabled scheme. */
  challenge(error?: { code: string; description: string }): string {
    const realm = this.config.realm;
    const challenges: string[] = [];
    if (this.config.methods.includes("jwt") || this.config.methods.includes("token")) {
      const detail = error
        ? `, error="${error.code}", error_description="${error.description.replace(/["\\]/g, "'")}"`
        : "";
      challenges.push(`Bearer realm="${realm}"${detail}`);
    }
    if (this.config.methods.includes("basic")) challenges.push(`Basic realm="${realm}", charset="UTF-8"`);
    return challenges.join(", ");
  }

  #unauthorized(message: string, error?: { code: string; description: string }): HttpError {
    return new HttpError(401, message, { headers: { "www-authenticate": this.challenge(error) } });
  }

  /** The caller of `request`; anonymous with every grant when authentication is off. */
  async authenticate(request: Pick<Request, "headers">): Promise<Principal> {
    if (!this.enabled) return { subject: "anonymous", method: "none", grants: [{ action: "*", aet: "*" }] };
    const header = request.headers.get("authorization");
    const methods = this.config.methods;
    if (header === null || header.trim() === "") {
      const how = [
        ...(methods.includes("jwt") || methods.includes("token") ? ["Authorization: Bearer <token>"] : []),
        ...(methods.includes("basic") ? ["Authorization: Basic <user:password>"] : []),
      ].join(" or ");
      throw this.#unauthorized(`Authentication required: send ${how}`);
    }
    const space = header.trim().indexOf(" ");
    const scheme = (space < 0 ? header.trim() : header.trim().slice(0, space)).toLowerCase();
    const value = space < 0 ? "" : header.trim().slice(space + 1).trim();
    if (scheme === "bearer" && (methods.includes("jwt") || methods.includes("token")) && value !== "") {
      if (methods.includes("token")) {
        const name = await this.#matchToken(value);
        if (name !== undefined) return this.#principal(name, "token", []);
      }
      if (methods.includes("jwt") && /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(value)) {
        return await this.#verifyJwt(value);
      }
      throw this.#unauthorized("Invalid bearer token", {
        code: "invalid_token",
        description: "unknown token",
      });
    }
    if (scheme === "basic" && methods.includes("basic")) {
      const credentials = decodeBasic(value);
      if (credentials === undefined) {
        throw this.#unauthorized("Malformed Basic credentials: send base64 of user:password");
      }
      if (await this.#checkPassword(credentials.user, credentials.password)) {
        return this.#principal(credentials.user, "basic", []);
      }
      throw this.#unauthorized("Invalid user name or password");
    }
    throw this.#unauthorized(
      `Unsupported authorization scheme "${scheme}": use ${this.challenge().split(" ")[0]}`,
    );
  }

  #principal(subject: string, method: AuthMethod, scoped: Grant[]): Principal {
    const grants = [
      ...scoped,
      ...(this.config.grants.get(subject) ?? []),
      ...(this.config.grants.get("*") ?? []),
    ];
    return { subject, method, grants };
  }

  async #matchToken(token: string): Promise<string | undefined> {
    const digest = await sha256Hex(token);
    let found: string | undefined;
    for (const entry of this.config.tokens) {
      if (constantTimeEqual(digest, entry.sha256) && found === undefined) found = entry.name;
    }
    return found;
  }

  async #checkPassword(user: string, password: string): Promise<boolean> {
    const cacheMs = this.#options.passwordCacheMs ?? 300_000;
    this.#hmacKey ??= crypto.subtle.importKey(
      "raw",
      this.#passwordKey,
      { name: "HMAC", hash: "SHA-256" },
      false,
      [
        "sign",
      ],
    );
    const cacheKey = cacheMs > 0
      ? hex(await crypto.subtle.sign("HMAC", await this.#hmacKey, encoder.encode(`${user}\0${password}`)))
      : "";
    const now = performance.now();
    if (cacheMs > 0) {
      const until = this.#verified.get(cacheKey);
      if (until !== undefined && until > now) return true;
      if (until !== undefined) this.#verified.delete(cacheKey);
    }
    const stored = this.config.users.get(user);
    // An unknown user costs the same PBKDF2 as a known one, so timing does not tell which names exist.
    const ok = await this.#limitedPbkdf2(() => verifyPassword(password, stored ?? this.#dummy)) &&
      stored !== undefined;
    if (ok && cacheMs > 0) {
      if (this.#verified.size >= MAX_CACHED_PASSWORDS) {
        this.#verified.delete(this.#verified.keys().next().value!);
      }
      this.#verified.set(cacheKey, now + cacheMs);
    }
    return ok;
  }

  async #limitedPbkdf2<T>(work: () => Promise<T>): Promise<T> {
    if (this.#pbkdf2Running >= PBKDF2_CONCURRENCY) {
      await new Promise<void>((resolve) => this.#pbkdf2Queue.push(resolve));
    } else this.#pbkdf2Running++;
    try {
      return await work();
    } finally {
      const next = this.#pbkdf2Queue.shift();
      if (next) next();
      else this.#pbkdf2Running--;
    }
  }

  #keySet(): Promise<ReturnType<typeof createRemoteJWKSet>> {
    const oidc = this.config.oidc!;
    const options = {
      cooldownDuration: this.#options.jwksCooldownMs ?? 30_000,
      cacheMaxAge: this.#options.jwksMaxAgeMs ?? 600_000,
      timeoutDuration: 5_000,
      ...(this.#options.fetch ? { [customFetch]: this.#options.fetch } : {}),
    };
    if (this.#jwks === undefined) {
      const pending = (async () => {
        const url = oidc.jwksUrl ?? await discoverJwksUrl(oidc.issuer, this.#options.fetch ?? fetch);
        return createRemoteJWKSet(new URL(url), options);
      })();
      pending.catch(() => {
        if (this.#jwks === pending) this.#jwks = undefined; // try discovery again next time
      });
      this.#jwks = pending;
    }
    return this.#jwks;
  }

  async #verifyJwt(token: string): Promise<Principal> {
    const oidc = this.config.oidc!;
    let payload: JWTPayload;
    try {
      const keys = await this.#keySet();
      ({ payload } = await jwtVerify(token, keys, {
        issuer: oidc.issuer,
        audience: oidc.audience,
        clockTolerance: oidc.clockSkewSeconds,
        algorithms: oidc.algorithms,
        requiredClaims: ["exp"],
      }));
    } catch (error) {
      throw this.#jwtError(error);
    }
    const subject = payload[oidc.subjectClaim];
    if (typeof subject !== "string" || subject === "") {
      throw this.#unauthorized(`Token has no "${oidc.subjectClaim}" claim`, {
        code: "invalid_token",
        description: `no ${oidc.subjectClaim} claim`,
      });
    }
    const scoped = [
      ...grantsFromScopes(payload[oidc.scopeClaim]),
      ...(oidc.scopeClaim === "scp" ? [] : grantsFromScopes(payload.scp)),
    ];
    return this.#principal(subject, "jwt", scoped);
  }

  #jwtError(error: unknown): HttpError {
    if (error instanceof HttpError) return error;
    const invalid = (why: string) =>
      this.#unauthorized(`Invalid token: ${why}`, { code: "invalid_token", description: why });
    if (error instanceof joseErrors.JWTExpired) return invalid("expired");
    if (error instanceof joseErrors.JWTClaimValidationFailed) {
      return invalid(`"${error.claim}" claim check failed (${error.reason})`);
    }
    if (error instanceof joseErrors.JWKSNoMatchingKey) {
      return invalid("signed by a key the issuer does not publish");
    }
    if (error instanceof joseErrors.JWSSignatureVerificationFailed) return invalid("bad signature");
    if (error instanceof joseErrors.JOSEAlgNotAllowed) {
      return invalid("algorithm not allowed (OIDC_ALGORITHMS)");
    }
    if (
      error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid ||
      error instanceof TypeError
    ) {
      return this.#unavailable(error);
    }
    if (error instanceof joseErrors.JOSEError && error.code === "ERR_JOSE_GENERIC") {
      return this.#unavailable(error);
    }
    if (error instanceof joseErrors.JOSEError) return invalid("malformed token");
    return this.#unavailable(error);
  }

  #unavailable(error: unknown): HttpError {
    const why = error instanceof Error ? error.message : String(error);
    return new HttpError(
      503,
      `Cannot check the token: the identity provider's keys are unavailable: ${why}`,
      {
        cause: error,
        headers: { "retry-after": "5" },
      },
    );
  }
}

/** Finds `jwks_uri` in the issuer's OpenID configuration (its `issuer` must match exactly). */
export async function discoverJwksUrl(issuer: string, fetcher: typeof fetch = fetch): Promise<string> {
  const url = `${issuer.replace(/\/+$/, "")}/.well-known/openid-configuration`;
  const response = await fetcher(url, {
    signal: AbortSignal.timeout(5_000),
    headers: { accept: "application/json" },
  });
  if (!response.ok) {
    await response.body?.cancel();
    throw new TypeError(`OpenID discovery at ${url} answered ${response.status}: set OIDC_JWKS_URL`);
  }
  const doc = await response.json() as { issuer?: unknown; jwks_uri?: unknown };
  if (doc.issuer !== issuer) {
    throw new TypeError(
      `OpenID discovery at ${url} names issuer ${JSON.stringify(doc.issuer)}, not ${issuer}: fix OIDC_ISSUER`,
    );
  }
  if (typeof doc.jwks_uri !== "string") {
    throw new TypeError(`OpenID discovery at ${url} has no jwks_uri: set OIDC_JWKS_URL`);
  }
  return doc.jwks_uri;
}

function decodeBasic(value: string): { user: string; password: string } | undefined {
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(value)) return undefined;
  let text: string;
  try {
    const binary = atob(value);
    text = new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
  } catch {
    return undefined;
  }
  const colon = text.indexOf(":");
  if (colon <= 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

// ---------------------------------------------------------------------------------------------------
// The request guard

/** What the guard learned about a request, for the audit log and `GET /aets`. */
export interface RequestContext {
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
  basePath: string;
  auth: AuthConfig;
  limits: LimitsConfig;
  trustedProxies: TrustedProxies;
  /** Largest request body (`STOW_MAX_BYTES`). */
  stowMaxBytes: number;
}

/** The peer info `Deno.serve` passes as the handler's second argument. */
export interface ServeInfo {
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
  readonly config: GuardConfig;
  readonly authenticator: Authenticator;
  readonly limiter: ClientLimiter;
  readonly reads: ReadBudget;
  readonly #contexts = new WeakMap<Request, RequestContext>();

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

    const principal = await this.authenticator.authenticate(request);
    context.principal = principal;
    if (access.kind === "aet" && !allows(principal, access.action, access.aet)) {
      // The same answer whether or not the AET exists: nothing is looked up before this point.
      throw new HttpError(
        403,
        `Forbidden: ${principal.subject} may not ${access.action} AET "${access.aet}"`,
      );
    }
    if (access.kind === "server" && !allows(principal, access.action, undefined)) {
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
