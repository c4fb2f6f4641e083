/**
 * Secrets: PBKDF2-SHA256 password hashes for `AUTH_USERS` (hash, parse, verify), random API tokens and their
 * SHA-256 for `AUTH_TOKENS`, and constant-time comparison.
 *
 * @module
 */

/** A parsed `pbkdf2-sha256:ITERATIONS:SALT:HASH` password hash. */
export interface PasswordHash {
  /** PBKDF2 iterations. */
  iterations: number;
  /** The salt. */
  salt: Uint8Array;
  /** The derived key. */
  hash: Uint8Array;
}

/** Fewest PBKDF2 iterations accepted in `AUTH_USERS`. */
export const MIN_ITERATIONS = 100_000;

/** Iterations of hashes made by {@linkcode hashPassword} (OWASP 2023 for PBKDF2-HMAC-SHA256). */
export const DEFAULT_ITERATIONS = 600_000;

/** UTF-8 encoder. */
export const encoder = new TextEncoder();

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

/** Lower-case hex of `bytes`. */
export function hex(bytes: ArrayBuffer | Uint8Array): string {
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
 * import { hashPassword } from "./passwords.ts";
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
