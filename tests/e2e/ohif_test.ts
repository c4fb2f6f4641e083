/**
 * OHIF Viewer 3.x (the prebuilt `@ohif/app` that tools/viewer installs) in headless Chromium against this
 * server, with the studies in a real S3 server: the study list, a patient-name filter, and each study
 * opened to its first image, once with OHIF on another origin (CORS, with an `Authorization` header) and
 * once served same-origin at `/viewer/` (lib/viewer/viewer.ts, `VIEWER` set); then, with OHIF's
 * `thumbnailRendering` set to `"rendered"` and to `"thumbnail"`, a study of three series whose thumbnails
 * must all be JPEGs this server rendered. The MR series holds one image five ways (native little and big endian,
 * JPEG-LS, RLE, JPEG 2000): OHIF must show it pixel for pixel the same from each, the big endian one included
 * (Explicit VR Big Endian, retired), its frames asked for as tests/_ohif_requests.ts says OHIF does.
 *
 * Screenshots go to `.artifacts/ohif/`. Needs Debian's chromium, `npm ci --prefix tools/e2e` and
 * `deno task viewer:install`; without them the test fails under CI=true and is skipped (with the reason
 * printed) elsewhere.
 */

import { skipBecause } from "../_skip.ts";
import assert from "node:assert/strict";
import { AetRegistry } from "../../lib/objects/aets.ts";
import { parseConfig } from "../../lib/config/config.ts";
import { memoryCatalog, testHandler } from "../_server.ts";
import { FileStore } from "../../lib/store/file_store.ts";
import { errorResponse, toHttpError } from "../../lib/http/errors.ts";
import { S3Store } from "../../lib/store/s3/s3_store.ts";
import {
  ohifAppConfig,
  replaceAll,
  type ThumbnailRendering,
  viewerHandler,
} from "../../lib/viewer/viewer.ts";
import { installedOhifVersion, OHIF_DIST_DIR, OHIF_VERSION } from "../../tools/viewer/install.ts";
import { type Browser, browserMissing, launchBrowser, type Page, type PageEvents } from "../_browser.ts";
import { type CorpusFile, pydicomCorpus } from "../_corpus.ts";
import { buildPart10, type Fx } from "../_dicom_fixtures.ts";
import { startS3 } from "../_s3server.ts";
import { fitViewport } from "../../lib/imaging/resample.ts";
import { OHIF_FRAME_ACCEPTS } from "../_ohif_requests.ts";

const AET = "OHIF";
/** A second AET (bucket) holding only the CT study: the same-origin viewer has a data source for each. */
const OTHER_AET = "OTHER";
const ARTIFACTS = new URL("../.artifacts/ohif/", import.meta.url);
const TOKEN = "e2e-token-123";

/** The studies, by the file names of tests/testdata/pydicom, with what OHIF's study list must show. */
const STUDIES = [
  { name: "ct", files: ["CT_small.dcm"], patient: "CompressedSamples^CT1", date: "20040119", modality: "CT" },
  {
    name: "mr", // one series, one image: native little and big endian, JPEG-LS, RLE and JPEG 2000 instances
    files: [
      "MR_small.dcm",
      "MR_small_bigendian.dcm",
      "MR_small_jpeg_ls_lossless.dcm",
      "MR_small_RLE.dcm",
      "MR_small_jp2klossless.dcm",
    ],
    patient: "CompressedSamples^MR1",
    date: "20040826",
    modality: "MR",
  },
  {
    name: "jpeg-rgb", // JPEG baseline RGB, and a 2-frame RLE instance
    files: ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_2frame.dcm"],
    patient: "Lestrade^G",
    date: "20170101",
    modality: "OT",
  },
  {
    name: "jpeg-12bit",
    files: ["JPGExtended.dcm"],
    patient: "CompressedSamples^NM1",
    date: "20040826",
    modality: "NM",
  },
  {
    name: "j2k-ct",
    files: ["J2K_pixelrep_mismatch.dcm"],
    patient: "JXD191021006",
    date: "20191019",
    modality: "CT",
  },
  {
    name: "multiframe",
    files: ["rtdose.dcm"],
    patient: "Lastname^Firstname",
    date: "20030805",
    modality: "RTDOSE",
  },
];
/** What the patient filter types, and the studies it must leave. */
const FILTER = { text: "compressed", leaves: ["ct", "mr", "jpeg-12bit"] };

/**
 * A study of three series, built here, in a bucket (AET) of its own: its thumbnails are the point. Each
 * series has its own image size, so a thumbnail's size tells which series' image the server rendered.
 */
const THUMBS = {
  aet: "THUMBS",
  study: "2.25.47110815",
  patient: "Thumbnails^Three Series",
  series: [
    { number: 1, description: "Rings 12-bit", rows: 128, columns: 128, instances: 3, kind: "rings" },
    { number: 2, description: "Stripes 8-bit", rows: 96, columns: 160, instances: 2, kind: "stripes" },
    { number: 3, description: "Colours RGB", rows: 64, columns: 80, instances: 1, kind: "rgb" },
  ],
} as const;
type ThumbSeries = (typeof THUMBS.series)[number];
const seriesUid = (series: ThumbSeries) => `${THUMBS.study}.${series.number}`;

