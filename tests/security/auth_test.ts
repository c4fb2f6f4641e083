/**
 * Authentication and authorization: settings, scopes and grants, passwords and tokens, JWTs against a local
 * OIDC issuer (tests/_jwks.ts), and the guard in front of the real handler: 401/403 decided before the store
 * is touched, unknown and forbidden AETs alike, `GET /aets` filtered, health and preflights open.
 */

import { skipFor } from "../_skip.ts";
import assert from "node:assert/strict";
import { HttpError } from "../../lib/http/errors.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { buildInstance } from "../_corpus.ts";
import { securedHandler, startIssuer } from "../_jwks.ts";
import { observe } from "../_stores.ts";
import { makeTestCertificates } from "../_tls.ts";
import {
  constantTimeEqual,
  hashPassword,
  makeToken,
  parsePasswordHash,
  sha256Hex,
  verifyPassword,
} from "../../lib/security/passwords.ts";
import {
  accessOf,
  allows,
  grantsFromScopes,
  type Principal,
  visibleAets,
} from "../../lib/security/grants.ts";
import { type AuthConfig, parseAuthConfig } from "../../lib/security/auth_config.ts";
import { Authenticator } from "../../lib/security/authenticator.ts";

const ITER = 100_000; // the minimum AUTH_USERS accepts; keeps tests quick

function parse(
  env: Record<string, string>,
  hostname = "127.0.0.1",
): { config: AuthConfig; problems: string[] } {
  const problems: string[] = [];
  const config = parseAuthConfig(env, problems, { hostname });
  return { config, problems };
}

async function rejectsWith(promise: Promise<unknown>, status: number, message?: RegExp): Promise<HttpError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof HttpError, `expected an HttpError, got ${error}`);
    assert.equal(error.status, status, error.message);
    if (message) assert.match(error.message, message);
    return error;
  }
  assert.fail(`expected a ${status}`);
}

function basic(user: string, password: string): string {
  return "Basic " + btoa(String.fromCharCode(...new TextEncoder().encode(`${user}:${password}`)));
}

Deno.test("parseAuthConfig() refuses AUTH=none off loopback unless explicitly allowed", () => {
  assert.deepEqual(parse({}).problems, []);
  assert.deepEqual(parse({}, "::1").problems, []);
  assert.deepEqual(parse({}, "localhost").problems, []);
  const open = parse({}, "0.0.0.0").problems;
  assert.equal(open.length, 1);
  assert.match(open[0], /^AUTH=none while HOSTNAME=0\.0\.0\.0 is not a loopback address/);
  assert.match(open[0], /ALLOW_UNAUTHENTICATED=true/);
  assert.deepEqual(parse({ ALLOW_UNAUTHENTICATED: "true" }, "0.0.0.0").problems, []);
  const problems: string[] = [];
  parseAuthConfig({}, problems, { hostname: "127.0.0.1", public: true });
  assert.match(problems[0], /public deployment/);
  assert.match(
    parse({ AUTH: "kerberos" }).problems[0],
    /AUTH="kerberos" is not valid: use none, or a comma list/,
  );
  assert.match(parse({ ALLOW_UNAUTHENTICATED: "maybe" }).problems[0], /use true or false/);
});

Deno.test("parseAuthConfig() validates OIDC settings", () => {
  const missing = parse({ AUTH: "jwt" }).problems;
  assert.equal(missing.length, 2);
  assert.match(missing[0], /AUTH=jwt needs OIDC_ISSUER/);
  assert.match(missing[1], /AUTH=jwt needs OIDC_AUDIENCE/);
  const ok = parse({
    AUTH: "oidc",
    OIDC_ISSUER: "https://idp.example.org/realms/pacs",
    OIDC_AUDIENCE: "dicomweb, viewer",
  });
  assert.deepEqual(ok.problems, []);
  assert.deepEqual(ok.config.methods, ["jwt"]);
  assert.deepEqual(ok.config.oidc?.audience, ["dicomweb", "viewer"]);
  assert.equal(ok.config.oidc?.clockSkewSeconds, 30);
  assert.equal(ok.config.oidc?.scopeClaim, "scope");
  assert.ok(!ok.config.oidc?.algorithms.some((a) => a.startsWith("HS")));
  const plain = parse({ AUTH: "jwt", OIDC_ISSUER: "http://idp.example.org", OIDC_AUDIENCE: "x" }).problems;
  assert.match(
    plain[0],
    /OIDC_ISSUER="http:\/\/idp\.example\.org" is not valid: use https \(plain http only on loopback\)/,
  );
  assert.deepEqual(
    parse({ AUTH: "jwt", OIDC_ISSUER: "http://127.0.0.1:9999", OIDC_AUDIENCE: "x" }).problems,
    [],
  );
  const hs = parse({
    AUTH: "jwt",
    OIDC_ISSUER: "https://i",
    OIDC_AUDIENCE: "x",
    OIDC_ALGORITHMS: "RS256,HS256,none",
  });
  assert.equal(hs.problems.length, 2);
  assert.match(hs.problems[0], /OIDC_ALGORITHMS entry "HS256" is not valid: use asymmetric algorithms/);
  assert.match(
    parse({ AUTH: "jwt", OIDC_ISSUER: "https://i", OIDC_AUDIENCE: "x", OIDC_CLOCK_SKEW_SECONDS: "3600" })
      .problems[0],
    /from 0 to 300/,
  );
});

