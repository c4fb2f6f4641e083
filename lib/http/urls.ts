/**
 * The absolute base URL of the server as the client sees it, for RetrieveURL, BulkDataURI and
 * Content-Location: `PUBLIC_URL`, else `Forwarded` / `X-Forwarded-*`, else `Host` with its port.
 *
 * @module
 */

/** An AET as routes and settings take it: letters, digits, `_`, `.` and `-`, at most 64 characters. */
export const AET_PATTERN = /^[A-Za-z0-9_.\-]{1,64}$/;

/** The settings that shape public URLs. */
export interface UrlOptions {
  /** Absolute URL of the server root as clients reach it (includes any path), no trailing slash. */
  publicUrl?: string;
  /** Route prefix, e.g. `/dicomweb`. */
  basePath: string;
}

function forwardedPair(header: string): { host?: string; proto?: string } {
  // Only the first (client-nearest) element of the list is used.
  const first = header.split(",")[0];
  const out: { host?: string; proto?: string } = {};
  for (const pair of first.split(";")) {
    const eq = pair.indexOf("=");
    if (eq < 0) continue;
    const name = pair.slice(0, eq).trim().toLowerCase();
    let value = pair.slice(eq + 1).trim();
    if (value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    if (name === "host") out.host = value;
    if (name === "proto") out.proto = value.toLowerCase();
  }
  return out;
}

const HOST = /^[A-Za-z0-9.\-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$/;

/**
 * The absolute base URL (no trailing slash) under which `/aets/...` routes are reachable.
 *
 * @example
 * ```ts
 * import { publicBase } from "./urls.ts";
 * const req = new Request("http://127.0.0.1:8080/aets", { headers: { "x-forwarded-proto": "https", "x-forwarded-host": "pacs.example.org" } });
 * publicBase(req, { basePath: "" }); // "https://pacs.example.org"
 * ```
 */
export function publicBase(request: Pick<Request, "url" | "headers">, options: UrlOptions): string {
  if (options.publicUrl) return options.publicUrl;
  const url = new URL(request.url);
  let proto = url.protocol.replace(":", "");
  let host = request.headers.get("host") ?? url.host;
  const forwarded = request.headers.get("forwarded");
  if (forwarded) {
    const f = forwardedPair(forwarded);
    if (f.host) host = f.host;
    if (f.proto) proto = f.proto;
  } else {
    const xHost = request.headers.get("x-forwarded-host")?.split(",")[0].trim();
    const xProto = request.headers.get("x-forwarded-proto")?.split(",")[0].trim().toLowerCase();
    const xPort = request.headers.get("x-forwarded-port")?.split(",")[0].trim();
    if (xHost) host = xHost;
    if (xProto) proto = xProto;
    if (xHost && xPort && /^\d+$/.test(xPort) && !host.includes(":")) host = `${host}:${xPort}`;
  }
  if (proto !== "http" && proto !== "https") proto = url.protocol.replace(":", "");
  if (!HOST.test(host)) host = url.host;
  return `${proto}://${host}${options.basePath}`;
}