/** One Secondary Capture instance of a {@linkcode THUMBS} series, with a pattern per series and instance. */
function thumbsInstance(series: ThumbSeries, instance: number): { key: string; bytes: Uint8Array } {
  const sop = `${seriesUid(series)}.${instance}`;
  const { rows, columns } = series;
  const rgb = series.kind === "rgb";
  const bits = series.kind === "rings" ? 16 : 8;
  const pixels = new Uint8Array(rows * columns * (rgb ? 3 : bits / 8));
  const view = new DataView(pixels.buffer);
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < columns; x++) {
      const i = y * columns + x;
      if (series.kind === "rings") {
        const r = Math.hypot(x - columns / 2, y - rows / 2);
        view.setUint16(2 * i, (Math.floor(r / 8) + instance) % 2 ? 3000 + 8 * x : 400 + 4 * y, true);
      } else if (series.kind === "stripes") {
        pixels[i] = Math.floor((x + y + 8 * instance) / 16) % 2 ? 200 + (x % 40) : 30 + y % 30;
      } else {
        const quadrant = (y < rows / 2 ? 0 : 2) + (x < columns / 2 ? 0 : 1);
        const colour = [[230, 40, 40], [40, 200, 60], [50, 80, 230], [240, 220, 40]][quadrant];
        pixels.set(colour.map((c) => Math.min(255, c + (x % 16))), 3 * i);
      }
    }
  }
  const SC = "1.2.840.10008.5.1.4.1.1.7";
  const elements: Fx[] = [
    { tag: 0x00080008, vr: "CS", value: "DERIVED\\SECONDARY" },
    { tag: 0x00080016, vr: "UI", value: SC },
    { tag: 0x00080018, vr: "UI", value: sop },
    { tag: 0x00080020, vr: "DA", value: "20240315" },
    { tag: 0x00080030, vr: "TM", value: "101500" },
    { tag: 0x00080050, vr: "SH", value: "THUMBS1" },
    { tag: 0x00080060, vr: "CS", value: "OT" },
    { tag: 0x00080064, vr: "CS", value: "WSD" },
    { tag: 0x00081030, vr: "LO", value: "Thumbnail modes" },
    { tag: 0x0008103e, vr: "LO", value: series.description },
    { tag: 0x00100010, vr: "PN", value: THUMBS.patient },
    { tag: 0x00100020, vr: "LO", value: "THUMBS-1" },
    { tag: 0x0020000d, vr: "UI", value: THUMBS.study },
    { tag: 0x0020000e, vr: "UI", value: seriesUid(series) },
    { tag: 0x00200010, vr: "SH", value: "1" },
    { tag: 0x00200011, vr: "IS", value: String(series.number) },
    { tag: 0x00200013, vr: "IS", value: String(instance) },
    { tag: 0x00280002, vr: "US", value: [rgb ? 3 : 1] },
    { tag: 0x00280004, vr: "CS", value: rgb ? "RGB" : "MONOCHROME2" },
    ...(rgb ? [{ tag: 0x00280006, vr: "US", value: [0] }] : []),
    { tag: 0x00280010, vr: "US", value: [rows] },
    { tag: 0x00280011, vr: "US", value: [columns] },
    { tag: 0x00280100, vr: "US", value: [bits] },
    { tag: 0x00280101, vr: "US", value: [bits === 16 ? 12 : 8] },
    { tag: 0x00280102, vr: "US", value: [bits === 16 ? 11 : 7] },
    { tag: 0x00280103, vr: "US", value: [0] },
    { tag: 0x7fe00010, vr: bits === 16 ? "OW" : "OB", value: pixels },
  ];
  return {
    key: `${THUMBS.study}/${seriesUid(series)}/${sop}.dcm`,
    bytes: buildPart10(elements, { sopClassUid: SC, sopInstanceUid: sop }),
  };
}

async function missingRequirements(corpus: CorpusFile[]): Promise<string | undefined> {
  const problems: string[] = [];
  const browser = await browserMissing();
  if (browser) problems.push(browser);
  const version = await installedOhifVersion();
  if (version !== OHIF_VERSION) {
    problems.push(
      `OHIF ${OHIF_VERSION} is not installed in tools/viewer (found ${
        version ?? "none"
      }): deno task viewer:install`,
    );
  }
  const names = new Set(corpus.map((f) => f.name));
  const absent = STUDIES.flatMap((s) => s.files).filter((f) => !names.has(f));
  if (absent.length > 0) problems.push(`tests/testdata/pydicom lacks ${absent.join(", ")}`);
  return problems.length > 0 ? problems.join("; ") : undefined;
}

const corpus = await pydicomCorpus();
const missing = await missingRequirements(corpus);
if (missing) skipBecause("the OHIF end-to-end test", missing);

// --- pieces that need no browser ------------------------------------------------------------------

Deno.test("replaceAll() rewrites literals split across chunks", async () => {
  const input = ['<script src="/a', '.js"></script><link href="/', 'b.css">window.PUBLIC_URL="/"'];
  const stream = ReadableStream.from(input.map((s) => new TextEncoder().encode(s)))
    .pipeThrough(
      replaceAll([['src="/', 'src="/v/'], ['href="/', 'href="/v/'], ['PUBLIC_URL="/"', 'PUBLIC_URL="/v/"']]),
    );
  const text = await new Response(stream).text();
  assert.equal(text, '<script src="/v/a.js"></script><link href="/v/b.css">window.PUBLIC_URL="/v/"');
});

Deno.test("ohifAppConfig() makes one DICOMweb data source per AET, the first the default", () => {
  const js = ohifAppConfig([
    { name: "A", root: "http://h:1/aets/A" },
    { name: "B", root: "http://h:1/aets/B" },
  ], { routerBasename: "/viewer" });
  const config = JSON.parse(js.slice(js.indexOf("{"), js.lastIndexOf("}") + 1));
  assert.equal(config.routerBasename, "/viewer");
  assert.equal(config.defaultDataSourceName, "A");
  assert.deepEqual(config.dataSources.map((d: { sourceName: string }) => d.sourceName), ["A", "B"]);
  const ds = config.dataSources[1].configuration;
  assert.equal(ds.qidoRoot, "http://h:1/aets/B");
  assert.equal(ds.wadoRoot, "http://h:1/aets/B");
  assert.equal(ds.imageRendering, "wadors");
  assert.equal(ds.thumbnailRendering, "wadors", "thumbnails decoded in the browser unless asked otherwise");
  assert.equal(ds.enableStudyLazyLoad, true);
  assert.equal(ds.supportsFuzzyMatching, true);
  assert.equal(ds.supportsWildcard, true);
  const rendered = ohifAppConfig([{ name: "A", root: "http://h:1/aets/A" }], {
    routerBasename: "/",
    thumbnailRendering: "rendered",
  });
  assert.match(rendered, /"thumbnailRendering": "rendered"/);
});

