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
// The handler with the security settings of `env`, built by the shared test fixture (tests/_server.ts).

import type { ServeInfo } from "../lib/security/request_guard.ts";
import type { AuditLog } from "../lib/security/audit.ts";
import type { Catalog } from "../lib/catalog/catalog.ts";
import { type Config, parseConfig } from "../lib/config/config.ts";
import type { ObjectStore } from "../lib/store/store.ts";
import { testHandler } from "./_server.ts";
import type { AuthenticatorOptions } from "../lib/security/authenticator.ts";

/** Options for {@linkcode securedHandler}. */
export interface SecuredOptions {
  log?: (line: string) => void;
  audit?: AuditLog;
  auth?: AuthenticatorOptions;
  /** The search catalog for QIDO-RS (see `memoryCatalog` in tests/_server.ts). */
  catalog?: Catalog;
  /** The handler's bodies go straight to `Deno.serve` (see `freeSentChunks` in lib/app/handler.ts). */
  freeSentChunks?: boolean;
}

/** A handler with authentication, limits and audit, from `env` (plus `AETS` etc.) over `store`. */
export function securedHandler(
  store: ObjectStore,
  env: Record<string, string>,
  options: SecuredOptions = {},
): { handler: (request: Request, info?: ServeInfo) => Promise<Response>; config: Config } {
  const config = parseConfig(env);
  const { handler } = testHandler({
    store,
    config,
    capabilities: { reEncode: true },
    catalog: options.catalog,
    handler: {
      log: options.log ?? (() => {}),
      audit: options.audit,
      auth: options.auth,
      freeSentChunks: options.freeSentChunks,
    },
  });
  return { handler, config };
}
