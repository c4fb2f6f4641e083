/**
 * The audit log: one JSON line per patient-data request (allowed, denied, failed or cut short) naming who,
 * from where, which AET/study/series/instance and the outcome — and never a patient name.
 */

import assert from "node:assert/strict";
import {
  AuditLog,
  type AuditRecord,
  auditTargetOf,
  openAuditLog,
  parseAuditConfig,
  redactedSearch,
  redactQuery,
} from "../../lib/security/audit.ts";
import { MemoryStore } from "../../lib/store/memory_store.ts";
import { buildInstance } from "../_corpus.ts";
import { securedHandler } from "../_jwks.ts";
import { memoryCatalog } from "../_server.ts";
import { eventually } from "../_stores.ts";
import { makeToken } from "../../lib/security/passwords.ts";

const PATIENT = "Doe^Jane";

Deno.test("parseAuditConfig(): stderr by default, stdout, off or a file", () => {
  const problems: string[] = [];
  assert.deepEqual(parseAuditConfig({}, problems), { kind: "stderr" });
  assert.deepEqual(parseAuditConfig({ AUDIT_LOG: "OFF" }, problems), { kind: "off" });
  assert.deepEqual(parseAuditConfig({ AUDIT_LOG: "stdout" }, problems), { kind: "stdout" });
  assert.deepEqual(parseAuditConfig({ AUDIT_LOG: "/var/log/dicomweb/audit.jsonl" }, problems), {
    kind: "file",
    path: "/var/log/dicomweb/audit.jsonl",
  });
  assert.deepEqual(problems, []);
  parseAuditConfig({ AUDIT_LOG: "a\0b" }, problems);
  assert.match(problems[0], /AUDIT_LOG=.* is not valid: use stderr, stdout, off or a file path/);
});

Deno.test("auditTargetOf() takes patient-data paths apart and keeps typed junk out", () => {
  assert.equal(auditTargetOf("/healthz", ""), undefined);
  assert.equal(auditTargetOf("/aets", ""), undefined);
  assert.equal(auditTargetOf("/aets/", ""), undefined);
  assert.equal(auditTargetOf("/dicomweb/aets/A/studies", ""), undefined);
  assert.deepEqual(auditTargetOf("/aets/A/studies", ""), { aet: "A", resource: "studies", search: true });
  assert.deepEqual(auditTargetOf("/aets/A/series", ""), { aet: "A", resource: "series", search: true });
  assert.deepEqual(auditTargetOf("/dicomweb/aets/A/studies/1.2/series", "/dicomweb"), {
    aet: "A",
    study: "1.2",
    resource: "series",
    search: true,
  });
  assert.deepEqual(auditTargetOf("/aets/A/studies/1.2/series/1.2.3/instances/1.2.3.4/frames/1,2", ""), {
    aet: "A",
    study: "1.2",
    series: "1.2.3",
    instance: "1.2.3.4",
    frames: "1,2",
    resource: "frames",
    search: false,
  });
  assert.equal(
    auditTargetOf("/aets/A/studies/1.2/series/1.2.3/instances/1.2.3.4/frames/1/rendered", "")?.resource,
    "rendered",
  );
  assert.equal(
    auditTargetOf("/aets/A/studies/1.2/series/1.2.3/instances/1.2.3.4/bulkdata/7FE00010", "")?.resource,
    "bulkdata",
  );
  assert.equal(auditTargetOf("/aets/A/studies/1.2/thumbnail", "")?.resource, "thumbnail");
  const junk = auditTargetOf(
    `/aets/${encodeURIComponent("../x")}/studies/${encodeURIComponent(PATIENT)}/metadata`,
    "",
  )!;
  assert.equal(junk.aet, "(invalid)");
  assert.equal(junk.study, "(invalid)");
  assert.equal(junk.resource, "metadata");
});