/** A miniature OHIF `dist/` with the absolute references the real one has. */
async function fakeDist(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "viewer-dist-" });
  const dist = `${root}/dist`;
  await Deno.mkdir(`${dist}/assets`, { recursive: true });
  const files: Record<string, string> = {
    "index.html": '<html><head><meta name="msapplication-TileImage" content="/assets/tile.png">' +
      '<script>window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">' +
      '<script src="/app-config.js"></script><script defer src="/app.bundle.0123456789abcdef.js"></script>' +
      '<link href="/app.bundle.css" rel="stylesheet"></head><body><div id="root"></div></body></html>',
    "app.bundle.0123456789abcdef.js":
      'console.log("a");\n__webpack_require__.p = "/";\nconsole.log("/keep");',
    "app.bundle.css": "@font-face{src:url(/abcdef.woff2)}",
    "manifest.json": '{"icons": [{"src": "/assets/icon.png"}], "start_url": "./index.html"}',
    "app-config.js": "window.config = { stale: true };",
    // big enough to be gzipped for a browser
    "vendor.bundle.js": `console.log(${JSON.stringify("x".repeat(20_000))});`,
  };
  for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dist}/${name}`, text);
  await Deno.writeFile(`${dist}/codec.wasm`, new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0]));
  return dist;
}

Deno.test("viewer routes: none unless VIEWER is set; then /viewer/ serves OHIF rewritten for its path", async () => {
  const data = await Deno.makeTempDir({ prefix: "viewer-data-" });
  const store = new FileStore(data);
  const { handler: off } = testHandler({
    store,
    config: { AETS: AET },
    aets: new AetRegistry(store),
    capabilities: { reEncode: false },
  });
  const none = await off(new Request("http://localhost/viewer/"));
  await none.body?.cancel();
  assert.equal(none.status, 404, "no /viewer/ unless VIEWER is set");

  const dist = await fakeDist();
  const config = parseConfig({ AETS: `${AET},OTHER`, BASE_PATH: "/dicomweb", VIEWER: dist });
  assert.ok("viewer" in config, "lib/config/config.ts reads VIEWER");
  const { handler } = testHandler({ store, config, capabilities: { reEncode: false } });
  const get = (path: string, headers: HeadersInit = {}) =>
    handler(new Request(`http://127.0.0.1:8080${path}`, { headers }));

  const redirect = await get("/dicomweb/viewer");
  assert.equal(redirect.status, 301);
  assert.equal(redirect.headers.get("location"), "/dicomweb/viewer/");

  const index = await get("/dicomweb/viewer/");
  assert.equal(index.status, 200);
  assert.match(index.headers.get("content-type")!, /^text\/html/);
  const html = await index.text();
  assert.match(html, /window\.PUBLIC_URL="\/dicomweb\/viewer\/"/);
  assert.match(html, /src="\/dicomweb\/viewer\/app-config\.js"/);
  assert.match(html, /content="\/dicomweb\/viewer\/assets\/tile\.png"/);
  assert.doesNotMatch(html, /(src|href|content)="\/(?!dicomweb\/viewer\/)/, "no reference left at the root");

  const route = await get("/dicomweb/viewer/viewer?StudyInstanceUIDs=1.2.3");
  assert.equal(route.status, 200, "app routes get index.html");
  assert.match(await route.text(), /<div id="root">/);

  const appConfig = await get("/dicomweb/viewer/app-config.js");
  assert.equal(appConfig.headers.get("cache-control"), "no-store");
  const js = await appConfig.text();
  assert.doesNotMatch(js, /stale/, "app-config.js is generated, not the file");
  assert.match(js, /"routerBasename": "\/dicomweb\/viewer"/);
  assert.match(js, /"qidoRoot": "http:\/\/127\.0\.0\.1:8080\/dicomweb\/aets\/OHIF"/);
  assert.match(js, /"qidoRoot": "http:\/\/127\.0\.0\.1:8080\/dicomweb\/aets\/OTHER"/);

  const bundle = await get("/dicomweb/viewer/app.bundle.0123456789abcdef.js");
  assert.match(bundle.headers.get("content-type")!, /^text\/javascript/);
  const etag = bundle.headers.get("etag")!;
  assert.equal(
    await bundle.text(),
    'console.log("a");\n__webpack_require__.p = "/dicomweb/viewer/";\nconsole.log("/keep");',
    "webpack's public path moved, other strings untouched",
  );
  const again = await get("/dicomweb/viewer/app.bundle.0123456789abcdef.js", { "if-none-match": etag });
  assert.equal(again.status, 304);
  await again.body?.cancel();
  // a browser gets the gzipped copy with a weak ETag, and its revalidation is still a 304
  const browser = { "accept-encoding": "gzip, deflate, br, zstd" };
  const zipped = await get("/dicomweb/viewer/vendor.bundle.js", browser);
  assert.equal(zipped.headers.get("content-encoding"), "gzip");
  const weak = zipped.headers.get("etag")!;
  assert.match(weak, /^W\/"/);
  await zipped.body?.cancel();
  const revalidated = await get("/dicomweb/viewer/vendor.bundle.js", { ...browser, "if-none-match": weak });
  assert.equal(revalidated.status, 304);
  await revalidated.body?.cancel();
  assert.equal(
    await (await get("/dicomweb/viewer/app.bundle.css")).text(),
    "@font-face{src:url(/dicomweb/viewer/abcdef.woff2)}",
  );
  assert.match(
    await (await get("/dicomweb/viewer/manifest.json")).text(),
    /"src": "\/dicomweb\/viewer\/assets\/icon\.png"/,
  );

  const wasm = await get("/dicomweb/viewer/codec.wasm");
  assert.equal(wasm.headers.get("content-type"), "application/wasm");
  assert.equal(wasm.headers.get("content-length"), "8");
  assert.equal((await wasm.arrayBuffer()).byteLength, 8);

  // Nothing outside the dist folder: "%2e%2e" segments are resolved by URL parsing, "%2F" ones are refused.
  for (
    const bad of [
      "/dicomweb/viewer/%2e%2e/%2e%2e/deno.json",
      "/dicomweb/viewer/..%2F..%2Fdeno.json",
      "/dicomweb/viewer/.x",
    ]
  ) {
    const response = await get(bad);
    await response.body?.cancel();
    assert.ok([400, 404].includes(response.status), `${bad}: ${response.status}`);
  }
  const absent = await get("/dicomweb/viewer/nope.js");
  await absent.body?.cancel();
  assert.equal(absent.status, 404);

  // Behind a proxy that maps https://pacs.example.org/dicom/ to this server's root: URLs as the browser sees them.
  const { handler: proxied } = testHandler({
    store,
    config: { AETS: AET, VIEWER: dist, PUBLIC_URL: "https://pacs.example.org/dicom" },
    capabilities: { reEncode: false },
  });
  const proxiedHtml = await (await proxied(new Request("http://127.0.0.1:8080/viewer/"))).text();
  assert.match(proxiedHtml, /src="\/dicom\/viewer\/app-config\.js"/);
  const proxiedConfig = await (await proxied(new Request("http://127.0.0.1:8080/viewer/app-config.js")))
    .text();
  assert.match(proxiedConfig, /"routerBasename": "\/dicom\/viewer"/);
  assert.match(proxiedConfig, /"qidoRoot": "https:\/\/pacs\.example\.org\/dicom\/aets\/OHIF"/);
  await Deno.remove(dist.slice(0, -"/dist".length), { recursive: true });

  const { handler: notInstalled } = testHandler({
    store,
    config: { AETS: AET, VIEWER: "/nonexistent/dist" },
    aets: new AetRegistry(store),
    capabilities: { reEncode: false },
  });
  const missingOhif = await notInstalled(new Request("http://localhost/viewer/"));
  assert.equal(missingOhif.status, 503);
  assert.match(await missingOhif.text(), /deno task viewer:install/);
  await Deno.remove(data, { recursive: true });
});

