/**
 * The DIMSE listener under bad input and limits, with raw sockets: malformed PDUs and a data set cut short abort
 * only their association and store nothing; the association cap, ARTIM and idle timeouts; rejections.
 */

import assert from "node:assert/strict";
import { PduReader, writeAll } from "../../lib/dimse/association.ts";
import { CMD, COMMAND, encodeCommand } from "../../lib/dimse/command.ts";
import { encodeAssociateRq, parsePdu, type Pdu, writePDataHead } from "../../lib/dimse/pdu.ts";
import { buildInstance } from "../_corpus.ts";
import { datasetOf, startTestDimse, type TestDimse } from "../_dimse_peers.ts";

const CT = "1.2.840.10008.5.1.4.1.1.7"; // Secondary Capture, what buildInstance writes
const EXPLICIT_LE = "1.2.840.10008.1.2.1";

interface Client {
  conn: Deno.Conn;
  reader: PduReader;
  next(): Promise<Pdu | null>;
}

async function connect(port: number): Promise<Client> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reader = new PduReader(conn);
  return {
    conn,
    reader,
    async next() {
      try {
        const bytes = await reader.next(1 << 24);
        return bytes === null ? null : parsePdu(bytes);
      } catch {
        return null; // reset by the server
      }
    },
  };
}

async function associate(
  port: number,
  callingAe = "TESTSCU",
): Promise<{ client: Client; reply: Pdu | null }> {
  const client = await connect(port);
  await writeAll(
    client.conn,
    encodeAssociateRq({
      calledAe: "PACS",
      callingAe,
      applicationContext: "1.2.840.10008.3.1.1.1",
      contexts: [
        { id: 1, abstractSyntax: "1.2.840.10008.1.1", transferSyntaxes: [EXPLICIT_LE] },
        { id: 3, abstractSyntax: CT, transferSyntaxes: [EXPLICIT_LE] },
      ],
      user: { maxLength: 16384, implementationClassUid: "1.2.3", roles: new Map() },
    }),
  );
  return { client, reply: await client.next() };
}

function pdata(contextId: number, command: boolean, last: boolean, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  writePDataHead(out, data.length, { contextId, command, last });
  out.set(data, 12);
  return out;
}

async function echo(port: number): Promise<number | undefined> {
  const { client, reply } = await associate(port);
  try {
    if (reply?.type !== "associate-ac") return undefined;
    const command = encodeCommand(
      new Map<number, number | string>([
        [CMD.commandField, COMMAND.cEchoRq],
        [CMD.messageId, 1],
        [CMD.affectedSopClass, "1.2.840.10008.1.1"],
        [CMD.dataSetType, 0x0101],
      ]),
    );
    await writeAll(client.conn, pdata(1, true, true, command));
    const response = await client.next();
    if (response?.type !== "p-data") return undefined;
    const data = response.pdvs[0].data;
    // (0000,0900) US status: find it in the implicit VR command
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let at = 0; at + 8 <= data.length;) {
      const tag = view.getUint16(at + 2, true);
      const length = view.getUint32(at + 4, true);
      if (tag === 0x0900) return view.getUint16(at + 8, true);
      at += 8 + length;
    }
    return undefined;
  } finally {
    client.conn.close();
  }
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`Timed out waiting for ${what}`);
}

async function objectsIn(t: TestDimse): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of t.store.list("PACS", "")) keys.push(info.key);
  return keys;
}

