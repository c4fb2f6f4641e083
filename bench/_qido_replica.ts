/**
 * One replica of `bench/qido_bench.ts`'s fleet part, in its own process as a real replica is: the server's
 * handler over the PostgreSQL catalog at `CATALOG_URL` (filled by the bench), an empty in-memory store and no
 * crawler (a crawl of the empty store would empty the catalog). Prints `listening PORT` when it answers; ends
 * on SIGTERM.
 *
 * @module
 */

import { AetRegistry } from "../lib/objects/aets.ts";
import { createHandler } from "../lib/app/handler.ts";
import { assembleServices } from "../lib/app/open.ts";
import { parseConfig } from "../lib/config/config.ts";
import { openPostgresCatalog } from "../lib/catalog/postgres_catalog.ts";
import { MemoryStore } from "../lib/store/memory_store.ts";

const url = Deno.env.get("CATALOG_URL");
if (url === undefined) throw new Error("Set CATALOG_URL to the bench's PostgreSQL database");
// the bench's 50 clients stand for 50 machines, but all come from 127.0.0.1
const config = parseConfig({ AETS: "BENCH=bench", CLIENT_CONCURRENCY: "1000" });
const store = new MemoryStore(["bench"]);
const catalog = await openPostgresCatalog(url, { poolSize: 20, log: () => {} });
const aets = new AetRegistry(store, { configured: config.aets });
const handler = createHandler(
  assembleServices(config, store, { aets, catalog, capabilities: { reEncode: false } }),
  { log: () => {} },
);
const server = Deno.serve({
  port: 0,
  hostname: "127.0.0.1",
  onListen: ({ port }) => console.log(`listening ${port}`),
}, handler);
Deno.addSignalListener("SIGTERM", async () => {
  await server.shutdown();
  await catalog.close();
  Deno.exit(0);
});