Deno.test("parseAuthConfig() reads tokens, users and grants, and never echoes a secret", async () => {
  const { token, sha256 } = await makeToken();
  const hash = await hashPassword("correct horse", ITER);
  const { config, problems } = parse({
    AUTH: "token,basic",
    AUTH_TOKENS: `ohif:${sha256.toUpperCase()}`,
    AUTH_USERS: `alice:${hash}`,
    AUTH_GRANTS: "ohif:read:* alice:read:PACS,alice:write:PACS  https://idp/u:1:*:RESEARCH",
  });
  assert.deepEqual(problems, []);
  assert.deepEqual(config.methods, ["token", "basic"]);
  assert.deepEqual(config.tokens, [{ name: "ohif", sha256 }]);
  assert.equal(config.users.get("alice")?.iterations, ITER);
  assert.deepEqual(config.grants.get("alice"), [{ action: "read", aet: "PACS" }, {
    action: "write",
    aet: "PACS",
  }]);
  assert.deepEqual(
    config.grants.get("https://idp/u:1"),
    [{ action: "*", aet: "RESEARCH" }],
    "subjects may contain colons",
  );

  const bad = parse({
    AUTH: "token,basic",
    AUTH_TOKENS: `ohif:${token}`,
    AUTH_USERS:
      "bob:plaintext-password,carol:pbkdf2-sha256:1000:AAAAAAAAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    AUTH_GRANTS: "ohif:erase:PACS ohif:read:../x",
  }).problems;
  assert.ok(!bad.join("\n").includes(token), "a mistyped token is not printed");
  assert.ok(!bad.join("\n").includes("plaintext-password"), "a plain password is not printed");
  assert.match(
    bad.join("\n"),
    /AUTH_TOKENS entry "ohif:…" is not valid: use NAME:SHA256HEX \(make one with: deno task auth token NAME\)/,
  );
  assert.match(bad.join("\n"), /AUTH_USERS entry for "bob" is not valid/);
  assert.match(bad.join("\n"), /AUTH_USERS entry for carol uses 1000 iterations: use at least 100000/);
  assert.match(bad.join("\n"), /AUTH_GRANTS entry "ohif:erase:PACS" is not valid/);
  assert.match(bad.join("\n"), /AUTH_GRANTS entry "ohif:read:\.\.\/x" is not valid/);
  assert.match(parse({ AUTH: "token" }).problems[0], /AUTH=token needs AUTH_TOKENS/);
  assert.match(parse({ AUTH: "basic" }).problems[0], /AUTH=basic needs AUTH_USERS/);
  const ungranted = parse({ AUTH: "token", AUTH_TOKENS: `ci:${sha256}` }).problems;
  assert.match(
    ungranted[0],
    /ci \(AUTH_TOKENS\/AUTH_USERS\) has no grants, so it may do nothing: add e\.g\. ci:read:\* to AUTH_GRANTS/,
  );
});

Deno.test("grantsFromScopes(), allows() and visibleAets() decide per AET and action", () => {
  assert.deepEqual(
    grantsFromScopes("openid profile dicomweb:read:PACS dicomweb:write:* dicomweb:bogus:X dicomweb:read:a/b"),
    [
      { action: "read", aet: "PACS" },
      { action: "write", aet: "*" },
    ],
  );
  assert.deepEqual(grantsFromScopes(["dicomweb:*", 7]), [{ action: "*", aet: "*" }]);
  // delete is a scope of its own; write does not imply it
  const writer: Principal = { subject: "w", method: "jwt", grants: grantsFromScopes("dicomweb:write:PACS") };
  assert.ok(!allows(writer, "delete", "PACS"));
  const deleter: Principal = {
    subject: "d",
    method: "jwt",
    grants: grantsFromScopes("dicomweb:delete:PACS"),
  };
  assert.ok(allows(deleter, "delete", "PACS") && !allows(deleter, "write", "PACS"));
  assert.ok(allows({ subject: "a", method: "jwt", grants: grantsFromScopes("dicomweb:*") }, "delete", "X"));
  assert.deepEqual(grantsFromScopes(undefined), []);
  const reader: Principal = { subject: "r", method: "token", grants: [{ action: "read", aet: "PACS" }] };
  assert.ok(allows(reader, "read", "PACS"));
  assert.ok(!allows(reader, "write", "PACS"));
  assert.ok(!allows(reader, "read", "RESEARCH"));
  assert.ok(!allows(reader, "read", "pacs"), "AET names are exact");
  assert.ok(!allows(reader, "read", undefined), "server-wide routes need a * grant");
  const admin: Principal = { subject: "a", method: "jwt", grants: [{ action: "*", aet: "*" }] };
  assert.ok(allows(admin, "write", undefined));
  assert.deepEqual(visibleAets(reader, ["A", "PACS", "RESEARCH"]), ["PACS"]);
  assert.deepEqual(visibleAets(admin, ["A", "PACS"]), ["A", "PACS"]);
});

