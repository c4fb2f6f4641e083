/**
 * The audit log: one JSON line for every request that touches patient data (every route under
 * `/aets/{aet}/`), allowed or not — who, from where, which AET / study / series / instance, what they did,
 * and how it ended. Kept apart from the request log, and free of patient names: only UIDs from the path and,
 * for searches, the values of a few non-identifying query keys (the rest show as `"(redacted)"`).
 *
 * `AUDIT_LOG` chooses the sink: `stderr` (default, each line prefixed `audit `), `stdout` (same prefix),
 * `off`, or a file path (plain JSON lines appended, created with mode 0600).
 *
 * @module
 */

import { settingsReader } from "../util/settings.ts";
import { AET_PATTERN } from "../http/urls.ts";
import type { AuthMethod, Principal } from "./grants.ts";

/** Where audit lines go. */
export type AuditTarget = { kind: "stderr" | "stdout" | "off" } | { kind: "file"; path: string };

/** The names {@linkcode parseAuditConfig} reads (add them to `CONFIG_NAMES`). */
export const AUDIT_CONFIG_NAMES = ["AUDIT_LOG"] as const;

/**
 * Validates `AUDIT_LOG`.
 *
 * @example
 * ```ts
 * import { parseAuditConfig } from "./audit.ts";
 * parseAuditConfig({ AUDIT_LOG: "/var/log/dicomweb/audit.jsonl" }, []); // { kind: "file", path: "/var/log/dicomweb/audit.jsonl" }
 * ```
 */
export function parseAuditConfig(env: Record<string, string | undefined>, problems: string[]): AuditTarget {
  const raw = settingsReader(env, problems).get("AUDIT_LOG") ?? "stderr";
  const lower = raw.toLowerCase();
  if (lower === "stderr" || lower === "stdout" || lower === "off") return { kind: lower };
  if (/[\0\n\r]/.test(raw)) {
    problems.push(`AUDIT_LOG=${JSON.stringify(raw)} is not valid: use stderr, stdout, off or a file path`);
    return { kind: "stderr" };
  }
  return { kind: "file", path: raw };
}

/** One audit line. */
export interface AuditRecord {
  /** ISO 8601 time the request finished. */
  time: string;
  /** `retrieve`, `search`, `store`, or the lower-case method for anything else. */
  action: string;
  /** What was addressed: study, series, instance, metadata, frames, bulkdata, rendered, thumbnail, studies, ... */
  resource: string;
  /** The authenticated subject; null when authentication failed or was not attempted. */
  who: string | null;
  /** How `who` authenticated. */
  auth: AuthMethod | "none" | null;
  /** Client address (from a trusted proxy's forwarded headers when there is one). */
  client: string;
  /** The AET. */
  aet: string;
  /** Study Instance UID. */
  study?: string;
  /** Series Instance UID. */
  series?: string;
  /** SOP Instance UID. */
  instance?: string;
  /** Frame numbers asked for. */
  frames?: string;
  /** Search parameters: names as sent, values only for non-identifying keys. */
  query?: Record<string, string>;
  /** The HTTP method. */
  method: string;
  /** The status answered. */
  status: number;
  /** success, partial (206/202), denied (401/403), not-found, rejected (other 4xx), error (5xx), incomplete. */
  outcome: string;
  /** Response body bytes sent. */
  bytes: number;
  /** Milliseconds until the body ended. */
  ms: number;
  /** Set when the body did not complete: why. */
  detail?: string;
}

/** What the audit log needs to know about a finished request. */
export interface AuditEntry {
  /** The HTTP method. */
  method: string;
  /** The request URL. */
  url: URL;
  /** The status answered. */
  status: number;
  /** Bytes of the body sent. */
  bytes: number;
  /** Milliseconds until the body ended. */
  ms: number;
  /** The request log's outcome of the body: undefined when it completed. */
  bodyOutcome?: string;
  /** Who asked, when known. */
  principal?: Principal;
  /** The client's address. */
  client?: string;
}

/** The path of a patient-data request, taken apart. */
export interface AuditTargetPath {
  /** The AET. */
  aet: string;
  /** Study Instance UID. */
  study?: string;
  /** Series Instance UID. */
  series?: string;
  /** SOP Instance UID. */
  instance?: string;
  /** Frame numbers. */
  frames?: string;
  /** What was accessed (retrieve, metadata, frames, search, ...). */
  resource: string;
  /** A search (QIDO-RS) rather than a retrieve. */
  search: boolean;
}

const UID = /^[0-9.]{1,64}$/;
const INVALID = "(invalid)";

/**
 * Takes apart `/aets/{aet}/studies/{s}/series/{se}/instances/{i}/...` below `basePath`; undefined for paths
 * that are not patient data (health checks, `/aets`, unknown routes). Values that are not UIDs (or AET
 * names) are replaced by `"(invalid)"`, so nothing a caller typed into a path lands in the log verbatim.
 *
 * @example
 * ```ts
 * import { auditTargetOf } from "./audit.ts";
 * auditTargetOf("/aets/PACS/studies/1.2/series/1.2.3/metadata", "");
 * // { aet: "PACS", study: "1.2", series: "1.2.3", resource: "metadata", search: false }
 * ```
 */
