/**
 * Configuration from environment variables, optionally merged over a JSON file (`CONFIG_FILE`)
 * that uses the same names. Every problem is reported at start-up with the variable and the fix.
 *
 * @module
 */

import { AUDIT_CONFIG_NAMES, type AuditTarget, parseAuditConfig } from "../security/audit.ts";
import { LIMITS_CONFIG_NAMES, type LimitsConfig, parseLimitsConfig } from "../security/limits.ts";
import { parseTransportConfig, TRANSPORT_CONFIG_NAMES, type TrustedProxies } from "../security/proxies.ts";
import { settingsReader } from "../util/settings.ts";
import { AET_PATTERN } from "../http/urls.ts";
import { AUTH_CONFIG_NAMES, type AuthConfig, parseAuthConfig } from "../security/auth_config.ts";

/** The S3 connection settings. */
export interface S3Config {
  /** The S3 endpoint URL (AWS itself when unset). */
  endpoint?: string;
  /** The signing region. */
  region: string;
  /** Bucket in the path instead of the host name. */
  forcePathStyle: boolean;
}

/** One webhook (`WEBHOOKS`): where instance events are POSTed, signed with `secret`. */
export interface WebhookConfig {
  /** The receiver (http or https). */
  url: string;
  /** The HMAC-SHA256 key of the `X-Signature-256` header. */
  secret: string;
  /** Event types sent: `*` (all), `org.dicomweb.instance.created`, `org.dicomweb.instance.deleted`. */
  events: string[];
}

/** The event types a webhook may ask for (besides `*`). */
export const WEBHOOK_EVENT_TYPES = [
  "org.dicomweb.instance.created",
  "org.dicomweb.instance.deleted",
] as const;

/** The server's settings, validated. */
export interface Config {
  /** TCP port (`PORT`). */
  port: number;
  /** Bind address (`HOSTNAME`). */
  hostname: string;
  /** Route prefix without a trailing slash, e.g. `""` or `"/dicomweb"`. */
  basePath: string;
  /** Absolute URL prefix for URLs the server writes (no trailing slash), or undefined. */
  publicUrl?: string;
  /** The local-folder store's root (used when `s3` is undefined). */
  dataDir: string;
  /** Set when S3 is used (`S3_ENDPOINT` given, or `STORE=s3` for AWS itself). */
  s3?: S3Config;
  /** AET → bucket, or undefined to use every folder / bucket the store lists. */
  aets?: Map<string, string>;
  /** How many objects one request may open ahead of the writer. */
  s3Concurrency: number;
  /** Objects all requests together keep open ahead of their writers (each gets an equal share, at least 1). */
  s3ConcurrencyTotal: number;
  /** Allowed CORS origins: `["*"]`, a list, or `[]` for CORS off. */
  corsOrigins: string[];
  /** `Cache-Control` for single-instance responses. */
  cacheControl: string;
  /** Binary values longer than this many bytes are sent as BulkDataURI in metadata (else InlineBinary). */
  bulkDataThreshold: number;
  /** Memory for cached instance headers, in MiB. */
  headerCacheMb: number;
  /**
   * SQLite file of the search catalog (`:memory:` allowed); default `{DATA_DIR}/.catalog.sqlite`;
   * `undefined` (`CATALOG_PATH=off`): no catalog, no crawler, QIDO-RS answers 503.
   */
  catalogPath: string | undefined;
  /**
   * `CATALOG_URL=postgres://user:password@host:5432/database[?sslmode=require]`: a PostgreSQL catalog shared by
   * every replica (then `CATALOG_PATH` is not used); undefined: SQLite.
   */
  catalogUrl?: string;
  /** Connections of the PostgreSQL catalog's pool (`CATALOG_POOL_SIZE`, default 10). */
  catalogPoolSize: number;
  /** The longest one PostgreSQL catalog call may take, in ms (`CATALOG_TIMEOUT_MS`, default 10 000). */
  catalogTimeoutMs: number;
  /** `LOG_FORMAT`: `text` (default) or `json` (one JSON object per line: time, level, msg, request fields). */
  logFormat: "text" | "json";
  /** Seconds between background crawls of every AET; 0 turns periodic crawling off. */
  crawlInterval: number;
  /** `SHUTDOWN_GRACE_MS`: how long a SIGTERM/SIGINT waits for the responses under way before exiting. */
  shutdownGraceMs: number;
  /** QIDO-RS results per page when the client gives no `limit`. */
  qidoDefaultLimit: number;
  /** Largest `limit` honoured; larger ones are cut with a Warning. */
  qidoMaxLimit: number;
  /** Largest STOW-RS request body in bytes (413 above). */
  stowMaxBytes: number;
  /** The OHIF `dist/` folder served at `{BASE_PATH}/viewer/`; undefined when off (the default). */
  viewer?: string;
  /** Who may do what: `AUTH`, `OIDC_*`, `AUTH_TOKENS`, `AUTH_USERS`, `AUTH_GRANTS`. */
  auth: AuthConfig;
  /** Request limits: `MAX_HEADER_*`, `CLIENT_CONCURRENCY`, `*_TIMEOUT_MS`, `STOW_MAX_PARTS`, `REQUEST_READ_BUDGET_MB`. */
  limits: LimitsConfig;
  /** Where audit lines go (`AUDIT_LOG`). */
  audit: AuditTarget;
  /** `TLS_CERT_FILE` and `TLS_KEY_FILE`, when the server speaks HTTPS itself. */
  tls?: { certFile: string; keyFile: string };
  /** Peers whose `Forwarded` / `X-Forwarded-*` are believed (`TRUSTED_PROXIES`). */
  trustedProxies: TrustedProxies;
  /**
   * `EVENTS_TOKEN`: the secret a bucket's event notifications present at `POST /admin/events` (bearer token or
   * `?token=`); when set, a request without it is refused even with `AUTH=none` (the admin grant also works).
   */
  eventsToken?: string;
  /** `WEBHOOKS`: where instance events are POSTed (empty: none). */
  webhooks: WebhookConfig[];
}

