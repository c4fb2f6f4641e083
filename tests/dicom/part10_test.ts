import assert from "node:assert/strict";
import { parseBuffer, parseObject, readHeader } from "../../lib/dicom/part10.ts";
import { buildPart10, corpusDir, EBE, ELE, type Fx, ILE, memorySource } from "../_dicom_fixtures.ts";
import { type DicomDataset, getNumber, getNumbers, getString, getStrings } from "../../lib/dicom/dataset.ts";
import { MalformedError, OutOfRangeError } from "../../lib/util/errors.ts";

const SAMPLE: Fx[] = [
  { tag: 0x00080005, vr: "CS", value: "ISO_IR 100" },
  { tag: 0x00080016, vr: "UI", value: "1.2.840.10008.5.1.4.1.1.7" },
  { tag: 0x00080018, vr: "UI", value: "1.2.3.4.5" },
  { tag: 0x00090010, vr: "LO", value: "ACME 1.0" },
  { tag: 0x00091001, vr: "US", value: [7] },
  {
    tag: 0x00081140,
    vr: "SQ",
    value: [[{ tag: 0x00081150, vr: "UI", value: "1.2.3" }], [{ tag: 0x00081155, vr: "UI", value: "1.2.4" }]],
  },
  {
    tag: 0x00082112,
    vr: "SQ",
    undefinedLength: true,
    value: [[{
      tag: 0x0040a730,
      vr: "SQ",
      undefinedLength: true,
      value: [[{ tag: 0x0040a160, vr: "UT", value: "deep" }], []],
    }]],
  },
  { tag: 0x00100010, vr: "PN", value: "M\xfcller^Hans" },
  { tag: 0x00180050, vr: "DS", value: "1.5\\2" },
  { tag: 0x00280010, vr: "US", value: [2] },
  { tag: 0x00280011, vr: "US", value: [3] },
  { tag: 0x00280100, vr: "US", value: [16] },
  { tag: 0x00280103, vr: "US", value: [1] },
  { tag: 0x00280106, vr: "SS", value: [-5] },
  { tag: 0x7fe00010, vr: "OW", value: [1, 2, 3, 4, 5, 0xfffe] },
];

function summary(dataset: DicomDataset, prefix = ""): string[] {
  const out: string[] = [];
  for (const el of dataset.elements.values()) {
    const key = prefix + el.tag.toString(16).padStart(8, "0");
    out.push(`${key} ${el.vr} ${el.offset} ${el.length}`);
    el.items?.forEach((item, i) => out.push(...summary(item, `${key}/${i}/`)));
  }
  return out;
}

Deno.test("parseBuffer() reads the three uncompressed transfer syntaxes alike", async (t) => {
  for (const [name, ts] of [["ELE", ELE], ["ILE", ILE], ["EBE", EBE]]) {
    await t.step(name, () => {
      const header = parseBuffer(buildPart10(SAMPLE, { transferSyntax: ts }), `${name}.dcm`);
      const ds = header.dataset;
      assert.equal(header.transferSyntaxUid, ts);
      assert.equal(header.meta?.transferSyntaxUid, ts);
      assert.equal(header.meta?.mediaStorageSopInstanceUid, "1.2.3.4.5");
      assert.equal(header.meta?.preamble, true);
      assert.equal(header.littleEndian, ts !== EBE);
      assert.equal(header.explicitVR, ts !== ILE);
      assert.equal(getString(ds, 0x00100010), "Müller^Hans");
      assert.equal(getString(ds, 0x00090010), "ACME 1.0");
      assert.equal(
        getNumber(ds, 0x00091001),
        ts === ILE ? undefined : 7,
        "a private US is UN in implicit VR",
      );
      assert.equal(ds.elements.get(0x00091001)?.vr, ts === ILE ? "UN" : "US");
      assert.deepEqual(getNumbers(ds, 0x00180050), [1.5, 2]);
      assert.deepEqual(getStrings(ds, 0x00180050), ["1.5", "2"]);
      assert.equal(getNumber(ds, 0x00280106), -5, "SS resolved through PixelRepresentation in implicit VR");
      const refs = ds.elements.get(0x00081140)!.items!;
      assert.equal(refs.length, 2);
      assert.equal(getString(refs[1], 0x00081155), "1.2.4");
      const nested = ds.elements.get(0x00082112)!.items![0].elements.get(0x0040a730)!.items!;
      assert.equal(getString(nested[0], 0x0040a160), "deep");
      assert.equal(nested[1].elements.size, 0);
      assert.equal(nested[0].characterSet[0], "ISO_IR 100", "items inherit the character set");
      const pixel = header.pixelData!;
      assert.equal(pixel.encapsulated, false);
      assert.equal(pixel.length, 12);
      assert.equal(pixel.vr, "OW");
      const words = buildPart10(SAMPLE, { transferSyntax: ts }).subarray(pixel.offset, pixel.offset + 2);
      assert.deepEqual([...words], ts === EBE ? [0, 1] : [1, 0]);
    });
  }
});

