/**
 * The DIMSE service's settings from the environment: `DIMSE_PORT` (off when unset), `DIMSE_PEERS`,
 * `DIMSE_ALLOW_ANY`, `DIMSE_MAX_ASSOCIATIONS`, `DIMSE_MAX_PDU`, `DIMSE_ARTIM_TIMEOUT_MS`,
 * `DIMSE_IDLE_TIMEOUT_MS`, `DIMSE_CONNECT_TIMEOUT_MS` and `DIMSE_TLS`, each problem reported as a sentence
 * naming the variable and the fix.
 *
 * @module
 */

import { settingsReader } from "../util/settings.ts";

/** A known DICOM peer: who may connect, and where C-MOVE sends. */
export interface Peer {
  /** Its AE title. */
  aet: string;
  /** Host name or address. */
  host: string;
  /** Its DICOM port. */
  port: number;
}

/** The DIMSE service's settings. */
export interface DimseSettings {
  /** The DICOM port (`DIMSE_PORT`; 0 picks a free one, for tests). */
  port: number;
  /** Bind address (`HOSTNAME`, as the HTTP server). */
  hostname: string;
  /** Known peers by AE title (`DIMSE_PEERS`: `AE@host:port`, comma or space separated). */
  peers: Map<string, Peer>;
  /** Accept any calling AE title (`DIMSE_ALLOW_ANY`; only while bound to loopback). */
  allowAny: boolean;
  /** Associations open at once; more are rejected as transient (`DIMSE_MAX_ASSOCIATIONS`, default 32). */
  maxAssociations: number;
  /** Our Maximum Length Received (`DIMSE_MAX_PDU`, default 262144; also the largest PDU sent). */
  maxPdu: number;
  /** Time for a new connection to send its A-ASSOCIATE-RQ, and for a release to finish (`DIMSE_ARTIM_TIMEOUT_MS`, 30000). */
  artimMs: number;
  /** Abort an association when the peer owes us something and is silent this long (`DIMSE_IDLE_TIMEOUT_MS`, 300000). */
  idleMs: number;
  /** Time to connect to a C-MOVE destination and get its answer (`DIMSE_CONNECT_TIMEOUT_MS`, 30000). */
  connectMs: number;
  /** DICOM TLS with the server's certificate (`DIMSE_TLS=true` with `TLS_CERT_FILE` and `TLS_KEY_FILE`). */
  tls?: { certFile: string; keyFile: string };
}

/** The variables {@linkcode parseDimseSettings} reads. */
export const DIMSE_NAMES = [
  "DIMSE_PORT",
  "DIMSE_PEERS",
  "DIMSE_ALLOW_ANY",
  "DIMSE_MAX_ASSOCIATIONS",
  "DIMSE_MAX_PDU",
  "DIMSE_ARTIM_TIMEOUT_MS",
  "DIMSE_IDLE_TIMEOUT_MS",
  "DIMSE_CONNECT_TIMEOUT_MS",
  "DIMSE_TLS",
] as const;

/** A valid AE title: 1–16 characters of the default repertoire, no backslash or control characters. */
export const AE_TITLE_PATTERN = /^[\x20-\x5b\x5d-\x7e]{1,16}$/;

/** Whether `hostname` is a loopback address. */
export function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "::1" || hostname === "[::1]" || /^127\./.test(hostname);
}

/** What the settings depend on outside DIMSE: the bind address and the server's certificate files. */
export interface DimseContext {
  /** `HOSTNAME`. */
  hostname: string;
  /** `TLS_CERT_FILE` and `TLS_KEY_FILE`, when given. */
  tls?: { certFile: string; keyFile: string };
}

/**
 * The DIMSE settings from `env`, or `undefined` when `DIMSE_PORT` is unset (the service is off). Problems are
 * pushed onto `problems`.
 *
 * @example
 * ```ts
 * import { parseDimseSettings } from "./dimse_settings.ts";
 * const problems: string[] = [];
 * const settings = parseDimseSettings(
 *   { DIMSE_PORT: "11112", DIMSE_PEERS: "MODALITY@10.0.0.5:104" },
 *   problems,
 *   { hostname: "0.0.0.0" },
 * );
 * settings?.peers.get("MODALITY")?.port; // 104
 * ```
 */
export function parseDimseSettings(
  env: Record<string, string | undefined>,
  problems: string[],
  context: DimseContext,
): DimseSettings | undefined {
  const s = settingsReader(env, problems);
  if (s.get("DIMSE_PORT") === undefined) return undefined;
  const port = s.integer("DIMSE_PORT", 11112, 0, 65535);
  const peers = new Map<string, Peer>();
  for (const entry of (s.get("DIMSE_PEERS") ?? "").split(/[\s,]+/).filter((e) => e !== "")) {
    const match = /^(.{1,16})@(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$/.exec(entry);
    const peerPort = match ? Number(match[3]) : 0;
    if (!match || !AE_TITLE_PATTERN.test(match[1]) || peerPort < 1 || peerPort > 65535) {
      s.problem(
        `DIMSE_PEERS entry ${JSON.stringify(entry)} is not valid: use AE@host:port with an AE title of ` +
          `1-16 characters (e.g. MODALITY@10.0.0.5:104, ORTHANC@[::1]:4242)`,
      );
      continue;
    }
    if (peers.has(match[1])) {
      s.problem(`DIMSE_PEERS lists ${match[1]} twice: give each AE title one address`);
      continue;
    }
    peers.set(match[1], { aet: match[1], host: match[2].replace(/^\[|\]$/g, ""), port: peerPort });
  }
  const allowAny = s.boolean("DIMSE_ALLOW_ANY", false);
  if (allowAny && !isLoopback(context.hostname)) {
    s.problem(
      `DIMSE_ALLOW_ANY=true while HOSTNAME=${context.hostname}: any host could store and retrieve. ` +
        `List the peers in DIMSE_PEERS (AE@host:port), or bind to 127.0.0.1`,
    );
  }
  const useTls = s.boolean("DIMSE_TLS", false);
  if (useTls && !context.tls) {
    s.problem("DIMSE_TLS=true needs the server's certificate: set TLS_CERT_FILE and TLS_KEY_FILE");
  }
  return {
    port,
    hostname: context.hostname,
    peers,
    allowAny: allowAny && isLoopback(context.hostname),
    maxAssociations: s.integer("DIMSE_MAX_ASSOCIATIONS", 32, 1, 10_000),
    maxPdu: s.integer("DIMSE_MAX_PDU", 262_144, 4096, 16 * 1024 * 1024),
    artimMs: s.integer("DIMSE_ARTIM_TIMEOUT_MS", 30_000, 100, 3_600_000),
    idleMs: s.integer("DIMSE_IDLE_TIMEOUT_MS", 300_000, 100, 86_400_000),
    connectMs: s.integer("DIMSE_CONNECT_TIMEOUT_MS", 30_000, 100, 3_600_000),
    tls: useTls ? context.tls : undefined,
  };
}
