/**
 * Makes the small compressed samples in this folder from files of tests/testdata/pydicom (public test data):
 *
 * - `htj2k_lossless_ct.dcm`: CT_small.dcm (128×128, 16-bit signed) as HTJ2K Lossless (1.2.840.10008.1.2.4.201)
 * - `htj2k_rpcl_rgb.dcm`: SC_rgb_rle_2frame.dcm (2 frames, 100×100 RGB) as HTJ2K RPCL lossless (.202), YBR_RCT
 * - `htj2k_lossy_mr.dcm`: MR_small.dcm (64×64, 16-bit signed) as irreversible HTJ2K (.203)
 * - `j2k_rgb.dcm`: SC_rgb_rle_2frame.dcm as JPEG 2000 lossless with the RCT (.90), YBR_RCT
 *
 * Encoders: OpenJPH and OpenJPEG WASM builds (`lib/codecs/htj2k.ts`, `lib/codecs/j2k.ts`).
 * Run from the repository: `deno run -P=test tests/testdata/make_pixel_samples.ts`.
 *
 * @module
 */

import { encodeHtj2k } from "../../lib/codecs/htj2k.ts";
import { encodeJ2k } from "../../lib/codecs/j2k.ts";
import { closeDefaultPool, CodecPool } from "../../lib/imaging/pool.ts";
import { frameCount, planFrame } from "../../lib/dicom/frames.ts";
import { parseObject } from "../../lib/dicom/part10.ts";
import {
  decodeInstance,
  encapsulatedInstance,
  type Override,
  textValue,
} from "../../lib/imaging/pixel_transcode.ts";
import { getNumber, type Part10Header } from "../../lib/dicom/dataset.ts";

const CORPUS = new URL("./pydicom/files/", import.meta.url);
const OUT = new URL("./", import.meta.url);

/** A native (ELE) instance's header and frames. */
async function native(name: string): Promise<{ header: Part10Header; frames: Uint8Array[] }> {
  let bytes: Uint8Array = await Deno.readFile(new URL(name, CORPUS));
  let header = await parseObject(bytes, name, { bulkThreshold: Infinity, textBulkThreshold: Infinity });
  if (header.pixelData?.encapsulated) {
    const pool = new CodecPool({ size: 0 });
    bytes = await decodeInstance(bytes, name, { pool });
    header = await parseObject(bytes, name, { bulkThreshold: Infinity, textBulkThreshold: Infinity });
  }
  const source = header.inflated ?? bytes;
  const frames = Array.from({ length: frameCount(header) }, (_, i) => {
    const plan = planFrame(header, i + 1);
    const r = plan.ranges[0];
    return source.slice(r.offset, r.offset + r.length);
  });
  return { header, frames };
}

function overrides(sop: string, photometric?: string, lossy = false): Map<number, Override> {
  const map = new Map<number, Override>([[0x00080018, { vr: "UI", bytes: textValue(sop, "UI") }]]);
  if (photometric) map.set(0x00280004, { vr: "CS", bytes: textValue(photometric, "CS") });
  if (lossy) map.set(0x00282110, { vr: "CS", bytes: textValue("01", "CS") });
  return map;
}

function layout(header: Part10Header) {
  const ds = header.dataset;
  return {
    width: getNumber(ds, 0x00280011)!,
    height: getNumber(ds, 0x00280010)!,
    components: getNumber(ds, 0x00280002) ?? 1,
    bitsPerSample: getNumber(ds, 0x00280101)!,
    signed: getNumber(ds, 0x00280103) === 1,
  };
}

if (import.meta.main) {
  const ct = await native("CT_small.dcm");
  const rgb = await native("SC_rgb_rle_2frame.dcm");
  const mr = await native("MR_small.dcm");
  const write = async (name: string, bytes: Uint8Array) => {
    await Deno.writeFile(new URL(name, OUT), bytes);
    console.log(`${name}: ${bytes.length} bytes`);
  };
  await write(
    "htj2k_lossless_ct.dcm",
    encapsulatedInstance(
      ct.header,
      [await encodeHtj2k(ct.frames[0], layout(ct.header))],
      "1.2.840.10008.1.2.4.201",
      overrides("2.25.8001.1"),
    ),
  );
  await write(
    "htj2k_rpcl_rgb.dcm",
    encapsulatedInstance(
      rgb.header,
      await Promise.all(
        rgb.frames.map((f) => encodeHtj2k(f, { ...layout(rgb.header), progressionOrder: 2 })),
      ),
      "1.2.840.10008.1.2.4.202",
      overrides("2.25.8001.2", "YBR_RCT"),
    ),
  );
  await write(
    "htj2k_lossy_mr.dcm",
    encapsulatedInstance(
      mr.header,
      [await encodeHtj2k(mr.frames[0], { ...layout(mr.header), lossless: false, quantizationStep: 0.002 })],
      "1.2.840.10008.1.2.4.203",
      overrides("2.25.8001.3", undefined, true),
    ),
  );
  await write(
    "j2k_rgb.dcm",
    encapsulatedInstance(
      rgb.header,
      await Promise.all(rgb.frames.map((f) => encodeJ2k(f, layout(rgb.header)))),
      "1.2.840.10008.1.2.4.90",
      overrides("2.25.8001.4", "YBR_RCT"),
    ),
  );
  closeDefaultPool();
}