Deno.test("accessOf() classifies requests from the raw path and method", () => {
  assert.deepEqual(accessOf("/healthz", "GET", ""), { kind: "public" });
  assert.deepEqual(accessOf("/readyz", "HEAD", ""), { kind: "public" });
  assert.deepEqual(accessOf("/readyz", "POST", ""), { kind: "server", action: "write" });
  assert.deepEqual(accessOf("/aets/PACS/studies/1.2", "OPTIONS", ""), { kind: "public" });
  assert.deepEqual(accessOf("/aets", "GET", ""), { kind: "list" });
  assert.deepEqual(accessOf("/aets/PACS/studies", "POST", ""), { kind: "aet", aet: "PACS", action: "write" });
  assert.deepEqual(accessOf("/aets/PACS", "GET", ""), { kind: "aet", aet: "PACS", action: "read" });
  assert.deepEqual(accessOf("/aets/%50ACS/studies", "GET", ""), {
    kind: "aet",
    aet: "%50ACS",
    action: "read",
  });
  assert.deepEqual(accessOf("/aets/..%2FB/studies", "GET", ""), {
    kind: "aet",
    aet: "..%2FB",
    action: "read",
  });
  assert.deepEqual(accessOf("/dicomweb/aets/A/studies/1", "DELETE", "/dicomweb"), {
    kind: "aet",
    aet: "A",
    action: "delete",
  });
  assert.deepEqual(accessOf("/aets/A/studies/1", "PUT", ""), { kind: "aet", aet: "A", action: "write" });
  assert.deepEqual(accessOf("/aets/A/studies", "GET", "/dicomweb"), { kind: "server", action: "read" });
  assert.deepEqual(accessOf("/dicomweb/healthz", "GET", "/dicomweb"), { kind: "public" });
  assert.deepEqual(accessOf("/admin/crawl", "POST", ""), { kind: "server", action: "write" });
});

Deno.test("passwords: PBKDF2 hashes round-trip, compare in constant time, reject malformed input", async () => {
  const hash = await hashPassword("pässwörd ✓", ITER);
  assert.match(hash, /^pbkdf2-sha256:100000:[A-Za-z0-9_-]{22}:[A-Za-z0-9_-]{43}$/);
  assert.ok(await verifyPassword("pässwörd ✓", hash));
  assert.ok(!await verifyPassword("passwörd ✓", hash));
  assert.ok(!await verifyPassword("x", "pbkdf2-sha256:1:AA:AA"));
  assert.equal(parsePasswordHash("md5:abc"), undefined);
  assert.notEqual(await hashPassword("same", ITER), await hashPassword("same", ITER), "fresh salt each time");
  assert.ok(constantTimeEqual("abc", "abc"));
  assert.ok(!constantTimeEqual("abc", "abd"));
  assert.ok(!constantTimeEqual("abc", "abcd"));
  assert.equal(await sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
});

Deno.test("the CLI prints a usable AUTH_USERS line and AUTH_TOKENS entry", async () => {
  const run = async (args: string[], input: string) => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-lock", new URL("../../lib/cli/auth.ts", import.meta.url).pathname, ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input));
    await writer.close();
    const out = await child.output();
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
  };
  const hashed = await run(["hash", "alice"], "a long password\n");
  assert.equal(hashed.code, 0, hashed.stderr);
  const line = hashed.stdout.trim();
  assert.match(line, /^alice:pbkdf2-sha256:600000:/);
  const { config, problems } = parse({ AUTH: "basic", AUTH_USERS: line, AUTH_GRANTS: "alice:read:*" });
  assert.deepEqual(problems, []);
  assert.ok(await verifyPassword("a long password", config.users.get("alice")!));
  const short = await run(["hash"], "short\n");
  assert.equal(short.code, 2);
  const token = await run(["token", "ohif"], "");
  assert.equal(token.code, 0);
  const secret = /token \(give to the client, shown once\): (\S+)/.exec(token.stdout)![1];
  const entry = /AUTH_TOKENS entry: (ohif:[0-9a-f]{64})/.exec(token.stdout)![1];
  assert.equal(entry, `ohif:${await sha256Hex(secret)}`);
  assert.equal((await run(["bogus"], "")).code, 2);
});

