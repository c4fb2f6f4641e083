/**
 * The route table: every URL this server answers, with its methods, the handler behind it and the section of
 * PS3.18 that defines it. To find the code behind a URL, find its path here and follow the handler; to add a
 * route, add a line here (all routes under `/aets/:aet/` get authentication and AET grants from the guard).
 *
 * @module
 */

import { metricsResponse } from "./metrics.ts";
import { catalogAdminHandlers } from "../dicomweb/catalog_admin.ts";
import { deleteHandlers } from "../dicomweb/delete.ts";
import { changeFeedHandlers } from "../dicomweb/changefeed.ts";
import { bucketEventsHandler, type BucketEventsOptions } from "../events/bucket_events.ts";
import { pixelHandlers } from "../dicomweb/frames_bulkdata.ts";
import { metadataHandlers } from "../dicomweb/metadata.ts";
import { renderedHandlers, type RenderedOptions } from "../dicomweb/rendered.ts";
import { retrieveHandlers, type RetrieveOptions } from "../dicomweb/retrieve.ts";
import { searchHandlers } from "../dicomweb/search.ts";
import type { Services } from "../dicomweb/services.ts";
import { Ingest, stowHandler, type StowOptions } from "../dicomweb/stow.ts";
import type { Handler, Router } from "../http/router.ts";
import { transcodingEncoder } from "../imaging/pixel_transcode.ts";
import { reEncodeBody } from "../objects/explicit_le_body.ts";
import type { RequestGuard } from "../security/request_guard.ts";
import type { AuditLog } from "../security/audit.ts";
import { viewerHandlers } from "../viewer/viewer.ts";
import { healthHandlers } from "./health.ts";

/** Options for {@linkcode addRoutes}. */
export interface RouteOptions {
  /** Authentication, grants and limits (it also hides AETs in `/aets` and `/readyz`). */
  guard: RequestGuard;
  /** How instances are converted for retrieval (default: re-encoding, else decoding; tests swap it). */
  encode?: RetrieveOptions["encode"];
  /** STOW-RS buffering and concurrency. */
  stow?: StowOptions;
  /** The codec pool and thumbnail cache of the rendered resources. */
  rendered?: RenderedOptions;
  /** The audit log: a DELETE writes one line per deleted instance to it. */
  audit?: AuditLog;
  /** SNS signature checks and subscription confirmation of `POST /admin/events` (tests swap them). */
  events?: BucketEventsOptions;
}

/** One row of the table: a URLPattern path and its handlers by method. */
export type Route = [path: string, methods: Partial<Record<"GET" | "POST" | "DELETE", Handler>>];

