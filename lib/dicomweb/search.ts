/**
 * QIDO-RS search (PS3.18 10.6, 8.3.4) over the {@linkcode Catalog}, and the catalog's admin routes.
 *
 * Results are `application/dicom+json` arrays in a stable order, so paging never repeats or skips:
 * studies by StudyDate and StudyTime (newest first) then StudyInstanceUID; series by their study's order, then
 * SeriesNumber, SeriesInstanceUID; instances by series order, then InstanceNumber, SOPInstanceUID.
 *
 * Returned attributes: the level's defaults (PS3.18 Table 10.6.3-3 to -5, plus StudyDescription) that are
 * present in the data, the matching keys, `includefield` attributes (`all`: every attribute of the level), the
 * UIDs of the parent levels, and computed ones: RetrieveURL, InstanceAvailability (ONLINE), the
 * NumberOf...Related... counts and ModalitiesInStudy (left out only when no series has a Modality, since viewers
 * crash on a valueless one). `/series` adds the study attributes, `/studies/{s}/instances` the series attributes,
 * `/instances` both.
 *
 * Specific Character Set: JSON is always UTF-8, so the stored (0008,0005) is never copied; a result whose text is
 * not all ASCII carries (0008,0005) `ISO_IR 192`, which is what it now is (a client writing it back to Part 10
 * gets the right decoding); an all-ASCII result carries none (the default repertoire).
 *
 * @module
 */

import type { Scope, SearchRow } from "../catalog/catalog.ts";
import type { DicomJson, DicomJsonAttribute } from "../dicom/dicom_json.ts";
import { stringifyDicomJson } from "../dicom/dicom_json.ts";
import { tagToHex } from "../dicom/dictionary.ts";
import { DEFAULT_RETURN, type Level, parseSearch, type SearchQuery, TAGS } from "../catalog/qido_query.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import { bucketOf, catalogOf, crawlerOf, type Services, warningHeader } from "./services.ts";
import { checkUid } from "../dicom/uid.ts";
import { publicBase } from "../http/urls.ts";
import { acceptJson } from "../http/negotiation.ts";

/** How long a search waits for the first crawl of an AET before answering with what there is. */
const FIRST_CRAWL_WAIT_MS = 10_000;

/** One QIDO-RS resource. */
interface Resource {
  level: Level;
  /** Levels whose attributes may be matched and returned. */
  matchable: Level[];
  /** Whether parent-level default attributes are added (`/series`, `/instances`, `/studies/{s}/instances`). */
  parents: Level[];
}

const RESOURCES = {
  studies: { level: "study", matchable: ["study"], parents: [] },
  studySeries: { level: "series", matchable: ["study", "series"], parents: [] },
  allSeries: { level: "series", matchable: ["study", "series"], parents: ["study"] },
  seriesInstances: { level: "instance", matchable: ["study", "series", "instance"], parents: [] },
  studyInstances: { level: "instance", matchable: ["study", "series", "instance"], parents: ["series"] },
  allInstances: {
    level: "instance",
    matchable: ["study", "series", "instance"],
    parents: ["study", "series"],
  },
} satisfies Record<string, Resource>;

/** The QIDO-RS handlers of each resource (PS3.18 10.6.1), for the route table (lib/app/routes.ts). */
export interface SearchHandlers {
  /** `/studies` */
  studies: Handler;
  /** `/studies/{study}/series` */
  studySeries: Handler;
  /** `/studies/{study}/series/{series}/instances` */
  seriesInstances: Handler;
  /** `/studies/{study}/instances` */
  studyInstances: Handler;
  /** `/series` */
  allSeries: Handler;
  /** `/instances` */
  allInstances: Handler;
}

/** The QIDO-RS handlers over `services.catalog` (503 without one). */
export function searchHandlers(services: Services): SearchHandlers {
  const search = (resource: Resource): Handler => (ctx) => searchResponse(services, resource, ctx);
  return {
    studies: search(RESOURCES.studies),
    studySeries: search(RESOURCES.studySeries),
    seriesInstances: search(RESOURCES.seriesInstances),
    studyInstances: search(RESOURCES.studyInstances),
    allSeries: search(RESOURCES.allSeries),
    allInstances: search(RESOURCES.allInstances),
  };
}