Deno.test("Authenticator with static tokens and Basic users", async (t) => {
  const { token, sha256 } = await makeToken();
  const other = await makeToken();
  const { config, problems } = parse({
    AUTH: "token,basic",
    AUTH_TOKENS: `ohif:${sha256},ci:${other.sha256}`,
    AUTH_USERS: `alice:${await hashPassword("wonderland", ITER)}`,
    AUTH_GRANTS: "ohif:read:* alice:read:PACS *:read:PUBLIC",
  });
  assert.deepEqual(problems, []);
  const auth = new Authenticator(config);
  const request = (authorization?: string) => ({
    headers: new Headers(authorization ? { authorization } : {}),
  });

  await t.step("no credentials: 401 with a challenge per scheme", async () => {
    const error = await rejectsWith(
      auth.authenticate(request()),
      401,
      /Authentication required: send Authorization: Bearer <token> or Authorization: Basic/,
    );
    assert.equal(
      error.headers["www-authenticate"],
      'Bearer realm="dicomweb", Basic realm="dicomweb", charset="UTF-8"',
    );
  });
  await t.step("a known token: its name, its grants and the * grants", async () => {
    const who = await auth.authenticate(request(`Bearer ${token}`));
    assert.deepEqual(who, {
      subject: "ohif",
      method: "token",
      grants: [{ action: "read", aet: "*" }, { action: "read", aet: "PUBLIC" }],
    });
    assert.equal((await auth.authenticate(request(`bearer   ${other.token}`))).subject, "ci");
  });
  await t.step("an unknown or altered token: 401 invalid_token", async () => {
    const error = await rejectsWith(
      // the last character changed (a random token ends in "A" one time in 64)
      auth.authenticate(request(`Bearer ${token.slice(0, -1)}${token.endsWith("A") ? "B" : "A"}`)),
      401,
      /Invalid bearer token/,
    );
    assert.match(error.headers["www-authenticate"], /error="invalid_token"/);
    await rejectsWith(auth.authenticate(request(`Bearer ${sha256}`)), 401, /Invalid bearer token/);
    await rejectsWith(auth.authenticate(request("Bearer")), 401, /Unsupported authorization scheme/);
  });
  await t.step("Basic: right password, wrong password, unknown user, garbage", async () => {
    assert.equal((await auth.authenticate(request(basic("alice", "wonderland")))).subject, "alice");
    assert.equal((await auth.authenticate(request(basic("alice", "wonderland")))).subject, "alice", "cached");
    await rejectsWith(
      auth.authenticate(request(basic("alice", "Wonderland"))),
      401,
      /^Invalid user name or password$/,
    );
    await rejectsWith(
      auth.authenticate(request(basic("mallory", "wonderland"))),
      401,
      /^Invalid user name or password$/,
    );
    await rejectsWith(auth.authenticate(request("Basic !!!")), 401, /Malformed Basic credentials/);
    await rejectsWith(
      auth.authenticate(request("Basic " + btoa("nocolon"))),
      401,
      /Malformed Basic credentials/,
    );
    await rejectsWith(
      auth.authenticate(request("Digest username=alice")),
      401,
      /Unsupported authorization scheme "digest"/,
    );
  });
  await t.step("AUTH=none: anonymous with every grant", async () => {
    const none = new Authenticator(parse({}).config);
    assert.equal(none.enabled, false);
    assert.deepEqual(await none.authenticate(request()), {
      subject: "anonymous",
      method: "none",
      grants: [{ action: "*", aet: "*" }],
    });
  });
});