Deno.test("redactQuery() and redactedSearch() keep UIDs and paging, blank everything else", () => {
  const params = new URLSearchParams(
    `PatientName=${PATIENT}*&00100020=ID42&StudyDate=20240101-&StudyInstanceUID=1.2.3,1.2.4&limit=10&includefield=00081030,00080060&fuzzymatching=true&Modality=CT`,
  );
  assert.deepEqual(redactQuery(params), {
    PatientName: "(redacted)",
    "00100020": "(redacted)",
    StudyDate: "(redacted)",
    StudyInstanceUID: "1.2.3,1.2.4",
    limit: "10",
    includefield: "00081030,00080060",
    fuzzymatching: "true",
    Modality: "CT",
  });
  assert.deepEqual(redactQuery(new URLSearchParams("StudyInstanceUID=<script>")), {
    StudyInstanceUID: "(redacted)",
  });
  const many = new URLSearchParams(Array.from({ length: 80 }, (_, i) => [`k${i}`, "v"]));
  assert.equal(Object.keys(redactQuery(many)).length, 51);
  const url = new URL(`http://x/aets/A/studies?PatientName=${encodeURIComponent(PATIENT)}&limit=5`);
  assert.equal(redactedSearch(url), "?PatientName=(redacted)&limit=5");
  assert.equal(redactedSearch(new URL("http://x/aets")), "");
});

Deno.test("AuditLog.record(): outcome from status and body, principal and client", () => {
  const lines: string[] = [];
  const log = new AuditLog((line) => lines.push(line), { now: () => new Date("2025-01-02T03:04:05Z") });
  const url = new URL("http://x/aets/PACS/studies/1.2/series/1.2.3/metadata");
  const principal = { subject: "alice", method: "basic" as const, grants: [] };
  const cases: [number, string | undefined, string][] = [
    [200, undefined, "success"],
    [206, undefined, "partial"],
    [200, "client disconnected", "incomplete"],
    [401, undefined, "denied"],
    [403, undefined, "denied"],
    [404, undefined, "not-found"],
    [400, undefined, "rejected"],
    [503, undefined, "error"],
  ];
  for (const [status, bodyOutcome, outcome] of cases) {
    const record = log.record({
      method: "GET",
      url,
      status,
      bytes: 7,
      ms: 1.234,
      bodyOutcome,
      principal,
      client: "10.0.0.9",
    })!;
    assert.equal(record.outcome, outcome, `${status} ${bodyOutcome}`);
  }
  assert.deepEqual(JSON.parse(lines[0]), {
    time: "2025-01-02T03:04:05.000Z",
    action: "retrieve",
    resource: "metadata",
    who: "alice",
    auth: "basic",
    client: "10.0.0.9",
    aet: "PACS",
    study: "1.2",
    series: "1.2.3",
    method: "GET",
    status: 200,
    outcome: "success",
    bytes: 7,
    ms: 1.2,
  });
  assert.equal(JSON.parse(lines[2]).detail, "client disconnected");
  assert.equal(
    log.record({ method: "GET", url: new URL("http://x/readyz"), status: 200, bytes: 1, ms: 1 }),
    undefined,
  );
  assert.equal(lines.length, cases.length, "no line for non-patient-data requests");
  const store = log.record({
    method: "POST",
    url: new URL("http://x/aets/PACS/studies"),
    status: 200,
    bytes: 1,
    ms: 1,
  })!;
  assert.equal(store.action, "store");
  assert.equal(store.who, null);
  const failing = new AuditLog(() => {
    throw new Error("disk full");
  });
  assert.ok(
    failing.record({ method: "GET", url, status: 200, bytes: 0, ms: 0 }),
    "a failing sink does not fail the request",
  );
});