/** Where `deno task viewer:install` puts OHIF's `dist/` (what `VIEWER=on` serves). */
export const DEFAULT_VIEWER_DIR = "./tools/viewer/node_modules/@ohif/app/dist";

/** Bad configuration; the message lists every problem and how to fix it. */
export class ConfigError extends Error {
  /** A configuration problem: `message` names the variables and the fixes. */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** The names this module reads; each also works as a key in the `CONFIG_FILE` JSON. */
export const CONFIG_NAMES = [
  "PORT",
  "HOSTNAME",
  "BASE_PATH",
  "PUBLIC_URL",
  "DATA_DIR",
  "STORE",
  "S3_ENDPOINT",
  "S3_REGION",
  "S3_FORCE_PATH_STYLE",
  "AETS",
  "S3_CONCURRENCY",
  "S3_CONCURRENCY_TOTAL",
  "CORS_ORIGINS",
  "CACHE_CONTROL",
  "BULKDATA_THRESHOLD",
  "HEADER_CACHE_MB",
  "CATALOG_PATH",
  "CATALOG_URL",
  "CATALOG_POOL_SIZE",
  "CATALOG_TIMEOUT_MS",
  "LOG_FORMAT",
  "CRAWL_INTERVAL",
  "SHUTDOWN_GRACE_MS",
  "QIDO_DEFAULT_LIMIT",
  "QIDO_MAX_LIMIT",
  "STOW_MAX_BYTES",
  "VIEWER",
  "EVENTS_TOKEN",
  "WEBHOOKS",
  ...AUTH_CONFIG_NAMES,
  ...LIMITS_CONFIG_NAMES,
  ...AUDIT_CONFIG_NAMES,
  ...TRANSPORT_CONFIG_NAMES,
] as const;

/**
 * Validates settings given as strings (from the environment or a JSON file).
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const config = parseConfig({ PORT: "8042", AETS: "PACS=pacs-bucket,RESEARCH" });
 * config.aets?.get("PACS"); // "pacs-bucket"
 * ```
 */
export function parseConfig(env: Record<string, string | undefined>): Config {
  const problems: string[] = [];
  const { get, integer, boolean } = settingsReader(env, problems);

  const port = integer("PORT", 8080, 0, 65535);
  const hostname = get("HOSTNAME") ?? "127.0.0.1";

  let basePath = get("BASE_PATH") ?? "";
  if (basePath !== "") {
    if (!basePath.startsWith("/")) basePath = "/" + basePath;
    basePath = basePath.replace(/\/+$/, "");
    if (!/^(\/[A-Za-z0-9._~\-]+)*$/.test(basePath)) {
      problems.push(`BASE_PATH=${JSON.stringify(env.BASE_PATH)} is not valid: use a path like /dicomweb`);
    }
  }

  let publicUrl = get("PUBLIC_URL");
  if (publicUrl !== undefined) {
    try {
      const url = new URL(publicUrl);
      if (url.protocol !== "http:" && url.protocol !== "https:") throw new TypeError("not http(s)");
      publicUrl = url.href.replace(/\/+$/, "");
    } catch {
      problems.push(
        `PUBLIC_URL=${
          JSON.stringify(publicUrl)
        } is not valid: use an absolute http(s) URL like https://pacs.example.org/dicomweb`,
      );
      publicUrl = undefined;
    }
  }

  const dataDir = get("DATA_DIR") ?? "./data";

  const endpoint = get("S3_ENDPOINT");
  const storeKind = get("STORE")?.toLowerCase();
  if (storeKind !== undefined && storeKind !== "s3" && storeKind !== "local") {
    problems.push(
      `STORE=${
        JSON.stringify(storeKind)
      } is not valid: use "local" or "s3" (S3_ENDPOINT alone also selects S3)`,
    );
  }
  let s3: S3Config | undefined;
  if (endpoint !== undefined) {
    try {
      const url = new URL(endpoint);
      if (url.protocol !== "http:" && url.protocol !== "https:") throw new TypeError("not http(s)");
    } catch {
      problems.push(
        `S3_ENDPOINT=${JSON.stringify(endpoint)} is not valid: use a URL like http://127.0.0.1:9000`,
      );
    }
  }
  const forcePathStyle = boolean("S3_FORCE_PATH_STYLE", endpoint !== undefined); // validated even when unused
  if ((endpoint !== undefined && storeKind !== "local") || storeKind === "s3") {
    s3 = { endpoint, region: get("S3_REGION") ?? "us-east-1", forcePathStyle };
  }

  let aets: Map<string, string> | undefined;
  const rawAets = get("AETS");
  if (rawAets !== undefined) {
    aets = new Map();
    for (const entry of rawAets.split(",").map((e) => e.trim()).filter((e) => e !== "")) {
      const pieces = entry.split("=").map((s) => s.trim());
      const [aet, bucket = aet] = pieces;
      if (pieces.length > 2) {
        problems.push(`AETS entry ${JSON.stringify(entry)} is not valid: use AET or AET=bucket (one "=")`);
      } else if (!AET_PATTERN.test(aet)) {
        problems.push(
          `AETS entry ${JSON.stringify(entry)} is not valid: an AET is 1-64 letters, digits, "_", "-" or "."`,
        );
      } else if (!/^[A-Za-z0-9_.\-]{1,255}$/.test(bucket)) {
        problems.push(
          `AETS entry ${
            JSON.stringify(entry)
          } is not valid: the bucket name after "=" has characters a bucket cannot have`,
        );
      } else if (aets.has(aet)) {
        problems.push(`AETS lists ${aet} twice: name each AET once`);
      } else aets.set(aet, bucket);
    }
    if (aets.size === 0) {
      problems.push(
        `AETS=${JSON.stringify(rawAets)} names no AET: use e.g. AETS=PACS or AETS=PACS=my-bucket`,
      );
    }
  }

  const s3Concurrency = integer("S3_CONCURRENCY", 8, 1, 256);
  const s3ConcurrencyTotal = integer("S3_CONCURRENCY_TOTAL", 2 * s3Concurrency, 1, 4096);

  const rawCors = get("CORS_ORIGINS") ?? "*";
  let corsOrigins: string[];
  if (["off", "none", "false"].includes(rawCors.toLowerCase())) corsOrigins = [];
  else {
    corsOrigins = rawCors.split(",").map((o) => o.trim()).filter((o) => o !== "");
    for (const origin of corsOrigins) {
      if (origin !== "*" && !/^https?:\/\/[^/\s]+$/.test(origin)) {
        problems.push(
          `CORS_ORIGINS entry ${
            JSON.stringify(origin)
          } is not valid: use *, off, or origins like https://viewer.example.org`,
        );
      }
    }
  }

  const cacheControl = get("CACHE_CONTROL") ?? "private, max-age=86400";
  const bulkDataThreshold = integer("BULKDATA_THRESHOLD", 1024, 0, 1 << 30);
  const headerCacheMb = integer("HEADER_CACHE_MB", 64, 0, 1 << 20);
  const rawCatalog = get("CATALOG_PATH") ?? `${dataDir.replace(/\/+$/, "")}/.catalog.sqlite`;
  const catalogPath = rawCatalog.toLowerCase() === "off" ? undefined : rawCatalog;
  const catalogUrl = get("CATALOG_URL");
  if (catalogUrl !== undefined) {
    let url: URL | undefined;
    try {
      url = new URL(catalogUrl);
    } catch {
      // reported below
    }
    if (
      url === undefined || (url.protocol !== "postgres:" && url.protocol !== "postgresql:") ||
      url.pathname.length <= 1
    ) {
      problems.push(
        `CATALOG_URL is not valid: use postgres://user:password@host:5432/database (optionally ?sslmode=require)`,
      );
    }
  }
  const catalogPoolSize = integer("CATALOG_POOL_SIZE", 10, 1, 1000);
  const catalogTimeoutMs = integer("CATALOG_TIMEOUT_MS", 10_000, 100, 600_000);
  const rawLogFormat = (get("LOG_FORMAT") ?? "text").toLowerCase();
  if (rawLogFormat !== "text" && rawLogFormat !== "json") {
    problems.push(`LOG_FORMAT=${JSON.stringify(rawLogFormat)} is not valid: use text or json`);
  }
  const logFormat = rawLogFormat === "json" ? "json" : "text";
  const crawlInterval = integer("CRAWL_INTERVAL", 300, 0, 7 * 24 * 3600);
  const shutdownGraceMs = integer("SHUTDOWN_GRACE_MS", 25_000, 0, 3_600_000);
  const qidoMaxLimit = integer("QIDO_MAX_LIMIT", 1000, 1, 100_000);
  const qidoDefaultLimit = integer("QIDO_DEFAULT_LIMIT", 100, 1, 100_000);
  if (qidoDefaultLimit > qidoMaxLimit) {
    problems.push(
      `QIDO_DEFAULT_LIMIT=${qidoDefaultLimit} is above QIDO_MAX_LIMIT=${qidoMaxLimit}: lower it or raise the maximum`,
    );
  }
  const stowMaxBytes = integer("STOW_MAX_BYTES", 4 * 1024 ** 3, 1024, Number.MAX_SAFE_INTEGER);

  const rawViewer = get("VIEWER");
  let viewer: string | undefined;
  if (rawViewer !== undefined && !["off", "false", "no", "0"].includes(rawViewer.toLowerCase())) {
    viewer = ["on", "true", "yes", "1"].includes(rawViewer.toLowerCase()) ? DEFAULT_VIEWER_DIR : rawViewer;
  }
  const eventsToken = get("EVENTS_TOKEN");
  if (eventsToken !== undefined && !/^[A-Za-z0-9._~\-]{16,256}$/.test(eventsToken)) {
    problems.push(
      "EVENTS_TOKEN is not valid: use 16 to 256 letters, digits, '.', '_', '~' or '-' (it goes in a URL's query; " +
        "make one with: openssl rand -hex 32)",
    );
  }
  const webhooks = parseWebhooks(get("WEBHOOKS"), problems);
  const auth = parseAuthConfig(env, problems, { hostname, public: env.DENO_DEPLOYMENT_ID !== undefined });
  const limits = parseLimitsConfig(env, problems);
  const audit = parseAuditConfig(env, problems);
  const { tls, trustedProxies } = parseTransportConfig(env, problems);

  if (problems.length > 0) {
    throw new ConfigError(`Invalid configuration:\n  - ${problems.join("\n  - ")}`);
  }
  return {
    port,
    hostname,
    basePath,
    publicUrl,
    dataDir,
    s3,
    aets,
    s3Concurrency,
    s3ConcurrencyTotal,
    corsOrigins,
    cacheControl,
    bulkDataThreshold,
    headerCacheMb,
    catalogPath,
    catalogUrl,
    catalogPoolSize,
    catalogTimeoutMs,
    logFormat,
    crawlInterval,
    shutdownGraceMs,
    qidoDefaultLimit,
    qidoMaxLimit,
    stowMaxBytes,
    viewer,
    auth,
    limits,
    audit,
    tls,
    trustedProxies,
    eventsToken,
    webhooks,
  };
}

const WEBHOOKS_EXAMPLE =
  `use a JSON array like [{"url": "https://ai.example.org/hook", "secret": "…", "events": ["*"]}]`;

/** Validates `WEBHOOKS` (a JSON array of `{url, secret, events}`); problems go to `problems`. */
function parseWebhooks(raw: string | undefined, problems: string[]): WebhookConfig[] {
  if (raw === undefined || raw.trim() === "") return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (error) {
    problems.push(`WEBHOOKS is not JSON (${(error as Error).message}): ${WEBHOOKS_EXAMPLE}`);
    return [];
  }
  if (!Array.isArray(parsed)) {
    problems.push(`WEBHOOKS is not a JSON array: ${WEBHOOKS_EXAMPLE}`);
    return [];
  }
  const out: WebhookConfig[] = [];
  parsed.forEach((entry: unknown, i: number) => {
    const where = `WEBHOOKS[${i}]`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      problems.push(`${where} is not an object: ${WEBHOOKS_EXAMPLE}`);
      return;
    }
    const { url, secret, events = ["*"] } = entry as Record<string, unknown>;
    const unknown = Object.keys(entry).filter((key) => !["url", "secret", "events"].includes(key));
    if (unknown.length > 0) {
      problems.push(`${where} has unknown keys ${unknown.join(", ")}: use url, secret and events`);
    }
    let ok = true;
    try {
      const parsedUrl = new URL(String(url));
      if (typeof url !== "string" || (parsedUrl.protocol !== "http:" && parsedUrl.protocol !== "https:")) {
        throw new TypeError("not http(s)");
      }
    } catch {
      problems.push(
        `${where}.url ${JSON.stringify(url)} is not an http(s) URL: use e.g. "https://ai.example.org/hook"`,
      );
      ok = false;
    }
    if (typeof secret !== "string" || secret.length < 16) {
      problems.push(
        `${where}.secret is missing or shorter than 16 characters: the receiver checks X-Signature-256 with it ` +
          `(make one with: openssl rand -hex 32)`,
      );
      ok = false;
    }
    const types: readonly string[] = ["*", ...WEBHOOK_EVENT_TYPES];
    if (!Array.isArray(events) || events.length === 0 || !events.every((e) => types.includes(e))) {
      problems.push(
        `${where}.events ${JSON.stringify(events)} is not valid: use a list of ${types.join(", ")}`,
      );
      ok = false;
    }
    if (ok) out.push({ url: url as string, secret: secret as string, events: events as string[] });
  });
  return out;
}