Deno.test("Authenticator with OIDC bearer JWTs from a local issuer", async (t) => {
  const idp = await startIssuer();
  try {
    const env = (extra: Record<string, string> = {}) =>
      parse({
        AUTH: "jwt",
        OIDC_ISSUER: idp.issuer,
        OIDC_AUDIENCE: "dicomweb",
        OIDC_JWKS_URL: idp.jwksUrl,
        ...extra,
      });
    const { config, problems } = env({ AUTH_GRANTS: "carol:write:RESEARCH" });
    assert.deepEqual(problems, []);
    const auth = new Authenticator(config, { jwksCooldownMs: 0 });
    const bearer = (token: string) => ({ headers: new Headers({ authorization: `Bearer ${token}` }) });
    const now = Math.floor(Date.now() / 1000);

    await t.step("a valid token: subject and grants from scope, scp and AUTH_GRANTS", async () => {
      const who = await auth.authenticate(
        bearer(await idp.sign({ sub: "alice", aud: "dicomweb", scope: "openid dicomweb:read:PACS" })),
      );
      assert.deepEqual(who, { subject: "alice", method: "jwt", grants: [{ action: "read", aet: "PACS" }] });
      const scp = await auth.authenticate(
        bearer(await idp.sign({ sub: "carol", aud: ["other", "dicomweb"], scp: ["dicomweb:read:*"] })),
      );
      assert.deepEqual(scp.grants, [{ action: "read", aet: "*" }, { action: "write", aet: "RESEARCH" }]);
    });
    await t.step("wrong iss, wrong aud, no sub, no exp: 401 invalid_token saying which", async () => {
      const cases: [Record<string, unknown>, RegExp][] = [
        [{ sub: "a", aud: "dicomweb", iss: "https://evil.example" }, /"iss" claim check failed/],
        [{ sub: "a", aud: "someone-else" }, /"aud" claim check failed/],
        [{ sub: "a" }, /"aud" claim check failed/],
        [{ aud: "dicomweb" }, /Token has no "sub" claim/],
        [{ sub: "a", aud: "dicomweb", exp: null }, /"exp" claim check failed/],
      ];
      for (const [claims, message] of cases) {
        const error = await rejectsWith(auth.authenticate(bearer(await idp.sign(claims))), 401, message);
        assert.match(
          error.headers["www-authenticate"],
          /^Bearer realm="dicomweb", error="invalid_token", error_description="/,
        );
      }
    });
    await t.step("exp and nbf with the configured clock skew (30 s)", async () => {
      await auth.authenticate(bearer(await idp.sign({ sub: "a", aud: "dicomweb", exp: now - 10 })));
      await rejectsWith(
        auth.authenticate(bearer(await idp.sign({ sub: "a", aud: "dicomweb", exp: now - 120 }))),
        401,
        /Invalid token: expired/,
      );
      await auth.authenticate(bearer(await idp.sign({ sub: "a", aud: "dicomweb", nbf: now + 10 })));
      await rejectsWith(
        auth.authenticate(bearer(await idp.sign({ sub: "a", aud: "dicomweb", nbf: now + 120 }))),
        401,
        /"nbf" claim check failed/,
      );
      const strict = new Authenticator(env({ OIDC_CLOCK_SKEW_SECONDS: "0" }).config);
      await rejectsWith(
        strict.authenticate(bearer(await idp.sign({ sub: "a", aud: "dicomweb", exp: now - 10 }))),
        401,
        /expired/,
      );
    });
    await t.step(
      "forged tokens: alg none, HS256 with the public key, a foreign key under a known kid, tampering",
      async () => {
        const b64 = (value: unknown) =>
          btoa(JSON.stringify(value)).replaceAll("=", "").replaceAll("+", "-").replaceAll("/", "_");
        const claims = {
          sub: "mallory",
          aud: "dicomweb",
          iss: idp.issuer,
          exp: now + 300,
          scope: "dicomweb:*",
        };
        await rejectsWith(
          auth.authenticate(bearer(`${b64({ alg: "none" })}.${b64(claims)}.`)),
          401,
          /Invalid token/,
        );
        const hs = await crypto.subtle.importKey(
          "raw",
          new TextEncoder().encode("secret"),
          { name: "HMAC", hash: "SHA-256" },
          false,
          ["sign"],
        );
        const signingInput = `${b64({ alg: "HS256", kid: idp.currentKid })}.${b64(claims)}`;
        const mac = new Uint8Array(
          await crypto.subtle.sign("HMAC", hs, new TextEncoder().encode(signingInput)),
        );
        const hsToken = `${signingInput}.${
          btoa(String.fromCharCode(...mac)).replaceAll("=", "").replaceAll("+", "-").replaceAll("/", "_")
        }`;
        await rejectsWith(auth.authenticate(bearer(hsToken)), 401, /Invalid token: algorithm not allowed/);
        await rejectsWith(
          auth.authenticate(bearer(await idp.signForeign(claims))),
          401,
          /Invalid token: bad signature/,
        );
        const good = await idp.sign({ sub: "alice", aud: "dicomweb", scope: "dicomweb:read:PACS" });
        const [h, , s] = good.split(".");
        await rejectsWith(
          auth.authenticate(bearer(`${h}.${b64(claims)}.${s}`)),
          401,
          /Invalid token: bad signature/,
        );
        await rejectsWith(auth.authenticate(bearer("a.b.c")), 401, /Invalid token: malformed token/);
      },
    );
    await t.step(
      "key rotation: a new kid is fetched; a retired key stops working after the cache expires",
      async () => {
        const before = idp.jwksFetches;
        const oldKid = idp.currentKid;
        const newKid = await idp.rotate("ES256");
        const who = await auth.authenticate(bearer(await idp.sign({ sub: "rotated", aud: "dicomweb" })));
        assert.equal(who.subject, "rotated");
        assert.ok(idp.jwksFetches > before, "the JWKS was fetched again for the unknown kid");
        idp.retire(oldKid);
        const fresh = new Authenticator(config, { jwksCooldownMs: 0 });
        await rejectsWith(
          fresh.authenticate(bearer(await idp.sign({ sub: "a", aud: "dicomweb" }, { kid: oldKid }))),
          401,
          /key the issuer does not publish/,
        );
        assert.equal(
          (await fresh.authenticate(bearer(await idp.sign({ sub: "b", aud: "dicomweb" }, { kid: newKid }))))
            .subject,
          "b",
        );
      },
    );
    await t.step("discovery through /.well-known/openid-configuration", async () => {
      const { config: discovered } = parse({
        AUTH: "jwt",
        OIDC_ISSUER: idp.issuer,
        OIDC_AUDIENCE: "dicomweb",
      });
      const viaDiscovery = new Authenticator(discovered);
      assert.equal(
        (await viaDiscovery.authenticate(bearer(await idp.sign({ sub: "d", aud: "dicomweb" })))).subject,
        "d",
      );
      const { config: wrongIssuer } = parse({
        AUTH: "jwt",
        OIDC_ISSUER: idp.issuer + "/other",
        OIDC_AUDIENCE: "dicomweb",
      });
      await rejectsWith(
        new Authenticator(wrongIssuer).authenticate(bearer(await idp.sign({ sub: "d", aud: "dicomweb" }))),
        503,
        /identity provider/,
      );
    });
    await t.step("issuer down: cached keys keep working, no keys yet is a 503 (not a 401)", async () => {
      const cold = new Authenticator(config);
      idp.failing = true;
      try {
        await auth.authenticate(bearer(await idp.sign({ sub: "warm", aud: "dicomweb" })));
        const error = await rejectsWith(
          cold.authenticate(bearer(await idp.sign({ sub: "cold", aud: "dicomweb" }))),
          503,
          /identity provider's keys are unavailable/,
        );
        assert.equal(error.headers["retry-after"], "5");
      } finally {
        idp.failing = false;
      }
      assert.equal(
        (await cold.authenticate(bearer(await idp.sign({ sub: "cold", aud: "dicomweb" })))).subject,
        "cold",
        "recovers",
      );
    });
  } finally {
    await idp.close();
  }
});

