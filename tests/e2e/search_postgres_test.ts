/**
 * The QIDO-RS suites on PostgreSQL: tests/dicomweb/search_test.ts (matching tables, fuzzy names,
 * includefield, limit/offset with Warning, date/time ranges, the pydicom corpus) and
 * tests/e2e/search_s3_test.ts (crawls over HTTP from a folder and from s3rver) run unchanged in a child
 * `deno test` whose catalogs are PostgreSQL databases of a throw-away cluster (TEST_POSTGRES_URL, see
 * tests/_postgres.ts). Differences from SQLite are listed in lib/catalog/README.md.
 *
 * Needs Debian's `postgresql`: fails without it under CI=true, else skipped with one line naming it.
 */

import { postgresMissing, runOnPostgres } from "../_postgres.ts";
import { skipBecause } from "../_skip.ts";

const missing = await postgresMissing();
if (missing) skipBecause("the QIDO suites on PostgreSQL", missing);

Deno.test({
  name: "QIDO suites pass on a PostgreSQL catalog",
  ignore: missing !== undefined,
  async fn() {
    const output = await runOnPostgres(["tests/dicomweb/search_test.ts", "tests/e2e/search_s3_test.ts"]);
    const summary = output.trim().split("\n").filter((line) => /^(ok|FAILED) \|/.test(line));
    console.log(`on PostgreSQL: ${summary.join("; ")}`);
  },
});
