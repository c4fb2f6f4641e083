/**
 * The one way tests build a server: the services of lib/app/open.ts over a given store, the handler of
 * lib/app/handler.ts, and (for end-to-end tests) `Deno.serve` on a free loopback port. Log lines are collected.
 *
 * @module
 */

import { createHandler, type HandlerOptions } from "../lib/app/handler.ts";
import { assembleServices, type ServerParts } from "../lib/app/open.ts";
import type { Catalog } from "../lib/catalog/catalog.ts";
import type { Crawler } from "../lib/catalog/crawler.ts";
import { openSqliteCatalog } from "../lib/catalog/sqlite_catalog.ts";
import { type Config, parseConfig } from "../lib/config/config.ts";
import type { SyntaxCapabilities } from "../lib/imaging/syntax_choice.ts";
import type { AetRegistry } from "../lib/objects/aets.ts";
import type { HeaderCache } from "../lib/objects/header_cache.ts";
import type { ServeInfo } from "../lib/security/request_guard.ts";
import type { ObjectStore } from "../lib/store/store.ts";
import { postgresTestCatalog, TEST_POSTGRES_URL } from "./_postgres.ts";

/** What a test server is made of. */
export interface TestServerOptions {
  store: ObjectStore;
  /** The settings: environment variables as `parseConfig` reads them (e.g. `{ AETS: "PACS=pacs" }`), or a Config. */
  config?: Config | Record<string, string>;
  /** Default: the server's own (re-encoding and decoding). */
  capabilities?: SyntaxCapabilities;
  /** The search catalog (see {@linkcode memoryCatalog}); none by default, so search answers 503. */
  catalog?: Catalog;
  /** Default: a crawler over `store` when there is a catalog. */
  crawler?: Crawler;
  /** Default: a registry of `config.aets` over `store`. */
  aets?: AetRegistry;
  /** Default: a new cache of `HEADER_CACHE_MB`. */
  headerCache?: HeaderCache;
  /** Options of `createHandler` (default `log`: collected in `logs`). */
  handler?: HandlerOptions;
}

/** A handler built for a test, and what it was built from. */
export interface TestHandler {
  handler: (request: Request, info?: ServeInfo) => Promise<Response>;
  /** Calls the handler with `http://localhost{path}`. */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  services: ServerParts;
  config: Config;
  logs: string[];
  /** Stops the crawler. */
  close(): Promise<void>;
}

/** A handler over `options.store`, wired as main.ts wires the server. */
export function testHandler(options: TestServerOptions): TestHandler {
  const config = options.config === undefined
    ? parseConfig({})
    : "port" in options.config
    ? options.config as Config
    : parseConfig(options.config as Record<string, string>);
  const logs: string[] = [];
  const services = assembleServices(config, options.store, {
    catalog: options.catalog,
    aets: options.aets,
    crawler: options.crawler,
    capabilities: options.capabilities,
    log: options.handler?.log ?? ((line) => logs.push(line)),
  });
  const handler = createHandler({ ...services, headerCache: options.headerCache }, {
    log: (line) => logs.push(line),
    ...options.handler,
  });
  return {
    handler,
    fetch: (path, init) => handler(new Request(`http://localhost${path}`, init)),
    services,
    config,
    logs,
    close: async () => {
      await services.crawler?.stop();
    },
  };
}

/** A {@linkcode testHandler} served on a loopback port, at `url` (`http://127.0.0.1:PORT`). */
export type TestServer = TestHandler & { url: string };

/** A {@linkcode testHandler} served by `Deno.serve` on a free loopback port. */
export function testServer(options: TestServerOptions): TestServer {
  const built = testHandler(options);
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, built.handler);
  const { port } = server.addr as Deno.NetAddr;
  return {
    ...built,
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      await server.shutdown();
      await built.close();
    },
  };
}

/**
 * A new in-memory SQLite catalog (close it when done); a new PostgreSQL database when `TEST_POSTGRES_URL` is
 * set (tests/_postgres.ts).
 */
export async function memoryCatalog(options: { bulkDataThreshold?: number } = {}): Promise<Catalog> {
  if (TEST_POSTGRES_URL !== undefined) return await postgresTestCatalog(TEST_POSTGRES_URL, options);
  return await openSqliteCatalog(":memory:", options);
}
