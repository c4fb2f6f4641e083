/**
 * The change feed (not PS3.18: the Azure DICOM service's v2 change feed, in its shape and spelling, so its
 * clients work): `GET /aets/{aet}/changefeed?startTime=&endTime=&offset=&limit=&includemetadata=` answers a
 * JSON array of `{Sequence, StudyInstanceUid, SeriesInstanceUid, SopInstanceUid, Action, Timestamp, State,
 * Metadata?}` in Sequence order; `GET /aets/{aet}/changefeed/latest` the last entry (204 when there is none, as Azure).
 *
 * - `startTime` (inclusive) and `endTime` (exclusive): ISO 8601 date-times (UTC when no offset is given);
 * - `offset`: entries of the window to skip (default 0); `limit`: 1–200 (default 100);
 * - `includemetadata`: `true` (default, as Azure) or `false`; Metadata is the instance's DICOM JSON and is
 *   present only for `current` entries (a replaced or deleted version's metadata is not kept).
 *
 * The entries come from the catalog, which writes them wherever an instance is filed or forgotten (STOW-RS,
 * import, C-STORE, bucket events, DELETE, crawls): see lib/catalog/catalog.ts `ChangeFeedEntry`.
 *
 * @module
 */

import type { ChangeFeedEntry } from "../catalog/catalog.ts";
import { resolveBulkDataUris } from "../catalog/documents.ts";
import { HttpError } from "../http/errors.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import { publicBase } from "../http/urls.ts";
import { bucketOf, catalogOf, type Services } from "./services.ts";

/** The most entries one request returns (`limit`). */
export const CHANGEFEED_MAX_LIMIT = 200;
/** Entries returned without `limit`. */
export const CHANGEFEED_DEFAULT_LIMIT = 100;

/** The handlers of the change feed. */
export interface ChangeFeedHandlers {
  /** `GET /aets/{aet}/changefeed` */
  feed: Handler;
  /** `GET /aets/{aet}/changefeed/latest` */
  latest: Handler;
}

/** The change feed handlers over `services.catalog` (503 without one). */
export function changeFeedHandlers(services: Services): ChangeFeedHandlers {
  return {
    feed: (ctx) => feed(services, ctx),
    latest: (ctx) => latest(services, ctx),
  };
}

/** An entry as the Azure DICOM service spells it. */
interface AzureEntry {
  Sequence: number;
  StudyInstanceUid: string;
  SeriesInstanceUid: string;
  SopInstanceUid: string;
  Action: "create" | "delete";
  Timestamp: string;
  State: "current" | "replaced" | "deleted";
  Metadata?: unknown;
}

function time(params: URLSearchParams, name: string): number | undefined {
  const raw = params.get(name);
  if (raw === null || raw === "") return undefined;
  // a date, or a date-time with an optional offset (no offset: UTC)
  const m = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$/i.exec(
    raw,
  );
  const value = m === null
    ? NaN
    : Date.parse(m[1] === undefined && raw.length > 10 ? `${raw.replace(" ", "T")}Z` : raw.replace(" ", "T"));
  if (Number.isNaN(value)) {
    throw new HttpError(
      400,
      `${name}=${JSON.stringify(raw)} is not an ISO 8601 date-time: use e.g. ${name}=2026-01-31T08:00:00Z`,
    );
  }
  return value;
}

function integer(params: URLSearchParams, name: string, fallback: number, min: number, max: number): number {
  const raw = params.get(name);
  if (raw === null || raw === "") return fallback;
  if (!/^\d{1,15}$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new HttpError(
      400,
      `${name}=${JSON.stringify(raw)} is not valid: use a whole number from ${min} to ${max}`,
    );
  }
  return Number(raw);
}

function includeMetadata(params: URLSearchParams): boolean {
  const raw = params.get("includemetadata") ?? params.get("includeMetadata");
  if (raw === null || raw === "") return true;
  const lower = raw.toLowerCase();
  if (lower !== "true" && lower !== "false") {
    throw new HttpError(400, `includemetadata=${JSON.stringify(raw)} is not valid: use true or false`);
  }
  return lower === "true";
}

function azure(entry: ChangeFeedEntry, base: string): AzureEntry {
  const out: AzureEntry = {
    Sequence: entry.sequence,
    StudyInstanceUid: entry.study,
    SeriesInstanceUid: entry.series,
    SopInstanceUid: entry.sop,
    Action: entry.action,
    Timestamp: new Date(entry.time).toISOString(),
    State: entry.state,
  };
  if (entry.metadata !== undefined) {
    const url =
      `${base}/aets/${entry.aet}/studies/${entry.study}/series/${entry.series}/instances/${entry.sop}`;
    out.Metadata = JSON.parse(resolveBulkDataUris(entry.metadata, url));
  }
  return out;
}

function json(body: unknown): Response {
  return new Response(JSON.stringify(body), {
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

async function feed(services: Services, ctx: RouteContext): Promise<Response> {
  const aet = ctx.params.aet;
  const params = ctx.url.searchParams;
  const startTime = time(params, "startTime") ?? time(params, "starttime");
  const endTime = time(params, "endTime") ?? time(params, "endtime");
  const offset = integer(params, "offset", 0, 0, Number.MAX_SAFE_INTEGER);
  const limit = integer(params, "limit", CHANGEFEED_DEFAULT_LIMIT, 1, CHANGEFEED_MAX_LIMIT);
  const metadata = includeMetadata(params);
  if (startTime !== undefined && endTime !== undefined && endTime <= startTime) {
    throw new HttpError(400, "endTime must be after startTime");
  }
  const catalog = catalogOf(services);
  await bucketOf(services, aet);
  const entries = await catalog.changeFeed({
    aet,
    startTime,
    endTime,
    offset,
    limit,
    includeMetadata: metadata,
  });
  const base = publicBase(ctx.request, services.config);
  return json(entries.map((entry) => azure(entry, base)));
}

async function latest(services: Services, ctx: RouteContext): Promise<Response> {
  const aet = ctx.params.aet;
  const metadata = includeMetadata(ctx.url.searchParams);
  const catalog = catalogOf(services);
  await bucketOf(services, aet);
  const entry = await catalog.latestChange(aet, metadata);
  // an empty feed: no content, as the Azure DICOM service answers it
  if (entry === undefined) return new Response(null, { status: 204 });
  return json(azure(entry, publicBase(ctx.request, services.config)));
}
