/**
 * DELETE of a study, series or instance (not PS3.18: the common extension of the Azure DICOM service,
 * Google's Healthcare API and Orthanc): `DELETE /aets/{aet}/studies/{study}[/series/{series}[/instances/{sop}]]`.
 *
 * The bucket is the truth: the objects to delete are listed from it (with the trailing `/`, so `1.2.3` never
 * touches `1.2.34`), so objects the catalog has not indexed yet go too; then the catalog forgets them (and any
 * row of the scope whose object is already gone), and the header cache forgets their headers. QIDO-RS,
 * retrieval and metadata agree as soon as the 204 is sent. Only keys of the `{study}/{series}/{sop}.dcm`
 * layout are deleted; other objects under the study's folder are not this server's.
 *
 * A store failure half-way answers 502/503 naming how many instances remain and the first failure; what was
 * deleted is forgotten by the catalog already, so repeating the request deletes the rest.
 *
 * @module
 */

import { instanceKey, parseInstanceKey, seriesPrefix, studyPrefix } from "../dicom/uid.ts";
import { HttpError } from "../http/errors.ts";
import type { Handler, RouteContext } from "../http/router.ts";
import { StoreError } from "../store/store.ts";
import { describe, type Target, targetOf } from "./retrieve.ts";
import { bucketOf, type Services } from "./services.ts";

/** One instance a DELETE removed (for the audit log: one line each). */
export interface DeletedInstance {
  /** The AET. */
  aet: string;
  /** Study Instance UID. */
  study: string;
  /** Series Instance UID. */
  series: string;
  /** SOP Instance UID. */
  instance: string;
}

/** Options for {@linkcode deleteHandlers}. */
export interface DeleteOptions {
  /** Called once per deleted instance, with the request that deleted it (the audit log). */
  onDeleted?: (request: Request, deleted: DeletedInstance) => void;
  /** Object deletions in flight per request (default 8). */
  concurrency?: number;
}

/** The DELETE handlers of the three levels. */
export interface DeleteHandlers {
  /** `DELETE .../studies/{study}` */
  study: Handler;
  /** `DELETE .../studies/{study}/series/{series}` */
  series: Handler;
  /** `DELETE .../studies/{study}/series/{series}/instances/{instance}` */
  instance: Handler;
}

/** The DELETE handlers over `services`. */
export function deleteHandlers(services: Services, options: DeleteOptions = {}): DeleteHandlers {
  const handler: Handler = (ctx) => deleteTarget(services, ctx, options);
  return { study: handler, series: handler, instance: handler };
}

/** The layout keys of `target` in `bucket`, listed from the store (in key order). */
async function bucketKeys(services: Services, bucket: string, target: Target): Promise<string[]> {
  if (target.instance !== undefined) {
    const key = instanceKey(target.study, target.series!, target.instance);
    return (await services.store.head(bucket, key)) === null ? [] : [key];
  }
  const prefix = target.series !== undefined
    ? seriesPrefix(target.study, target.series)
    : studyPrefix(target.study);
  const keys: string[] = [];
  for await (const info of services.store.list(bucket, prefix)) {
    const uids = parseInstanceKey(info.key);
    if (uids === null || uids.study !== target.study) continue;
    if (target.series !== undefined && uids.series !== target.series) continue;
    keys.push(info.key);
  }
  return keys;
}

async function deleteTarget(
  services: Services,
  ctx: RouteContext,
  options: DeleteOptions,
): Promise<Response> {
  const target = targetOf(ctx.params);
  const bucket = await bucketOf(services, target.aet);
  const { catalog } = services;
  const listed = await bucketKeys(services, bucket, target);
  const known = catalog === undefined ? [] : await catalog.objectKeys(target.aet, {
    study: target.study,
    series: target.series,
    sop: target.instance,
  });
  if (listed.length === 0 && known.length === 0) {
    throw new HttpError(404, `Not found: ${describe(target)} has no instances to delete`);
  }

  const deleted: string[] = [];
  const failed: { key: string; error: unknown }[] = [];
  let next = 0;
  const worker = async () => {
    while (next < listed.length) {
      const key = listed[next++];
      try {
        await services.store.delete(bucket, key);
        deleted.push(key);
        services.headerCache.forget(bucket, key);
      } catch (error) {
        failed.push({ key, error });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency ?? 8, listed.length) }, worker));

  // The catalog forgets what left the bucket, and rows whose objects were gone already.
  const remaining = new Set(failed.map((f) => f.key));
  const forget = [...new Set([...deleted, ...known.filter((key) => !remaining.has(key))])];
  if (catalog !== undefined && forget.length > 0) await catalog.removeInstances(target.aet, forget);

  for (const key of deleted.sort()) {
    const uids = parseInstanceKey(key)!;
    options.onDeleted?.(ctx.request, {
      aet: target.aet,
      study: uids.study,
      series: uids.series,
      instance: uids.instance,
    });
  }
  if (failed.length > 0) {
    failed.sort((a, b) => a.key < b.key ? -1 : 1);
    const first = failed[0];
    const why = first.error instanceof Error ? first.error.message : String(first.error);
    const status = failed.some((f) => f.error instanceof StoreError && f.error.kind === "unavailable")
      ? 503
      : 502;
    throw new HttpError(
      status,
      `Deleting ${
        describe(target)
      } stopped half-way: ${deleted.length} of ${listed.length} instances deleted, ` +
        `${failed.length} remain (first: ${first.key}: ${why}). Repeat the DELETE to delete the rest`,
      { cause: first.error },
    );
  }
  return new Response(null, { status: 204 });
}
