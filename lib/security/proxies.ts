/**
 * How a connection reaches the server: TLS straight from `Deno.serve` (`TLS_CERT_FILE`, `TLS_KEY_FILE`), and
 * which peers are proxies whose `Forwarded` / `X-Forwarded-*` headers are believed (`TRUSTED_PROXIES`).
 *
 * A request from any other peer has those headers ignored: its client address is the peer's, and public
 * URLs are built from `PUBLIC_URL` or `Host`.
 *
 * @module
 */

import { MalformedError } from "../util/errors.ts";
import { settingsReader } from "../util/settings.ts";

/** The TLS and proxy settings, validated. */
export interface TransportConfig {
  /** PEM certificate chain and key files; both set or neither. */
  tls?: { certFile: string; keyFile: string };
  /** Peers whose forwarded headers are honoured. */
  trustedProxies: TrustedProxies;
}

/** The names {@linkcode parseTransportConfig} reads (add them to `CONFIG_NAMES`). */
export const TRANSPORT_CONFIG_NAMES = ["TLS_CERT_FILE", "TLS_KEY_FILE", "TRUSTED_PROXIES"] as const;

/** A list of address ranges. */
export interface TrustedProxies {
  /** The setting as written, for messages. */
  readonly text: string;
  /** The address ranges trusted. */
  readonly ranges: readonly AddressRange[];
}

/** One CIDR range; IPv4 addresses are held as IPv4-mapped IPv6 (`::ffff:a.b.c.d`). */
export interface AddressRange {
  /** 16 bytes. */
  readonly address: Uint8Array;
  /** Prefix length in bits, 0..128. */
  readonly bits: number;
}

const NAMED: Record<string, string[]> = {
  loopback: ["127.0.0.0/8", "::1/128"],
  private: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"],
  linklocal: ["169.254.0.0/16", "fe80::/10"],
};

/**
 * Validates `TLS_CERT_FILE`, `TLS_KEY_FILE` and `TRUSTED_PROXIES` (default `loopback`); problems are pushed
 * onto `problems`.
 *
 * @example
 * ```ts
 * import { parseTransportConfig } from "./proxies.ts";
 * const t = parseTransportConfig({ TRUSTED_PROXIES: "10.0.0.0/8, loopback" }, []);
 * t.trustedProxies.ranges.length; // 3
 * ```
 */
export function parseTransportConfig(
  env: Record<string, string | undefined>,
  problems: string[],
): TransportConfig {
  const s = settingsReader(env, problems);
  const certFile = s.get("TLS_CERT_FILE");
  const keyFile = s.get("TLS_KEY_FILE");
  let tls: TransportConfig["tls"];
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const [set, unset] = certFile !== undefined
      ? ["TLS_CERT_FILE", "TLS_KEY_FILE"]
      : ["TLS_KEY_FILE", "TLS_CERT_FILE"];
    s.problem(
      `${set} is set but ${unset} is not: set both (PEM certificate chain and PEM private key) or neither`,
    );
  } else if (certFile !== undefined && keyFile !== undefined) tls = { certFile, keyFile };
  let trustedProxies: TrustedProxies;
  try {
    trustedProxies = parseTrustedProxies(s.get("TRUSTED_PROXIES") ?? "loopback");
  } catch (error) {
    s.problem(
      `TRUSTED_PROXIES=${JSON.stringify(env.TRUSTED_PROXIES)} is not valid: ${(error as Error).message}`,
    );
    trustedProxies = parseTrustedProxies("loopback");
  }
  return { tls, trustedProxies };
}

/**
 * Parses a comma list of addresses, CIDR ranges and the names `loopback`, `private`, `linklocal`; `none`
 * (alone) trusts no peer. Throws a `SyntaxError` naming a bad entry.
 *
 * @example
 * ```ts
 * import { isTrustedPeer, parseTrustedProxies } from "./proxies.ts";
 * const proxies = parseTrustedProxies("10.1.0.0/16,::1");
 * isTrustedPeer("10.1.2.3", proxies); // true
 * isTrustedPeer("10.2.0.1", proxies); // false
 * ```
 */