// --- the browser test -----------------------------------------------------------------------------

interface LoggedRequest {
  method: string;
  path: string;
  status: number;
  origin: string | null;
  authorization: string | null;
  requestHeaders: string | null;
  accept: string | null;
  contentType: string | null;
}

/** The DICOMweb server (with VIEWER on and its catalog crawled), recording every request it answers. */
async function serveDicomweb(store: S3Store, bucket: string, other: string, thumbs: string) {
  const config = parseConfig({
    PORT: "0",
    AETS: `${AET}=${bucket},${OTHER_AET}=${other},${THUMBS.aet}=${thumbs}`,
    VIEWER: OHIF_DIST_DIR.pathname,
  });
  const catalog = await memoryCatalog({ bulkDataThreshold: config.bulkDataThreshold });
  const app = testHandler({ store, config, capabilities: { reEncode: true }, catalog });
  const { handler, logs } = app;
  const crawler = app.services.crawler!;
  await crawler.crawlAll({ waitForInstances: true }); // as the server does at start
  const requests: LoggedRequest[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    const response = await handler(request);
    const url = new URL(request.url);
    requests.push({
      method: request.method,
      path: url.pathname + url.search,
      status: response.status,
      origin: request.headers.get("origin"),
      authorization: request.headers.get("authorization"),
      requestHeaders: request.headers.get("access-control-request-headers"),
      accept: request.headers.get("accept"),
      contentType: response.headers.get("content-type"),
    });
    return response;
  });
  return {
    url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`,
    requests,
    logs,
    async close() {
      await server.shutdown();
      await crawler.stop();
      await catalog.close();
    },
  };
}

/**
 * OHIF alone at the root of another origin, configured for the DICOMweb server at `dicomweb` (its AET
 * `aet`, default {@linkcode AET}).
 */
function serveOhifElsewhere(
  dicomweb: string,
  options: { aet?: string; thumbnailRendering?: ThumbnailRendering } = {},
) {
  const aet = options.aet ?? AET;
  const dist = OHIF_DIST_DIR.pathname.replace(/\/+$/, "");
  const cut = dist.lastIndexOf("/");
  const serve = viewerHandler({
    files: new FileStore(dist.slice(0, cut)),
    bucket: dist.slice(cut + 1),
    publicPath: "/",
    appConfig: () =>
      ohifAppConfig([{ name: aet, root: `${dicomweb}/aets/${aet}` }], {
        routerBasename: "/",
        thumbnailRendering: options.thumbnailRendering,
      }),
  });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    try {
      return await serve(request, decodeURIComponent(new URL(request.url).pathname.slice(1)));
    } catch (error) {
      return errorResponse(toHttpError(error));
    }
  });
  return { url: `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}`, server };
}

/** No investigational-use banner, no onboarding tour: they would cover the images. */
const QUIET_OHIF = `
  sessionStorage.setItem("investigationalUseDialog", "hidden");
  localStorage.setItem("shownTours", JSON.stringify(["basicViewerTour"]));
  // In-flight XHR/fetch count, to wait until OHIF has no request left before leaving a page.
  window.__e2eInflight = 0;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function (...args) {
    window.__e2eInflight++;
    this.addEventListener("loadend", () => window.__e2eInflight--, { once: true });
    return send.apply(this, args);
  };
  const originalFetch = window.fetch;
  window.fetch = function (...args) {
    window.__e2eInflight++;
    return originalFetch.apply(this, args).finally(() => window.__e2eInflight--);
  };
