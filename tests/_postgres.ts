/**
 * A throw-away PostgreSQL cluster for tests: Debian's `postgresql` binaries (/usr/lib/postgresql/N/bin) run
 * `initdb` in a temporary folder and `postgres` on a free loopback port, as the `postgres` user when this
 * runs as root (PostgreSQL refuses to run as root), and the folder is removed by `stop()`.
 *
 * ```ts ignore
 * const pg = await startPostgres();
 * try { const url = await pg.createDatabase(); ... } finally { await pg.stop(); }
 * ```
 *
 * `pause()` stops the server and `resume()` starts it again on the same port with the same data (a database
 * outage, for the tests of what the server does meanwhile).
 *
 * @module
 */

import postgres from "postgres";
import { openPostgresCatalog, type PostgresCatalog } from "../lib/catalog/postgres_catalog.ts";

/** A running throw-away cluster. */
export interface TestPostgres {
  /** `postgres://test@127.0.0.1:PORT/postgres` (trust authentication on loopback). */
  url: string;
  /** The TCP port. */
  port: number;
  /** The PostgreSQL major version. */
  version: string;
  /** Creates a new empty database and returns its URL (names are unique per cluster). */
  createDatabase(hint?: string): Promise<string>;
  /** Stops the server, keeping its data (a database outage). */
  pause(): Promise<void>;
  /** Starts it again on the same port. */
  resume(): Promise<void>;
  /** Stops the server and removes its folder. */
  stop(): Promise<void>;
}

/** The folder of the newest installed PostgreSQL binaries, or undefined. */
export async function postgresBin(): Promise<string | undefined> {
  const root = "/usr/lib/postgresql";
  const versions: number[] = [];
  try {
    for await (const entry of Deno.readDir(root)) {
      if (/^\d+$/.test(entry.name)) versions.push(Number(entry.name));
    }
  } catch {
    return undefined;
  }
  for (const version of versions.sort((a, b) => b - a)) {
    const bin = `${root}/${version}/bin`;
    try {
      await Deno.stat(`${bin}/initdb`);
      await Deno.stat(`${bin}/postgres`);
      return bin;
    } catch {
      // an incomplete install: try an older one
    }
  }
  return undefined;
}

/** Why a cluster cannot be started here (naming the package to install), or undefined when it can. */
export async function postgresMissing(): Promise<string | undefined> {
  if (await postgresBin() === undefined) {
    return "PostgreSQL is missing (apt-get install postgresql)";
  }
  if (Deno.uid() === 0 && await run(["id", "-u", "postgres"]).then((r) => !r.success)) {
    return "there is no postgres user to run PostgreSQL as (apt-get install postgresql creates it)";
  }
  return undefined;
}

async function run(args: string[]): Promise<{ success: boolean; text: string }> {
  try {
    const output = await new Deno.Command(args[0], { args: args.slice(1), stdout: "piped", stderr: "piped" })
      .output();
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    return { success: output.success, text: decode(output.stdout) + decode(output.stderr) };
  } catch (error) {
    return { success: false, text: (error as Error).message };
  }
}

