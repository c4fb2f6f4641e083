import assert from "node:assert/strict";
import {
  IMPLEMENTATION_CLASS_UID,
  inferSyntax,
  readFileMeta,
  scanFileMeta,
  writeFileMeta,
} from "../../lib/dicom/file_meta.ts";
import { IMPLICIT_VR_LITTLE_ENDIAN } from "../../lib/dicom/transfer_syntax.ts";
import { concatBytes } from "../../lib/util/bytes.ts";
import { dropTransferSyntax } from "../_dicom_fixtures.ts";

const ELE = "1.2.840.10008.1.2.1";
const CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2";
const SOP = "1.2.3.4.5.6.7";
const encoder = new TextEncoder();

// ---- Part 10 builder (explicit VR little endian elements) ----

const LONG = new Set(["OB", "OW", "OF", "SQ", "UT", "UN"]);

function explicit(group: number, element: number, vr: string, value: Uint8Array | string): Uint8Array {
  let bytes = typeof value === "string" ? encoder.encode(value) : value;
  if (bytes.length % 2 === 1) bytes = concatBytes([bytes, new Uint8Array([vr === "UI" ? 0 : 0x20])]);
  const head = new Uint8Array(LONG.has(vr) ? 12 : 8);
  const view = new DataView(head.buffer);
  view.setUint16(0, group, true);
  view.setUint16(2, element, true);
  head[4] = vr.charCodeAt(0);
  head[5] = vr.charCodeAt(1);
  if (LONG.has(vr)) view.setUint32(8, bytes.length, true);
  else view.setUint16(6, bytes.length, true);
  return concatBytes([head, bytes]);
}

function implicit(group: number, element: number, value: string): Uint8Array {
  let bytes: Uint8Array = encoder.encode(value);
  if (bytes.length % 2 === 1) bytes = concatBytes([bytes, new Uint8Array([0])]);
  const head = new Uint8Array(8);
  const view = new DataView(head.buffer);
  view.setUint16(0, group, true);
  view.setUint16(2, element, true);
  view.setUint32(4, bytes.length, true);
  return concatBytes([head, bytes]);
}

interface MetaOptions {
  ts?: string | null;
  sopClass?: string;
  sop?: string;
  groupLength?: boolean;
  /** "preamble" (128 zero bytes + DICM), "dicm" (DICM at 0), "none" (meta group at 0). */
  lead?: "preamble" | "dicm" | "none";
}

function metaGroup(options: MetaOptions): Uint8Array {
  const body = concatBytes([
    explicit(0x0002, 0x0001, "OB", new Uint8Array([0, 1])),
    explicit(0x0002, 0x0002, "UI", options.sopClass ?? CT_IMAGE),
    explicit(0x0002, 0x0003, "UI", options.sop ?? SOP),
    options.ts === null ? new Uint8Array(0) : explicit(0x0002, 0x0010, "UI", options.ts ?? ELE),
    explicit(0x0002, 0x0012, "UI", "1.2.826.0.1.3680043.10.1"),
    explicit(0x0002, 0x0013, "SH", "TEST"),
  ]);
  if (options.groupLength === false) return body;
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, body.length, true);
  return concatBytes([explicit(0x0002, 0x0000, "UL", length), body]);
}

function lead(kind: MetaOptions["lead"]): Uint8Array {
  if (kind === "none") return new Uint8Array(0);
  if (kind === "dicm") return encoder.encode("DICM");
  return concatBytes([new Uint8Array(128), encoder.encode("DICM")]);
}

function dataset(): Uint8Array {
  return concatBytes([
    explicit(0x0008, 0x0016, "UI", CT_IMAGE),
    explicit(0x0008, 0x0018, "UI", SOP),
    explicit(0x0010, 0x0010, "PN", "Test^Patient"),
    explicit(0x7fe0, 0x0010, "OW", new Uint8Array(256).map((_, i) => i)),
  ]);
}

function part10(options: MetaOptions = {}): { bytes: Uint8Array; metaEnd: number } {
  const head = concatBytes([lead(options.lead), metaGroup(options)]);
  return { bytes: concatBytes([head, dataset()]), metaEnd: head.length };
}