`;

const DATA_ROWS = "table tbody tr:not([data-filter-row])";

const STUDY_ROWS = `() => [...document.querySelectorAll(${JSON.stringify(DATA_ROWS)})]
  .map((tr) => [...tr.querySelectorAll("td")].map((td) => td.innerText.trim()))
  .filter((cells) => cells.length >= 3)`;

/** Resolves with pixel statistics once the first viewport canvas shows a non-blank image. */
const IMAGE_SHOWN = `() => {
  const canvas = document.querySelector("canvas.cornerstone-canvas");
  if (!canvas || canvas.width === 0 || canvas.height === 0) return false;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  if (!context) return false;
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] || data[i + 1] || data[i + 2]) {
      lit++;
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
  }
  const total = canvas.width * canvas.height;
  return lit > total * 0.01 && colours.size >= 4 ? { lit, total, colours: colours.size } : false;
}`;

const IDLE = `() => window.__e2eInflight === 0`;

/** What the study browser's thumbnails show: each one's series number, its <img> and that image's pixels. */
interface ThumbnailShown {
  series: string | undefined;
  /** The <img> src's scheme: "blob" for a fetched image, "data" for one OHIF drew from decoded pixels. */
  scheme: string;
  width: number;
  height: number;
  lit: number;
  total: number;
  colours: number;
}

/**
 * The study browser's thumbnails once there are `n` and each has an <img> that loaded (naturalWidth > 0),
 * with pixel statistics of that image; false until then (a thumbnail without image keeps it false).
 */
const THUMBNAILS_SHOWN = `(n) => {
  const thumbnails = [...document.querySelectorAll('[data-cy^="study-browser-thumbnail"]')];
  if (thumbnails.length < n) return false;
  const shown = [];
  for (const thumbnail of thumbnails) {
    const img = thumbnail.querySelector("img");
    if (!img || !img.complete || img.naturalWidth === 0) return false;
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) {
      if (data[i] || data[i + 1] || data[i + 2]) lit++;
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
    shown.push({
      series: thumbnail.dataset.series,
      scheme: img.src.slice(0, img.src.indexOf(":")),
      width: img.naturalWidth,
      height: img.naturalHeight,
      lit,
      total: canvas.width * canvas.height,
      colours: colours.size,
    });
  }
  return shown;
}`;

/** The study browser's thumbnails as they are, for messages. */
const THUMBNAIL_STATE = `() => [...document.querySelectorAll('[data-cy^="study-browser-thumbnail"]')]
  .map((t) => {
    const img = t.querySelector("img");
    return { kind: t.dataset.cy, series: t.dataset.series, src: img ? img.src.slice(0, 40) : null,
      complete: img?.complete ?? null, naturalWidth: img?.naturalWidth ?? null };
  })`;

async function waitForThumbnails(page: Page, count: number, what: string): Promise<ThumbnailShown[]> {
  try {
    return await page.waitForFunction<ThumbnailShown[]>(THUMBNAILS_SHOWN, count, {
      timeout: 30_000,
      polling: 250,
    });
  } catch (error) {
    const state = await page.evaluate(THUMBNAIL_STATE).catch((e) => String(e));
    const events = await page.events({ clear: false });
    const bad = events.responses.filter((r) => r.status >= 300).map((r) => `${r.status} ${r.url}`);
    throw new Error(
      `${what}: not ${count} loaded thumbnails within 30 s: ${JSON.stringify(state)} (non-2xx: ${
        JSON.stringify(bad)
      }, failed: ${JSON.stringify(events.failures)}, console errors: ${
        JSON.stringify(events.console.filter((c) => c.type === "error").map((c) => c.text))
      })`,
      { cause: error },
    );
  }
}

function ohifDate(date: string): string {
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  return `${date.slice(6, 8)}-${months[Number(date.slice(4, 6)) - 1]}-${date.slice(0, 4)}`;
}

const letters = (s: string) => s.replace(/[^A-Za-z0-9]/g, "").toLowerCase();

function studyUid(study: (typeof STUDIES)[number]): string {
  return corpus.find((f) => f.name === study.files[0])!.key.split("/")[0];
}

async function rowsOf(page: Page, count: number): Promise<string[][]> {
  await page.waitForFunction(`(n) => (${STUDY_ROWS})().length === n`, count, { timeout: 30_000 })
    .catch(async (error) => {
      const rows = await page.evaluate<string[][]>(STUDY_ROWS);
      throw new Error(`Study list: expected ${count} rows, have ${JSON.stringify(rows)}`, { cause: error });
    });
  return await page.evaluate<string[][]>(STUDY_ROWS);
}

function checkRows(rows: string[][], expected: typeof STUDIES): void {
  for (const study of expected) {
    const row = rows.find((cells) => letters(cells[0]) === letters(study.patient));
    assert.ok(row, `${study.name}: a row for patient ${study.patient} in ${JSON.stringify(rows)}`);
    assert.ok(
      row[1].startsWith(ohifDate(study.date)),
      `${study.name}: date ${row[1]}, want ${ohifDate(study.date)}`,
    );
    assert.equal(row[2], study.modality, `${study.name}: modality column`);
  }
  assert.equal(rows.length, expected.length, `rows: ${JSON.stringify(rows)}`);
}

async function waitForImage(page: Page, what: string): Promise<void> {
  try {
    await page.waitForFunction(IMAGE_SHOWN, null, { timeout: 30_000, polling: 250 });
  } catch (error) {
    const events = await page.events({ clear: false });
    const bad = events.responses.filter((r) => r.status >= 300).map((r) => `${r.status} ${r.url}`);
    throw new Error(
      `${what}: no image on the canvas within 30 s (non-2xx: ${JSON.stringify(bad)}, errors: ${
        JSON.stringify(events.console.filter((c) => c.type === "error").map((c) => c.text))
      })`,
      { cause: error },
    );
  }
  await page.waitForFunction(IDLE, null, { timeout: 30_000 });
}

/** Everything a setup must show: the list, a filter, and every study's first image. */
async function exercise(
  page: Page,
  options: {
    setup: string;
    viewerBase: string;
    dicomweb: string;
    token?: string;
    open: string[];
    /** Step through the stack of these studies, checking every image shows the first one's pixels. */
    stacks?: string[];
  },
): Promise<{ events: PageEvents[]; timings: string }> {
  const { setup, viewerBase } = options;
  const events: PageEvents[] = [];
  const timings: string[] = [];
  let last = performance.now();
  const shot = async (name: string) => {
    await page.screenshot(new URL(`${setup}-${name}.png`, ARTIFACTS).pathname);
    const now = performance.now();
    timings.push(`${name} ${((now - last) / 1000).toFixed(1)}`);
    last = now;
  };

  // The study list: every study, with its patient, date and modality.
  await page.goto(`${viewerBase}/`);
  checkRows(await rowsOf(page, STUDIES.length), STUDIES);
  await page.waitForFunction(IDLE);
  await shot("01-study-list");

  // Filtering by patient name narrows the list (a QIDO query with PatientName).
  await page.fill(`table tbody tr[data-filter-row] td:nth-child(1) input`, FILTER.text);
  checkRows(await rowsOf(page, FILTER.leaves.length), STUDIES.filter((s) => FILTER.leaves.includes(s.name)));
  await page.waitForFunction(IDLE);
  await shot("02-filtered");
  events.push(await page.events());

  // Open one study the way a user does: select its row, then "Basic Viewer".
  const first = STUDIES[0];
  await page.click(`${DATA_ROWS} >> text=${first.patient.split("^")[1]}`);
  await page.click(`button:has-text("Basic Viewer")`);
  await page.waitForFunction(`() => location.pathname.endsWith("/viewer")`);
  await waitForImage(page, `${setup}: ${first.name} opened from the list`);
  await shot(`03-opened-${first.name}`);
  events.push(await page.events());

  // Studies by their URL, as links from other systems open them.
  for (const [i, study] of STUDIES.filter((s) => options.open.includes(s.name)).entries()) {
    const token = options.token ? `&token=${options.token}` : "";
    await page.goto(`${viewerBase}/viewer?StudyInstanceUIDs=${studyUid(study)}${token}`);
    await waitForImage(page, `${setup}: ${study.name}`);
    await shot(`${String(i + 4).padStart(2, "0")}-${study.name}`);
    if (options.stacks?.includes(study.name)) {
      await checkStack(page, study.files.length, `${setup}: ${study.name}`);
      await shot(`${String(i + 4).padStart(2, "0")}-${study.name}-stack`);
    }
    events.push(await page.events());
  }
  return { events, timings: timings.join(", ") };
}

function checkEvents(
  events: PageEvents[],
  dicomweb: string,
  setup: string,
  expectedKinds = ["studies", "series", "metadata", "frames"],
): number {
  const ours = (url: string) => url.startsWith(`${dicomweb}/aets/`);
  const responses = events.flatMap((e) => e.responses).filter((r) => ours(r.url));
  const bad = responses.filter((r) => r.status < 200 || r.status > 299);
  assert.deepEqual(
    bad.map((r) => `${r.status} ${r.method} ${r.url}`),
    [],
    `${setup}: every DICOMweb request got a 2xx`,
  );
  const failures = events.flatMap((e) => e.failures).filter((f) => ours(f.url));
  assert.deepEqual(failures, [], `${setup}: no DICOMweb request failed`);
  const errors = events.flatMap((e) => e.console).filter((c) => c.type === "error");
  assert.deepEqual(errors, [], `${setup}: no console errors`);
  assert.deepEqual(events.flatMap((e) => e.errors), [], `${setup}: no uncaught exceptions`);
  const kinds = new Set(
    responses.map((r) =>
      new URL(r.url).pathname.replace(/.*\/(studies|series|metadata|frames)(\/.*)?$/, "$1")
    ),
  );
  for (const kind of expectedKinds) {
    assert.ok(kinds.has(kind), `${setup}: OHIF made ${kind} requests (made: ${[...kinds].join(", ")})`);
  }
  return responses.length;
}

/**
 * OHIF (cross-origin, with a token) configured with `thumbnailRendering: mode` opens the {@linkcode THUMBS}
 * study: every series' thumbnail is an image OHIF fetched from this server's `/{mode}` route (200, JPEG or
 * PNG), loaded and not blank, of the size the server renders that series at. Returns a timing line.
 */
async function checkThumbnailMode(
  browser: Browser,
  dicomweb: Awaited<ReturnType<typeof serveDicomweb>>,
  mode: "rendered" | "thumbnail",
): Promise<string> {
  const t0 = performance.now();
  const setup = `thumbnailRendering "${mode}"`;
  const viewer = serveOhifElsewhere(dicomweb.url, { aet: THUMBS.aet, thumbnailRendering: mode });
  const before = dicomweb.requests.length;
  const page = await browser.newPage();
  let shown: ThumbnailShown[];
  const events: PageEvents[] = [];
  try {
    await page.addInitScript(QUIET_OHIF);
    await page.goto(`${viewer.url}/viewer?StudyInstanceUIDs=${THUMBS.study}&token=${TOKEN}`);
    await waitForImage(page, `${setup}: the first series in the viewport`);
    shown = await waitForThumbnails(page, THUMBS.series.length, setup);
    await page.waitForFunction(IDLE, null, { timeout: 30_000 });
    await page.screenshot(new URL(`thumbnails-${mode}.png`, ARTIFACTS).pathname);
    events.push(await page.events());
  } finally {
    await page.close();
    await viewer.server.shutdown();
  }

  // The browser's side: one loaded, non-blank, fetched thumbnail per series, of that series' rendered size.
  assert.deepEqual(
    shown.map((s) => s.series).sort(),
    THUMBS.series.map((s) => String(s.number)),
    `${setup}: one thumbnail per series (${JSON.stringify(shown)})`,
  );
  for (const series of THUMBS.series) {
    const thumbnail = shown.find((s) => s.series === String(series.number))!;
    const what = `${setup}: thumbnail of series ${series.number} (${JSON.stringify(thumbnail)})`;
    assert.equal(thumbnail.scheme, "blob", `${what}: an image OHIF fetched, not one it drew itself`);
    // /rendered without a viewport is the image's own size; /thumbnail fits it into 256×256.
    const size = mode === "rendered"
      ? { width: series.columns, height: series.rows }
      : fitViewport(series.columns, series.rows, 256, 256);
    assert.deepEqual({ width: thumbnail.width, height: thumbnail.height }, size, `${what}: size`);
    assert.ok(thumbnail.lit > thumbnail.total * 0.05 && thumbnail.colours >= 4, `${what}: not blank`);
  }

  // The requests: /{mode} of an instance (or the series) of every series, answered 200 with an image.
  const count = checkEvents(events, dicomweb.url, setup, ["series", "metadata", "frames"]);
  const imagePath = new RegExp(
    `^/aets/${THUMBS.aet}/studies/${THUMBS.study.replaceAll(".", "\\.")}/series/([0-9.]+)` +
      `(?:/instances/[0-9.]+)?/(rendered|thumbnail)$`,
  );
  const images = events[0].responses.flatMap((r) => {
    const url = new URL(r.url);
    const match = url.origin === dicomweb.url ? url.pathname.match(imagePath) : null;
    return match ? [{ ...r, series: match[1], kind: match[2] }] : [];
  });
  assert.deepEqual(
    images.filter((r) => r.kind !== mode).map((r) => r.url),
    [],
    `${setup}: no request to the other route`,
  );
  for (const series of THUMBS.series) {
    const mine = images.filter((r) => r.series === seriesUid(series));
    assert.ok(
      mine.length >= 1,
      `${setup}: a /${mode} request for series ${series.number}: ${JSON.stringify(images)}`,
    );
    for (const r of mine) {
      assert.equal(r.status, 200, `${setup}: ${r.url}`);
      assert.match(r.contentType, /^image\/(jpeg|png)\b/, `${setup}: ${r.url}`);
    }
  }
  // The server's side: the same requests, answered 200 with an image; nothing it answered failed.
  const served = dicomweb.requests.slice(before);
  const servedImages = served.filter((r) => r.method === "GET" && imagePath.test(r.path.split("?")[0]));
  assert.ok(
    servedImages.length >= THUMBS.series.length,
    `${setup}: the server answered a /${mode} request per series: ${JSON.stringify(servedImages)}`,
  );
  for (const r of servedImages) {
    assert.equal(r.status, 200, `${setup}: served ${r.path}`);
    assert.match(r.contentType ?? "", /^image\/(jpeg|png)\b/, `${setup}: served ${r.path}`);
    assert.equal(r.authorization, `Bearer ${TOKEN}`, `${setup}: ${r.path} carried the Authorization header`);
  }
  assert.deepEqual(
    served.filter((r) => r.status >= 400).map((r) => `${r.status} ${r.method} ${r.path}`),
    [],
    `${setup}: nothing the server answered failed`,
  );
  return `${mode} ${
    ((performance.now() - t0) / 1000).toFixed(1)
  } s (${images.length} /${mode}, ${count} responses)`;
}

/** The first viewport's canvas once it has stopped changing: its size and an FNV-1a hash of its pixels. */
const CANVAS_PIXELS = `async () => {
  const read = () => {
    const canvas = document.querySelector("canvas.cornerstone-canvas");
    const context = canvas.getContext("2d", { willReadFrequently: true });
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let hash = 0x811c9dc5;
    let lit = 0;
    for (let i = 0; i < data.length; i++) {
      hash = Math.imul(hash ^ data[i], 0x01000193) >>> 0;
      if (i % 4 === 0 && (data[i] || data[i + 1] || data[i + 2])) lit++;
    }
    return { width: canvas.width, height: canvas.height, hash, lit };
  };
  let last = read();
  for (let i = 0; i < 40; i++) {
    await new Promise((resolve) => setTimeout(resolve, 250));
    const now = read();
    if (now.hash === last.hash) return now;
    last = now;
  }
  return last;
}`;

interface CanvasPixels {
  width: number;
  height: number;
  hash: number;
  lit: number;
}

/** Whether the viewport's overlay shows image `n` of `count` ("I: 1 (n/count)", bottom right). */
const STACK_POSITION = `([n, count]) => [...document.querySelectorAll("body *")]
  .some((e) => e.textContent.length < 40 && e.textContent.trim().endsWith("(" + n + "/" + count + ")"))`;

/**
 * With a study of one series of `count` instances of one image open, steps through the stack (OHIF's "down"
 * hotkey) and checks that every instance shows the very pixels the first one does. Returns the canvases.
 */
async function checkStack(page: Page, count: number, what: string): Promise<CanvasPixels[]> {
  const shown: CanvasPixels[] = [];
  for (let n = 1; n <= count; n++) {
    if (n > 1) await page.press("canvas.cornerstone-canvas", "ArrowDown");
    await page.waitForFunction(STACK_POSITION, [n, count], { timeout: 30_000 }).catch((error) => {
      throw new Error(`${what}: the viewport never showed image ${n}/${count}`, { cause: error });
    });
    await page.waitForFunction(IMAGE_SHOWN, null, { timeout: 30_000, polling: 250 });
    await page.waitForFunction(IDLE, null, { timeout: 30_000 }); // its frame is in, then the canvas settles
    shown.push(await page.evaluate<CanvasPixels>(CANVAS_PIXELS));
  }
  assert.ok(
    shown[0].lit > shown[0].width * shown[0].height * 0.05,
    `${what}: an image is shown: ${JSON.stringify(shown[0])}`,
  );
  for (const [i, canvas] of shown.entries()) {
    assert.deepEqual(
      canvas,
      shown[0],
      `${what}: image ${i + 1}/${count} shows image 1's pixels (${JSON.stringify(shown)})`,
    );
  }
  return shown;
}

