/**
 * Entry point: configuration → store, catalog and crawler → handler → `Deno.serve`. Wiring only: everything
 * is built by lib/app/open.ts and lib/app/handler.ts.
 * Also a Deno Deploy entry (set `S3_ENDPOINT` or `STORE=s3` there; no filesystem is needed).
 *
 * @module
 */

import { createHandler } from "./lib/app/handler.ts";
import { logSink } from "./lib/app/metrics.ts";
import { assembleServices, openCatalog, openStore } from "./lib/app/open.ts";
import type { Catalog } from "./lib/catalog/catalog.ts";
import { CatalogMismatchError } from "./lib/catalog/postgres_catalog.ts";
import { type Config, CONFIG_NAMES, ConfigError, loadSettings, parseConfig } from "./lib/config/config.ts";
import { completeServices } from "./lib/dicomweb/services.ts";
import { DIMSE_NAMES, type DimseSettings, parseDimseSettings } from "./lib/dimse/dimse_settings.ts";
import { type DimseServer, startDimse } from "./lib/dimse/server.ts";
import { openAuditLog, type OpenedAuditLog } from "./lib/security/audit.ts";
import { loadTls, type TlsFiles } from "./lib/security/proxies.ts";
import type { ObjectStore } from "./lib/store/store.ts";

if (import.meta.main) {
  let config: Config;
  let dimse: DimseSettings | undefined;
  let store: ObjectStore;
  let tls: TlsFiles | undefined;
  let audit: OpenedAuditLog;
  try {
    const settings = await loadSettings([...CONFIG_NAMES, ...DIMSE_NAMES]);
    config = parseConfig(settings);
    const problems: string[] = [];
    dimse = parseDimseSettings(settings, problems, { hostname: config.hostname, tls: config.tls });
    if (problems.length > 0) throw new ConfigError(`Configuration problems:\n- ${problems.join("\n- ")}`);
    store = await openStore(config);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    Deno.exit(2);
  }
  try {
    tls = config.tls ? await loadTls(config.tls) : undefined;
    audit = openAuditLog(config.audit, { basePath: config.basePath });
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(2);
  }
  const log = logSink(config.logFormat);
  // The search catalog is derived from the buckets: deleting its file is always safe. A PostgreSQL catalog
  // that does not answer yet is not an error (search answers 503 until it does); one of a newer schema is.
  let catalog: Catalog | undefined;
  try {
    catalog = await openCatalog(config, { log });
  } catch (error) {
    if (error instanceof CatalogMismatchError) {
      console.error(error.message);
      Deno.exit(2);
    }
    console.error(`Warning: search is off: ${(error as Error).message}`);
  }
  const services = assembleServices(config, store, { catalog, log });
  try {
    await services.aets.refresh();
  } catch (error) {
    // The server still starts: /readyz reports the problem until the store answers.
    console.error(
      `Warning: cannot list AETs from ${store.kind} store ${store.location}: ${(error as Error).message}`,
    );
  }
  services.crawler?.start(config.crawlInterval);
  // the responses go straight to Deno.serve: sent chunks can be freed at once (lib/util/handoff.ts)
  const handler = createHandler(services, { audit: audit.log, freeSentChunks: true, log });
  let dimsePort: number | undefined;
  let dimseServer: DimseServer | undefined;
  if (dimse) {
    try {
      dimseServer = await startDimse(completeServices(services, log), dimse, { log });
      dimsePort = dimseServer.port;
    } catch (error) {
      console.error(`Cannot start the DIMSE service on port ${dimse.port}: ${(error as Error).message}`);
      Deno.exit(2);
    }
  }
  const scheme = tls ? "https" : "http";
  const names = (await services.aets.entries().catch(() => [])).map(([aet, bucket]) =>
    aet === bucket ? aet : `${aet}=${bucket}`
  );
  const server = Deno.serve({
    port: config.port,
    hostname: config.hostname,
    ...tls,
    onListen({ hostname, port }) {
      const shown = hostname.includes(":") ? `[${hostname}]` : hostname;
      console.log(`DICOMweb server on ${scheme}://${shown}:${port}${config.basePath}`);
      console.log(`Store: ${store.kind} ${store.location}`);
      console.log(`AETs: ${names.length > 0 ? names.join(", ") : "none yet"}`);
      if (names.length === 0) {
        // An empty server says how to fill it.
        const aet = config.aets ? [...config.aets.keys()][0] : "MYPACS";
        const where = config.s3
          ? config.aets ? "" : ` (first create the bucket ${aet}, or set AETS=${aet}=BUCKET)`
          : config.aets
          ? ""
          : ` (its folder ${config.dataDir}/${aet} is created)`;
        console.log(`Add data${where}:`);
        console.log(`  deno task import ~/path/to/dicom-folder-or.zip --aet ${aet}`);
        console.log(
          `  curl -H 'Content-Type: multipart/related; type="application/dicom"' -F 'file=@image.dcm;type=application/dicom' ` +
            `${scheme}://${shown}:${port}${config.basePath}/aets/${aet}/studies`,
        );
      }
      const methods = config.auth.methods.length > 0
        ? config.auth.methods.join(", ")
        : "none (loopback only)";
      const auditTo = config.audit.kind === "file" ? config.audit.path : config.audit.kind;
      console.log(`Authentication: ${methods}; audit log: ${auditTo}`);
      console.log(`Search catalog: ${catalog ? `${catalog.kind} ${catalog.location}` : "off"}`);
      if (dimse) {
        const peers = dimse.allowAny
          ? "any calling AE (loopback)"
          : [...dimse.peers.keys()].join(", ") || "none";
        console.log(`DIMSE: port ${dimsePort}${dimse.tls ? " (TLS)" : ""}; peers: ${peers}`);
      }
      if (config.viewer) console.log(`Viewer: ${scheme}://${shown}:${port}${config.basePath}/viewer/`);
      console.log(`Try: curl ${scheme}://${shown}:${port}${config.basePath}/aets`);
    },
  }, handler);

  // SIGTERM (Kubernetes, systemd, docker stop) or Ctrl-C: stop accepting, let the responses under way finish
  // (up to SHUTDOWN_GRACE_MS), stop crawling, close the catalog, exit 0. A second signal exits at once.
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) Deno.exit(1);
    stopping = true;
    console.log(
      `${signal}: shutting down; finishing the requests under way (at most ${config.shutdownGraceMs} ms)`,
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve("the grace period ran out"), config.shutdownGraceMs);
    });
    const outcome = await Promise.race([
      Promise.all([server.shutdown(), dimseServer?.close()]).then(() => "done"),
      grace,
    ]);
    clearTimeout(timer);
    // a crawl's reads under way and the catalog's last writes get a few seconds, not a hang
    const closing = (async () => {
      await services.crawler?.stop().catch(() => {});
      await catalog?.close().catch(() => {});
    })();
    await Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 5000))]);
    console.log(`Stopped (${outcome === "done" ? "every request finished" : outcome})`);
    Deno.exit(0);
  };
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    try {
      Deno.addSignalListener(signal, () => void shutdown(signal));
    } catch {
      // no signals here (Deno Deploy, Windows' SIGTERM)
    }
  }
}
