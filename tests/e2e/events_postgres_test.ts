/**
 * DELETE, the change feed, bucket events and webhooks on PostgreSQL: tests/dicomweb/delete_test.ts,
 * tests/dicomweb/changefeed_test.ts, tests/events/bucket_events_test.ts and tests/events/webhooks_test.ts run
 * unchanged in a child `deno test` whose catalogs are PostgreSQL databases of a throw-away cluster
 * (TEST_POSTGRES_URL, see tests/_postgres.ts).
 *
 * Needs Debian's `postgresql`: fails without it under CI=true, else skipped with one line naming it.
 */

import { postgresMissing, runOnPostgres } from "../_postgres.ts";
import { skipBecause } from "../_skip.ts";

const missing = await postgresMissing();
if (missing) skipBecause("DELETE, change feed, bucket events and webhooks on PostgreSQL", missing);

Deno.test({
  name: "DELETE, the change feed, bucket events and webhooks pass on a PostgreSQL catalog",
  ignore: missing !== undefined,
  async fn() {
    const output = await runOnPostgres([
      "tests/dicomweb/delete_test.ts",
      "tests/dicomweb/changefeed_test.ts",
      "tests/events/bucket_events_test.ts",
      "tests/events/webhooks_test.ts",
    ]);
    const summary = output.trim().split("\n").filter((line) => /^(ok|FAILED) \|/.test(line));
    console.log(`on PostgreSQL: ${summary.join("; ")}`);
  },
});