Deno.test("openAuditLog() appends JSON lines to a 0600 file and explains a bad path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "audit-" });
  try {
    const path = `${dir}/audit.jsonl`;
    for (let round = 0; round < 2; round++) {
      const opened = openAuditLog({ kind: "file", path });
      opened.log.record({
        method: "GET",
        url: new URL("http://x/aets/A/studies/1.2"),
        status: 200,
        bytes: 1,
        ms: 1,
      });
      opened.close();
    }
    const lines = (await Deno.readTextFile(path)).trim().split("\n");
    assert.equal(lines.length, 2, "appended, not truncated");
    assert.equal(JSON.parse(lines[1]).study, "1.2");
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.throws(
      () => openAuditLog({ kind: "file", path: `${dir}/missing/dir/audit.jsonl` }),
      /AUDIT_LOG=.* cannot be opened/,
    );
    const off = openAuditLog({ kind: "off" }).log.record({
      method: "GET",
      url: new URL("http://x/aets/A/studies"),
      status: 200,
      bytes: 0,
      ms: 0,
    });
    assert.equal(off, undefined, "off: no record is built");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("every patient-data request through the handler leaves one audit line, none with a patient name", async () => {
  const store = new MemoryStore(["pacs"]);
  const study = "1.2.840.99";
  const series = `${study}.1`;
  for (let i = 1; i <= 3; i++) {
    const bytes = buildInstance({
      study,
      series,
      sop: `${series}.${i}`,
      patientName: PATIENT,
      pixelBytes: 8 << 20,
    });
    await store.put("pacs", `${study}/${series}/${series}.${i}.dcm`, bytes);
  }
  const reader = await makeToken();
  const catalog = await memoryCatalog();
  const records: AuditRecord[] = [];
  const raw: string[] = [];
  const requestLog: string[] = [];
  const audit = new AuditLog((line) => {
    raw.push(line);
    records.push(JSON.parse(line));
  });
  const { handler } = securedHandler(store, {
    AETS: "PACS=pacs,OTHER=pacs",
    AUTH: "token",
    AUTH_TOKENS: `reader:${reader.sha256}`,
    AUTH_GRANTS: "reader:read:PACS",
  }, { audit, log: (line) => requestLog.push(line), catalog });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, handler);
  const base = `http://127.0.0.1:${server.addr.port}`;
  const get = async (path: string, headers: Record<string, string> = {}) => {
    const response = await fetch(base + path, {
      headers: { authorization: `Bearer ${reader.token}`, ...headers },
    });
    await response.arrayBuffer();
    return response.status;
  };
  try {
    assert.equal(await get(`/aets/PACS/studies/${study}/metadata`), 200);
    assert.equal(
      await get(`/aets/PACS/studies/${study}/series/${series}/instances/${series}.1`, {
        "x-forwarded-for": "203.0.113.7",
      }),
      200,
    );
    assert.equal(await get(`/aets/OTHER/studies/${study}`), 403);
    assert.equal(await get(`/aets/PACS/studies/${study}`, { authorization: "Bearer wrong" }), 401);
    assert.equal(await get(`/aets/PACS/studies/9.9.9/metadata`), 404);
    const search = await get(`/aets/PACS/studies?PatientName=${encodeURIComponent(PATIENT)}&limit=5`);
    assert.ok([200, 503].includes(search), `search answered ${search}`);
    assert.equal(await get("/healthz"), 200);
    assert.equal(await get("/aets"), 200);
    // A client that goes away mid-study.
    const abort = new AbortController();
    const response = await fetch(`${base}/aets/PACS/studies/${study}`, {
      headers: {
        authorization: `Bearer ${reader.token}`,
        accept: 'multipart/related; type="application/dicom"; transfer-syntax=*',
      },
      signal: abort.signal,
    });
    const body = response.body!.getReader();
    await body.read();
    abort.abort();
    await body.cancel().catch(() => {});
    await eventually(() => records.length === 7, 5000, "seven audit lines");

    const [metadata, instance, forbidden, unauthenticated, missing, searched, cut] = records;
    assert.deepEqual(
      [
        metadata.action,
        metadata.resource,
        metadata.who,
        metadata.auth,
        metadata.aet,
        metadata.study,
        metadata.outcome,
      ],
      ["retrieve", "metadata", "reader", "token", "PACS", study, "success"],
    );
    assert.ok(metadata.bytes > 0);
    assert.equal(metadata.client, "127.0.0.1");
    assert.equal(instance.instance, `${series}.1`);
    assert.equal(instance.client, "203.0.113.7", "X-Forwarded-For from a trusted (loopback) peer");
    assert.deepEqual([forbidden.status, forbidden.outcome, forbidden.who, forbidden.aet], [
      403,
      "denied",
      "reader",
      "OTHER",
    ]);
    assert.deepEqual([unauthenticated.status, unauthenticated.outcome, unauthenticated.who], [
      401,
      "denied",
      null,
    ]);
    assert.deepEqual([missing.status, missing.outcome], [404, "not-found"]);
    assert.equal(searched.action, "search");
    assert.deepEqual(searched.query, { PatientName: "(redacted)", limit: "5" });
    assert.equal(cut.outcome, "incomplete");
    assert.equal(cut.detail, "client disconnected");
    for (const line of [...raw, ...requestLog]) {
      assert.ok(!line.includes("Doe") && !line.includes("Jane"), `a patient name leaked: ${line}`);
    }
  } finally {
    await server.shutdown();
    await catalog?.close?.();
  }
});