Deno.test("parseBuffer() handles File Meta variants", async (t) => {
  const elements: Fx[] = [{ tag: 0x00100020, vr: "LO", value: "ID1" }];
  await t.step("meta without preamble", () => {
    const header = parseBuffer(buildPart10(elements, { preamble: false }), "a.dcm");
    assert.equal(header.meta?.preamble, false);
    assert.equal(header.meta?.start, 0);
    assert.equal(getString(header.dataset, 0x00100020), "ID1");
  });
  await t.step("raw implicit data set: no meta, detected as implicit VR", () => {
    const header = parseBuffer(buildPart10(elements, { meta: false, transferSyntax: ILE }), "a.dcm");
    assert.equal(header.meta, undefined);
    assert.equal(header.transferSyntaxUid, ILE);
    assert.equal(getString(header.dataset, 0x00100020), "ID1");
  });
  await t.step("raw explicit data set: detected as explicit VR", () => {
    const header = parseBuffer(buildPart10(elements, { meta: false, transferSyntax: ELE }), "a.dcm");
    assert.equal(header.transferSyntaxUid, ELE);
    assert.equal(getString(header.dataset, 0x00100020), "ID1");
  });
  await t.step("meta elements are kept, datasetOffset points past them", () => {
    const bytes = buildPart10(elements);
    const header = parseBuffer(bytes, "a.dcm");
    assert.equal(header.meta!.elements.elements.size, 6);
    assert.equal(header.datasetOffset, header.meta!.datasetOffset);
    assert.deepEqual([...bytes.subarray(header.datasetOffset, header.datasetOffset + 4)], [0x10, 0, 0x20, 0]);
  });
});

Deno.test("parseBuffer() reads private and UN elements", async (t) => {
  await t.step("UN with undefined length is read as an implicit VR sequence", () => {
    const inner = buildPart10([{
      tag: 0x00091001,
      vr: "SQ",
      undefinedLength: true,
      value: [[{ tag: 0x00100020, vr: "LO", value: "X" }]],
    }], { meta: false, transferSyntax: ILE });
    // Re-wrap the implicit sequence's items as the value of an explicit "UN" element of undefined length.
    const items = inner.subarray(8);
    const head = [0x09, 0, 0x10, 0, 0x4c, 0x4f, 4, 0, 0x41, 0x43, 0x4d, 0x45];
    const un = [0x09, 0, 0x01, 0x10, 0x55, 0x4e, 0, 0, 0xff, 0xff, 0xff, 0xff];
    const raw = Uint8Array.from([...head, ...un, ...items]);
    const header = parseBuffer(raw, "un.dcm");
    const el = header.dataset.elements.get(0x00091001)!;
    assert.equal(el.vr, "SQ");
    assert.equal(getString(el.items![0], 0x00100020), "X");
    assert.equal(el.items![0].littleEndian, true);
  });
  await t.step("private creators stay ordinary LO elements", () => {
    const header = parseBuffer(buildPart10(SAMPLE, { transferSyntax: ILE }), "a.dcm");
    assert.equal(header.dataset.elements.get(0x00090010)?.vr, "LO");
  });
});