async function searchResponse(services: Services, resource: Resource, ctx: RouteContext): Promise<Response> {
  acceptJson(ctx.request.headers.get("accept"), "search results are application/dicom+json");
  const { aet } = ctx.params;
  const study = ctx.params.study === undefined ? undefined : checkUid(ctx.params.study, "StudyInstanceUID");
  const series = ctx.params.series === undefined
    ? undefined
    : checkUid(ctx.params.series, "SeriesInstanceUID");
  const config = services.config;
  const query = parseSearch(ctx.url.searchParams, {
    level: resource.level,
    matchable: resource.matchable,
    defaultLimit: config.qidoDefaultLimit,
    maxLimit: config.qidoMaxLimit,
  });
  await bucketOf(services, aet);
  const catalog = catalogOf(services);
  const indexer = crawlerOf(services);
  const warnings = [...query.warnings];
  if (!await indexer.ready(aet, FIRST_CRAWL_WAIT_MS)) {
    warnings.push(`The catalog of ${aet} is still being built: results may be incomplete`);
  }
  if (resource.level === "instance") {
    const scopes = lazyScopes(query, study, series);
    if (scopes) {
      let failed = 0;
      for (const scope of scopes) failed += await indexer.ensureIndexed(aet, scope);
      if (failed > 0) {
        warnings.push(`${failed} objects could not be read and are left out (see GET /admin/index)`);
      }
    } else if ((await catalog.pendingObjects(aet, {}, 1)).length > 0) {
      warnings.push(
        `Not every instance of ${aet} is indexed yet (the headers are being read): narrow by StudyInstanceUID or SeriesInstanceUID for complete results`,
      );
    }
  }
  const rows = await catalog.search({
    aet,
    level: resource.level,
    study,
    series,
    filters: query.filters,
    limit: query.limit + 1,
    offset: query.offset,
  });
  if (rows.length > query.limit) {
    rows.length = query.limit;
    if (query.serverLimit) {
      warnings.push(
        "The number of results exceeded the maximum supported by the server. Additional results can be requested",
      );
    }
  }
  const base = publicBase(ctx.request, config);
  const texts = rows.map((row) => withCharset(serialize(formatRow(row, resource, query, base, aet))));
  const headers = new Headers({ "content-type": "application/dicom+json; charset=utf-8" });
  const host = new URL(base).host;
  for (const warning of warnings) headers.append("warning", warningHeader(host, warning));
  return new Response(`[${texts.join(",")}]`, { headers });
}

/** The series/studies whose instances must be indexed before an instance search, or undefined for all of them. */
function lazyScopes(query: SearchQuery, study?: string, series?: string): Scope[] | undefined {
  const uids = (tag: number): string[] | undefined => {
    const filter = query.filters.find((f) => f.path.length === 1 && f.path[0] === tag);
    const m = filter?.matcher;
    if (m?.kind === "single") return [m.value];
    if (m?.kind === "list") return m.values;
    return undefined;
  };
  const sops = uids(TAGS.SOPInstanceUID);
  const studies = study !== undefined ? [study] : uids(TAGS.StudyInstanceUID);
  const seriesList = series !== undefined ? [series] : uids(TAGS.SeriesInstanceUID);
  if (sops) return [{ sops }];
  if (!studies && !seriesList) return undefined;
  const scopes: Scope[] = [];
  for (const s of studies ?? [undefined]) {
    for (const se of seriesList ?? [undefined]) scopes.push({ study: s, series: se });
  }
  return scopes.length <= 200 ? scopes : undefined;
}

const attr = (vr: string, value: unknown): DicomJsonAttribute => ({ vr, Value: [value] });

/** Copies the wanted attributes of `from` into `to` (attributes already there win). */
function pick(
  to: DicomJson,
  from: DicomJson | undefined,
  tags: Iterable<number> | "all",
  relativeBulk: boolean,
): void {
  if (!from) return;
  const keys = tags === "all" ? Object.keys(from) : [...tags].map(hex);
  for (const key of keys) {
    const attribute = from[key];
    if (attribute === undefined || key in to || key === "00080005") continue;
    const bulk = attribute.BulkDataURI !== undefined ||
      (attribute.vr === "SQ" && JSON.stringify(attribute).includes('"BulkDataURI"'));
    to[key] = relativeBulk && bulk ? withoutBulk(attribute) : attribute;
  }
}

const HEX = new Map<number, string>();

/** `tagToHex`, memoized (the same few tags are formatted for every result). */
function hex(tag: number): string {
  let text = HEX.get(tag);
  if (text === undefined) {
    text = tagToHex(tag);
    if (HEX.size < 10_000) HEX.set(tag, text);
  }
  return text;
}

/**
 * The JSON text of one result, keys ascending. Only sequences need {@linkcode stringifyDicomJson} (item keys such
 * as "30060020" would otherwise come first in JavaScript's own order); other attributes are plain JSON.
 */
function serialize(out: DicomJson): string {
  const parts = Object.keys(out).sort().map((key) => {
    const attribute = out[key];
    return `"${key}":${attribute.vr === "SQ" ? stringifyDicomJson(attribute) : JSON.stringify(attribute)}`;
  });
  return `{${parts.join(",")}}`;
}

/**
 * A copy without BulkDataURIs: study and series documents come from one representative instance, so their
 * relative URIs would point at the wrong instance (such values are rare at these levels).
 */
