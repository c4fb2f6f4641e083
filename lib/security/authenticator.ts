/**
 * Authentication: {@linkcode Authenticator} turns a request's `Authorization` header into a principal (OIDC
 * JWTs verified against the issuer's JWKS, API tokens, or HTTP Basic with PBKDF2 password hashes), or a 401 with
 * the challenge that says what to send.
 *
 * @module
 */

import { createRemoteJWKSet, customFetch, errors as joseErrors, type JWTPayload, jwtVerify } from "jose";
import { HttpError } from "../http/errors.ts";
import {
  constantTimeEqual,
  encoder,
  hex,
  MIN_ITERATIONS,
  type PasswordHash,
  sha256Hex,
  verifyPassword,
} from "./passwords.ts";
import { type AuthMethod, type Grant, grantsFromScopes, type Principal } from "./grants.ts";
import type { AuthConfig } from "./auth_config.ts";

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
  /** The authentication settings. */
  readonly config: AuthConfig;
  readonly #options: AuthenticatorOptions;
  #jwks?: Promise<ReturnType<typeof createRemoteJWKSet>>;
  readonly #passwordKey = crypto.getRandomValues(new Uint8Array(32));
  #hmacKey?: Promise<CryptoKey>;
  readonly #verified = new Map<string, number>();
  #pbkdf2Running = 0;
  readonly #pbkdf2Queue: (() => void)[] = [];
  readonly #dummy: PasswordHash;

  /** An authenticator for `config` (`options` tune the JWKS and password caches). */
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