Deno.test("parseBuffer() lists encapsulated fragments and offset tables", async (t) => {
  const frame = (n: number, size: number) => new Uint8Array(size).fill(n);
  await t.step("with a Basic Offset Table", () => {
    const bytes = buildPart10([
      { tag: 0x00280008, vr: "IS", value: "2" },
      { tag: 0x7fe00010, vr: "OB", fragments: [frame(1, 10), frame(2, 4), frame(3, 6)], bot: [0, 26] },
    ], { transferSyntax: "1.2.840.10008.1.2.4.50" });
    const pixel = parseBuffer(bytes, "a.dcm").pixelData!;
    assert.equal(pixel.encapsulated, true);
    assert.equal(pixel.length, -1);
    assert.deepEqual(pixel.basicOffsetTable, [0, 26]);
    assert.deepEqual(pixel.fragments!.map((f) => f.length), [10, 4, 6]);
    assert.deepEqual([...bytes.subarray(pixel.fragments![1].offset, pixel.fragments![1].offset + 4)], [
      2,
      2,
      2,
      2,
    ]);
    assert.equal(pixel.end, bytes.length);
  });
  await t.step("with an empty Basic Offset Table and an Extended Offset Table", () => {
    const eot = new Uint8Array(16);
    new DataView(eot.buffer).setBigUint64(8, 18n, true);
    const lengths = new Uint8Array(16);
    new DataView(lengths.buffer).setBigUint64(0, 10n, true);
    new DataView(lengths.buffer).setBigUint64(8, 4n, true);
    const bytes = buildPart10([
      { tag: 0x7fe00001, vr: "OV", value: eot },
      { tag: 0x7fe00002, vr: "OV", value: lengths },
      { tag: 0x7fe00010, vr: "OB", fragments: [frame(1, 10), frame(2, 4)] },
    ], { transferSyntax: "1.2.840.10008.1.2.4.50" });
    const pixel = parseBuffer(bytes, "a.dcm", { bulkThreshold: 4 }).pixelData!;
    assert.deepEqual(pixel.basicOffsetTable, []);
    assert.deepEqual(pixel.extendedOffsetTable, [0, 18]);
    assert.deepEqual(pixel.extendedOffsetTableLengths, [10, 4]);
  });
});

Deno.test("parseBuffer() leaves values above the bulk threshold unloaded", () => {
  const big = new Uint8Array(3000).fill(9);
  const bytes = buildPart10([{ tag: 0x00420011, vr: "OB", value: big }, {
    tag: 0x00100020,
    vr: "LO",
    value: "A",
  }]);
  const header = parseBuffer(bytes, "a.dcm");
  const el = header.dataset.elements.get(0x00420011)!;
  assert.equal(el.bytes, undefined);
  assert.equal(el.length, 3000);
  assert.deepEqual(bytes.subarray(el.offset, el.offset + el.length), big);
  assert.equal(
    parseBuffer(bytes, "a.dcm", { bulkThreshold: 4096 }).dataset.elements.get(0x00420011)!.bytes?.length,
    3000,
  );
});

