/**
 * `deno task index [--series-only] [AET...]`: crawls the buckets into the catalog file now (every AET, or the
 * ones named), reading every instance header unless `--series-only`, and exits. Safe while the server runs on
 * the same catalog file: crawls of one AET take turns through the catalog's lease.
 *
 * Exit codes: 0 done, 1 a crawl failed, 2 bad configuration or arguments.
 *
 * @module
 */

import { AetRegistry } from "../objects/aets.ts";
import { ConfigError, loadConfig } from "../config/config.ts";
import type { CrawlReport } from "../catalog/crawler.ts";
import { openCatalog, openCrawler, openStore } from "../app/open.ts";
import type { ObjectStore } from "../store/store.ts";

const USAGE = "Usage: deno task index [--series-only] [AET...]";

/** Runs the command; resolves to the exit code. */
export async function main(args: string[]): Promise<number> {
  const seriesOnly = args.includes("--series-only");
  const names = args.filter((a) => a !== "--series-only");
  if (names.some((a) => a.startsWith("-"))) {
    console.error(USAGE);
    return 2;
  }
  let config;
  try {
    config = await loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    return 2;
  }
  if (config.catalogPath === undefined) {
    console.error("CATALOG_PATH=off: there is no catalog to fill; set CATALOG_PATH to a file (or unset it)");
    return 2;
  }
  let store: ObjectStore;
  try {
    store = await openStore(config);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    return 2;
  }
  const catalog = (await openCatalog(config))!;
  try {
    if (catalog.location !== config.catalogPath) {
      console.error(`Cannot write the catalog at CATALOG_PATH=${config.catalogPath}: nothing would be kept`);
      return 2;
    }
    const aets = new AetRegistry(store, { configured: config.aets });
    const known = (await aets.entries()).map(([aet]) => aet);
    const unknown = names.filter((name) => !known.includes(name));
    if (unknown.length > 0) {
      console.error(`Unknown AET ${unknown.join(", ")}: known AETs are ${known.join(", ") || "(none)"}`);
      return 2;
    }
    const crawler = openCrawler(config, { store, aets, catalog, eagerInstances: !seriesOnly });
    console.log(`Catalog ${catalog.location}; store ${store.kind} ${store.location}`);
    const reports: CrawlReport[] = [];
    for (const aet of names.length > 0 ? names : known) {
      reports.push(await crawler.crawl(aet, { waitForInstances: !seriesOnly }));
    }
    for (const status of await catalog.status()) {
      if (names.length > 0 && !names.includes(status.aet)) continue;
      console.log(
        `${status.aet}: ${status.studies} studies, ${status.series} series, ${status.indexed}/${status.objects} ` +
          `instances indexed, ${status.failed} failed, ${status.ignored} ignored`,
      );
    }
    const failures = await catalog.failures(undefined, 20);
    for (const failure of failures) {
      console.log(`  ${failure.state}: ${failure.aet} ${failure.key}: ${failure.error}`);
    }
    const { count, bytes } = crawler.headerReads;
    console.log(`${count} headers read (${(bytes / 1024 / 1024).toFixed(1)} MiB)`);
    return reports.some((r) => r.outcome === "failed") ? 1 : 0;
  } finally {
    await catalog.close();
    await store.close?.();
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
