/**
 * The authentication settings (`AUTH`, `OIDC_*`, `AUTH_TOKENS`, `AUTH_USERS`, `AUTH_GRANTS`,
 * `ALLOW_UNAUTHENTICATED`): their types and their validation, with every problem named for start-up; secrets
 * are never echoed.
 *
 * @module
 */

import { isLoopbackHost } from "./proxies.ts";
import { settingsReader } from "../util/settings.ts";
import { AET_PATTERN } from "../http/urls.ts";
import { MIN_ITERATIONS, parsePasswordHash, type PasswordHash } from "./passwords.ts";
import type { AuthMethod, Grant } from "./grants.ts";

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

/** The authentication and authorization settings, validated. */
export interface AuthConfig {
  /** Enabled methods; empty = `AUTH=none`. */
  methods: AuthMethod[];
  /** `ALLOW_UNAUTHENTICATED`: lets `AUTH=none` bind to a non-loopback address. */
  allowUnauthenticated: boolean;
  /** Realm in `WWW-Authenticate` (`AUTH_REALM`). */
  realm: string;
  /** The OIDC issuer's settings (`AUTH=jwt`). */
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
 * import { parseAuthConfig } from "./auth_config.ts";
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
          } is not valid: use SUBJECT:ACTION:AET with ACTION read, write, ` +
            `delete or *, and AET a name or * (e.g. alice:read:PACS, ohif:read:*)`,
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
  if (action !== "read" && action !== "write" && action !== "delete" && action !== "*") return undefined;
  if (aet !== "*" && !AET_PATTERN.test(aet)) return undefined;
  return { subject, grant: { action, aet } };
}