Deno.test("the guarded handler: 401/403 before any store access, unknown = forbidden, /aets filtered", async (t) => {
  const store = new MemoryStore(["pacs", "research"]);
  const study = "1.2.840.1";
  for (const [bucket, n] of [["pacs", 1], ["research", 2]] as const) {
    const bytes = buildInstance({ study, series: `${study}.${n}`, sop: `${study}.${n}.1` });
    await store.put(bucket, `${study}/${study}.${n}/${study}.${n}.1.dcm`, bytes);
  }
  const observed = observe(store);
  const reader = await makeToken();
  const writer = await makeToken();
  const idp = await startIssuer();
  try {
    const { handler } = securedHandler(observed, {
      AETS: "PACS=pacs,RESEARCH=research",
      AUTH: "token,basic,jwt",
      AUTH_TOKENS: `reader:${reader.sha256},writer:${writer.sha256}`,
      AUTH_USERS: `alice:${await hashPassword("wonderland", ITER)}`,
      AUTH_GRANTS: "reader:read:PACS writer:write:PACS writer:read:PACS alice:read:*",
      OIDC_ISSUER: idp.issuer,
      OIDC_AUDIENCE: "dicomweb",
      OIDC_JWKS_URL: idp.jwksUrl,
    });
    const call = async (path: string, init: RequestInit & { token?: string } = {}) => {
      const headers = new Headers(init.headers);
      if (init.token) {
        headers.set("authorization", init.token.startsWith("Basic ") ? init.token : `Bearer ${init.token}`);
      }
      const response = await handler(new Request(`http://127.0.0.1${path}`, { ...init, headers }), {
        remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 50000 },
      });
      const text = await response.text();
      return { status: response.status, headers: response.headers, text };
    };

    await t.step("health checks and CORS preflights need no credentials and name no AET", async () => {
      assert.equal((await call("/healthz")).status, 200);
      const ready = await call("/readyz");
      assert.equal(ready.status, 200);
      assert.ok(!/PACS|RESEARCH|pacs|research/.test(ready.text), ready.text);
      const preflight = await call(`/aets/PACS/studies/${study}`, {
        method: "OPTIONS",
        headers: { origin: "https://viewer.example.org", "access-control-request-method": "GET" },
      });
      assert.equal(preflight.status, 204);
    });
    await t.step("no credentials: 401 with WWW-Authenticate, the store untouched", async () => {
      const before = observed.calls.length;
      for (
        const path of [
          "/aets",
          `/aets/PACS/studies/${study}`,
          `/aets/NOPE/studies/${study}/metadata`,
          "/whatever",
        ]
      ) {
        const response = await call(path);
        assert.equal(response.status, 401, path);
        assert.match(
          response.headers.get("www-authenticate")!,
          /^Bearer realm="dicomweb", Basic realm="dicomweb"/,
        );
        assert.match(JSON.parse(response.text).error, /Authentication required/);
      }
      assert.deepEqual(observed.calls.slice(before), []);
    });
    await t.step("a forbidden AET and an unknown AET get the same 403, the store untouched", async () => {
      const before = observed.calls.length;
      const forbidden = await call(`/aets/RESEARCH/studies/${study}`, { token: reader.token });
      const unknown = await call(`/aets/NOPE/studies/${study}`, { token: reader.token });
      const traversal = await call(`/aets/..%2Fresearch/studies/${study}`, { token: reader.token });
      assert.equal(forbidden.status, 403);
      assert.equal(unknown.status, 403);
      assert.equal(traversal.status, 403);
      assert.equal(forbidden.text.replace("RESEARCH", "X"), unknown.text.replace("NOPE", "X"));
      assert.deepEqual(Object.fromEntries(forbidden.headers), Object.fromEntries(unknown.headers));
      assert.equal(
        (await call(`/aets/PACS/studies/${study}`, { token: reader.token, method: "POST", body: "x" }))
          .status,
        403,
        "read is not write",
      );
      assert.equal(
        (await call("/whatever", { token: reader.token })).status,
        403,
        "server-wide routes need a * grant",
      );
      assert.deepEqual(observed.calls.slice(before), []);
    });
    await t.step("allowed requests reach the handler", async () => {
      const ok = await call(`/aets/PACS/studies/${study}/metadata`, { token: reader.token });
      assert.equal(ok.status, 200, ok.text);
      assert.equal(JSON.parse(ok.text).length, 1);
      const missing = await call(`/aets/PACS/studies/9.9.9/metadata`, { token: reader.token });
      assert.equal(missing.status, 404, "allowed callers learn what exists in their AET");
      const basicOk = await call(`/aets/RESEARCH/studies/${study}/metadata`, {
        token: basic("alice", "wonderland"),
      });
      assert.equal(basicOk.status, 200);
      const jwt = await idp.sign({ sub: "dora", aud: "dicomweb", scope: "dicomweb:read:RESEARCH" });
      assert.equal((await call(`/aets/RESEARCH/studies/${study}/metadata`, { token: jwt })).status, 200);
      assert.equal((await call(`/aets/PACS/studies/${study}/metadata`, { token: jwt })).status, 403);
      const write = await call(`/aets/PACS/studies`, {
        token: writer.token,
        method: "POST",
        headers: { "content-type": 'multipart/related; type="application/dicom"; boundary=x' },
        body: "--x--\r\n",
      });
      assert.notEqual(write.status, 403, "a writer passes the guard (405 until STOW-RS exists)");
      assert.notEqual(write.status, 401);
    });
    await t.step("GET /aets lists only what the caller may see", async () => {
      assert.deepEqual(JSON.parse((await call("/aets", { token: reader.token })).text), ["PACS"]);
      assert.deepEqual(JSON.parse((await call("/aets", { token: basic("alice", "wonderland") })).text), [
        "PACS",
        "RESEARCH",
      ]);
      const nobody = await idp.sign({ sub: "nobody", aud: "dicomweb", scope: "openid" });
      assert.deepEqual(JSON.parse((await call("/aets", { token: nobody })).text), []);
    });
  } finally {
    await idp.close();
  }
});

