import assert from "node:assert/strict";
import { ConfigError, parseConfig } from "../../lib/config/config.ts";

/** Asserts that `env` is rejected with a ConfigError whose message names `variable`. */
function rejects(env: Record<string, string>, variable: string | RegExp) {
  assert.throws(() => parseConfig(env), (error: unknown) => {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    assert.equal(error.name, "ConfigError");
    if (typeof variable === "string") assert.ok(error.message.includes(variable), error.message);
    else assert.match(error.message, variable);
    return true;
  }, JSON.stringify(env));
}

Deno.test("parseConfig()", async (t) => {
  await t.step("has working defaults for an empty environment", () => {
    const config = parseConfig({});
    assert.equal(config.port, 8080);
    assert.equal(config.hostname, "127.0.0.1");
    assert.equal(config.dataDir, "./data");
    assert.equal(config.basePath, "");
    assert.equal(config.publicUrl, undefined);
    assert.equal(config.s3, undefined);
    assert.equal(config.aets, undefined);
    assert.equal(config.s3Concurrency, 8);
    assert.deepEqual(config.corsOrigins, ["*"]);
    assert.equal(typeof config.cacheControl, "string");
    assert.ok(config.cacheControl.length > 0);
  });

  await t.step("CATALOG_PATH: next to the data by default, a file, :memory:, or off", () => {
    assert.equal(parseConfig({}).catalogPath, "./data/.catalog.sqlite");
    assert.equal(parseConfig({ DATA_DIR: "/srv/dicom/" }).catalogPath, "/srv/dicom/.catalog.sqlite");
    assert.equal(parseConfig({ CATALOG_PATH: "/var/lib/x.sqlite" }).catalogPath, "/var/lib/x.sqlite");
    assert.equal(parseConfig({ CATALOG_PATH: ":memory:" }).catalogPath, ":memory:");
    assert.equal(parseConfig({ CATALOG_PATH: "off" }).catalogPath, undefined);
    assert.equal(parseConfig({ CATALOG_PATH: "OFF" }).catalogPath, undefined);
  });

  await t.step("treats blank values as unset", () => {
    const config = parseConfig({ PORT: "", HOSTNAME: "  ", AETS: "", S3_ENDPOINT: " " });
    assert.equal(config.port, 8080);
    assert.equal(config.hostname, "127.0.0.1");
    assert.equal(config.aets, undefined);
    assert.equal(config.s3, undefined);
  });

  await t.step("reads PORT, HOSTNAME, DATA_DIR and trims values", () => {
    const config = parseConfig({
      PORT: " 8042 ",
      HOSTNAME: "0.0.0.0",
      ALLOW_UNAUTHENTICATED: "true",
      DATA_DIR: "/srv/dicom",
    });
    assert.equal(config.port, 8042);
    assert.equal(config.hostname, "0.0.0.0");
    assert.equal(config.dataDir, "/srv/dicom");
    assert.equal(parseConfig({ PORT: "0" }).port, 0);
    assert.equal(parseConfig({ PORT: "65535" }).port, 65535);
  });

  await t.step("selects S3 when S3_ENDPOINT is set, with path-style addressing by default", () => {
    const config = parseConfig({ S3_ENDPOINT: "http://127.0.0.1:9000" });
    assert.deepEqual(config.s3, {
      endpoint: "http://127.0.0.1:9000",
      region: "us-east-1",
      forcePathStyle: true,
    });
  });

  await t.step("reads S3_REGION and S3_FORCE_PATH_STYLE", () => {
    const config = parseConfig({
      S3_ENDPOINT: "https://s3.example.org",
      S3_REGION: "eu-west-3",
      S3_FORCE_PATH_STYLE: "false",
    });
    assert.deepEqual(config.s3, {
      endpoint: "https://s3.example.org",
      region: "eu-west-3",
      forcePathStyle: false,
    });
    for (const yes of ["1", "true", "TRUE", "yes", "on"]) {
      assert.equal(
        parseConfig({ S3_ENDPOINT: "http://h:1", S3_FORCE_PATH_STYLE: yes }).s3?.forcePathStyle,
        true,
        yes,
      );
    }
    for (const no of ["0", "false", "No", "off"]) {
      assert.equal(
        parseConfig({ S3_ENDPOINT: "http://h:1", S3_FORCE_PATH_STYLE: no }).s3?.forcePathStyle,
        false,
        no,
      );
    }
  });

  await t.step("STORE=s3 selects AWS S3 (virtual-hosted style), STORE=local wins over S3_ENDPOINT", () => {
    assert.deepEqual(parseConfig({ STORE: "s3" }).s3, {
      endpoint: undefined,
      region: "us-east-1",
      forcePathStyle: false,
    });
    assert.equal(parseConfig({ STORE: "local", S3_ENDPOINT: "http://127.0.0.1:9000" }).s3, undefined);
    assert.ok(parseConfig({ STORE: "S3" }).s3);
  });

  await t.step("parses AETS as AET or AET=bucket entries", () => {
    const config = parseConfig({ AETS: "A,B=bucket" });
    assert.deepEqual([...config.aets!.entries()], [["A", "A"], ["B", "bucket"]]);
    const spaced = parseConfig({ AETS: " PACS = pacs-bucket , RESEARCH ,, " });
    assert.deepEqual([...spaced.aets!.entries()], [["PACS", "pacs-bucket"], ["RESEARCH", "RESEARCH"]]);
  });

  await t.step("normalises BASE_PATH to a leading slash and no trailing slash", () => {
    assert.equal(parseConfig({ BASE_PATH: "dicomweb" }).basePath, "/dicomweb");
    assert.equal(parseConfig({ BASE_PATH: "/dicomweb/" }).basePath, "/dicomweb");
    assert.equal(parseConfig({ BASE_PATH: "/a/b//" }).basePath, "/a/b");
    assert.equal(parseConfig({ BASE_PATH: "/" }).basePath, "");
    assert.equal(parseConfig({ BASE_PATH: "/dicom-web_1.0~x" }).basePath, "/dicom-web_1.0~x");
  });

  await t.step("normalises PUBLIC_URL to no trailing slash", () => {
    assert.equal(
      parseConfig({ PUBLIC_URL: "https://pacs.example.org/dicomweb/" }).publicUrl,
      "https://pacs.example.org/dicomweb",
    );
    assert.equal(
      parseConfig({ PUBLIC_URL: "https://pacs.example.org" }).publicUrl,
      "https://pacs.example.org",
    );
    assert.equal(parseConfig({ PUBLIC_URL: "http://localhost:8080/" }).publicUrl, "http://localhost:8080");
  });

  await t.step("reads CORS_ORIGINS as *, a list, or off", () => {
    assert.deepEqual(parseConfig({ CORS_ORIGINS: "*" }).corsOrigins, ["*"]);
    assert.deepEqual(parseConfig({ CORS_ORIGINS: "off" }).corsOrigins, []);
    assert.deepEqual(parseConfig({ CORS_ORIGINS: "none" }).corsOrigins, []);
    assert.deepEqual(
      parseConfig({ CORS_ORIGINS: "https://viewer.example.org, http://localhost:3000" }).corsOrigins,
      ["https://viewer.example.org", "http://localhost:3000"],
    );
  });

  await t.step("reads S3_CONCURRENCY and CACHE_CONTROL", () => {
    assert.equal(parseConfig({ S3_CONCURRENCY: "32" }).s3Concurrency, 32);
    assert.equal(parseConfig({ S3_CONCURRENCY: "1" }).s3Concurrency, 1);
    // the total over all requests follows S3_CONCURRENCY unless set
    assert.equal(parseConfig({}).s3ConcurrencyTotal, 16);
    assert.equal(parseConfig({ S3_CONCURRENCY: "32" }).s3ConcurrencyTotal, 64);
    assert.equal(parseConfig({ S3_CONCURRENCY_TOTAL: "40" }).s3ConcurrencyTotal, 40);
    assert.equal(parseConfig({ CACHE_CONTROL: "no-store" }).cacheControl, "no-store");
  });

  await t.step("throws a ConfigError naming PORT for a bad port", () => {
    for (const port of ["abc", "-1", "65536", "80.5", "1e3", "0x50", "8080abc"]) {
      rejects({ PORT: port }, "PORT");
    }
  });

  await t.step("throws a ConfigError naming PUBLIC_URL for a non-absolute or non-http URL", () => {
    for (const url of ["foo", "/dicomweb", "ftp://x.org", "pacs.example.org"]) {
      rejects({ PUBLIC_URL: url }, "PUBLIC_URL");
    }
  });

  await t.step("throws a ConfigError naming AETS for bad entries", () => {
    rejects({ AETS: "BAD AET" }, "AETS");
    rejects({ AETS: "A/B" }, "AETS");
    rejects({ AETS: "A=b/c" }, "AETS");
    rejects({ AETS: "=bucket" }, "AETS");
    rejects({ AETS: "A,A" }, "AETS");
    rejects({ AETS: ",,," }, "AETS");
    rejects({ AETS: "A".repeat(65) }, "AETS");
  });

  await t.step("throws a ConfigError naming AETS for an entry with two '='", () => {
    // `A=b=c` is most likely a typo; silently using bucket "b" hides it.
    rejects({ AETS: "A=b=c" }, "AETS");
  });

  await t.step("throws a ConfigError naming S3_CONCURRENCY when out of range", () => {
    for (const n of ["0", "257", "many", "-3"]) rejects({ S3_CONCURRENCY: n }, "S3_CONCURRENCY");
    for (const n of ["0", "4097", "x"]) rejects({ S3_CONCURRENCY_TOTAL: n }, "S3_CONCURRENCY_TOTAL");
  });

  await t.step("throws a ConfigError naming S3_FORCE_PATH_STYLE for a non-boolean", () => {
    rejects({ S3_ENDPOINT: "http://127.0.0.1:9000", S3_FORCE_PATH_STYLE: "maybe" }, "S3_FORCE_PATH_STYLE");
  });

  await t.step("throws a ConfigError naming S3_FORCE_PATH_STYLE even when S3 is not selected", () => {
    // Every invalid value should be reported at start-up, not only when it happens to be used.
    rejects({ S3_FORCE_PATH_STYLE: "maybe" }, "S3_FORCE_PATH_STYLE");
  });

  await t.step("throws a ConfigError naming CORS_ORIGINS for an origin that is not scheme://host", () => {
    for (
      const origin of [
        "example.org",
        "https://example.org/",
        "https://example.org/path",
        "ftp://x.org",
        "http://",
      ]
    ) {
      rejects({ CORS_ORIGINS: origin }, "CORS_ORIGINS");
    }
  });

  await t.step("throws a ConfigError naming BASE_PATH, S3_ENDPOINT and STORE for bad values", () => {
    rejects({ BASE_PATH: "/dicom web" }, "BASE_PATH");
    rejects({ BASE_PATH: "/a?b" }, "BASE_PATH");
    rejects({ S3_ENDPOINT: "not a url" }, "S3_ENDPOINT");
    rejects({ S3_ENDPOINT: "ftp://x.org" }, "S3_ENDPOINT");
    rejects({ STORE: "gcs" }, "STORE");
  });

  await t.step("lists every problem in one error", () => {
    rejects(
      { PORT: "abc", PUBLIC_URL: "foo", S3_CONCURRENCY: "0" },
      /PORT[\s\S]*PUBLIC_URL[\s\S]*S3_CONCURRENCY/,
    );
  });

  await t.step("EVENTS_TOKEN and WEBHOOKS: validated, with what to write instead", () => {
    const config = parseConfig({
      EVENTS_TOKEN: "0123456789abcdef0123",
      WEBHOOKS: JSON.stringify([
        { url: "https://ai.example.org/hook", secret: "0123456789abcdef", events: ["*"] },
        {
          url: "http://127.0.0.1:9000/x",
          secret: "fedcba9876543210",
          events: ["org.dicomweb.instance.deleted"],
        },
        { url: "https://ris.example.org/hook", secret: "0123456789abcdef" },
      ]),
    });
    assert.equal(config.eventsToken, "0123456789abcdef0123");
    assert.equal(config.webhooks.length, 3);
    assert.deepEqual(config.webhooks[2].events, ["*"]);
    assert.deepEqual(parseConfig({}).webhooks, []);
    assert.equal(parseConfig({}).eventsToken, undefined);
    rejects({ EVENTS_TOKEN: "short" }, /EVENTS_TOKEN is not valid: .*openssl rand -hex 32/);
    rejects({ EVENTS_TOKEN: "has spaces in it, sixteen+" }, "EVENTS_TOKEN");
    rejects({ WEBHOOKS: "[{" }, /WEBHOOKS is not JSON/);
    rejects({ WEBHOOKS: "{}" }, /WEBHOOKS is not a JSON array/);
    rejects({ WEBHOOKS: '[{"url": "ftp://x", "secret": "0123456789abcdef"}]' }, /WEBHOOKS\[0\]\.url/);
    rejects({ WEBHOOKS: '[{"url": "https://x.org", "secret": "short"}]' }, /WEBHOOKS\[0\]\.secret/);
    rejects(
      { WEBHOOKS: '[{"url": "https://x.org", "secret": "0123456789abcdef", "events": ["instance.moved"]}]' },
      /WEBHOOKS\[0\]\.events .* org\.dicomweb\.instance\.created/,
    );
    rejects(
      { WEBHOOKS: '[{"url": "https://x.org", "secret": "0123456789abcdef", "retries": 3}]' },
      /unknown keys retries/,
    );
  });
});