Deno.test("readHeader() reads only the header through ranged reads", async (t) => {
  await t.step("native pixel data is never fetched", async () => {
    const pixels = new Array(200_000).fill(0x1234);
    const bytes = buildPart10([...SAMPLE.slice(0, -1), { tag: 0x7fe00010, vr: "OW", value: pixels }]);
    const source = memorySource(bytes);
    const header = await readHeader(source, { initialBytes: 256 });
    const fetched = source.reads.reduce((n, [s, e]) => n + e - s, 0);
    assert.ok(fetched < 2048, `fetched ${fetched} bytes`);
    assert.equal(header.pixelData!.length, 400_000);
    assert.deepEqual(summary(header.dataset), summary(parseBuffer(bytes, "a.dcm").dataset));
  });
  await t.step("encapsulated: item headers are read, fragments are not", async () => {
    const fragments = [1, 2, 3, 4].map((n) => new Uint8Array(100_000).fill(n));
    const bytes = buildPart10([
      { tag: 0x00280008, vr: "IS", value: "4" },
      { tag: 0x7fe00010, vr: "OB", fragments, bot: [0, 100_008, 200_016, 300_024] },
      { tag: 0xfffcfffc, vr: "OB", value: new Uint8Array(8) },
    ], { transferSyntax: "1.2.840.10008.1.2.4.50" });
    const source = memorySource(bytes);
    const header = await readHeader(source, { initialBytes: 1024 });
    const fetched = source.reads.reduce((n, [s, e]) => n + e - s, 0);
    assert.ok(fetched < 70_000, `fetched ${fetched} bytes`);
    assert.deepEqual(header.pixelData!.fragments!.map((f) => f.length), [100_000, 100_000, 100_000, 100_000]);
    assert.ok(header.dataset.elements.has(0xfffcfffc), "elements after the pixel data are read too");
    assert.deepEqual(header.pixelData, parseBuffer(bytes, "a.dcm").pixelData);
  });
  await t.step("values past the bulk threshold are skipped, not fetched", async () => {
    const bytes = buildPart10([
      { tag: 0x00420011, vr: "OB", value: new Uint8Array(500_000) },
      { tag: 0x00100020, vr: "LO", value: "after" },
    ]);
    const source = memorySource(bytes);
    const header = await readHeader(source, { initialBytes: 512 });
    assert.equal(getString(header.dataset, 0x00100020), "after");
    assert.ok(source.reads.reduce((n, [s, e]) => n + e - s, 0) < 4096);
  });
});

Deno.test("readHeader() and parseObject() inflate deflated data sets", async () => {
  const plain = buildPart10(SAMPLE.slice(0, -1), { meta: false });
  const deflated = new Uint8Array(
    await new Response(new Blob([plain]).stream().pipeThrough(new CompressionStream("deflate-raw")))
      .arrayBuffer(),
  );
  const meta = buildPart10([], { transferSyntax: "1.2.840.10008.1.2.1.99" });
  const bytes = Uint8Array.from([...meta, ...deflated, 0, 0]); // stray bytes after the stream: seen in the wild
  const header = await readHeader(memorySource(bytes));
  assert.equal(header.deflated, true);
  assert.equal(header.inflated!.length, meta.length + plain.length);
  assert.equal(getString(header.dataset, 0x00100010), "Müller^Hans");
  assert.equal(getString((await parseObject(bytes, "d.dcm")).dataset, 0x00080018), "1.2.3.4.5");
  assert.throws(() => parseBuffer(bytes, "d.dcm"), /Cannot parse "d.dcm": the data set is deflated/);
  // bounded: a data set that inflates past maxInflatedBytes is refused, not read into memory
  await assert.rejects(
    readHeader(memorySource(bytes), { maxInflatedBytes: plain.length - 1 }),
    (e: Error) => e instanceof OutOfRangeError && /inflates to more than/.test(e.message),
  );
  // a corrupt or cut stream is a MalformedError naming the object and the offset
  const cut = bytes.subarray(0, meta.length + Math.floor(deflated.length / 2));
  await assert.rejects(
    readHeader(memorySource(cut, "cut.dcm")),
    (e: Error) =>
      e instanceof MalformedError &&
      /"cut.dcm": the deflated data set at offset \d+ is corrupt/.test(e.message),
  );
});