// ---- tests ----

Deno.test("readFileMeta()", async (t) => {
  await t.step("reads preamble, DICM and a File Meta group with group length", () => {
    const { bytes, metaEnd } = part10();
    const meta = readFileMeta(bytes, "a.dcm", true);
    assert.deepEqual(meta, {
      transferSyntaxUid: ELE, // the odd-length UID was padded with \0, which is trimmed
      inferred: false,
      sopClassUid: CT_IMAGE,
      sopInstanceUid: SOP,
      end: metaEnd,
      hasPreamble: true,
    });
  });

  await t.step("gives the same answer from the meta alone without 'complete'", () => {
    const { bytes, metaEnd } = part10();
    const meta = readFileMeta(bytes.subarray(0, metaEnd), "a.dcm");
    assert.equal(meta?.transferSyntaxUid, ELE);
    assert.equal(meta?.end, metaEnd);
  });

  await t.step("reads any transfer syntax UID, trimming NUL and space padding", () => {
    for (
      const ts of [
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2",
      ]
    ) {
      assert.equal(readFileMeta(part10({ ts }).bytes, "x", true)?.transferSyntaxUid, ts);
    }
    const padded = part10({ ts: "1.2.840.10008.1.2.4.90 " as string }).bytes;
    assert.equal(readFileMeta(padded, "x", true)?.transferSyntaxUid, "1.2.840.10008.1.2.4.90");
  });

  await t.step("reads a File Meta group without the group length element", () => {
    const { bytes, metaEnd } = part10({ groupLength: false });
    const meta = readFileMeta(bytes, "b.dcm", true);
    assert.equal(meta?.transferSyntaxUid, ELE);
    assert.equal(meta?.sopInstanceUid, SOP);
    assert.equal(meta?.end, metaEnd);
  });

  await t.step("reads 'DICM' at offset 0 without a preamble", () => {
    const { bytes, metaEnd } = part10({ lead: "dicm" });
    const meta = readFileMeta(bytes, "c.dcm", true);
    assert.equal(meta?.transferSyntaxUid, ELE);
    assert.equal(meta?.sopClassUid, CT_IMAGE);
    assert.equal(meta?.end, metaEnd);
  });

  await t.step("reads a File Meta group at offset 0 without preamble and 'DICM'", () => {
    const { bytes, metaEnd } = part10({ lead: "none" });
    const meta = readFileMeta(bytes, "d.dcm", true);
    assert.equal(meta?.transferSyntaxUid, ELE);
    assert.equal(meta?.sopInstanceUid, SOP);
    assert.equal(meta?.hasPreamble, false);
    assert.equal(meta?.end, metaEnd);
  });

  await t.step("treats a raw dataset without File Meta as Implicit VR Little Endian", () => {
    const raw = concatBytes([
      implicit(0x0008, 0x0005, "ISO_IR 100"),
      implicit(0x0008, 0x0016, CT_IMAGE),
      implicit(0x0008, 0x0018, SOP),
      implicit(0x0010, 0x0010, "Test^Patient".padEnd(200, " ")),
    ]);
    assert.ok(raw.length >= 132);
    const meta = readFileMeta(raw, "raw.dcm", true);
    assert.equal(meta?.transferSyntaxUid, IMPLICIT_VR_LITTLE_ENDIAN);
    assert.equal(meta?.hasPreamble, false);
    assert.equal(meta?.end, 0);
    assert.equal(meta?.sopInstanceUid, "");
  });

  await t.step("treats a complete raw dataset shorter than 132 bytes as Implicit VR Little Endian", () => {
    const raw = concatBytes([implicit(0x0008, 0x0016, CT_IMAGE), implicit(0x0008, 0x0018, SOP)]);
    assert.ok(raw.length < 132);
    const meta = readFileMeta(raw, "tiny.dcm", true);
    assert.equal(meta?.transferSyntaxUid, IMPLICIT_VR_LITTLE_ENDIAN);
    assert.equal(meta?.end, 0);
  });

  await t.step("returns null for every truncation while more bytes may come", () => {
    for (const options of [{}, { groupLength: false }, { lead: "dicm" as const }]) {
      const { bytes, metaEnd } = part10(options);
      // Without the group length, the reader needs the next element's tag to see the group end.
      const enough = options.groupLength === false ? metaEnd + 8 : metaEnd;
      for (let n = 0; n < enough; n++) {
        assert.equal(
          readFileMeta(bytes.subarray(0, n), "t.dcm"),
          null,
          `${JSON.stringify(options)} at ${n} bytes`,
        );
      }
      assert.equal(readFileMeta(bytes.subarray(0, enough), "t.dcm")?.transferSyntaxUid, ELE);
    }
  });

  await t.step("throws a SyntaxError naming the object for a truncation when complete", () => {
    const { bytes, metaEnd } = part10();
    for (const n of [0, 1, 4, 100, 131, 132, 140, metaEnd - 1]) {
      assert.throws(() => readFileMeta(bytes.subarray(0, n), "short.dcm", true), (error: unknown) => {
        assert.ok(error instanceof SyntaxError, `${n}: ${error}`);
        assert.match(error.message, /short\.dcm/);
        return true;
      });
    }
  });

  await t.step("throws a SyntaxError naming the object for non-DICOM bytes", () => {
    const inputs = [
      encoder.encode("<html><body>" + "x".repeat(300) + "</body></html>"),
      concatBytes([
        new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        new Uint8Array(300).fill(7),
      ]),
      new Uint8Array(200).fill(0xff),
      encoder.encode("not dicom"),
    ];
    for (const bytes of inputs) {
      assert.throws(() => readFileMeta(bytes, "photo.png", true), (error: unknown) => {
        assert.ok(error instanceof SyntaxError);
        assert.match(error.message, /"photo\.png"/);
        return true;
      });
    }
    // Without 'complete', a long enough non-DICOM prefix is already an error.
    assert.throws(() => readFileMeta(inputs[0], "page.html"), /page\.html/);
  });

  await t.step("throws a SyntaxError for a File Meta with an invalid VR or length", () => {
    const { bytes } = part10();
    const badVr = bytes.slice();
    badVr[132 + 4] = 0x31; // "1L" instead of "UL"
    assert.throws(() => readFileMeta(badVr, "vr.dcm", true), /vr\.dcm.*VR/);

    const huge = concatBytes([
      lead("preamble"),
      explicit(0x0002, 0x0001, "OB", new Uint8Array(2)),
    ]);
    new DataView(huge.buffer).setUint32(132 + 8, 0xfffffff0, true);
    assert.throws(() => readFileMeta(huge, "len.dcm"), /len\.dcm.*length/);
  });

  await t.step("infers the syntax when a File Meta group has no Transfer Syntax UID", () => {
    const { bytes } = part10({ ts: null });
    const meta = readFileMeta(bytes, "nots.dcm", true)!;
    assert.equal(meta.inferred, true);
    assert.equal(meta.transferSyntaxUid, inferSyntax(bytes, meta.end));
  });

  await t.step('waits for offset 132 before taking "DICM" at offset 0: a preamble may start with it', () => {
    // Found by `deno task fuzz` (tests/testdata/fuzz/filemeta-seed1440884934-input38429.bin): the first 114
    // bytes of an object whose preamble starts with "DICM" were read as a meta-less object.
    const { bytes, metaEnd } = part10();
    bytes.set(encoder.encode("DICM"), 0);
    const whole = readFileMeta(bytes, "a.dcm", true)!;
    assert.equal(whole.end, metaEnd);
    assert.equal(whole.sopInstanceUid, SOP);
    for (const cut of [8, 114, 131]) {
      assert.equal(readFileMeta(bytes.subarray(0, cut), "a.dcm"), null, `${cut}`);
    }
    assert.deepEqual(readFileMeta(bytes.subarray(0, metaEnd), "a.dcm"), whole);
  });

  await t.step("waits for the first element's 6 bytes before inferring the syntax", () => {
    // Found by `deno task fuzz` (tests/testdata/fuzz/filemeta-seed11-input31668.bin): a prefix ending 4 bytes
    // after such a File Meta was labelled Implicit VR, the whole object Explicit VR.
    const { bytes } = part10({ ts: null });
    const whole = readFileMeta(bytes, "nots.dcm", true)!;
    assert.equal(whole.transferSyntaxUid, ELE);
    for (let k = 0; k < 6; k++) {
      assert.equal(
        readFileMeta(bytes.subarray(0, whole.end + k), "nots.dcm"),
        null,
        `${k} bytes after the meta`,
      );
    }
    assert.deepEqual(readFileMeta(bytes.subarray(0, whole.end + 6), "nots.dcm"), whole);
  });
});

