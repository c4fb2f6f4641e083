/**
 * A server wired as `createHandler` wires it (guard, services, route table) but with the options of the route
 * table that `createHandler` does not pass yet (the audit log for DELETE), over a store holding the generated
 * QIDO corpus, with a catalog (SQLite, or PostgreSQL with TEST_POSTGRES_URL) crawled or not.
 *
 * @module
 */

import { addRoutes, type RouteOptions } from "../../lib/app/routes.ts";
import { assembleServices, openCrawler } from "../../lib/app/open.ts";
import type { Catalog } from "../../lib/catalog/catalog.ts";
import type { Crawler } from "../../lib/catalog/crawler.ts";
import { type Config, parseConfig } from "../../lib/config/config.ts";
import { completeServices, type Services } from "../../lib/dicomweb/services.ts";
import { errorResponse, toHttpError } from "../../lib/http/errors.ts";
import { Router } from "../../lib/http/router.ts";
import type { WebhookDispatcher } from "../../lib/events/webhooks.ts";
import { AetRegistry } from "../../lib/objects/aets.ts";
import { AuditLog, type AuditRecord } from "../../lib/security/audit.ts";
import { RequestGuard } from "../../lib/security/request_guard.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import type { ObjectStore } from "../../lib/store/store.ts";
import { putAll } from "../_qido_fixtures.ts";
import { memoryCatalog } from "../_server.ts";

/** A routed test server. */
export interface Routed {
  store: ObjectStore;
  catalog: Catalog;
  crawler: Crawler;
  config: Config;
  services: Services;
  logs: string[];
  /** Calls the server with `http://localhost{path}`. */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /** Audit lines written. */
  audit: AuditRecord[];
  /** The webhooks' sender (with `WEBHOOKS` in `env`). */
  webhooks?: WebhookDispatcher;
  close(): Promise<void>;
}

/** Options for {@linkcode routedServer}. */
export interface RoutedOptions {
  aet: string;
  bucket: string;
  /** Objects put into the bucket first. */
  files?: { key: string; bytes: Uint8Array }[];
  env?: Record<string, string>;
  store?: ObjectStore;
  /** Crawl and index before serving (default true). */
  crawl?: boolean;
  /** More route options. */
  routes?: Partial<RouteOptions>;
}

/** The server of `options`. */
export async function routedServer(options: RoutedOptions): Promise<Routed> {
  const store = options.store ?? new MemoryStore([options.bucket]);
  if (options.files) await putAll(store, options.bucket, options.files);
  const config = parseConfig({ AETS: `${options.aet}=${options.bucket}`, ...options.env });
  const aets = new AetRegistry(store, { configured: config.aets });
  const catalog = await memoryCatalog();
  const logs: string[] = [];
  const log = (line: string) => logs.push(line);
  const crawler = openCrawler(config, { store, aets, catalog, log, eagerInstances: false });
  if (options.crawl !== false) {
    await crawler.crawl(options.aet);
    await crawler.ensureIndexed(options.aet, {});
  }
  const audit: AuditRecord[] = [];
  const auditLog = new AuditLog((line) => audit.push(JSON.parse(line)));
  const guard = new RequestGuard(config);
  const parts = assembleServices(config, guard.store(store), { aets, catalog, crawler, log });
  const services = completeServices(parts, log);
  const router = new Router(config.basePath);
  addRoutes(router, services, { guard, audit: auditLog, ...options.routes });
  return {
    store,
    catalog,
    crawler,
    config,
    services,
    logs,
    audit,
    fetch: async (path, init) => {
      const request = new Request(`http://localhost${path}`, init);
      try {
        return await guard.run(request, undefined, async (checked) => {
          const url = new URL(checked.url);
          const match = router.match(checked.method, url);
          if (match.kind !== "found") {
            return new Response(null, { status: match.kind === "none" ? 404 : 405 });
          }
          return await match.handler({ request: checked, url, params: match.params });
        });
      } catch (error) {
        return errorResponse(toHttpError(error));
      }
    },
    webhooks: parts.webhooks,
    close: async () => {
      parts.webhooks?.close();
      await crawler.stop();
      await catalog.close();
    },
  };
}
