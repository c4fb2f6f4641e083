/**
 * DIMSE test fixtures: this server's DIMSE service over a store and an in-memory catalog (assembled as main.ts
 * would), dcmtk's command-line tools run as peers, a dcmtk `storescp` as a C-MOVE destination, and Debian's
 * Orthanc with its DICOM port on.
 *
 * @module
 */

import { assembleServices } from "../lib/app/open.ts";
import { parseConfig } from "../lib/config/config.ts";
import { completeServices, type Services } from "../lib/dicomweb/services.ts";
import { type DimseSettings, parseDimseSettings } from "../lib/dimse/dimse_settings.ts";
import { type DimseServer, startDimse } from "../lib/dimse/server.ts";
import { FileStore } from "../lib/store/file_store.ts";
import type { ObjectStore } from "../lib/store/store.ts";
import { memoryCatalog } from "./_server.ts";

/** The dcmtk tools the tests run. */
export const DCMTK_TOOLS = ["echoscu", "storescu", "findscu", "movescu", "getscu", "storescp"];

/** Why dcmtk cannot run here (naming the package), or undefined. */
export async function dcmtkMissing(): Promise<string | undefined> {
  for (const tool of DCMTK_TOOLS) {
    try {
      await new Deno.Command(tool, { args: ["--version"], stdout: "null", stderr: "null" }).output();
    } catch {
      return `${tool} is missing (apt-get install -y dcmtk)`;
    }
  }
  return undefined;
}

/** A DIMSE server for a test, with what it was built from. */
export interface TestDimse {
  /** The DICOM port. */
  port: number;
  /** The services (store, catalog, crawler). */
  services: Services;
  /** The store (a folder). */
  store: ObjectStore;
  /** The folder of the store (each AET a sub-folder). */
  root: string;
  /** The settings in effect. */
  settings: DimseSettings;
  /** The DIMSE server. */
  dimse: DimseServer;
  /** Log lines. */
  logs: string[];
  /** Stops everything and removes the folder. */
  close(): Promise<void>;
}

/** Options of {@linkcode startTestDimse}. */
export interface TestDimseOptions {
  /** AETs (one folder each; default `PACS`). */
  aets?: string[];
  /** Server settings (`parseConfig` names, e.g. `AUTH_GRANTS`). */
  config?: Record<string, string>;
  /** DIMSE settings (`DIMSE_PEERS`, ...); `DIMSE_PORT` defaults to 0 (a free port). */
  dimse?: Record<string, string>;
  /** A store to use instead of a new folder (its buckets must exist). */
  store?: ObjectStore;
}