Deno.test("parseBuffer() rejects malformed input with the object name and an offset", async (t) => {
  const ok = buildPart10([{ tag: 0x00100020, vr: "LO", value: "ID" }]);
  const cases: [string, Uint8Array, RegExp][] = [
    ["an empty object", new Uint8Array(), /"bad.dcm": the object is empty/],
    [
      "a truncated element header",
      ok.subarray(0, ok.length - 6),
      /element header at offset \d+ runs past the end/,
    ],
    [
      "a length past the end",
      buildPart10([{ tag: 0x00280010, vr: "OB", value: new Uint8Array(8), lengthOverride: 4000 }]),
      /element \(0028,0010\) length 4000 runs past the end at offset \d+/,
    ],
    [
      "an insane length (no allocation)",
      buildPart10([{ tag: 0x00420011, vr: "OB", value: new Uint8Array(8), lengthOverride: 0xfffffff0 }]),
      /element \(0042,0011\) length 4294967280 runs past the end/,
    ],
    [
      "a nonsense VR",
      Uint8Array.from([...buildPart10([]), 0x10, 0, 0x20, 0, 0x01, 0x02, 2, 0, 0x41, 0x20]),
      /element \(0010,0020\) has an invalid VR \(bytes 01 02\) at offset \d+/,
    ],
    [
      "an item tag missing",
      Uint8Array.from([
        ...buildPart10([]),
        0x08,
        0,
        0x15,
        0x11,
        0x53,
        0x51,
        0,
        0,
        8,
        0,
        0,
        0,
        0x10,
        0,
        0x20,
        0,
        0,
        0,
        0,
        0,
      ]),
      /item tag missing in sequence \(0008,1115\) at offset \d+: found \(0010,0020\)/,
    ],
    [
      "a sequence without delimiter",
      buildPart10([{ tag: 0x00081115, vr: "SQ", undefinedLength: true, value: [[]] }]).subarray(0, -8),
      /sequence \(0008,1115\) has no sequence delimiter before the end/,
    ],
    [
      "no DICM after a preamble holding meta",
      Uint8Array.from([...new Array(132).fill(0), ...buildPart10([], { preamble: false })]),
      /"DICM" missing at offset 128/,
    ],
    [
      "encapsulated data without delimiter",
      buildPart10([{ tag: 0x7fe00010, vr: "OB", fragments: [new Uint8Array(4)] }]).subarray(0, -8),
      /encapsulated \(7FE0,0010\) has no sequence delimiter before the end at offset \d+/,
    ],
  ];
  for (const [what, bytes, message] of cases) {
    await t.step(what, async () => {
      assert.throws(
        () => parseBuffer(bytes, "bad.dcm"),
        (e) => e instanceof SyntaxError && message.test(e.message),
      );
      await assert.rejects(
        readHeader(memorySource(bytes, "bad.dcm")),
        (e) => e instanceof SyntaxError && message.test(e.message),
      );
    });
  }
  await t.step("sequences nested too deep", () => {
    let items: Fx[][] = [[]];
    for (let i = 0; i < 80; i++) {
      items = [[{ tag: 0x0040a730, vr: "SQ", undefinedLength: true, value: items }]];
    }
    const bytes = buildPart10(items[0]);
    assert.throws(() => parseBuffer(bytes, "deep.dcm"), /sequences nested more than 64 deep/);
  });
  await t.step("many zero-length undefined-length items parse quickly", () => {
    const value = Array.from({ length: 10_000 }, () => [] as Fx[]);
    const header = parseBuffer(
      buildPart10([{ tag: 0x00081115, vr: "SQ", undefinedLength: true, value }]),
      "z.dcm",
    );
    assert.equal(header.dataset.elements.get(0x00081115)!.items!.length, 10_000);
  });
});

/** What each corpus file is expected to give: undefined = parses, a RegExp = the SyntaxError message. */
const CORPUS_ERRORS: Record<string, RegExp> = {
  "rtplan_truncated.dcm":
    /^Cannot parse "rtplan_truncated.dcm": element \(300A,00B0\) length 976 runs past the end at offset 1418$/,
  "no_meta.dcm":
    /^Cannot parse "no_meta.dcm" \(no File Meta Information: read as a raw data set\): element \(0820,0500\) length 173228800 runs past the end at offset 8$/,
};

