/**
 * negotiateFrames() with `transfer-syntax=*`, the server's choice (issue #16.5): native frames always go out
 * little endian (Explicit VR Little Endian), compressed frames as stored unless web viewers cannot decode
 * them (VIEWER_DECODABLE) and this server can.
 */

import assert from "node:assert/strict";
import { negotiateFrames } from "../../lib/dicomweb/frames_bulkdata.ts";
import { frameMediaType } from "../../lib/dicom/frames.ts";
import { OHIF_FRAME_ACCEPTS } from "../_ohif_requests.ts";

const ELE = "1.2.840.10008.1.2.1";
const EBE = "1.2.840.10008.1.2.2";
const J2K = "1.2.840.10008.1.2.4.90";
const J2K_PART2 = "1.2.840.10008.1.2.4.92";

const frames = (ts: string, accept: string, decodable: boolean, single = false) =>
  negotiateFrames(accept, { transferSyntax: ts, mediaType: frameMediaType(ts) }, single, { decodable });

Deno.test("negotiateFrames(): transfer-syntax=* leaves the syntax to the server", async (t) => {
  await t.step("big endian frames: Explicit VR Little Endian (the words are swapped)", () => {
    for (const accept of OHIF_FRAME_ACCEPTS) {
      assert.deepEqual(frames(EBE, accept, false), {
        multipart: true,
        contentType: `application/octet-stream; transfer-syntax=${ELE}`,
      });
    }
  });
  await t.step("a syntax viewers decode: as stored", () => {
    for (const accept of OHIF_FRAME_ACCEPTS) {
      assert.deepEqual(frames(J2K, accept, true), {
        multipart: true,
        contentType: `image/jp2; transfer-syntax=${J2K}`,
      });
    }
  });
  await t.step("one they cannot: decoded when we can, else as stored", () => {
    const decoded = {
      multipart: true,
      contentType: `application/octet-stream; transfer-syntax=${ELE}`,
      decode: true,
    };
    for (const accept of [...OHIF_FRAME_ACCEPTS, 'multipart/related; type="*/*"; transfer-syntax=*']) {
      assert.deepEqual(frames(J2K_PART2, accept, true), decoded, accept);
      assert.deepEqual(frames(J2K_PART2, accept, false), {
        multipart: true,
        contentType: `image/jpx; transfer-syntax=${J2K_PART2}`,
      });
    }
    assert.deepEqual(frames(J2K_PART2, "application/octet-stream; transfer-syntax=*", true, true), {
      ...decoded,
      multipart: false,
    });
  });
  await t.step("a client naming the compressed type gets it as stored", () => {
    assert.deepEqual(frames(J2K_PART2, 'multipart/related; type="image/jpx"; transfer-syntax=*', true), {
      multipart: true,
      contentType: `image/jpx; transfer-syntax=${J2K_PART2}`,
    });
  });
});
