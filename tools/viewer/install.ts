/**
 * Installs the OHIF Viewer that `VIEWER=on` serves at `/viewer/`: the prebuilt `dist/` of the
 * `@ohif/app` npm package at the version and integrity pinned in `./package.json`, unpacked into
 * `./node_modules/@ohif/app`. Idempotent: does nothing when that version is already there.
 *
 * Only the package's own tarball is fetched (`npm pack`, the ordinary npm client): its dependencies
 * are bundled into `dist/` already, so installing them would only cost time and disk.
 *
 * ```sh
 * deno run -P=viewer-install tools/viewer/install.ts   # or: deno task viewer:install
 * ```
 *
 * @module
 */

import pin from "./package.json" with { type: "json" };

/** The package's folder once installed. */
export const OHIF_PACKAGE_DIR = new URL("node_modules/@ohif/app/", import.meta.url);
/** The folder `VIEWER=on` serves. */
export const OHIF_DIST_DIR = new URL("dist/", OHIF_PACKAGE_DIR);
/** The pinned version, e.g. `3.13.2`. */
export const OHIF_VERSION: string = pin.ohif.version;

/** The installed version, or `undefined` when OHIF is not (completely) installed. */
export async function installedOhifVersion(): Promise<string | undefined> {
  try {
    await Deno.stat(new URL("index.html", OHIF_DIST_DIR));
    const meta = JSON.parse(await Deno.readTextFile(new URL("package.json", OHIF_PACKAGE_DIR)));
    return typeof meta.version === "string" ? meta.version : undefined;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/** Makes sure the pinned OHIF is installed; returns the path of its `dist/` folder. */
export async function installOhif(log: (line: string) => void = console.log): Promise<string> {
  const spec = `${pin.ohif.package}@${pin.ohif.version}`;
  if (await installedOhifVersion() === pin.ohif.version) {
    log(`${spec} is installed: ${OHIF_DIST_DIR.pathname}`);
    return OHIF_DIST_DIR.pathname;
  }
  const modules = new URL("node_modules/@ohif/", import.meta.url);
  await Deno.mkdir(modules, { recursive: true });
  // Beside the target, so that the final rename stays on one filesystem.
  const work = await Deno.makeTempDir({ dir: modules.pathname, prefix: ".install-" });
  try {
    log(`Fetching ${spec} from the npm registry (about 50 MB)...`);
    await run("npm", ["pack", spec, "--pack-destination", work, "--silent", "--no-fund", "--no-audit"]);
    const tarball = [...Deno.readDirSync(work)].find((e) => e.name.endsWith(".tgz"));
    if (!tarball) throw new Error(`npm pack ${spec} wrote no .tgz into ${work}`);
    const bytes = await Deno.readFile(`${work}/${tarball.name}`);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-512", bytes));
    const integrity = "sha512-" + btoa(String.fromCharCode(...digest));
    if (integrity !== pin.ohif.integrity) {
      throw new Error(
        `${spec} tarball has integrity ${integrity}, but tools/viewer/package.json pins ${pin.ohif.integrity}`,
      );
    }
    await run("tar", ["-xzf", `${work}/${tarball.name}`, "-C", work]);
    await Deno.stat(`${work}/package/dist/index.html`);
    await Deno.remove(OHIF_PACKAGE_DIR, { recursive: true }).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
    await Deno.rename(`${work}/package`, OHIF_PACKAGE_DIR);
    log(`Installed ${spec}: ${OHIF_DIST_DIR.pathname}`);
    return OHIF_DIST_DIR.pathname;
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

async function run(command: string, args: string[]): Promise<void> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Error(`Cannot run ${command}: it is not on PATH (install Node.js with npm, and tar)`);
    }
    throw error;
  }
  if (!output.success) {
    const text = new TextDecoder().decode(output.stderr).trim() ||
      new TextDecoder().decode(output.stdout).trim();
    throw new Error(`${command} ${args.join(" ")} failed (exit code ${output.code}): ${text}`);
  }
}

if (import.meta.main) {
  try {
    await installOhif();
  } catch (error) {
    console.error(`Cannot install OHIF: ${error instanceof Error ? error.message : String(error)}`);
    Deno.exit(1);
  }
}