/** `args` as the `postgres` user when this process is root, else as this user. */
function asOwner(args: string[]): string[] {
  return Deno.uid() === 0 ? ["runuser", "-u", "postgres", "--", ...args] : args;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Starts a new cluster (initdb in a temporary folder, the server on a free loopback port). */
export async function startPostgres(): Promise<TestPostgres> {
  const missing = await postgresMissing();
  if (missing) throw new Error(`Cannot start PostgreSQL: ${missing}`);
  const bin = (await postgresBin())!;
  const version = bin.split("/").at(-2)!;
  const dir = await Deno.makeTempDir({ prefix: "pg-test-" });
  const data = `${dir}/data`;
  if (Deno.uid() === 0) {
    const chown = await run(["chown", "postgres:postgres", dir]);
    if (!chown.success) throw new Error(`Cannot hand ${dir} to the postgres user: ${chown.text}`);
  }
  const init = await run(asOwner([
    `${bin}/initdb`,
    "-D",
    data,
    "-U",
    "test",
    "-A",
    "trust",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync",
  ]));
  if (!init.success) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw new Error(`initdb failed: ${init.text}`);
  }
  const port = freePort();
  const settings = [
    `-p ${port}`,
    `-k ${dir}`,
    "-c listen_addresses=127.0.0.1",
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=300",
  ].join(" ");
  // pg_ctl starts the server in the background and waits until it accepts connections
  const start = async () => {
    const started = await run(
      asOwner([
        `${bin}/pg_ctl`,
        "-D",
        data,
        "-l",
        `${dir}/server.log`,
        "-w",
        "-t",
        "60",
        "-o",
        settings,
        "start",
      ]),
    );
    if (!started.success) {
      const log = await Deno.readTextFile(`${dir}/server.log`).catch(() => "");
      throw new Error(`PostgreSQL did not start on port ${port}: ${started.text}\n${log}`);
    }
  };
  let running = false;
  const halt = async () => {
    if (!running) return;
    running = false;
    const stopped = await run(asOwner([`${bin}/pg_ctl`, "-D", data, "-m", "fast", "-w", "stop"]));
    if (!stopped.success) throw new Error(`PostgreSQL did not stop: ${stopped.text}`);
  };
  try {
    await start();
    running = true;
  } catch (error) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw error;
  }
  const url = `postgres://test@127.0.0.1:${port}/postgres`;
  let count = 0;
  return {
    url,
    port,
    version,
    async createDatabase(hint = "db") {
      const name = `${hint.replace(/[^a-z0-9_]/g, "_")}_${count++}`;
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`CREATE DATABASE "${name}" TEMPLATE template0`);
      } finally {
        await sql.end({ timeout: 1 });
      }
      return `postgres://test@127.0.0.1:${port}/${name}`;
    },
    pause: halt,
    async resume() {
      await start();
      running = true;
    },
    async stop() {
      await halt();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/**
 * The backend switch of the suites that use a catalog: when `TEST_POSTGRES_URL` names a cluster (the
 * `*_postgres_test.ts` wrappers set it for the suites they run), {@linkcode memoryCatalog} (tests/_server.ts)
 * gives each caller a new PostgreSQL database there instead of an in-memory SQLite catalog.
 */
export const TEST_POSTGRES_URL: string | undefined = Deno.env.get("TEST_POSTGRES_URL");

let databases = 0;

/** A new PostgreSQL catalog in a new database of the cluster at `url` (see {@linkcode TEST_POSTGRES_URL}). */
export async function postgresTestCatalog(
  url: string,
  options: { bulkDataThreshold?: number } = {},
): Promise<PostgresCatalog> {
  const name = `suite_${crypto.randomUUID().slice(0, 8)}_${databases++}`;
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`CREATE DATABASE "${name}" TEMPLATE template0`);
  } finally {
    await admin.end({ timeout: 1 });
  }
  const target = new URL(url);
  target.pathname = `/${name}`;
  // one connection: opened now, before the test that uses it, so the tests' resource checks stay quiet
  return await openPostgresCatalog(target.href, { ...options, poolSize: 1, log: () => {} });
}

/**
 * Runs test files in a child `deno test` with {@linkcode TEST_POSTGRES_URL} set to a new cluster: the same
 * suites, on PostgreSQL. Resolves to the child's output; rejects when it failed.
 */
export async function runOnPostgres(files: string[]): Promise<string> {
  const cluster = await startPostgres();
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-P=test", ...files],
      cwd: new URL("..", import.meta.url).pathname,
      env: { TEST_POSTGRES_URL: cluster.url, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    if (!output.success) throw new Error(`The suites failed on PostgreSQL ${cluster.version}:\n${text}`);
    return text;
  } finally {
    await cluster.stop();
  }
}