export function auditTargetOf(pathname: string, basePath: string): AuditTargetPath | undefined {
  if (basePath !== "" && !pathname.startsWith(basePath + "/")) return undefined;
  const segments = pathname.slice(basePath.length).split("/").slice(1);
  if (segments[0] !== "aets" || segments.length < 3 || segments[1] === "") return undefined;
  const out: AuditTargetPath = {
    aet: AET_PATTERN.test(segments[1]) ? segments[1] : INVALID,
    resource: "",
    search: false,
  };
  const uid = (value: string | undefined) => (value !== undefined && UID.test(value) ? value : INVALID);
  let i = 2;
  const levels: [string, "study" | "series" | "instance"][] = [["studies", "study"], ["series", "series"], [
    "instances",
    "instance",
  ]];
  for (const [collection, level] of levels) {
    if (segments[i] !== collection) continue;
    if (i + 1 >= segments.length || segments[i + 1] === "") {
      out.resource = collection;
      out.search = true;
      return out;
    }
    out[level] = uid(segments[i + 1]);
    out.resource = level;
    i += 2;
  }
  const tail = segments[i];
  if (tail === undefined || tail === "") return out;
  if (tail === "frames") {
    const list = segments[i + 1] ?? "";
    out.frames = /^[\d,]{1,200}$/.test(list) ? list : INVALID;
    out.resource = segments[i + 2] === "rendered" ? "rendered" : "frames";
  } else if (["metadata", "bulkdata", "rendered", "thumbnail", "changefeed"].includes(tail)) {
    out.resource = tail;
  } else out.resource = "other";
  return out;
}

/** Query keys whose values are safe to log (UIDs, paging and matching options, modality). */
const SAFE_KEYS = new Set(
  [
    "StudyInstanceUID",
    "0020000D",
    "SeriesInstanceUID",
    "0020000E",
    "SOPInstanceUID",
    "00080018",
    "SOPClassUID",
    "00080016",
    "Modality",
    "00080060",
    "ModalitiesInStudy",
    "00080061",
    "limit",
    "offset",
    "includefield",
    "fuzzymatching",
    "accept",
    "charset",
  ].map((k) => k.toLowerCase()),
);

/**
 * The query parameters with every value blanked except those of {@link SAFE_KEYS}: search values (names,
 * IDs, dates) can identify a patient.
 *
 * @example
 * ```ts
 * import { redactQuery } from "./audit.ts";
 * redactQuery(new URLSearchParams("PatientName=DOE*&limit=10")); // { PatientName: "(redacted)", limit: "10" }
 * ```
 */
export function redactQuery(params: URLSearchParams): Record<string, string> {
  const out: Record<string, string> = {};
  let n = 0;
  for (const [key, value] of params) {
    if (++n > 50) {
      out["(more)"] = "(redacted)";
      break;
    }
    const name = key.slice(0, 64);
    const safe = SAFE_KEYS.has(name.toLowerCase()) && /^[\w.,*\-]{0,256}$/.test(value);
    out[name] = out[name] !== undefined && safe ? `${out[name]},${value}` : safe ? value : "(redacted)";
  }
  return out;
}

/**
 * The URL's search string for the request log, with values redacted as in {@linkcode redactQuery}
 * (the request log should not carry `PatientName=...` either).
 *
 * @example
 * ```ts
 * import { redactedSearch } from "./audit.ts";
 * redactedSearch(new URL("http://x/aets/A/studies?PatientName=DOE&limit=5")); // "?PatientName=(redacted)&limit=5"
 * ```
 */
export function redactedSearch(url: URL): string {
  if (url.search === "") return "";
  const parts = Object.entries(redactQuery(url.searchParams)).map(([k, v]) =>
    `${encodeURIComponent(k)}=${v === "(redacted)" ? v : encodeURIComponent(v)}`
  );
  return "?" + parts.join("&");
}

function outcomeOf(status: number, bodyOutcome: string | undefined): string {
  if (status === 401 || status === 403) return "denied";
  if (status === 404) return "not-found";
  if (status >= 500) return "error";
  if (status >= 400) return "rejected";
  if (bodyOutcome !== undefined) return "incomplete";
  if (status === 206 || status === 202) return "partial";
  return "success";
}

/** One instance a request changed (see {@linkcode AuditLog.recordInstance}). */
export interface InstanceAuditEntry {
  /** What was done to it. */
  action: "delete";
  /** The AET. */
  aet: string;
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID. */
  series: string;
  /** SOP Instance UID. */
  instance: string;
  /** Who asked, when known. */
  principal?: Principal;
  /** The client's address. */
  client?: string;
}

/** Options for {@linkcode AuditLog}. */
export interface AuditLogOptions {
  /** Route prefix (`BASE_PATH`). */
  basePath?: string;
  /** Clock for `time` (tests). */
  now?: () => Date;
}