Deno.test("TRUSTED_PROXIES: who may set Forwarded / X-Forwarded-*, and the client address", async (t) => {
  const { parseTransportConfig, parseTrustedProxies, isTrustedPeer, clientAddress, honoursForwarded } =
    await import("../../lib/security/proxies.ts");
  await t.step("settings: loopback by default, names, CIDRs, none; bad entries explained", () => {
    const problems: string[] = [];
    const defaults = parseTransportConfig({}, problems);
    assert.equal(defaults.tls, undefined);
    assert.ok(isTrustedPeer("127.0.0.1", defaults.trustedProxies));
    assert.ok(isTrustedPeer("::1", defaults.trustedProxies));
    assert.ok(isTrustedPeer("::ffff:127.0.0.2", defaults.trustedProxies));
    assert.ok(!isTrustedPeer("10.0.0.1", defaults.trustedProxies));
    const lan = parseTrustedProxies("private, 203.0.113.0/24, 2001:db8::/32");
    for (const a of ["10.1.2.3", "172.31.0.1", "192.168.1.1", "fd00::1", "203.0.113.200", "2001:db8:1::7"]) {
      assert.ok(isTrustedPeer(a, lan), a);
    }
    for (const a of ["172.32.0.1", "203.0.114.1", "2001:db9::1", "127.0.0.1", "garbage", undefined]) {
      assert.ok(!isTrustedPeer(a, lan), String(a));
    }
    assert.deepEqual(parseTrustedProxies("none").ranges, []);
    assert.ok(isTrustedPeer("8.8.8.8", parseTrustedProxies("0.0.0.0/0")));
    parseTransportConfig({ TRUSTED_PROXIES: "10.0.0.0/33" }, problems);
    parseTransportConfig({ TRUSTED_PROXIES: "proxy.example.org" }, problems);
    parseTransportConfig({ TLS_CERT_FILE: "cert.pem" }, problems);
    assert.match(
      problems[0],
      /TRUSTED_PROXIES="10\.0\.0\.0\/33" is not valid: "10\.0\.0\.0\/33" has a bad prefix length: use \/0 to \/32/,
    );
    assert.match(
      problems[1],
      /"proxy\.example\.org" is not an IP address, a CIDR range or one of loopback, private, linklocal, none/,
    );
    assert.equal(
      problems[2],
      "TLS_CERT_FILE is set but TLS_KEY_FILE is not: set both (PEM certificate chain and PEM private key) or neither",
    );
  });
  await t.step("clientAddress(): forwarded chains only from trusted peers, read from the right", () => {
    const proxies = parseTrustedProxies("10.0.0.0/8");
    const h = (init: Record<string, string>) => new Headers(init);
    const xff = h({ "x-forwarded-for": "198.51.100.1, 203.0.113.9, 10.0.0.2" });
    assert.equal(
      clientAddress(xff, { hostname: "10.0.0.1" }, proxies),
      "203.0.113.9",
      "a spoofed left-most entry is ignored",
    );
    assert.equal(
      clientAddress(xff, { hostname: "192.0.2.1" }, proxies),
      "192.0.2.1",
      "an untrusted peer is the client",
    );
    assert.equal(
      clientAddress(h({ forwarded: 'for="[2001:db8::1]:4711";proto=https, for=10.0.0.3' }), {
        hostname: "10.0.0.1",
      }, proxies),
      "2001:db8::1",
    );
    assert.equal(
      clientAddress(h({ forwarded: "for=unknown" }), { hostname: "10.0.0.1" }, proxies),
      "10.0.0.1",
    );
    assert.equal(clientAddress(h({}), { hostname: "10.0.0.1" }, proxies), "10.0.0.1");
    assert.ok(honoursForwarded({ hostname: "10.9.9.9" }, proxies));
    assert.ok(!honoursForwarded({ hostname: "192.0.2.1" }, proxies));
    assert.ok(honoursForwarded(undefined, proxies), "a direct call of the handler (tests)");
  });
  await t.step(
    "the guard strips forwarded headers from untrusted peers before the handler sees them",
    async () => {
      const store = new MemoryStore(["pacs"]);
      const study = "1.2.840.5";
      await store.put(
        "pacs",
        `${study}/${study}.1/${study}.1.1.dcm`,
        buildInstance({ study, series: `${study}.1`, sop: `${study}.1.1` }),
      );
      const { handler } = securedHandler(store, { AETS: "PACS=pacs", TRUSTED_PROXIES: "10.0.0.0/8" });
      const metadata = async (hostname: string) => {
        const response = await handler(
          new Request(`http://127.0.0.1:8080/aets/PACS/studies/${study}/metadata`, {
            headers: {
              "x-forwarded-host": "evil.example",
              "x-forwarded-proto": "https",
              forwarded: "host=evil.example;proto=https",
            },
          }),
          { remoteAddr: { transport: "tcp", hostname, port: 1 } },
        );
        return JSON.stringify(await response.json());
      };
      const viaProxy = await metadata("10.0.0.1");
      assert.match(viaProxy, /https:\/\/evil\.example\/aets\/PACS/, "a trusted proxy sets the public URL");
      const direct = await metadata("192.0.2.1");
      assert.ok(!direct.includes("evil.example"), "an untrusted peer cannot");
      assert.match(direct, /http:\/\/127\.0\.0\.1:8080\/aets\/PACS/);
    },
  );
});

