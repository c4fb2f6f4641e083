/**
 * Entry point: configuration → store → handler → `Deno.serve`.
 * Also a Deno Deploy entry (set `S3_ENDPOINT` or `STORE=s3` there; no filesystem is needed).
 *
 * @module
 */

import { AetRegistry } from "./lib/objects/aets.ts";
import { openAuditLog } from "./lib/security/audit.ts";
import { createHandler } from "./lib/app/handler.ts";
import { ConfigError, loadConfig } from "./lib/config/config.ts";
import { FileStore } from "./lib/store/file_store.ts";
import { S3Store } from "./lib/store/s3/s3_store.ts";
import type { ObjectStore } from "./lib/store/store.ts";
import { loadTls, type TlsFiles } from "./lib/security/proxies.ts";
import type { Catalog } from "./lib/catalog/catalog.ts";
import { crawlerFor } from "./lib/catalog/crawler.ts";
import { openSqliteCatalog } from "./lib/catalog/sqlite_catalog.ts";

if (import.meta.main) {
  let config;
  try {
    config = await loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    Deno.exit(2);
  }
  let store: ObjectStore;
  if (config.s3) {
    store = new S3Store({ ...config.s3, maxConcurrency: Math.max(50, config.s3Concurrency * 4) });
  } else {
    store = await openDataDir(config.dataDir);
  }
  const aets = new AetRegistry(store, { configured: config.aets });
  try {
    await aets.refresh();
  } catch (error) {
    // The server still starts: /readyz reports the problem until the store answers.
    console.error(
      `Warning: cannot list AETs from ${store.kind} store ${store.location}: ${(error as Error).message}`,
    );
  }
  // The search catalog is derived from the buckets: deleting its file is always safe.
  let catalog: Catalog | undefined;
  try {
    const path = config.catalogPath;
    if (path !== undefined && path !== ":memory:") {
      await Deno.mkdir(path.replace(/\/[^/]*$/, "") || ".", { recursive: true }).catch(() => {});
    }
    if (path !== undefined) {
      catalog = await openSqliteCatalog(path, { bulkDataThreshold: config.bulkDataThreshold });
    }
  } catch (error) {
    console.error(`Warning: search is off: ${(error as Error).message}`);
  }
  if (catalog) {
    crawlerFor(catalog, {
      store,
      aets,
      bulkDataThreshold: config.bulkDataThreshold,
      concurrency: Math.max(8, config.s3Concurrency),
    }).start(config.crawlInterval);
  }

  let tls: TlsFiles | undefined;
  let audit;
  try {
    tls = config.tls ? await loadTls(config.tls) : undefined;
    audit = openAuditLog(config.audit, { basePath: config.basePath });
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(2);
  }
  const handler = createHandler(
    { config, store, aets, capabilities: { reEncode: true, decode: true }, catalog },
    // the responses go straight to Deno.serve: sent chunks can be freed at once (lib/util/handoff.ts)
    { audit: audit.log, freeSentChunks: true },
  );
  const scheme = tls ? "https" : "http";
  const names = (await aets.entries().catch(() => [])).map(([aet, bucket]) =>
    aet === bucket ? aet : `${aet}=${bucket}`
  );
  Deno.serve({
    port: config.port,
    hostname: config.hostname,
    ...tls,
    onListen({ hostname, port }) {
      const shown = hostname.includes(":") ? `[${hostname}]` : hostname;
      console.log(`DICOMweb server on ${scheme}://${shown}:${port}${config.basePath}`);
      console.log(`Store: ${store.kind} ${store.location}`);
      console.log(
        `AETs: ${
          names.length > 0
            ? names.join(", ")
            : "(none yet: " + (config.s3 ? "create a bucket" : `create a folder in ${config.dataDir}`) + ")"
        }`,
      );
      const methods = config.auth.methods.length > 0
        ? config.auth.methods.join(", ")
        : "none (loopback only)";
      const auditTo = config.audit.kind === "file" ? config.audit.path : config.audit.kind;
      console.log(`Authentication: ${methods}; audit log: ${auditTo}`);
      console.log(`Search catalog: ${catalog ? config.catalogPath : "off"}`);
      if (config.viewer) console.log(`Viewer: ${scheme}://${shown}:${port}${config.basePath}/viewer/`);
      console.log(`Try: curl ${scheme}://${shown}:${port}${config.basePath}/aets`);
    },
  }, handler);
}

/** The local-folder store; creates `DATA_DIR` when missing, explains a missing permission. */
async function openDataDir(dir: string): Promise<ObjectStore> {
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      console.error(
        `Cannot use DATA_DIR=${dir}: no read/write permission. ` +
          `Run with --allow-read=${dir} --allow-write=${dir} (deno task start grants ./data only), or use S3_ENDPOINT`,
      );
      Deno.exit(2);
    }
    throw error;
  }
  return new FileStore(dir);
}