function withoutBulk(attribute: DicomJsonAttribute): DicomJsonAttribute {
  if (attribute.BulkDataURI !== undefined) return { vr: attribute.vr };
  if (attribute.vr !== "SQ" || !attribute.Value) return attribute;
  return {
    vr: attribute.vr,
    Value: (attribute.Value as DicomJson[]).map((item) =>
      item && Object.fromEntries(Object.entries(item).map(([k, v]) => [k, withoutBulk(v)]))
    ),
  };
}

function studyComputed(out: DicomJson, row: SearchRow, url: string, query: SearchQuery): void {
  out[hex(TAGS.InstanceAvailability)] = attr("CS", "ONLINE");
  if (row.modalities.length > 0) out[hex(TAGS.ModalitiesInStudy)] = { vr: "CS", Value: row.modalities };
  // an optional return key: only when asked for (includefield)
  if ((query.includeAll || query.include.includes(TAGS.SOPClassesInStudy)) && row.sopClasses.length > 0) {
    out[hex(TAGS.SOPClassesInStudy)] = { vr: "UI", Value: row.sopClasses };
  }
  out[hex(TAGS.RetrieveURL)] ??= attr("UR", url);
  out[hex(TAGS.NumberOfStudyRelatedSeries)] = attr("IS", row.studySeries);
  out[hex(TAGS.NumberOfStudyRelatedInstances)] = attr("IS", row.studyInstances);
}

function formatRow(
  row: SearchRow,
  resource: Resource,
  query: SearchQuery,
  base: string,
  aet: string,
): DicomJson {
  const studyUrl = `${base}/aets/${encodeURIComponent(aet)}/studies/${row.study}`;
  const seriesUrl = `${studyUrl}/series/${row.series}`;
  const instanceUrl = `${seriesUrl}/instances/${row.sop}`;
  const out: DicomJson = {};
  const wanted = (level: Level): Iterable<number> | "all" => {
    if (level === resource.level && query.includeAll) return "all";
    return resource.parents.includes(level) || level === resource.level
      ? [...DEFAULT_RETURN[level], ...query.include]
      : query.include;
  };
  if (resource.level === "study") {
    out[hex(TAGS.RetrieveURL)] = attr("UR", studyUrl);
    pick(out, row.studyJson, wanted("study"), true);
    studyComputed(out, row, studyUrl, query);
  } else if (resource.level === "series") {
    out[hex(TAGS.RetrieveURL)] = attr("UR", seriesUrl);
    pick(out, row.seriesJson, wanted("series"), true);
    pick(out, row.studyJson, wanted("study"), true);
    out[hex(TAGS.StudyInstanceUID)] ??= attr("UI", row.study);
    out[hex(TAGS.NumberOfSeriesRelatedInstances)] = attr("IS", row.seriesInstances ?? 0);
    if (resource.parents.includes("study")) studyComputed(out, row, studyUrl, query);
  } else {
    out[hex(TAGS.RetrieveURL)] = attr("UR", instanceUrl);
    const instance = row.instanceJson ?? {};
    // The instance's own document holds every level's attributes with BulkDataURIs relative to it.
    const tags = query.includeAll ? "all" : new Set([
      ...wanted("instance") as Iterable<number>,
      ...(resource.parents.includes("series") ? DEFAULT_RETURN.series : []),
      ...(resource.parents.includes("study") ? DEFAULT_RETURN.study : []),
    ]);
    pick(out, instance, tags, false);
    out[hex(TAGS.StudyInstanceUID)] ??= attr("UI", row.study);
    out[hex(TAGS.SeriesInstanceUID)] ??= attr("UI", row.series);
    out[hex(TAGS.InstanceAvailability)] = attr("CS", "ONLINE");
    if (resource.parents.includes("series")) {
      out[hex(TAGS.NumberOfSeriesRelatedInstances)] = attr("IS", row.seriesInstances ?? 0);
    }
    if (resource.parents.includes("study")) {
      studyComputed(out, row, studyUrl, query);
      out[hex(TAGS.RetrieveURL)] = attr("UR", instanceUrl);
    }
    for (const [key, attribute] of Object.entries(out)) {
      if (attribute.BulkDataURI !== undefined || attribute.vr === "SQ") {
        out[key] = JSON.parse(
          JSON.stringify(attribute).replaceAll('"BulkDataURI":"', `"BulkDataURI":"${instanceUrl}/`),
        );
      }
    }
  }
  return out;
}

const CHARSET = '"00080005":{"vr":"CS","Value":["ISO_IR 192"]}';

/**
 * Adds Specific Character Set "ISO_IR 192" to a result whose text is not all ASCII (see the module docs). Keys are
 * in ascending order and (0008,0005) sorts before every attribute a search returns, so it goes first.
 */
function withCharset(text: string): string {
  if (!/[^ -~]/.test(text)) return text;
  return text === "{}" ? `{${CHARSET}}` : `{${CHARSET},${text.slice(1)}`;
}
