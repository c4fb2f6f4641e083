/**
 * A local OIDC issuer for tests: serves `/.well-known/openid-configuration` and a JWKS on 127.0.0.1, signs
 * tokens with its keys, rotates and retires keys, and can be made to fail.
 *
 * ```ts ignore
 * const idp = await startIssuer();
 * try {
 *   const token = await idp.sign({ sub: "alice", aud: "dicomweb", scope: "dicomweb:read:PACS" });
 * } finally {
 *   await idp.close();
 * }
 * ```
 */

import { exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";

/** A running test issuer. */
export interface TestIssuer {
  /** `http://127.0.0.1:PORT` (what tokens carry in `iss`). */
  issuer: string;
  jwksUrl: string;
  /** How many times the JWKS was downloaded. */
  readonly jwksFetches: number;
  /** The kid new tokens are signed with. */
  readonly currentKid: string;
  /**
   * Signs a token. Defaults: `iss` = issuer, `iat` = now, `exp` = now + 300 s, the current key. Pass
   * `exp: null` to leave `exp` out; any claim given replaces the default.
   */
  sign(claims: Record<string, unknown>, options?: SignOptions): Promise<string>;
  /** Adds a new key (published at once) and makes it the current one; returns its kid. */
  rotate(alg?: "RS256" | "ES256" | "PS256"): Promise<string>;
  /** Stops publishing a key (it can still sign, as a leaked or rotated-out key would). */
  retire(kid: string): void;
  /** While true, the JWKS and discovery answer 503. */
  failing: boolean;
  /** Signs with a key that is not published, under the given kid (an attacker's token). */
  signForeign(claims: Record<string, unknown>, kid?: string): Promise<string>;
  close(): Promise<void>;
}

/** Options for {@linkcode TestIssuer.sign}. */
export interface SignOptions {
  kid?: string;
}

interface Key {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  jwk: JWK;
}

async function makeKey(alg: string, kid: string): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...await exportJWK(publicKey), kid, alg, use: "sig" };
  return { kid, alg, privateKey, jwk };
}

async function signWith(
  key: Key,
  claims: Record<string, unknown>,
  defaults: Record<string, unknown>,
): Promise<string> {
  const payload: Record<string, unknown> = { ...defaults, ...claims };
  for (const [name, value] of Object.entries(payload)) if (value === null) delete payload[name];
  return await new SignJWT(payload).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: "JWT" }).sign(
    key.privateKey,
  );
}

/** Starts the issuer on a free loopback port. */
export async function startIssuer(): Promise<TestIssuer> {
  const keys: Key[] = [await makeKey("RS256", "key-1")]; // published
  const all = [...keys]; // can still sign, published or not
  let current = keys[0];
  let fetches = 0;
  let counter = 1;
  const state = { failing: false };
  let issuer = "";
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", onListen() {} },
    (request: Request): Response => {
      const path = new URL(request.url).pathname;
      if (state.failing) return new Response("down", { status: 503 });
      if (path === "/.well-known/openid-configuration") {
        return Response.json({
          issuer,
          jwks_uri: `${issuer}/jwks`,
          id_token_signing_alg_values_supported: ["RS256"],
        });
      }
      if (path === "/jwks") {
        fetches++;
        return Response.json({ keys: keys.map((k) => k.jwk) });
      }
      return new Response("not found", { status: 404 });
    },
  );
  issuer = `http://127.0.0.1:${server.addr.port}`;
  const defaults = () => {
    const now = Math.floor(Date.now() / 1000);
    return { iss: issuer, iat: now, exp: now + 300 };
  };
  return {
    issuer,
    jwksUrl: `${issuer}/jwks`,
    get jwksFetches() {
      return fetches;
    },
    get currentKid() {
      return current.kid;
    },
    get failing() {
      return state.failing;
    },
    set failing(value: boolean) {
      state.failing = value;
    },
    async sign(claims, options = {}) {
      const key = options.kid ? all.find((k) => k.kid === options.kid) : current;
      if (!key) throw new Error(`No key ${options.kid}`);
      return await signWith(key, claims, defaults());
    },
    async rotate(alg = "RS256") {
      const key = await makeKey(alg, `key-${++counter}`);
      keys.push(key);
      all.push(key);
      current = key;
      return key.kid;
    },
    retire(kid) {
      const i = keys.findIndex((k) => k.kid === kid);
      if (i >= 0) keys.splice(i, 1);
    },
    async signForeign(claims, kid = current.kid) {
      return await signWith(await makeKey("RS256", kid), claims, defaults());
    },
    close: () => server.shutdown(),
  };
}

// ---------------------------------------------------------------------------------------------------
// The handler as wired for security: the real `createHandler` once lib/app/handler.ts wires the guard and the
// audit log (detected by `config.auth` existing), otherwise the same wiring done here around it, line for
// line as proposed for lib/app/handler.ts, so these tests run before and after the wiring lands.

import { AetRegistry } from "../lib/objects/aets.ts";
import { createHandler } from "../lib/app/handler.ts";
import { type AuditLog, redactedSearch } from "../lib/security/audit.ts";
import {
  type AuthConfig,
  type AuthenticatorOptions,
  parseAuthConfig,
  RequestGuard,
  type ServeInfo,
} from "../lib/security/auth.ts";
import { type Config, parseConfig } from "../lib/config/config.ts";
import { errorResponse, toHttpError } from "../lib/http/errors.ts";
import { type LimitsConfig, parseLimitsConfig } from "../lib/security/limits.ts";
import type { ObjectStore } from "../lib/store/store.ts";
import { parseTransportConfig, type TrustedProxies } from "../lib/security/proxies.ts";