/** The routes of a server over `services`, in the order they are matched. */
function routeTable(services: Services, options: RouteOptions): Route[] {
  const { config } = services;
  const health = healthHandlers(services, options.guard);
  const retrieve = retrieveHandlers(services, {
    encode: options.encode ??
      transcodingEncoder((opened, _choice, bucket) =>
        reEncodeBody(opened, {
          store: services.store,
          headers: services.headerCache,
          bucket,
          bulkThreshold: config.bulkDataThreshold,
        })
      ),
  });
  const metadata = metadataHandlers(services);
  const pixels = pixelHandlers(services);
  const search = searchHandlers(services);
  const store = stowHandler(services, new Ingest(services, options.stow));
  const rendered = renderedHandlers(services, options.rendered);
  const render = (level: "study" | "series" | "instance", kind: "rendered" | "thumbnail"): Handler => (ctx) =>
    rendered[level](ctx, kind);
  const admin = catalogAdminHandlers(services);
  const changes = changeFeedHandlers(services);
  const { guard, audit } = options;
  const remove = deleteHandlers(services, {
    onDeleted: audit && ((request, deleted) =>
      audit.recordInstance({
        ...deleted,
        action: "delete",
        principal: guard.principalOf(request),
        client: guard.contextOf(request)?.client,
      })),
  });
  const study = "/aets/:aet/studies/:study";
  const series = `${study}/series/:series`;
  const instance = `${series}/instances/:instance`;
  const table: Route[] = [
    // Not PS3.18: health and the AETs (lib/app/health.ts).
    ["/healthz", { GET: health.healthz }],
    ["/readyz", { GET: health.readyz }],
    // Not PS3.18: Prometheus metrics (lib/app/metrics.ts); a server-wide read like /admin.
    ["/metrics", { GET: () => metricsResponse({ catalog: services.catalog, crawler: services.crawler }) }],
    ["/aets", { GET: health.aets }],
    // PS3.18 10.6.1 Search (lib/dicomweb/search.ts) and 10.5 Store (lib/dicomweb/stow.ts).
    ["/aets/:aet/studies", { GET: search.studies, POST: store }],
    ["/aets/:aet/series", { GET: search.allSeries }],
    ["/aets/:aet/instances", { GET: search.allInstances }],
    [`${study}/series`, { GET: search.studySeries }],
    [`${study}/instances`, { GET: search.studyInstances }],
    [`${series}/instances`, { GET: search.seriesInstances }],
    // PS3.18 10.4.1 Retrieve Instances (lib/dicomweb/retrieve.ts); STOW-RS into a study; DELETE (not PS3.18,
    // as the Azure DICOM service, Google and Orthanc: lib/dicomweb/delete.ts).
    [study, { GET: retrieve.study, POST: store, DELETE: remove.study }],
    [series, { GET: retrieve.series, DELETE: remove.series }],
    [instance, { GET: retrieve.instance, DELETE: remove.instance }],
    // PS3.18 10.4.1.1.2 Retrieve Metadata, Annex F JSON (lib/dicomweb/metadata.ts).
    [`${study}/metadata`, { GET: metadata.study }],
    [`${series}/metadata`, { GET: metadata.series }],
    [`${instance}/metadata`, { GET: metadata.instance }],
    // PS3.18 10.4.1.1.3 Retrieve Frames, 10.4.1.1.4 Retrieve Bulkdata (lib/dicomweb/frames_bulkdata.ts).
    [`${instance}/frames/:frames`, { GET: pixels.frames }],
    [`${instance}/bulkdata/:path(.+)`, { GET: pixels.bulkdata }],
    // PS3.18 10.4.1.1.5 Retrieve Rendered, 10.4.1.1.6 Retrieve Thumbnail (lib/dicomweb/rendered.ts).
    ...(["rendered", "thumbnail"] as const).flatMap((kind): Route[] => [
      [`${study}/${kind}`, { GET: render("study", kind) }],
      [`${series}/${kind}`, { GET: render("series", kind) }],
      [`${instance}/${kind}`, { GET: render("instance", kind) }],
      [`${instance}/frames/:frames/${kind}`, { GET: render("instance", kind) }],
    ]),
    // Not PS3.18: the change feed, as the Azure DICOM service's v2 (lib/dicomweb/changefeed.ts).
    ["/aets/:aet/changefeed", { GET: changes.feed }],
    ["/aets/:aet/changefeed/latest", { GET: changes.latest }],
    // Not PS3.18: catalog state and crawls (lib/dicomweb/catalog_admin.ts).
    ["/admin/index", { GET: admin.status, POST: admin.start }],
    // Not PS3.18: S3 event notifications (Ceph RGW, MinIO, AWS via SNS), EVENTS_TOKEN (lib/events/bucket_events.ts).
    ["/admin/events", { POST: bucketEventsHandler(services, options.events) }],
  ];
  if (config.viewer !== undefined) {
    // Not PS3.18: the OHIF Viewer when VIEWER is set (lib/viewer/viewer.ts).
    const viewer = viewerHandlers(services, { distDir: config.viewer });
    table.push(["/viewer", { GET: viewer.redirect }], ["/viewer/:path(.*)", { GET: viewer.files }]);
  }
  return table;
}

/** Adds every route of {@linkcode routeTable} to `router`. */
export function addRoutes(router: Router, services: Services, options: RouteOptions): void {
  for (const [path, methods] of routeTable(services, options)) router.add(path, methods);
}
