/**
 * Debian's Orthanc with its DICOMweb plugin (packages `orthanc` and `orthanc-dicomweb`) as a DICOMweb client
 * of this server: started on free ports with storage in a temporary folder, no DICOM listener, and the given
 * DICOMweb servers configured.
 *
 * Always stop it in a `finally`:
 * ```ts ignore
 * const orthanc = await startOrthanc({ servers: { us: "http://127.0.0.1:8080/aets/PACS/" } });
 * try { await orthanc.rest("POST", "/dicom-web/servers/us/retrieve", {...}); } finally { await orthanc.stop(); }
 * ```
 *
 * @module
 */

/** Where Debian installs the binary and the plugin. */
export const ORTHANC = Deno.env.get("ORTHANC_PATH") ?? "/usr/sbin/Orthanc";
const PLUGIN_CANDIDATES = [
  "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
  "/usr/lib/orthanc/libOrthancDicomWeb.so",
];

/** A running Orthanc. */
export interface TestOrthanc {
  /** Its REST API, e.g. `http://127.0.0.1:40123`. */
  url: string;
  /** `Orthanc --version`'s first line. */
  version: string;
  /** Calls the REST API; JSON bodies in and out (non-JSON answers come back as text). Throws on non-2xx. */
  rest<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  /** Raw bytes of a REST resource (e.g. `/instances/{id}/file`). */
  bytes(path: string): Promise<Uint8Array>;
  /** The last lines Orthanc logged (for failure messages). */
  log(): string;
  /** Stops Orthanc (SIGTERM, then SIGKILL after 10 s) and removes its folder. */
  stop(): Promise<void>;
}

/** Why Orthanc cannot run here, with what to install; `undefined` when it can. */
export async function orthancMissing(): Promise<string | undefined> {
  const problems: string[] = [];
  if (!await exists(ORTHANC)) problems.push(`${ORTHANC} is missing: apt-get install -y orthanc`);
  if (!await dicomwebPlugin()) {
    problems.push("the Orthanc DICOMweb plugin is missing: apt-get install -y orthanc-dicomweb");
  }
  return problems.length > 0 ? problems.join("; ") : undefined;
}

async function dicomwebPlugin(): Promise<string | undefined> {
  for (const path of PLUGIN_CANDIDATES) if (await exists(path)) return path;
  try {
    for await (const entry of Deno.readDir("/usr/lib/orthanc")) {
      if (entry.name.startsWith("libOrthancDicomWeb.so")) return `/usr/lib/orthanc/${entry.name}`;
    }
  } catch {
    // no such folder
  }
  return undefined;
}

/** Starts Orthanc with `servers` (name → DICOMweb root URL) as its remote DICOMweb servers. */
export async function startOrthanc(options: { servers: Record<string, string> }): Promise<TestOrthanc> {
  const missing = await orthancMissing();
  if (missing) throw new Error(`Cannot start Orthanc: ${missing}`);
  const plugin = (await dicomwebPlugin())!;
  const versionOut = await new Deno.Command(ORTHANC, { args: ["--version"], stdout: "piped", stderr: "null" })
    .output();
  const version = new TextDecoder().decode(versionOut.stdout).split("\n")[0].trim();
  const dir = await Deno.makeTempDir({ prefix: "orthanc-e2e-" });
  const port = freePort();
  const config = {
    Name: "dicomweb-s3-e2e",
    StorageDirectory: `${dir}/storage`,
    IndexDirectory: `${dir}/index`,
    StorageCompression: false,
    HttpPort: port,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    DicomServerEnabled: false,
    DicomPort: freePort(),
    SaveJobs: false,
    HttpTimeout: 60,
    StableAge: 3600,
    OverwriteInstances: false,
    Plugins: [plugin],
    DicomWeb: {
      Enable: true,
      Root: "/dicom-web/",
      EnableWado: false,
      Servers: Object.fromEntries(Object.entries(options.servers).map(([name, url]) => [name, [url]])),
    },
  };
  await Deno.writeTextFile(`${dir}/orthanc.json`, JSON.stringify(config, null, 2));
  const child = new Deno.Command(ORTHANC, {
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
  const url = `http://127.0.0.1:${port}`;
  const log = () => lines.slice(-40).join("\n");

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch {
        // gone
      }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch {
          // gone
        }
      }, 10_000);
      await status;
      clearTimeout(timer);
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

  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exited) throw new Error(`Orthanc exited at start (code ${(await status).code}):\n${log()}`);
      try {
        const response = await fetch(`${url}/system`);
        await response.body?.cancel();
        if (response.ok) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`Orthanc did not answer on ${url} within 30 s:\n${log()}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const plugins = await rest<string[]>("GET", "/plugins");
    if (!plugins.includes("dicom-web")) {
      throw new Error(`Orthanc did not load the DICOMweb plugin (${plugins}):\n${log()}`);
    }
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    url,
    version,
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

/** A TCP port nobody listens on right now. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