export function parseTrustedProxies(text: string): TrustedProxies {
  const entries = text.split(",").map((e) => e.trim().toLowerCase()).filter((e) => e !== "");
  if (entries.length === 1 && entries[0] === "none") return { text, ranges: [] };
  const ranges: AddressRange[] = [];
  for (const entry of entries) {
    for (const cidr of NAMED[entry] ?? [entry]) {
      const slash = cidr.indexOf("/");
      const host = slash < 0 ? cidr : cidr.slice(0, slash);
      const address = parseAddress(host);
      if (address === undefined) {
        throw new MalformedError(
          `"${entry}" is not an IP address, a CIDR range or one of loopback, private, linklocal, none`,
        );
      }
      const v4 = isMappedV4(address) && !host.includes(":");
      let bits = 128;
      if (slash >= 0) {
        const raw = cidr.slice(slash + 1);
        const n = Number(raw);
        if (!/^\d{1,3}$/.test(raw) || n > (v4 ? 32 : 128)) {
          throw new MalformedError(`"${entry}" has a bad prefix length: use /0 to /${v4 ? 32 : 128}`);
        }
        bits = v4 ? 96 + n : n;
      }
      ranges.push({ address, bits });
    }
  }
  return { text, ranges };
}

/** Per setting, the addresses checked against its ranges and the answer. */
const VERDICTS = new WeakMap<TrustedProxies, Map<string, boolean>>();

/** Whether `address` (IPv4, IPv6, IPv4-mapped IPv6, optionally in brackets) lies in one of the ranges. */
export function isTrustedPeer(address: string | undefined, proxies: TrustedProxies): boolean {
  if (address === undefined) return false;
  // a few peers (the proxies, the clients on the network) ask again and again: their answer is kept
  let verdicts = VERDICTS.get(proxies);
  if (verdicts === undefined) VERDICTS.set(proxies, verdicts = new Map());
  const known = verdicts.get(address);
  if (known !== undefined) return known;
  const bytes = parseAddress(address);
  const trusted = bytes !== undefined && proxies.ranges.some((range) => inRange(bytes, range));
  if (verdicts.size >= 1024) verdicts.clear();
  verdicts.set(address, trusted);
  return trusted;
}

/** The peer of a connection, as `Deno.serve` reports it (`info.remoteAddr`). */
export interface Peer {
  /** The peer's address. */
  hostname: string;
  /** The peer's port. */
  port?: number;
}

/**
 * Whether to honour `Forwarded` / `X-Forwarded-*` on a request from `peer`: only when the peer is a trusted
 * proxy. A request handled without a connection (`peer` undefined: a direct call of the handler, as in unit
 * tests) is treated as trusted.
 */
export function honoursForwarded(peer: Peer | undefined, proxies: TrustedProxies): boolean {
  return peer === undefined || isTrustedPeer(peer.hostname, proxies);
}

/**
 * The client's address: the peer's own, or, when the peer is a trusted proxy, the nearest address in
 * `X-Forwarded-For` (or `Forwarded: for=`) that is not itself a trusted proxy, read from the right.
 *
 * @example
 * ```ts
 * import { clientAddress, parseTrustedProxies } from "./proxies.ts";
 * const headers = new Headers({ "x-forwarded-for": "203.0.113.9, 10.0.0.2" });
 * clientAddress(headers, { hostname: "10.0.0.1" }, parseTrustedProxies("10.0.0.0/8")); // "203.0.113.9"
 * clientAddress(headers, { hostname: "192.0.2.1" }, parseTrustedProxies("10.0.0.0/8")); // "192.0.2.1"
 * ```
 */
export function clientAddress(headers: Headers, peer: Peer | undefined, proxies: TrustedProxies): string {
  const own = peer?.hostname ?? "local";
  if (peer === undefined || !isTrustedPeer(peer.hostname, proxies)) return own;
  const hops = forwardedFor(headers);
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i];
    if (parseAddress(hop) === undefined) return own; // an obfuscated or garbled hop: stop trusting the chain
    if (!isTrustedPeer(hop, proxies)) return stripBrackets(hop);
  }
  return hops.length > 0 ? stripBrackets(hops[0]) : own;
}

