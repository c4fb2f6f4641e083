import assert from "node:assert/strict";
import {
  CMD,
  COMMAND,
  decodeCommand,
  encodeCommand,
  hasDataset,
  statusKind,
} from "../../lib/dimse/command.ts";

Deno.test("encodeCommand() and decodeCommand() round-trip a C-MOVE-RQ", () => {
  const command = new Map<number, number | string>([
    [CMD.commandField, COMMAND.cMoveRq],
    [CMD.messageId, 42],
    [CMD.affectedSopClass, "1.2.840.10008.5.1.4.1.2.2.2"],
    [CMD.moveDestination, "STORESCP"],
    [CMD.priority, 0],
    [CMD.dataSetType, 0],
  ]);
  const bytes = encodeCommand(command);
  assert.equal(bytes.length % 2, 0);
  const view = new DataView(bytes.buffer);
  assert.equal(view.getUint32(8, true), bytes.length - 12, "group length counts the elements after it");
  const decoded = decodeCommand(bytes);
  for (const [tag, value] of command) assert.equal(decoded.get(tag), value);
  assert.equal(hasDataset(decoded), true);
  assert.equal(hasDataset(new Map([[CMD.dataSetType, 0x0101]])), false);
});

Deno.test("decodeCommand() refuses what is not a command set", () => {
  assert.throws(() => decodeCommand(new Uint8Array([0, 0, 0, 1, 4, 0, 0, 0, 0, 0])), SyntaxError);
  assert.throws(() => decodeCommand(new Uint8Array([8, 0, 0x18, 0, 0, 0, 0, 0])), SyntaxError);
  assert.throws(() => decodeCommand(encodeCommand(new Map([[CMD.messageId, 1]]))), /no Command Field/);
});

Deno.test("statusKind() sorts statuses as PS3.7 C does", () => {
  assert.equal(statusKind(0), "success");
  assert.equal(statusKind(0xff00), "pending");
  assert.equal(statusKind(0xfe00), "cancel");
  assert.equal(statusKind(0xb000), "warning");
  assert.equal(statusKind(0xa801), "failure");
  assert.equal(statusKind(0x0111), "failure");
});