/** Starts the DIMSE service on a free loopback port over a folder store and an in-memory catalog. */
export async function startTestDimse(options: TestDimseOptions = {}): Promise<TestDimse> {
  const aets = options.aets ?? ["PACS"];
  const root = await Deno.makeTempDir({ prefix: "dimse-e2e-" });
  for (const aet of aets) await Deno.mkdir(`${root}/${aet}`);
  const store = options.store ?? new FileStore(root);
  const config = parseConfig({ AETS: aets.join(","), DATA_DIR: root, ...options.config });
  const logs: string[] = [];
  const log = (line: string) => logs.push(line);
  const catalog = await memoryCatalog();
  const services = completeServices(assembleServices(config, store, { catalog, log }), log);
  const problems: string[] = [];
  const settings = parseDimseSettings(
    { DIMSE_PORT: "0", ...options.dimse },
    problems,
    { hostname: "127.0.0.1", tls: config.tls },
  );
  if (!settings || problems.length > 0) throw new Error(`Bad DIMSE settings: ${problems.join("; ")}`);
  const dimse = await startDimse(services, settings, { log });
  return {
    port: dimse.port,
    services,
    store,
    root,
    settings,
    dimse,
    logs,
    async close() {
      await dimse.close();
      await services.crawler?.stop();
      await catalog.close();
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

/** What a command printed and how it ended. */
export interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout and stderr together, for assertion messages. */
  output: string;
}

/** Runs a dcmtk tool (or any command) to its end. */
export async function run(command: string, args: string[], options: { cwd?: string } = {}): Promise<Run> {
  const out = await new Deno.Command(command, { args, cwd: options.cwd, stdout: "piped", stderr: "piped" })
    .output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  return { code: out.code, stdout, stderr, output: `${command} ${args.join(" ")}\n${stdout}\n${stderr}` };
}

/** A dcmtk `storescp` writing what it receives into `dir`. */
export interface TestStorescp {
  /** Its port. */
  port: number;
  /** Where it writes (file names: `{SOP Instance UID}.dcm`... as `-uf` makes them). */
  dir: string;
  /** Stops it and removes `dir`. */
  stop(): Promise<void>;
}

/** Starts `storescp` on a free port accepting every transfer syntax it knows (`+xa`), AE title `aet`. */
export async function startStorescp(aet: string, extra: string[] = []): Promise<TestStorescp> {
  const dir = await Deno.makeTempDir({ prefix: "storescp-" });
  const port = freePort();
  const child = new Deno.Command("storescp", {
    args: ["-aet", aet, "-od", dir, "-uf", "+xa", ...extra, String(port)],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const errors = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  const collected: string[] = [];
  (async () => {
    for (;;) {
      const { done, value } = await errors.read();
      if (done) break;
      collected.push(value);
    }
  })();
  for (let i = 0; i < 100; i++) {
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    port,
    dir,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch {
        // gone
      }
      await child.status;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** A TCP port nobody listens on right now. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** The files of a folder, recursively. */
export async function filesIn(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) out.push(...await filesIn(path));
    else if (entry.isFile) out.push(path);
  }
  return out.sort();
}

/** The data set bytes of a Part 10 file (after its File Meta group). */
export function datasetOf(bytes: Uint8Array): Uint8Array {
  if (String.fromCharCode(...bytes.subarray(128, 132)) !== "DICM") return bytes;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 132;
  while (at + 8 <= bytes.length && view.getUint16(at, true) === 0x0002) {
    const vr = String.fromCharCode(bytes[at + 4], bytes[at + 5]);
    const long = ["OB", "OW", "OF", "SQ", "UT", "UN"].includes(vr);
    const length = long ? view.getUint32(at + 8, true) : view.getUint16(at + 6, true);
    at += (long ? 12 : 8) + length;
  }
  return bytes.subarray(at);
}

/** A running Orthanc with its DICOM port on. */
export interface DicomOrthanc {
  /** Its AE title. */
  aet: string;
  /** Its DICOM port. */
  dicomPort: number;
  /** Calls the REST API (JSON in and out). Throws on non-2xx. */
  rest<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  /** Raw bytes of a REST resource. */
  bytes(path: string): Promise<Uint8Array>;
  /** Its last log lines. */
  log(): string;
  /** Stops it and removes its folder. */
  stop(): Promise<void>;
}

/**
 * Starts Debian's Orthanc as a DICOM peer: AE title `aet` on a free DICOM port, `modalities` (name → AE, host,
 * port) as the peers it may query, move from and store to, accepting every peer (so C-MOVE to it works).
 */
export async function startDicomOrthanc(
  aet: string,
  modalities: Record<string, [string, string, number]>,
): Promise<DicomOrthanc> {
  const dir = await Deno.makeTempDir({ prefix: "orthanc-dimse-" });
  const httpPort = freePort();
  const dicomPort = freePort();
  const config = {
    Name: "dimse-e2e",
    StorageDirectory: `${dir}/storage`,
    IndexDirectory: `${dir}/index`,
    StorageCompression: false,
    HttpPort: httpPort,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    DicomServerEnabled: true,
    DicomAet: aet,
    DicomPort: dicomPort,
    DicomCheckCalledAet: true,
    DicomAlwaysAllowStore: true,
    DicomAlwaysAllowFind: true,
    DicomAlwaysAllowMove: true,
    UnknownSopClassAccepted: true,
    DicomModalities: modalities,
    SaveJobs: false,
    StableAge: 3600,
    OverwriteInstances: false,
    Plugins: [],
  };
  await Deno.writeTextFile(`${dir}/orthanc.json`, JSON.stringify(config, null, 2));
  const child = new Deno.Command(Deno.env.get("ORTHANC_PATH") ?? "/usr/sbin/Orthanc", {
    args: [`${dir}/orthanc.json`],
    cwd: dir,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      lines.push(...text.split("\n").filter((l) => l.trim() !== ""));
      if (lines.length > 400) lines.splice(0, lines.length - 400);
    }
  };
  const output = Promise.all([collect(child.stdout), collect(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const url = `http://127.0.0.1:${httpPort}`;
  const log = () => lines.slice(-40).join("\n");
  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch {
        // gone
      }
      await status;
    }
    await output.catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const rest = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const response = await fetch(`${url}${path}`, {
      method,
      headers: body === undefined
        ? {}
        : { "content-type": body instanceof Uint8Array ? "application/dicom" : "application/json" },
      body: body === undefined ? undefined : body instanceof Uint8Array ? body.slice() : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) {
      throw new Error(`Orthanc ${method} ${path}: ${response.status} ${text.slice(0, 1000)}\n${log()}`);
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      return text as T;
    }
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`Orthanc exited at start:\n${log()}`);
    try {
      const response = await fetch(`${url}/system`);
      await response.body?.cancel();
      if (response.ok) break;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`Orthanc did not answer within 30 s:\n${log()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    aet,
    dicomPort,
    rest,
    async bytes(path) {
      const response = await fetch(`${url}${path}`);
      if (!response.ok) throw new Error(`Orthanc GET ${path}: ${response.status} ${await response.text()}`);
      return new Uint8Array(await response.arrayBuffer());
    },
    log,
    stop,
  };
}