/**
 * Writes one JSON line per patient-data request.
 *
 * @example
 * ```ts
 * import { AuditLog } from "./audit.ts";
 * const lines: string[] = [];
 * const audit = new AuditLog((line) => lines.push(line));
 * audit.record({ method: "GET", url: new URL("http://x/aets/PACS/studies/1.2"), status: 200, bytes: 10, ms: 1 });
 * JSON.parse(lines[0]).study; // "1.2"
 * ```
 */
export class AuditLog {
  readonly #write: ((line: string) => void) | null;
  readonly #basePath: string;
  readonly #now: () => Date;

  /** An audit log writing each line with `write`; `null`: off (nothing is recorded, nothing is built). */
  constructor(write: ((line: string) => void) | null, options: AuditLogOptions = {}) {
    this.#write = write;
    this.#basePath = options.basePath ?? "";
    this.#now = options.now ?? (() => new Date());
  }

  /** Logs `entry` if it addressed patient data; returns the record written (undefined when none). */
  record(entry: AuditEntry): AuditRecord | undefined {
    if (this.#write === null) return undefined;
    const target = auditTargetOf(entry.url.pathname, this.#basePath);
    if (target === undefined) return undefined;
    const method = entry.method.toUpperCase();
    const read = method === "GET" || method === "HEAD";
    const record: AuditRecord = {
      time: this.#now().toISOString(),
      action: read
        ? (target.search ? "search" : "retrieve")
        : method === "POST"
        ? "store"
        : method.toLowerCase(),
      resource: target.resource,
      who: entry.principal?.subject ?? null,
      auth: entry.principal?.method ?? null,
      client: entry.client ?? "unknown",
      aet: target.aet,
      ...(target.study !== undefined ? { study: target.study } : {}),
      ...(target.series !== undefined ? { series: target.series } : {}),
      ...(target.instance !== undefined ? { instance: target.instance } : {}),
      ...(target.frames !== undefined ? { frames: target.frames } : {}),
      ...(entry.url.search !== "" ? { query: redactQuery(entry.url.searchParams) } : {}),
      method,
      status: entry.status,
      outcome: outcomeOf(entry.status, entry.bodyOutcome),
      bytes: entry.bytes,
      ms: Math.round(entry.ms * 10) / 10,
      ...(entry.bodyOutcome !== undefined ? { detail: entry.bodyOutcome.slice(0, 200) } : {}),
    };
    try {
      this.#write(JSON.stringify(record));
    } catch {
      // An audit sink failure must not fail the request; the sink reports its own problems.
    }
    return record;
  }

  /**
   * Logs one instance a request changed (a DELETE writes one line per deleted instance, besides the line
   * of the request): `resource` is `instance`, `outcome` `success`, no status or bytes. Undefined when off.
   */
  recordInstance(entry: InstanceAuditEntry): AuditRecord | undefined {
    if (this.#write === null) return undefined;
    const record: AuditRecord = {
      time: this.#now().toISOString(),
      action: entry.action,
      resource: "instance",
      who: entry.principal?.subject ?? null,
      auth: entry.principal?.method ?? null,
      client: entry.client ?? "unknown",
      aet: entry.aet,
      study: entry.study,
      series: entry.series,
      instance: entry.instance,
      method: "DELETE",
      status: 204,
      outcome: "success",
      bytes: 0,
      ms: 0,
    };
    try {
      this.#write(JSON.stringify(record));
    } catch {
      // as in record()
    }
    return record;
  }
}

/** An {@linkcode AuditLog} with the resources behind it. */
export interface OpenedAuditLog {
  /** The log to record to. */
  log: AuditLog;
  /** Closes the file (if any). */
  close(): void;
}

/**
 * Opens the sink `AUDIT_LOG` names. A file is opened for appending (created 0600); failure to open it throws
 * an `Error` naming the variable and the fix, so the server does not start without its audit trail.
 */
export function openAuditLog(target: AuditTarget, options: AuditLogOptions = {}): OpenedAuditLog {
  switch (target.kind) {
    case "off":
      return { log: new AuditLog(null, options), close() {} };
    case "stdout":
      return { log: new AuditLog((line) => console.log(`audit ${line}`), options), close() {} };
    case "stderr":
      return { log: new AuditLog((line) => console.error(`audit ${line}`), options), close() {} };
  }
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(target.path, { append: true, create: true, mode: 0o600 });
  } catch (error) {
    const why = error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ? `no write permission (run with --allow-write=${target.path})`
      : (error as Error).message;
    throw new Error(`AUDIT_LOG=${target.path} cannot be opened: ${why}`);
  }
  const encoder = new TextEncoder();
  let warned = false;
  const write = (line: string) => {
    const bytes = encoder.encode(line + "\n");
    try {
      for (let at = 0; at < bytes.length;) at += file.writeSync(bytes.subarray(at));
    } catch (error) {
      if (!warned) console.error(`Cannot write AUDIT_LOG=${target.path}: ${(error as Error).message}`);
      warned = true;
    }
  };
  return {
    log: new AuditLog(write, options),
    close() {
      try {
        file.close();
      } catch {
        // already closed
      }
    },
  };
}
