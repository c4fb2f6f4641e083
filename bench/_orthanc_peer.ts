/**
 * Debian's Orthanc with its DICOMweb plugin as the local-folder peer of `deno task bench`: started on a free
 * port with its storage in a temporary folder (uncompressed, as this server keeps files), the bench series
 * stored into it, its process id kept for CPU and memory figures.
 *
 * @module
 */

import { ORTHANC, orthancMissing } from "../tests/_orthanc.ts";

/** A running Orthanc peer. */
export interface OrthancPeer {
  /** Its HTTP root, e.g. `http://127.0.0.1:40123`. */
  url: string;
  pid: number;
  version: string;
  stop(): Promise<void>;
}

/** Why Orthanc cannot be the peer here (with what to install), or `undefined`. */
export { orthancMissing };

/** Starts Orthanc and stores `files` (Part 10 paths) into it, 4 uploads at once. */
export async function startOrthancPeer(files: string[]): Promise<OrthancPeer> {
  const plugin = [
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
  ];
  let pluginPath: string | undefined;
  for (const p of plugin) {
    try {
      await Deno.stat(p);
      pluginPath = p;
      break;
    } catch { /* next */ }
  }
  const versionOut = await new Deno.Command(ORTHANC, { args: ["--version"], stdout: "piped", stderr: "null" })
    .output();
  const version = new TextDecoder().decode(versionOut.stdout).split("\n")[0].trim();
  const dir = await Deno.makeTempDir({ prefix: "bench-orthanc-" });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await Deno.writeTextFile(
    `${dir}/orthanc.json`,
    JSON.stringify({
      Name: "bench-peer",
      StorageDirectory: `${dir}/storage`,
      IndexDirectory: `${dir}/index`,
      StorageCompression: false,
      HttpPort: port,
      RemoteAccessAllowed: false,
      AuthenticationEnabled: false,
      DicomServerEnabled: false,
      KeepAlive: true,
      TcpNoDelay: true,
      SaveJobs: false,
      StableAge: 3600,
      Plugins: pluginPath ? [pluginPath] : [],
      DicomWeb: { Enable: true, Root: "/dicom-web/", EnableWado: false },
    }),
  );
  const child = new Deno.Command(ORTHANC, {
    args: [`${dir}/orthanc.json`],
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* gone */ }
    await child.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    for (let i = 0;; i++) {
      try {
        const r = await fetch(`${url}/system`);
        await r.body?.cancel();
        if (r.ok) break;
      } catch { /* not up yet */ }
      if (i > 300) throw new Error(`Orthanc did not answer on ${url} within 30 s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    let next = 0;
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (next < files.length) {
        const bytes = await Deno.readFile(files[next++]);
        const r = await fetch(`${url}/instances`, {
          method: "POST",
          headers: { "content-type": "application/dicom" },
          body: bytes,
        });
        if (!r.ok) throw new Error(`Orthanc refused an instance: ${r.status} ${await r.text()}`);
        await r.body?.cancel();
      }
    }));
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, pid: child.pid, version, stop };
}
