/**
 * Secrets for the authentication settings: `deno task auth hash [NAME]` (a password hash for `AUTH_USERS`,
 * the password read from the terminal or stdin), `deno task auth token [NAME]` (a random API token and its
 * `AUTH_TOKENS` line), `deno task auth sha256` (the SHA-256 of an existing token).
 *
 * @module
 */

import { hashPassword, makeToken, sha256Hex } from "../security/passwords.ts";
import { NAME_PATTERN } from "../security/auth_config.ts";

const encoder = new TextEncoder();

async function readSecret(prompt: string): Promise<string> {
  if (Deno.stdin.isTerminal()) {
    await Deno.stderr.write(encoder.encode(prompt));
    Deno.stdin.setRaw(true);
    const bytes: number[] = [];
    const buffer = new Uint8Array(1);
    try {
      while ((await Deno.stdin.read(buffer)) === 1) {
        const b = buffer[0];
        if (b === 0x0d || b === 0x0a) break;
        if (b === 0x03) throw new Error("Cancelled");
        if (b === 0x7f || b === 0x08) bytes.pop();
        else bytes.push(b);
      }
    } finally {
      Deno.stdin.setRaw(false);
      await Deno.stderr.write(encoder.encode("\n"));
    }
    return new TextDecoder().decode(new Uint8Array(bytes));
  }
  const text = await new Response(Deno.stdin.readable).text();
  return text.replace(/\r?\n$/, "");
}

async function cli(args: string[]): Promise<number> {
  const [command, name] = args;
  if (name !== undefined && !NAME_PATTERN.test(name)) {
    console.error(`Invalid name ${JSON.stringify(name)}: use letters, digits and _ . @ + -`);
    return 2;
  }
  if (command === "hash") {
    const password = await readSecret("Password: ");
    if (password.length < 8) {
      console.error("Refusing a password shorter than 8 characters");
      return 2;
    }
    const hash = await hashPassword(password);
    console.log(name ? `${name}:${hash}` : hash);
    console.error(
      `Add it to AUTH_USERS (comma-separated), and grants to AUTH_GRANTS, e.g. ${name ?? "NAME"}:read:*`,
    );
    return 0;
  }
  if (command === "token") {
    const { token, sha256 } = await makeToken();
    console.log(`token (give to the client, shown once): ${token}`);
    console.log(`AUTH_TOKENS entry: ${name ?? "NAME"}:${sha256}`);
    return 0;
  }
  if (command === "sha256") {
    console.log(await sha256Hex(await readSecret("Token: ")));
    return 0;
  }
  console.error(
    "Usage:\n  deno task auth hash [NAME]    password hash for AUTH_USERS (password read from stdin)\n" +
      "  deno task auth token [NAME]   new random API token and its AUTH_TOKENS entry\n" +
      "  deno task auth sha256         SHA-256 hex of an existing token read from stdin",
  );
  return 2;
}

if (import.meta.main) Deno.exit(await cli(Deno.args));