// ---- the pydicom corpus (tests/testdata/pydicom) ----

const CORPUS = new URL("../testdata/pydicom/", import.meta.url);

interface ManifestRow {
  file: string;
  key: string;
  transferSyntax: string;
}

async function manifest(): Promise<ManifestRow[]> {
  const text = await Deno.readTextFile(new URL("MANIFEST.md", CORPUS));
  const lines = text.split("\n").filter((l) => l.startsWith("|"));
  const header = lines[0].split("|").map((c) => c.trim());
  const col = (name: string) => {
    const i = header.indexOf(name);
    assert.ok(i > 0, `MANIFEST.md has a "${name}" column`);
    return i;
  };
  const [fileCol, keyCol, tsCol] = [col("file"), col("key"), col("transfer syntax")];
  return lines.slice(2).map((line) => {
    const cells = line.split("|").map((c) => c.trim());
    return { file: cells[fileCol], key: cells[keyCol], transferSyntax: cells[tsCol].split(" ")[0] };
  });
}

const rows = await manifest();

Deno.test({
  name: "readFileMeta() on the pydicom corpus",
  fn: async (t) => {
    const listed = new Set(rows.map((r) => r.file));
    const onDisk = [...Deno.readDirSync(new URL("files/", CORPUS))].map((e) => e.name).filter((n) =>
      n.endsWith(".dcm")
    );
    await t.step("MANIFEST.md lists every file in files/", () => {
      assert.ok(rows.length >= 40, `${rows.length} rows`);
      for (const name of onDisk) assert.ok(listed.has(name), name);
    });

    await t.step("gives the transfer syntax listed in MANIFEST.md for every file that has one", async () => {
      let checked = 0;
      for (const row of rows) {
        if (!/^\d/.test(row.transferSyntax)) continue;
        const bytes = await Deno.readFile(new URL(`files/${row.file}`, CORPUS));
        const meta = readFileMeta(bytes, row.file, true);
        assert.equal(meta?.transferSyntaxUid, row.transferSyntax, row.file);
        assert.ok(meta!.end > 0 && meta!.end < bytes.length, row.file);
        // (0002,0003) is not compared with the key: real files disagree (rtdose.dcm's meta says 1.2.999...,
        // its dataset 1.9.999...), and keys come from the dataset.
        assert.match(meta!.sopInstanceUid, /^(\d+(\.\d+)*)?$/, row.file);
        checked++;
      }
      assert.ok(checked >= 40, `${checked} files checked`);
    });

    await t.step("gives the same meta when fed the file in growing prefixes", async () => {
      for (const row of rows.filter((r) => /^\d/.test(r.transferSyntax))) {
        const bytes = await Deno.readFile(new URL(`files/${row.file}`, CORPUS));
        const whole = readFileMeta(bytes, row.file, true);
        let incremental = null;
        for (let n = 0; incremental === null; n += 37) {
          incremental = readFileMeta(
            bytes.subarray(0, Math.min(n, bytes.length)),
            row.file,
            n >= bytes.length,
          );
        }
        assert.deepEqual(incremental, whole, row.file);
      }
    });

    await t.step("no_meta.dcm (raw dataset after a stray byte) is a SyntaxError naming it", async () => {
      // no_meta.dcm is CT_small.dcm from offset 335: it starts with the last padding byte (0x20) of the
      // File Meta, then (0008,0005) at offset 1. Tag (0820,0500) at offset 0 is not plausible: rejected.
      const bytes = await Deno.readFile(new URL("files/no_meta.dcm", CORPUS));
      assert.equal(bytes[0], 0x20);
      assert.throws(() => readFileMeta(bytes, "no_meta.dcm", true), (error: unknown) => {
        assert.ok(error instanceof SyntaxError);
        assert.match(error.message, /no_meta\.dcm/);
        return true;
      });
      // Its first 131 bytes are not enough to decide.
      assert.equal(readFileMeta(bytes.subarray(0, 131), "no_meta.dcm"), null);
      // Without the stray byte it is a raw dataset starting at (0008,0005): no File Meta, dataset at 0.
      const meta = readFileMeta(bytes.subarray(1), "no_meta.dcm", true);
      assert.equal(meta?.end, 0);
      assert.equal(meta?.hasPreamble, false);
      assert.equal(meta?.sopInstanceUid, "");
    });

    await t.step(
      "meta_missing_tsyntax.dcm (File Meta without (0002,0010)): the syntax is inferred, like pydicom's",
      async () => {
        const bytes = await Deno.readFile(new URL("files/meta_missing_tsyntax.dcm", CORPUS));
        const meta = readFileMeta(bytes, "meta_missing_tsyntax.dcm", true)!;
        assert.equal(meta.inferred, true);
        assert.equal(meta.transferSyntaxUid, IMPLICIT_VR_LITTLE_ENDIAN);
        assert.ok(meta.end > 132);
      },
    );

    await t.step(
      "legacy copies of real files: the inferred syntax is the one their File Meta says",
      async () => {
        for (
          const name of ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "CT_small.dcm"]
        ) {
          const bytes = await Deno.readFile(new URL(`files/${name}`, CORPUS));
          const meta = readFileMeta(bytes, name, true)!;
          assert.equal(meta.inferred, false);
          const raw = bytes.subarray(meta.end);
          const legacy = readFileMeta(raw, name, true)!;
          assert.deepEqual([legacy.transferSyntaxUid, legacy.inferred, legacy.end], [
            meta.transferSyntaxUid,
            true,
            0,
          ]);
          assert.equal(inferSyntax(bytes, meta.end), meta.transferSyntaxUid, name);
          // a File Meta without (0002,0010) in front of the data set: the same inference
          const written = writeFileMeta({
            sopClassUid: "1.2.3",
            sopInstanceUid: "4.5.6",
            transferSyntaxUid: "x",
          });
          const noTs = dropTransferSyntax(written);
          const withMeta = readFileMeta(concatBytes([noTs, raw]), name, true)!;
          assert.deepEqual([withMeta.transferSyntaxUid, withMeta.inferred], [meta.transferSyntaxUid, true]);
        }
      },
    );

    await t.step("writeFileMeta() writes a File Meta our parser reads back", () => {
      const head = writeFileMeta({
        sopClassUid: "1.2.840.10008.5.1.4.1.1.7",
        sopInstanceUid: "1.2.3.45",
        transferSyntaxUid: "1.2.840.10008.1.2",
        sourceAet: "MODALITY",
      });
      const meta = readFileMeta(head, "w.dcm", true)!;
      assert.deepEqual(
        [meta.sopClassUid, meta.sopInstanceUid, meta.transferSyntaxUid, meta.inferred, meta.end],
        ["1.2.840.10008.5.1.4.1.1.7", "1.2.3.45", "1.2.840.10008.1.2", false, head.length],
      );
      const scan = scanFileMeta(head, "w.dcm", { complete: true, groupLength: true })!;
      assert.equal(new TextDecoder().decode(scan.elements.get(0x00020016)!.bytes).trim(), "MODALITY");
      assert.equal(
        new TextDecoder().decode(scan.elements.get(0x00020012)!.bytes).replace(/\0$/, ""),
        IMPLEMENTATION_CLASS_UID,
      );
    });
  },
});
