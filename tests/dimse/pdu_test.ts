import assert from "node:assert/strict";
import {
  encodeAbort,
  encodeAssociateAc,
  encodeAssociateRj,
  encodeAssociateRq,
  encodeReleaseRp,
  encodeReleaseRq,
  parsePdu,
  writePDataHead,
} from "../../lib/dimse/pdu.ts";

const USER = {
  maxLength: 16384,
  implementationClassUid: "1.2.3.4",
  implementationVersion: "TEST_1",
  roles: new Map([["1.2.840.10008.5.1.4.1.1.2", { scu: false, scp: true }]]),
};

Deno.test("parsePdu() reads what the encoders write", async (t) => {
  await t.step("A-ASSOCIATE-RQ with contexts, roles and async window", () => {
    const bytes = encodeAssociateRq({
      calledAe: "PACS",
      callingAe: "MODALITY",
      applicationContext: "1.2.840.10008.3.1.1.1",
      contexts: [
        { id: 1, abstractSyntax: "1.2.840.10008.1.1", transferSyntaxes: ["1.2.840.10008.1.2"] },
        {
          id: 3,
          abstractSyntax: "1.2.840.10008.5.1.4.1.1.2",
          transferSyntaxes: ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"],
        },
      ],
      user: { ...USER, asyncOps: { invoked: 2, performed: 3 } },
    });
    const pdu = parsePdu(bytes);
    assert.equal(pdu.type, "associate-rq");
    if (pdu.type !== "associate-rq") return;
    assert.equal(pdu.calledAe, "PACS");
    assert.equal(pdu.callingAe, "MODALITY");
    assert.equal(pdu.protocolVersion, 1);
    assert.deepEqual(pdu.contexts[1].transferSyntaxes, ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"]);
    assert.equal(pdu.user.maxLength, 16384);
    assert.deepEqual(pdu.user.asyncOps, { invoked: 2, performed: 3 });
    assert.deepEqual(pdu.user.roles.get("1.2.840.10008.5.1.4.1.1.2"), { scu: false, scp: true });
    assert.equal(pdu.user.implementationVersion, "TEST_1");
  });

  await t.step("A-ASSOCIATE-AC, -RJ, release, abort", () => {
    const ac = parsePdu(encodeAssociateAc({
      calledAe: "PACS",
      callingAe: "X",
      applicationContext: "1.2.840.10008.3.1.1.1",
      contexts: [{ id: 1, result: 0, transferSyntax: "1.2.840.10008.1.2.1" }, {
        id: 3,
        result: 3,
        transferSyntax: "",
      }],
      user: USER,
    }));
    assert.equal(ac.type, "associate-ac");
    if (ac.type === "associate-ac") {
      assert.deepEqual(ac.contexts, [
        { id: 1, result: 0, transferSyntax: "1.2.840.10008.1.2.1" },
        { id: 3, result: 3, transferSyntax: "" },
      ]);
    }
    assert.deepEqual(parsePdu(encodeAssociateRj(1, 1, 7)), {
      type: "associate-rj",
      result: 1,
      source: 1,
      reason: 7,
    });
    assert.deepEqual(parsePdu(encodeReleaseRq()), { type: "release-rq" });
    assert.deepEqual(parsePdu(encodeReleaseRp()), { type: "release-rp" });
    assert.deepEqual(parsePdu(encodeAbort(2, 6)), { type: "abort", source: 2, reason: 6 });
  });

  await t.step("P-DATA-TF with one PDV", () => {
    const out = new Uint8Array(12 + 5);
    writePDataHead(out, 5, { contextId: 3, command: true, last: true });
    out.set([1, 2, 3, 4, 5], 12);
    const pdu = parsePdu(out);
    assert.equal(pdu.type, "p-data");
    if (pdu.type === "p-data") {
      assert.equal(pdu.pdvs.length, 1);
      assert.deepEqual({ ...pdu.pdvs[0], data: [...pdu.pdvs[0].data] }, {
        contextId: 3,
        command: true,
        last: true,
        data: [1, 2, 3, 4, 5],
      });
    }
  });
});

Deno.test("parsePdu() refuses malformed PDUs with a SyntaxError", () => {
  const rq = encodeAssociateRq({
    calledAe: "PACS",
    callingAe: "X",
    applicationContext: "1.2.840.10008.3.1.1.1",
    contexts: [{ id: 1, abstractSyntax: "1.2.840.10008.1.1", transferSyntaxes: ["1.2.840.10008.1.2"] }],
    user: USER,
  });
  const cases: [string, Uint8Array][] = [
    ["too short", new Uint8Array([1, 0, 0])],
    ["unknown type", new Uint8Array([9, 0, 0, 0, 0, 0])],
    ["length mismatch", rq.subarray(0, rq.length - 1)],
    ["PDV past the end", new Uint8Array([4, 0, 0, 0, 0, 6, 0, 0, 0, 9, 1, 3])],
    ["PDV with an even context id", new Uint8Array([4, 0, 0, 0, 0, 6, 0, 0, 0, 2, 2, 3])],
    ["empty P-DATA", new Uint8Array([4, 0, 0, 0, 0, 0])],
    ["release of the wrong length", new Uint8Array([5, 0, 0, 0, 0, 2, 0, 0])],
  ];
  // the Application Context item (right after the 68-byte fixed part) claims more than the PDU holds
  const bad = rq.slice();
  assert.equal(bad[74], 0x10);
  bad[76] = 0xff;
  cases.push(["item past its parent", bad]);
  for (const [name, bytes] of cases) {
    assert.throws(() => parsePdu(bytes), SyntaxError, name);
  }
});

Deno.test("parsePdu() throws nothing but SyntaxError for mutated PDUs", () => {
  const seeds = [
    encodeAssociateRq({
      calledAe: "PACS",
      callingAe: "X",
      applicationContext: "1.2.840.10008.3.1.1.1",
      contexts: [{ id: 1, abstractSyntax: "1.2.840.10008.1.1", transferSyntaxes: ["1.2.840.10008.1.2"] }],
      user: USER,
    }),
    encodeAssociateAc({
      calledAe: "PACS",
      callingAe: "X",
      applicationContext: "1.2.840.10008.3.1.1.1",
      contexts: [{ id: 1, result: 0, transferSyntax: "1.2.840.10008.1.2" }],
      user: USER,
    }),
    encodeAbort(2, 1),
    new Uint8Array([4, 0, 0, 0, 0, 8, 0, 0, 0, 4, 1, 3, 9, 9]),
  ];
  let state = 12345;
  const random = (n: number) => {
    state = (state * 1103515245 + 12345) >>> 0;
    return state % n;
  };
  for (let i = 0; i < 5000; i++) {
    const input = seeds[random(seeds.length)].slice();
    for (let k = 1 + random(4); k > 0; k--) input[random(input.length)] = random(256);
    const cut = random(3) === 0 ? input.subarray(0, random(input.length + 1)) : input;
    try {
      parsePdu(cut);
    } catch (error) {
      assert.ok(error instanceof SyntaxError, `input ${i}: ${error}`);
    }
  }
});

Deno.test("encodeAssociateAc() echoes the request's AE titles byte for byte, bytes over 0x7F included", async (t) => {
  // Found by `deno task fuzz` (tests/testdata/fuzz/pdu-seed9-input1026.bin): titles were decoded as
  // windows-1252 and written back as UTF-8, so a calling AE of 16 × 0xE9 threw a RangeError (32 bytes in a
  // 16-byte field) and 0x80–0x9F came back as other bytes.
  const rq = encodeAssociateRq({
    calledAe: "DICOMWEB",
    callingAe: "X",
    applicationContext: "1.2.840.10008.3.1.1.1",
    user: USER,
    contexts: [{ id: 1, abstractSyntax: "1.2.840.10008.1.1", transferSyntaxes: ["1.2.840.10008.1.2"] }],
  });
  for (
    const title of [
      new Uint8Array(16).fill(0xe9),
      Uint8Array.from([0x53, 0x54, 0x80, 0x9a, 0x9f, 0xc5, 0xff, 0x20, 0x41]),
    ]
  ) {
    await t.step(`calling AE ${[...title].map((b) => b.toString(16)).join(" ")}`, () => {
      const field = new Uint8Array(16).fill(0x20);
      field.set(title);
      const bytes = rq.slice();
      bytes.set(field, 6 + 20);
      const request = parsePdu(bytes);
      assert.equal(request.type, "associate-rq");
      const ac = encodeAssociateAc({
        calledAe: request.calledAe,
        callingAe: request.callingAe,
        applicationContext: request.applicationContext,
        contexts: [{ id: 1, result: 0, transferSyntax: "1.2.840.10008.1.2" }],
        user: USER,
      });
      assert.deepEqual(ac.subarray(6 + 20, 6 + 36), field, "the calling AE field as received");
      assert.deepEqual(ac.subarray(6 + 4, 6 + 20), bytes.subarray(6 + 4, 6 + 20), "the called AE field");
    });
  }
});
