import assert from "node:assert/strict";

/** The span names in OTLP/JSON trace exports. */
function spanNames(exports: string[]): string[] {
  const names: string[] = [];
  for (const text of exports) {
    const body = JSON.parse(text) as {
      resourceSpans?: { scopeSpans?: { spans?: { name: string }[] }[] }[];
    };
    for (const resource of body.resourceSpans ?? []) {
      for (const scope of resource.scopeSpans ?? []) {
        for (const span of scope.spans ?? []) names.push(span.name);
      }
    }
  }
  return names;
}

Deno.test("with OTEL_DENO=true each store call is a span, exported over OTLP", async () => {
  // a collector: what Deno's exporter posts to /v1/traces
  const traces: string[] = [];
  const collector = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    const text = await request.text();
    if (new URL(request.url).pathname === "/v1/traces") traces.push(text);
    return Response.json({});
  });
  try {
    const code = `
      import { instrumentStore } from "${new URL("../../lib/app/metrics.ts", import.meta.url)}";
      import { MemoryStore } from "${new URL("../../lib/store/memory_store.ts", import.meta.url)}";
      const store = instrumentStore(new MemoryStore(["bucket"]));
      await store.put("bucket", "a.dcm", new Uint8Array(4), { size: 4 });
      await store.get("bucket", "missing.dcm");
    `;
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      env: {
        OTEL_DENO: "true",
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.addr.port}`,
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
        NO_COLOR: "1",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    // the exporter flushes as the process ends; its request may still be on its way
    for (let i = 0; i < 50 && traces.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    const names = spanNames(traces);
    assert.ok(names.includes("memory put"), `spans: ${names.join(", ")}`);
    assert.ok(names.includes("memory get"), `spans: ${names.join(", ")}`);
  } finally {
    await collector.shutdown();
  }
});