Deno.test("DIMSE listener: bad input aborts one association, never the server", async (t) => {
  const dimse = await startTestDimse({
    dimse: { DIMSE_PEERS: "TESTSCU@127.0.0.1:1", DIMSE_ARTIM_TIMEOUT_MS: "300" },
  });
  try {
    await t.step("garbage instead of an A-ASSOCIATE-RQ: A-ABORT, connection closed", async () => {
      const client = await connect(dimse.port);
      await writeAll(client.conn, new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
      const reply = await client.next();
      assert.ok(reply === null || reply.type === "abort", JSON.stringify(reply));
      client.conn.close();
      assert.equal(await echo(dimse.port), 0, "the server still answers C-ECHO");
    });

    await t.step("a malformed P-DATA-TF aborts the association", async () => {
      const { client, reply } = await associate(dimse.port);
      assert.equal(reply?.type, "associate-ac");
      await writeAll(client.conn, new Uint8Array([4, 0, 0, 0, 0, 6, 0, 0, 0, 2, 2, 3])); // even context id
      const next = await client.next();
      assert.ok(next === null || next.type === "abort", JSON.stringify(next));
      client.conn.close();
      await until(() => dimse.dimse.associations === 0, "the association to end");
      assert.equal(await echo(dimse.port), 0);
    });

    await t.step("a data set cut short by the peer leaves nothing stored", async () => {
      const uids = { study: "2.25.7001", series: "2.25.7002", sop: "2.25.7003" };
      const dataset = datasetOf(buildInstance({ ...uids, pixelBytes: 200_000 }));
      const { client, reply } = await associate(dimse.port);
      assert.equal(reply?.type, "associate-ac");
      const command = encodeCommand(
        new Map<number, number | string>([
          [CMD.commandField, COMMAND.cStoreRq],
          [CMD.messageId, 1],
          [CMD.affectedSopClass, CT],
          [CMD.affectedSop, uids.sop],
          [CMD.priority, 0],
          [CMD.dataSetType, 0],
        ]),
      );
      await writeAll(client.conn, pdata(3, true, true, command));
      for (let at = 0; at < dataset.length / 2; at += 16_000) {
        await writeAll(client.conn, pdata(3, false, false, dataset.subarray(at, at + 16_000)));
      }
      client.conn.close();
      await until(() => dimse.dimse.associations === 0, "the association to end");
      assert.deepEqual(await objectsIn(dimse), []);
      assert.equal(await echo(dimse.port), 0);
    });

    await t.step("a PDU longer than our Maximum Length aborts the association", async () => {
      const { client, reply } = await associate(dimse.port);
      assert.equal(reply?.type, "associate-ac");
      const huge = new Uint8Array(6);
      huge[0] = 4;
      new DataView(huge.buffer).setUint32(2, 64 * 1024 * 1024);
      await writeAll(client.conn, huge);
      const next = await client.next();
      assert.ok(next === null || next.type === "abort", JSON.stringify(next));
      client.conn.close();
    });

    await t.step("a connection that sends nothing is closed after the ARTIM timeout", async () => {
      const client = await connect(dimse.port);
      assert.equal(await client.next(), null);
      client.conn.close();
    });

    await t.step("an unlisted calling AE title is rejected (reason 3)", async () => {
      const { client, reply } = await associate(dimse.port, "STRANGER");
      assert.deepEqual(reply, { type: "associate-rj", result: 1, source: 1, reason: 3 });
      client.conn.close();
    });
  } finally {
    await dimse.close();
  }
});

Deno.test("DIMSE listener: the association cap and the idle timeout", async (t) => {
  const dimse = await startTestDimse({
    dimse: { DIMSE_PEERS: "TESTSCU@127.0.0.1:1", DIMSE_MAX_ASSOCIATIONS: "1", DIMSE_IDLE_TIMEOUT_MS: "400" },
  });
  try {
    let first: Client | undefined;
    await t.step("beyond DIMSE_MAX_ASSOCIATIONS: rejected transient, local limit exceeded", async () => {
      const opened = await associate(dimse.port);
      assert.equal(opened.reply?.type, "associate-ac");
      first = opened.client;
      const second = await associate(dimse.port);
      assert.deepEqual(second.reply, { type: "associate-rj", result: 2, source: 3, reason: 2 });
      second.client.conn.close();
    });

    await t.step("an association idle past DIMSE_IDLE_TIMEOUT_MS is aborted", async () => {
      const next = await first!.next();
      assert.deepEqual(next, { type: "abort", source: 2, reason: 0 });
      first!.conn.close();
      await until(() => dimse.dimse.associations === 0, "the association to end");
    });
  } finally {
    await dimse.close();
  }
});
