import assert from "node:assert/strict";
import { openSqliteCatalog } from "../../lib/catalog/sqlite_catalog.ts";
import { catalogContract, files, filled } from "./_catalog_contract.ts";

catalogContract("SqliteCatalog (:memory:)", (options) => openSqliteCatalog(":memory:", options));

let fileCount = 0;
const dir = Deno.makeTempDirSync({ prefix: "catalog-contract-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
catalogContract(
  "SqliteCatalog (file)",
  (options) => openSqliteCatalog(`${dir}/c${fileCount++}.sqlite`, options),
);

Deno.test("openSqliteCatalog() keeps a file, rebuilds a foreign one and falls back to memory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/catalog.sqlite`;
    let catalog = await openSqliteCatalog(path);
    await filled(catalog);
    await catalog.close();
    catalog = await openSqliteCatalog(path);
    assert.equal((await catalog.status("A"))[0].indexed, files.length);
    await catalog.close();

    // Another bulk data threshold: the stored JSON would differ, so the file is emptied.
    catalog = await openSqliteCatalog(path, { bulkDataThreshold: 10 });
    assert.deepEqual(await catalog.status(), []);
    await catalog.close();

    // Not a database at all, and an unwritable place: both fall back to memory with a warning.
    await Deno.writeTextFile(
      `${dir}/junk.sqlite`,
      "this is not a database, just text that is long enough to check",
    );
    for (const bad of [`${dir}/junk.sqlite`, `${dir}/no/such/dir/catalog.sqlite`]) {
      const warnings: string[] = [];
      catalog = await openSqliteCatalog(bad, { log: (line) => warnings.push(line) });
      assert.equal(catalog.location, ":memory:");
      assert.match(warnings[0], /Using an in-memory catalog/);
      await filled(catalog);
      await catalog.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
