/**
 * Deno Deploy has no file system for the server: `main.ts` in S3 + PostgreSQL mode must need none. This runs
 * `main.ts` as its own process with network, environment and `sys` permissions only (no `--allow-read`, no
 * `--allow-write`), over s3rver and a throw-away PostgreSQL cluster, and passes STOW-RS, QIDO-RS, WADO-RS
 * retrieval and metadata through it. It is also the test of main.ts's wiring: `/metrics`, `LOG_FORMAT=json`, and
 * the DIMSE service started from `DIMSE_*` (C-ECHO and C-FIND with dcmtk).
 *
 * Needs Debian's `postgresql` and `dcmtk`: fails without them under CI=true, else skipped with one line naming
 * what is missing.
 */

import assert from "node:assert/strict";
import { concatBytes } from "../../lib/util/bytes.ts";
import { generatedCorpus } from "../_qido_fixtures.ts";
import { postgresMissing, startPostgres } from "../_postgres.ts";
import { startS3 } from "../_s3server.ts";
import { skipBecause } from "../_skip.ts";
import { hasCommand } from "../_dicom_fixtures.ts";

const missing = (await postgresMissing()) ??
  (hasCommand("findscu") ? undefined : "dcmtk is missing (apt-get install dcmtk)");
if (missing) skipBecause("the no-file-system test of main.ts", missing);

const encoder = new TextEncoder();

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

Deno.test({
  name:
    "main.ts serves STOW, QIDO, retrieval, /metrics and DIMSE from S3 + PostgreSQL without file system permissions",
  ignore: missing !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const pg = await startPostgres();
    const s3 = await startS3();
    let child: Deno.ChildProcess | undefined;
    const output: string[] = [];
    try {
      const bucket = s3.uniqueBucket("nofs");
      await s3.createBucket(bucket);
      const port = freePort();
      const dimsePort = freePort();
      child = new Deno.Command(Deno.execPath(), {
        // network, environment and sys only: any file read or write would be refused
        args: ["run", "--no-prompt", "--allow-net", "--allow-env", "--allow-sys", "main.ts"],
        cwd: new URL("../..", import.meta.url).pathname,
        env: {
          NO_COLOR: "1",
          PORT: String(port),
          HOSTNAME: "127.0.0.1",
          S3_ENDPOINT: s3.endpoint,
          S3_REGION: s3.region,
          AWS_ACCESS_KEY_ID: s3.accessKeyId,
          AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
          AETS: `DEPLOY=${bucket}`,
          CATALOG_URL: await pg.createDatabase("nofs"),
          CRAWL_INTERVAL: "0",
          LOG_FORMAT: "json",
          DIMSE_PORT: String(dimsePort),
          DIMSE_ALLOW_ANY: "true",
        },
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const pump = async (stream: ReadableStream<Uint8Array>) => {
        for await (const text of stream.pipeThrough(new TextDecoderStream())) output.push(text);
      };
      const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
      const base = `http://127.0.0.1:${port}`;
      const until = Date.now() + 60_000;
      for (;;) {
        const ready = await fetch(`${base}/readyz`).then(
          async (r) => (await r.json()).status,
          () => undefined,
        );
        if (ready === "ready") break;
        if (Date.now() > until) throw new Error(`main.ts did not become ready:\n${output.join("")}`);
        await new Promise((r) => setTimeout(r, 200));
      }

      const [file] = generatedCorpus();
      const [study, series, name] = file.key.split("/");
      const sop = name.slice(0, -4);
      const boundary = `nofs-${crypto.randomUUID()}`;
      const body = concatBytes([
        encoder.encode(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`),
        file.bytes,
        encoder.encode(`\r\n--${boundary}--\r\n`),
      ]) as Uint8Array<ArrayBuffer>;
      const stow = await fetch(`${base}/aets/DEPLOY/studies`, {
        method: "POST",
        body,
        headers: {
          "content-type": `multipart/related; type="application/dicom"; boundary=${boundary}`,
          accept: "application/dicom+json",
        },
      });
      assert.equal(stow.status, 200, await stow.clone().text());
      await stow.body?.cancel();

      const qido = await fetch(`${base}/aets/DEPLOY/studies/${study}/instances`, {
        headers: { accept: "application/dicom+json" },
      });
      assert.equal(qido.status, 200);
      const rows = await qido.json() as Record<string, { Value?: unknown[] }>[];
      assert.deepEqual(rows.map((r) => r["00080018"].Value![0]), [sop]);

      const instance = `${base}/aets/DEPLOY/studies/${study}/series/${series}/instances/${sop}`;
      const retrieved = await fetch(instance, { headers: { accept: "application/dicom" } });
      assert.equal(retrieved.status, 200);
      assert.deepEqual(new Uint8Array(await retrieved.arrayBuffer()), file.bytes);
      const metadata = await fetch(`${instance}/metadata`, { headers: { accept: "application/dicom+json" } });
      assert.equal(metadata.status, 200);
      assert.equal((await metadata.json())[0]["00080018"].Value[0], sop);

      const admin = await (await fetch(`${base}/admin/index`)).json();
      assert.equal(admin.catalog.kind, "postgresql");
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /^dicomweb_catalog_up 1$/m);
      assert.match(
        metrics,
        /^dicomweb_http_requests_total\{route="\/aets\/\{aet\}\/studies",method="POST",status="200"\} 1$/m,
      );

      // The DIMSE service main.ts started: C-ECHO, and C-FIND finds what STOW-RS stored.
      const dcmtk = async (command: string, args: string[]) => {
        const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
        const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
        assert.equal(out.code, 0, `${command}: ${text}`);
        return text;
      };
      await dcmtk("echoscu", ["-aet", "PEER", "-aec", "DEPLOY", "127.0.0.1", String(dimsePort)]);
      const found = await dcmtk("findscu", [
        "-v",
        "-aet",
        "PEER",
        "-aec",
        "DEPLOY",
        "-S",
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        `StudyInstanceUID=${study}`,
        "-k",
        "SeriesInstanceUID",
        "127.0.0.1",
        String(dimsePort),
      ]);
      assert.ok(found.includes(series), found);
      child.kill("SIGTERM");
      await child.status;
      await pumps;
      const text = output.join("");
      assert.doesNotMatch(text, /NotCapable|PermissionDenied|Requires (read|write) access/, text);
      assert.match(text, new RegExp(`^DIMSE: port ${dimsePort}; peers: any calling AE`, "m"));
      // LOG_FORMAT=json: the request lines are JSON objects
      const requestLine = text.split("\n").find((line) => line.includes('"path":"/metrics"'));
      assert.equal(JSON.parse(requestLine!).status, 200, text);
      child = undefined;
    } finally {
      if (child) {
        child.kill("SIGKILL");
        await child.status;
      }
      await s3.stop();
      await pg.stop();
    }
  },
});