Deno.test("TLS straight from Deno.serve with TLS_CERT_FILE / TLS_KEY_FILE", async (t) => {
  const { loadTls } = await import("../../lib/security/proxies.ts");
  const dir = await Deno.makeTempDir({ prefix: "tls-" });
  try {
    const made = await makeTestCertificates(dir);
    if (!made) {
      skipFor(t.name, "openssl", "apt-get install openssl");
      return;
    }
    await t.step("loadTls() explains unreadable and non-PEM files", async () => {
      await assert.rejects(
        loadTls({ certFile: `${dir}/nope.pem`, keyFile: `${dir}/key.pem` }),
        /TLS_CERT_FILE=.*nope\.pem cannot be read/,
      );
      await assert.rejects(
        loadTls({ certFile: `${dir}/key.pem`, keyFile: `${dir}/key.pem` }),
        /TLS_CERT_FILE=.* is not a PEM certificate chain/,
      );
      await assert.rejects(
        loadTls({ certFile: `${dir}/cert.pem`, keyFile: `${dir}/cert.pem` }),
        /TLS_KEY_FILE=.* is not a PEM private key/,
      );
    });
    await t.step("an https round trip with the guard in front", async () => {
      const tls = await loadTls({ certFile: `${dir}/cert.pem`, keyFile: `${dir}/key.pem` });
      const token = await makeToken();
      const { handler } = securedHandler(new MemoryStore(["pacs"]), {
        AETS: "PACS=pacs",
        AUTH: "token",
        AUTH_TOKENS: `t:${token.sha256}`,
        AUTH_GRANTS: "t:read:*",
      });
      const server = Deno.serve({ ...tls, port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
      const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(`${dir}/ca.pem`)] });
      try {
        const url = `https://localhost:${server.addr.port}/aets`;
        const denied = await fetch(url, { client });
        assert.equal(denied.status, 401);
        await denied.body?.cancel();
        const ok = await fetch(url, { client, headers: { authorization: `Bearer ${token.token}` } });
        assert.deepEqual(await ok.json(), ["PACS"]);
        await assert.rejects(fetch(url), "an unknown CA is refused by default");
      } finally {
        client.close();
        await server.shutdown();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