/**
 * OHIF's frame requests in `requests` (what the server answered): every one 200, with an Accept of
 * {@linkcode OHIF_FRAME_ACCEPTS}, and one for the big endian instance.
 */
function checkFrameRequests(requests: LoggedRequest[], setup: string): void {
  const frames = requests.filter((r) => r.method === "GET" && /\/frames\/\d/.test(r.path));
  for (const r of frames) {
    assert.equal(r.status, 200, `${setup}: ${r.path}`);
    assert.ok(
      OHIF_FRAME_ACCEPTS.includes(r.accept ?? ""),
      `${setup}: OHIF's frame Accept ${JSON.stringify(r.accept)} is one tests/_ohif_requests.ts lists`,
    );
  }
  const bigEndian = corpus.find((f) => f.name === "MR_small_bigendian.dcm")!.key.split("/")[2].slice(0, -4);
  assert.ok(
    frames.some((r) => r.path.includes(`/instances/${bigEndian}/frames/`)),
    `${setup}: OHIF asked for the big endian instance's frames`,
  );
}

Deno.test({
  name: "OHIF Viewer lists, filters and opens studies from S3, cross-origin and same-origin; thumbnails",
  ignore: missing !== undefined,
  sanitizeResources: false, // s3rver's and the browser driver's pipes close asynchronously
  sanitizeOps: false,
  async fn(t) {
    if (missing) throw new Error(`Cannot run the OHIF end-to-end test: ${missing}`);
    const started = performance.now();
    await Deno.remove(ARTIFACTS, { recursive: true }).catch(() => {}); // this run's screenshots only
    await Deno.mkdir(ARTIFACTS, { recursive: true });
    const s3 = await startS3();
    let dicomweb: Awaited<ReturnType<typeof serveDicomweb>> | undefined;
    let elsewhere: ReturnType<typeof serveOhifElsewhere> | undefined;
    let browser: Awaited<ReturnType<typeof launchBrowser>> | undefined;
    const store = new S3Store({
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    });
    try {
      const bucket = s3.uniqueBucket("ohif");
      await s3.createBucket(bucket);
      for (const study of STUDIES) {
        for (const name of study.files) {
          const file = corpus.find((f) => f.name === name)!;
          await store.put(bucket, file.key, file.bytes, { size: file.bytes.length });
        }
      }
      const other = s3.uniqueBucket("ohif-other");
      await s3.createBucket(other);
      for (const name of STUDIES[0].files) {
        const file = corpus.find((f) => f.name === name)!;
        await store.put(other, file.key, file.bytes, { size: file.bytes.length });
      }
      const thumbs = s3.uniqueBucket("ohif-thumbs");
      await s3.createBucket(thumbs);
      for (const series of THUMBS.series) {
        for (let i = 1; i <= series.instances; i++) {
          const { key, bytes } = thumbsInstance(series, i);
          await store.put(thumbs, key, bytes, { size: bytes.length });
        }
      }
      dicomweb = await serveDicomweb(store, bucket, other, thumbs);
      elsewhere = serveOhifElsewhere(dicomweb.url);
      browser = await launchBrowser();
      const timings: string[] = [`setup ${((performance.now() - started) / 1000).toFixed(1)} s`];

      await t.step("cross-origin: OHIF on another port, with an Authorization header", async () => {
        const t0 = performance.now();
        const page = await browser!.newPage();
        await page.addInitScript(QUIET_OHIF);
        const { events, timings: steps } = await exercise(page, {
          setup: "cross-origin",
          viewerBase: elsewhere!.url,
          dicomweb: dicomweb!.url,
          token: TOKEN,
          open: STUDIES.slice(1).map((s) => s.name), // the first one is opened from the list
          stacks: ["mr"],
        });
        await page.close();
        const count = checkEvents(events, dicomweb!.url, "cross-origin");
        const requests = dicomweb!.requests.filter((r) => r.origin === elsewhere!.url);
        checkFrameRequests(requests, "cross-origin");
        const preflights = requests.filter((r) => r.method === "OPTIONS");
        assert.ok(preflights.length > 0, "the browser sent CORS preflights");
        for (const p of preflights) {
          assert.equal(p.status, 204, `preflight ${p.path}`);
        }
        assert.ok(
          preflights.some((p) => /authorization/i.test(p.requestHeaders ?? "")),
          `a preflight asked for Authorization: ${JSON.stringify(preflights.map((p) => p.requestHeaders))}`,
        );
        assert.ok(
          preflights.some((p) => /accept/i.test(p.requestHeaders ?? "")),
          "a preflight asked for Accept (frames' Accept has quotes, so it is not CORS-safelisted)",
        );
        assert.ok(
          requests.some((r) => r.method === "GET" && r.authorization === `Bearer ${TOKEN}`),
          "DICOMweb GETs carried the Authorization header",
        );
        timings.push(
          `cross-origin ${
            ((performance.now() - t0) / 1000).toFixed(1)
          } s (${steps}), ${count} DICOMweb responses`,
        );
      });

      await t.step("same-origin: OHIF at /viewer/ of this server", async () => {
        const t0 = performance.now();
        const before = dicomweb!.requests.length;
        const page = await browser!.newPage();
        await page.addInitScript(QUIET_OHIF);
        const { events, timings: steps } = await exercise(page, {
          setup: "same-origin",
          viewerBase: `${dicomweb!.url}/viewer`,
          dicomweb: dicomweb!.url,
          // The same server code answers both setups: here a few studies suffice (the 3-minute budget).
          open: ["mr", "jpeg-rgb", "multiframe"],
        });
        // One data source per AET: ?datasources= picks the other bucket.
        await page.goto(`${dicomweb!.url}/viewer/?datasources=${OTHER_AET}`);
        checkRows(await rowsOf(page, 1), [STUDIES[0]]);
        await page.waitForFunction(IDLE);
        await page.screenshot(
          new URL(`same-origin-${OTHER_AET.toLowerCase()}-study-list.png`, ARTIFACTS).pathname,
        );
        events.push(await page.events());
        await page.close();
        assert.ok(
          events.at(-1)!.responses.some((r) =>
            r.url.startsWith(`${dicomweb!.url}/aets/${OTHER_AET}/studies?`)
          ),
          `the study list of ${OTHER_AET} came from /aets/${OTHER_AET}`,
        );
        const count = checkEvents(events, dicomweb!.url, "same-origin");
        const requests = dicomweb!.requests.slice(before);
        assert.ok(
          requests.some((r) => r.path.startsWith("/viewer/app-config.js")),
          "OHIF came from /viewer/",
        );
        assert.deepEqual(requests.filter((r) => r.method === "OPTIONS"), [], "same origin: no preflight");
        const bad = requests.filter((r) => r.status >= 400);
        assert.deepEqual(bad.map((r) => `${r.status} ${r.path}`), [], "nothing of /viewer/ or /aets/ failed");
        timings.push(
          `same-origin ${
            ((performance.now() - t0) / 1000).toFixed(1)
          } s (${steps}), ${count} DICOMweb responses`,
        );
      });
      for (const mode of ["rendered", "thumbnail"] as const) {
        await t.step(`thumbnailRendering "${mode}": a thumbnail per series, from /${mode}`, async () => {
          timings.push(await checkThumbnailMode(browser!, dicomweb!, mode));
        });
      }
      assert.deepEqual(
        dicomweb.logs.filter((line) => line.startsWith("error ")),
        [],
        "no server errors logged",
      );
      const total = (performance.now() - started) / 1000;
      console.log(
        `OHIF ${OHIF_VERSION}, Chromium ${browser.version}: ${timings.join("; ")}; total ${
          total.toFixed(1)
        } s`,
      );
      console.log(`Screenshots: ${ARTIFACTS.pathname}`);
      assert.ok(total < 180, `the whole OHIF test took ${total.toFixed(0)} s: keep it under 3 minutes`);
    } finally {
      await browser?.close();
      await elsewhere?.server.shutdown();
      await dicomweb?.close();
      await store.close?.();
      await s3.stop();
    }
  },
});
