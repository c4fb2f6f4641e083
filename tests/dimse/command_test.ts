import assert from "node:assert/strict";
import {
  CMD,
  COMMAND,
  decodeCommand,
  encodeCommand,
  hasDataset,
  statusKind,
} from "../../lib/dimse/command.ts";
import { concatBytes } from "../../lib/util/bytes.ts";

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

Deno.test("decodeCommand() and encodeCommand() keep text as it came, padding removed in any order", async (t) => {
  // Found by `deno task fuzz` (tests/testdata/fuzz/command-seed10-input18807.bin): "1.2.3.4.5.6\0\0\0\t" was
  // read with its NULs, and text was decoded as windows-1252 and written as UTF-8.
  const element = (tag: number, value: number[]) => {
    const out = new Uint8Array(8 + value.length);
    const view = new DataView(out.buffer);
    view.setUint16(2, tag, true);
    view.setUint32(4, value.length, true);
    out.set(value, 8);
    return out;
  };
  const ascii = (text: string) => [...text].map((c) => c.charCodeAt(0));
  const bytes = concatBytes([
    element(CMD.commandField, [0x01, 0x80]), // C-STORE-RSP
    element(CMD.affectedSop, [...ascii("1.2.3.4.5.6"), 0, 0, 0, 0x09]),
    element(CMD.moveOriginatorAe, [0x53, 0xe9, 0x80, 0x9a, 0x20, 0x20]),
  ]);
  const command = decodeCommand(bytes);
  await t.step("trailing NULs and whitespace in any order are padding", () => {
    assert.equal(command.get(CMD.affectedSop), "1.2.3.4.5.6");
  });
  await t.step("bytes over 0x7F are one character each and are written back as they came", () => {
    assert.equal(command.get(CMD.moveOriginatorAe), "S\u00e9\u0080\u009a");
    const again = encodeCommand(command);
    const at = again.findIndex((_, i) => again[i] === 0x30 && again[i + 1] === 0x10); // (0000,1030)
    assert.deepEqual([...again.subarray(at + 2, at + 10)], [4, 0, 0, 0, 0x53, 0xe9, 0x80, 0x9a]);
    assert.deepEqual(decodeCommand(again).get(CMD.moveOriginatorAe), command.get(CMD.moveOriginatorAe));
  });
});
