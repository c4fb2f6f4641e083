/**
 * What OHIF Viewer 3.13 (the `@ohif/app` build tools/viewer installs, with cornerstone3D's
 * `@cornerstonejs/dicom-image-loader`) asks of a DICOMweb server for pixels, and how it reads the answer; read
 * from that build's bundle, and checked on the wire by tests/e2e/ohif_test.ts.
 *
 * - Frames (`wadors:` image ids): one `GET .../frames/{n}` per image with the `Accept` that OHIF's
 *   `beforeSend` makes (`generateAcceptHeader` with no `requestTransferSyntaxUID`: quoted parameters), or
 *   the loader's own unquoted default when a data source sets `omitQuotationForMultipartRequest`.
 * - Bulk data (`retrieveBulkData`, dicomweb-client): `multipart/related; type="application/octet-stream"`,
 *   with the data source's `transfer-syntax="*"` when OHIF adds its WADO header; the ECG viewport fetches
 *   waveforms with a plain `application/octet-stream`.
 * - The loader decodes a frame in the syntax named by its part's `Content-Type` `transfer-syntax` parameter
 *   (Implicit VR Little Endian when there is none) and knows only the syntaxes of
 *   {@linkcode CORNERSTONE_DECODES}. The metadata's (0002,0010) or (0008,3002) only inform OHIF's
 *   display-set choices (video, for instance), never the decoder.
 */

/** `Accept` of OHIF's frame requests. */
export const OHIF_FRAME_ACCEPTS: readonly string[] = [
  'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
  "multipart/related; type=application/octet-stream; transfer-syntax=*",
];

/** `Accept` of OHIF's bulk data requests. */
export const OHIF_BULKDATA_ACCEPTS: readonly string[] = [
  'multipart/related; type="application/octet-stream"',
  'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
  "application/octet-stream",
];

/** The transfer syntaxes the loader's `decodeImageFrame` decodes (its switch, in OHIF 3.13's worker bundle). */
export const CORNERSTONE_DECODES: ReadonlySet<string> = new Set([
  "1.2.840.10008.1.2",
  "1.2.840.10008.1.2.1",
  "1.2.840.10008.1.2.1.99",
  "1.2.840.10008.1.2.2",
  "1.2.840.10008.1.2.5",
  ...["50", "51", "57", "70", "80", "81", "90", "91", "201", "202", "203"].map((s) =>
    `1.2.840.10008.1.2.4.${s}`
  ),
  "3.2.840.10008.1.2.4.96",
]);

/** The syntax the loader decodes a part in: its Content-Type's `transfer-syntax`, else Implicit VR LE. */
export function loaderTransferSyntax(contentType: string | undefined): string {
  const match = /;\s*transfer-syntax\s*=\s*"?([^";\s]+)"?/i.exec(contentType ?? "");
  return match ? match[1] : "1.2.840.10008.1.2";
}

/** Syntaxes whose frames are native samples, which the loader reads in its byte order. */
export const NATIVE_LITTLE_ENDIAN: ReadonlySet<string> = new Set([
  "1.2.840.10008.1.2",
  "1.2.840.10008.1.2.1",
  "1.2.840.10008.1.2.1.99",
]);