/** Config with the security settings (what `parseConfig` returns once they are wired). */
export type SecuredConfig = Config & {
  auth: AuthConfig;
  limits: LimitsConfig;
  trustedProxies: TrustedProxies;
};

/** Whether lib/app/handler.ts and lib/config/config.ts already wire the guard (then tests use them as they are). */
export const WIRED = "auth" in parseConfig({});

/** Parses `env` with the security settings, wired or not. Throws an `Error` listing problems. */
export function securedConfig(env: Record<string, string>): SecuredConfig {
  const base = parseConfig(env);
  if (WIRED) return base as SecuredConfig;
  const problems: string[] = [];
  const auth = parseAuthConfig(env, problems, { hostname: base.hostname });
  const limits = parseLimitsConfig(env, problems);
  const { trustedProxies } = parseTransportConfig(env, problems);
  if (problems.length > 0) throw new Error(`Invalid configuration:\n  - ${problems.join("\n  - ")}`);
  return { ...base, auth, limits, trustedProxies };
}

/** Options for {@linkcode securedHandler}. */
export interface SecuredOptions {
  log?: (line: string) => void;
  audit?: AuditLog;
  auth?: AuthenticatorOptions;
  /** The search catalog for QIDO-RS (see {@linkcode openTestCatalog}). */
  catalog?: unknown;
  /** The handler's bodies go straight to `Deno.serve` (see `freeSentChunks` in lib/app/handler.ts). */
  freeSentChunks?: boolean;
}

/** A `:memory:` search catalog when lib/catalog/sqlite_catalog.ts can open one, else undefined (QIDO-RS then answers 503). */
export async function openTestCatalog(): Promise<{ close?(): unknown } | undefined> {
  try {
    const module = new URL("../lib/catalog/sqlite_catalog.ts", import.meta.url).href;
    const { openSqliteCatalog } = await import(module);
    return await openSqliteCatalog(":memory:", { log: () => {} });
  } catch {
    return undefined;
  }
}

/** A handler with authentication, limits and audit, from `env` (plus `AETS` etc.) over `store`. */
export function securedHandler(
  store: ObjectStore,
  env: Record<string, string>,
  options: SecuredOptions = {},
): {
  handler: (request: Request, info?: ServeInfo) => Promise<Response>;
  config: SecuredConfig;
  guard?: RequestGuard;
} {
  const config = securedConfig(env);
  const log = options.log ?? (() => {});
  if (WIRED) {
    const aets = new AetRegistry(store, { configured: config.aets });
    const handler = createHandler(
      { config, store, aets, capabilities: { reEncode: true }, catalog: options.catalog } as Parameters<
        typeof createHandler
      >[0],
      {
        log,
        audit: options.audit,
        auth: options.auth,
        freeSentChunks: options.freeSentChunks,
      } as Parameters<typeof createHandler>[1],
    );
    return { handler: handler as (request: Request, info?: ServeInfo) => Promise<Response>, config };
  }
  // --- the proposed lib/app/handler.ts wiring, emulated -----------------------------------------------------
  const guard = new RequestGuard(config, options.auth);
  const guarded = guard.store(store);
  const aets = new AetRegistry(guarded, { configured: config.aets });
  const inner = createHandler(
    {
      config,
      store: guarded,
      aets,
      capabilities: { reEncode: true },
      catalog: options.catalog,
    } as Parameters<typeof createHandler>[0],
    { log: () => {} },
  );
  const handler = async (request: Request, info?: ServeInfo): Promise<Response> => {
    const started = performance.now();
    const url = new URL(request.url);
    const method = request.method.toUpperCase();
    let response: Response;
    try {
      response = await guard.run(request, info, async (checked) => {
        const answer = await inner(checked);
        if (method === "GET" && url.pathname === `${config.basePath}/aets` && answer.status === 200) {
          // listAets(services, guard, request): only the AETs the caller may see
          const names = await answer.json() as string[];
          return Response.json(guard.visibleAets(request, names));
        }
        if (url.pathname === `${config.basePath}/readyz` && guard.enabled) {
          // ready(services, redact): status only, no AET or bucket names
          const body = await answer.json() as { status: string };
          return Response.json({ status: body.status }, { status: answer.status });
        }
        return answer;
      });
    } catch (error) {
      response = errorResponse(toHttpError(error));
    }
    const status = response.status;
    const finish = (bytes: number, outcome?: string) => {
      const ms = performance.now() - started;
      log(
        `${method} ${url.pathname}${redactedSearch(url)} ${status} ${bytes}B ${ms.toFixed(1)}ms${
          outcome ? " " + outcome : ""
        }`,
      );
      const context = guard.contextOf(request);
      options.audit?.record({
        method,
        url,
        status,
        bytes,
        ms,
        bodyOutcome: outcome,
        principal: context?.principal,
        client: context?.client,
      });
    };
    if (!response.body) {
      finish(0);
      return response;
    }
    let bytes = 0;
    let done = false;
    const reader = response.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const next = await reader.read();
          if (next.done) {
            controller.close();
            if (!done) finish(bytes);
            done = true;
          } else {
            bytes += next.value.byteLength;
            controller.enqueue(next.value);
          }
        } catch (error) {
          if (!done) finish(bytes, `aborted: ${(error as Error).message}`);
          done = true;
          throw error;
        }
      },
      async cancel(reason) {
        if (!done) finish(bytes, "client disconnected");
        done = true;
        await reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
    return new Response(body, { status, headers: response.headers });
  };
  return { handler, config, guard };
}