Deno.test("readHeader() and parseObject() agree on every corpus file", async (t) => {
  const dir = corpusDir();
  for (const { name } of [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name))) {
    await t.step(name, async () => {
      const bytes = Deno.readFileSync(dir + name);
      const error = CORPUS_ERRORS[name];
      if (error) {
        await assert.rejects(
          parseObject(bytes, name),
          (e) => e instanceof SyntaxError && error.test(e.message),
        );
        await assert.rejects(
          readHeader(memorySource(bytes, name), { initialBytes: 512 }),
          (e) => e instanceof SyntaxError && error.test(e.message),
        );
        return;
      }
      const whole = await parseObject(bytes, name);
      const ranged = await readHeader(memorySource(bytes, name), { initialBytes: 512 });
      assert.deepEqual(summary(ranged.dataset), summary(whole.dataset));
      assert.deepEqual(ranged.pixelData, whole.pixelData);
      assert.equal(ranged.transferSyntaxUid, whole.transferSyntaxUid);
      // MR_truncated.dcm: Pixel Data declared 8192 bytes, the file ends 62 bytes short; the header stands
      const cut = name === "MR_truncated.dcm";
      if (whole.pixelData && !whole.deflated) assert.equal(whole.pixelData.end > bytes.length, cut, name);
    });
  }
  await t.step("meta_missing_tsyntax.dcm: meta without (0002,0010), read as implicit VR", async () => {
    const header = await parseObject(Deno.readFileSync(dir + "meta_missing_tsyntax.dcm"), "m.dcm");
    assert.ok(header.meta);
    assert.equal(header.meta.transferSyntaxUid, undefined);
    assert.equal(header.transferSyntaxUid, ILE);
  });
  await t.step("badVR.dcm: NumberOfFrames '1A' parses; as a number it is NaN", async () => {
    const header = await parseObject(Deno.readFileSync(dir + "badVR.dcm"), "b.dcm");
    assert.equal(getString(header.dataset, 0x00280008), "1A");
    assert.ok(Number.isNaN(getNumber(header.dataset, 0x00280008)));
  });
  await t.step("image_dfl.dcm: deflated, offsets point into the inflated stream", async () => {
    const header = await parseObject(Deno.readFileSync(dir + "image_dfl.dcm"), "d.dcm");
    assert.equal(header.inflated!.length, 334 + 262682);
    assert.equal(header.pixelData!.offset + header.pixelData!.length, header.inflated!.length);
  });
});

Deno.test("dictionary lookups work by tag, keyword and repeating group", async (t) => {
  const { lookupKeyword, lookupTag, parseTag, vrOf, formatTag } = await import(
    "../../lib/dicom/dictionary.ts"
  );
  await t.step("lookupTag() and lookupKeyword()", () => {
    assert.equal(lookupTag(0x00100010)?.keyword, "PatientName");
    assert.equal(lookupTag(0x00100010)?.vr, "PN");
    assert.equal(lookupKeyword("StudyInstanceUID")?.tag, 0x0020000d);
    assert.equal(lookupKeyword("ModalitiesInStudy")?.vr, "CS");
    assert.equal(lookupTag(0x00091001), undefined);
  });
  await t.step("repeating groups (60xx overlays, 50xx curves)", () => {
    assert.equal(lookupTag(0x60223000)?.keyword, "OverlayData");
    assert.equal(lookupTag(0x50100010)?.keyword, "NumberOfPoints");
    assert.equal(lookupTag(0x50100010)?.retired, true);
  });
  await t.step("vrOf() for implicit VR", () => {
    assert.equal(vrOf(0x00280106), "US");
    assert.equal(vrOf(0x00280106, { pixelRepresentation: 1 }), "SS");
    assert.equal(vrOf(0x7fe00010), "OW");
    assert.equal(vrOf(0x00090010), "LO");
    assert.equal(vrOf(0x00091001), "UN");
    assert.equal(vrOf(0x00080000), "UL");
  });
  await t.step("parseTag() and formatTag()", () => {
    assert.equal(parseTag("00100010"), 0x00100010);
    assert.equal(parseTag("(0010,0010)"), 0x00100010);
    assert.equal(parseTag("PatientID"), 0x00100020);
    assert.equal(parseTag("NoSuchKeyword"), undefined);
    assert.equal(formatTag(0x7fe00010), "(7FE0,0010)");
  });
});