function forwardedFor(headers: Headers): string[] {
  const forwarded = headers.get("forwarded");
  if (forwarded !== null) {
    const hops: string[] = [];
    for (const element of forwarded.split(",")) {
      for (const pair of element.split(";")) {
        const eq = pair.indexOf("=");
        if (eq < 0 || pair.slice(0, eq).trim().toLowerCase() !== "for") continue;
        let value = pair.slice(eq + 1).trim();
        if (value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
        // for="[2001:db8::1]:4711" or for=192.0.2.43:80
        const bracket = /^\[([^\]]+)\](?::\d+)?$/.exec(value);
        if (bracket) value = bracket[1];
        else if (/^[\d.]+:\d+$/.test(value)) value = value.slice(0, value.lastIndexOf(":"));
        hops.push(value);
      }
    }
    return hops;
  }
  const xff = headers.get("x-forwarded-for");
  return xff === null ? [] : xff.split(",").map((h) => h.trim()).filter((h) => h !== "");
}

function stripBrackets(address: string): string {
  return address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address;
}

function inRange(bytes: Uint8Array, range: AddressRange): boolean {
  const full = Math.floor(range.bits / 8);
  for (let i = 0; i < full; i++) if (bytes[i] !== range.address[i]) return false;
  const rest = range.bits % 8;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (bytes[full] & mask) === (range.address[full] & mask);
}

function isMappedV4(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** 16 bytes for an IPv4 or IPv6 address (zone ids and brackets allowed), or undefined. */
export function parseAddress(text: string): Uint8Array | undefined {
  let s = stripBrackets(text.trim());
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  const v4 = parseV4(s);
  if (v4) {
    const out = new Uint8Array(16);
    out[10] = 0xff;
    out[11] = 0xff;
    out.set(v4, 12);
    return out;
  }
  if (!s.includes(":") || !/^[0-9a-f:.]+$/i.test(s)) return undefined;
  const lastColon = s.lastIndexOf(":");
  if (s.slice(lastColon + 1).includes(".")) {
    // ::ffff:192.0.2.1 → ::ffff:c000:201
    const embedded = parseV4(s.slice(lastColon + 1));
    if (!embedded) return undefined;
    const hex = (a: number, b: number) => ((a << 8) | b).toString(16);
    s = `${s.slice(0, lastColon + 1)}${hex(embedded[0], embedded[1])}:${hex(embedded[2], embedded[3])}`;
  }
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const group = (g: string) => (/^[0-9a-f]{1,4}$/i.test(g) ? parseInt(g, 16) : NaN);
  const head = halves[0] === "" ? [] : halves[0].split(":").map(group);
  const back = halves.length === 2 ? (halves[1] === "" ? [] : halves[1].split(":").map(group)) : [];
  let groups: number[];
  if (halves.length === 2) {
    const zeros = 8 - head.length - back.length;
    if (zeros < 1) return undefined;
    groups = [...head, ...new Array(zeros).fill(0), ...back];
  } else groups = head;
  if (groups.length !== 8 || groups.some((g) => Number.isNaN(g))) return undefined;
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

function parseV4(s: string): number[] | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  const parts = m.slice(1).map(Number);
  return parts.every((p) => p <= 255) ? parts : undefined;
}

/** Whether a bind address only accepts connections from this machine. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.trim().toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  const bytes = parseAddress(h);
  return bytes !== undefined && parseTrustedProxies("loopback").ranges.some((r) => inRange(bytes, r));
}

/** The PEM strings `Deno.serve` takes as `cert` and `key`. */
export interface TlsFiles {
  /** The certificate chain, PEM. */
  cert: string;
  /** The private key, PEM. */
  key: string;
}

/**
 * Reads and sanity-checks the PEM files; throws an `Error` whose message names the variable and the fix.
 * Pass the result to `Deno.serve({ ...tls, port, hostname }, handler)`.
 */
export async function loadTls(tls: { certFile: string; keyFile: string }): Promise<TlsFiles> {
  const read = async (name: string, path: string, marker: RegExp, what: string) => {
    let text: string;
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      const why = error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
        ? `no read permission (run with --allow-read=${path})`
        : (error as Error).message;
      throw new Error(`${name}=${path} cannot be read: ${why}`);
    }
    if (!marker.test(text)) {
      throw new Error(`${name}=${path} is not a PEM ${what}: it has no "-----BEGIN ...-----" block`);
    }
    return text;
  };
  return {
    cert: await read("TLS_CERT_FILE", tls.certFile, /-----BEGIN CERTIFICATE-----/, "certificate chain"),
    key: await read(
      "TLS_KEY_FILE",
      tls.keyFile,
      /-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----/,
      "private key",
    ),
  };
}
