import assert from "node:assert/strict";
import { parseDimseSettings } from "../../lib/dimse/dimse_settings.ts";

Deno.test("parseDimseSettings() is off without DIMSE_PORT and reads peers", () => {
  const problems: string[] = [];
  assert.equal(parseDimseSettings({}, problems, { hostname: "0.0.0.0" }), undefined);
  const settings = parseDimseSettings(
    { DIMSE_PORT: "11112", DIMSE_PEERS: "CT1@10.0.0.5:104, ORTHANC@[::1]:4242" },
    problems,
    { hostname: "0.0.0.0" },
  )!;
  assert.deepEqual(problems, []);
  assert.deepEqual(settings.peers.get("CT1"), { aet: "CT1", host: "10.0.0.5", port: 104 });
  assert.deepEqual(settings.peers.get("ORTHANC"), { aet: "ORTHANC", host: "::1", port: 4242 });
  assert.equal(settings.allowAny, false);
});

Deno.test("parseDimseSettings() names each problem", () => {
  const problems: string[] = [];
  parseDimseSettings(
    {
      DIMSE_PORT: "11112",
      DIMSE_PEERS: "NOPORT@host, A@b:1, A@c:2, WAYTOOLONGAETITLE17@h:1",
      DIMSE_ALLOW_ANY: "true",
      DIMSE_TLS: "true",
      DIMSE_MAX_PDU: "10",
    },
    problems,
    { hostname: "0.0.0.0" },
  );
  assert.equal(problems.length, 6, problems.join("\n"));
  assert.match(problems.join("\n"), /DIMSE_PEERS entry "NOPORT@host"/);
  assert.match(problems.join("\n"), /lists A twice/);
  assert.match(problems.join("\n"), /DIMSE_ALLOW_ANY=true while HOSTNAME=0\.0\.0\.0/);
  assert.match(problems.join("\n"), /DIMSE_TLS=true needs/);
  assert.match(problems.join("\n"), /DIMSE_MAX_PDU="10"/);
});

Deno.test("parseDimseSettings() allows any calling AE only on loopback", () => {
  const problems: string[] = [];
  const settings = parseDimseSettings({ DIMSE_PORT: "0", DIMSE_ALLOW_ANY: "true" }, problems, {
    hostname: "127.0.0.1",
  })!;
  assert.deepEqual(problems, []);
  assert.equal(settings.allowAny, true);
});