/**
 * The settings named `names` as strings: `CONFIG_FILE` (a JSON object of such names) if set, overridden by the
 * environment. Other modules' settings (DIMSE's) are read with their names added, from the same file.
 */
export async function loadSettings(
  names: readonly string[] = CONFIG_NAMES,
): Promise<Record<string, string | undefined>> {
  const env: Record<string, string | undefined> = {};
  const file = Deno.env.get("CONFIG_FILE");
  if (file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(await Deno.readTextFile(file));
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      throw new ConfigError(
        `CONFIG_FILE=${file} cannot be read: ${why}. Point it at a JSON object like {"PORT": 8080}`,
      );
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      throw new ConfigError(
        `CONFIG_FILE=${file} is not a JSON object: write it like {"PORT": 8080, "AETS": "PACS"}`,
      );
    }
    for (const [name, value] of Object.entries(parsed)) {
      if (!names.includes(name)) {
        throw new ConfigError(
          `CONFIG_FILE=${file} has unknown setting ${name}: known settings are ${names.join(", ")}`,
        );
      }
      env[name] = typeof value === "string" ? value : JSON.stringify(value);
    }
  }
  for (const name of names) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  env.DENO_DEPLOYMENT_ID = Deno.env.get("DENO_DEPLOYMENT_ID"); // on Deno Deploy the server is public
  return env;
}

/**
 * Reads the configuration: `CONFIG_FILE` (JSON object of the same names) if set, overridden by
 * the environment.
 */
export async function loadConfig(): Promise<Config> {
  return parseConfig(await loadSettings());
}
