/**
 * Headless Chromium for end-to-end tests: Debian's `/usr/bin/chromium` driven by playwright-core, which
 * runs under Node.js (`tools/e2e/browser.mjs`) and takes one JSON request per line from here.
 *
 * One browser at a time; always close it in a `finally` (it also kills any Chromium process left behind):
 * ```ts ignore
 * const browser = await launchBrowser();
 * try {
 *   const page = await browser.newPage();
 *   await page.goto("http://127.0.0.1:8080/viewer/");
 * } finally {
 *   await browser.close();
 * }
 * ```
 *
 * Functions run in the page are given as source text (the test's TypeScript has no DOM types).
 *
 * @module
 */

const TOOLS = new URL("../tools/e2e/", import.meta.url);
const DRIVER = new URL("browser.mjs", TOOLS);
const PLAYWRIGHT = new URL("node_modules/playwright-core/package.json", TOOLS);

/** Where Debian's `chromium` package puts the browser. */
export const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";

/** An HTTP response the page received. */
export interface PageResponse {
  url: string;
  method: string;
  status: number;
  resourceType: string;
  contentType: string;
  accept: string;
}

/** What happened in a page since the last {@linkcode Page.events} call. */
export interface PageEvents {
  responses: PageResponse[];
  /** Requests that got no response at all (refused, aborted, CORS-blocked preflight, ...). */
  failures: { url: string; method: string; error: string }[];
  console: { type: string; text: string; url: string }[];
  /** Uncaught exceptions. */
  errors: string[];
}

/** A browser tab. */
export interface Page {
  goto(
    url: string,
    options?: { waitUntil?: "load" | "domcontentloaded" | "networkidle"; timeout?: number },
  ): Promise<number | null>;
  /** Runs before any script of every document the page loads. */
  addInitScript(script: string): Promise<void>;
  /** Polls `fn(arg)` in the page until it returns a truthy value, and returns that value. */
  waitForFunction<T = unknown>(
    fn: string,
    arg?: unknown,
    options?: { timeout?: number; polling?: number },
  ): Promise<T>;
  waitForSelector(
    selector: string,
    options?: { state?: "attached" | "visible" | "hidden"; timeout?: number },
  ): Promise<void>;
  /** `fn(arg)` in the page; the result must be JSON-serializable. */
  evaluate<T = unknown>(fn: string, arg?: unknown): Promise<T>;
  click(selector: string, options?: { timeout?: number }): Promise<void>;
  fill(selector: string, value: string, options?: { timeout?: number }): Promise<void>;
  press(selector: string, key: string, options?: { timeout?: number }): Promise<void>;
  screenshot(path: string, options?: { fullPage?: boolean }): Promise<void>;
  /** The events recorded since the last call (which clears them unless `clear` is false). */
  events(options?: { clear?: boolean }): Promise<PageEvents>;
  close(): Promise<void>;
}

/** A running Chromium. */
export interface Browser {
  version: string;
  newPage(): Promise<Page>;
  /** Closes Chromium and the driver, kills whatever is left and removes the profile folder. */
  close(): Promise<void>;
}

/**
 * Why a browser cannot be launched here (missing Chromium, Node.js or playwright-core), with what
 * to install; `undefined` when everything is in place.
 */
export async function browserMissing(): Promise<string | undefined> {
  const problems: string[] = [];
  if (!await exists(CHROMIUM)) {
    problems.push(
      `${CHROMIUM} is missing: apt-get install -y chromium (Debian's package; never a downloaded browser)`,
    );
  }
  if (!await exists(PLAYWRIGHT)) {
    problems.push(`playwright-core is not installed: npm ci --prefix tools/e2e`);
  }
  try {
    const out = await new Deno.Command("node", { args: ["--version"], stdout: "piped", stderr: "null" })
      .output();
    if (!out.success) problems.push("`node --version` failed: install Node.js 18+");
  } catch {
    problems.push("`node` is not on PATH: install Node.js 18+");
  }
  return problems.length > 0 ? problems.join("; ") : undefined;
}

/** Starts Chromium (headless, fresh profile) through playwright-core. */
export async function launchBrowser(
  options: { viewport?: { width: number; height: number } } = {},
): Promise<Browser> {
  const missing = await browserMissing();
  if (missing) throw new Error(`Cannot start a browser: ${missing}`);
  const profile = await Deno.makeTempDir({ prefix: "chromium-e2e-" });
  const child = new Deno.Command("node", {
    args: [
      DRIVER.pathname,
      JSON.stringify({ executablePath: CHROMIUM, userDataDir: profile, viewport: options.viewport }),
    ],
    cwd: TOOLS.pathname,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr: string[] = [];
  const stderrDone = (async () => {
    for await (const line of lines(child.stderr)) {
      stderr.push(line);
      if (stderr.length > 200) stderr.shift();
    }
  })();
  const writer = child.stdin.getWriter();
  const pending = new Map<
    number,
    { resolve(value: unknown): void; reject(error: Error): void; method: string }
  >();
  const { promise: started, resolve: ready, reject: failed } = Promise.withResolvers<{ version: string }>();
  started.catch(() => {}); // also rejected when the driver exits later; only the first outcome counts
  let exited = false;
  const stdoutDone = (async () => {
    for await (const line of lines(child.stdout)) {
      let message: { id?: number; result?: unknown; error?: string; ready?: boolean; version?: string };
      try {
        message = JSON.parse(line);
      } catch {
        stderr.push(`(stdout) ${line}`);
        continue;
      }
      if (message.ready) ready({ version: message.version ?? "unknown" });
      else if (message.id === undefined && message.error) failed(new Error(message.error));
      else if (message.id !== undefined) {
        const call = pending.get(message.id);
        pending.delete(message.id);
        if (!call) continue;
        if (message.error !== undefined) call.reject(new Error(`Browser ${call.method}: ${message.error}`));
        else call.resolve(message.result);
      }
    }
    exited = true;
    const why = new Error(`The browser driver exited: ${stderr.slice(-20).join("\n")}`);
    failed(why);
    for (const call of pending.values()) call.reject(why);
    pending.clear();
  })();

  let nextId = 1;
  const call = async <T>(method: string, params: Record<string, unknown> = {}): Promise<T> => {
    if (exited) throw new Error(`The browser driver has exited: ${stderr.slice(-20).join("\n")}`);
    const id = nextId++;
    const result = new Promise<unknown>((resolve, reject) => pending.set(id, { resolve, reject, method }));
    await writer.write(new TextEncoder().encode(JSON.stringify({ id, method, params }) + "\n"));
    return await result as T;
  };

  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    const timer = setTimeout(() => killQuietly(child), 15_000);
    try {
      await call("close").catch(() => {});
      await writer.close().catch(() => {});
      await child.status;
    } finally {
      clearTimeout(timer);
      await Promise.allSettled([stdoutDone, stderrDone]);
      await killProfileProcesses(profile);
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    }
  };

  let version: string;
  try {
    const timeout = setTimeout(() => failed(new Error("Chromium did not start within 60 s")), 60_000);
    try {
      ({ version } = await started);
    } finally {
      clearTimeout(timeout);
    }
  } catch (error) {
    await close();
    throw error;
  }

  return {
    version,
    close,
    async newPage(): Promise<Page> {
      const page = await call<number>("newPage");
      const on = <T>(method: string, params: Record<string, unknown> = {}) =>
        call<T>(method, { page, ...params });
      return {
        goto: (url, o = {}) => on("goto", { url, ...o }),
        addInitScript: (script) => on("addInitScript", { script }),
        waitForFunction: (fn, arg, o = {}) => on("waitForFunction", { fn, arg, ...o }),
        waitForSelector: (selector, o = {}) => on("waitForSelector", { selector, ...o }),
        evaluate: (fn, arg) => on("evaluate", { fn, arg }),
        click: (selector, o = {}) => on("click", { selector, ...o }),
        fill: (selector, value, o = {}) => on("fill", { selector, value, ...o }),
        press: (selector, key, o = {}) => on("press", { selector, key, ...o }),
        screenshot: (path, o = {}) => on("screenshot", { path, ...o }),
        events: (o = {}) => on("events", o),
        close: () => on("closePage"),
      };
    },
  };
}

function killQuietly(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch {
    // already gone
  }
}

/** Kills, by pid, every process still running with our unique profile folder on its command line. */
async function killProfileProcesses(profile: string): Promise<void> {
  const marker = `--user-data-dir=${profile}`;
  for (let attempt = 0; attempt < 3; attempt++) {
    const pids: number[] = [];
    try {
      for await (const entry of Deno.readDir("/proc")) {
        if (!/^\d+$/.test(entry.name)) continue;
        const cmdline = await Deno.readTextFile(`/proc/${entry.name}/cmdline`).catch(() => "");
        if (cmdline.split("\0").includes(marker)) pids.push(Number(entry.name));
      }
    } catch {
      return; // no /proc: nothing more we can do
    }
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function exists(path: string | URL): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncIterable<string> {
  let buffered = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    buffered += text;
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
    }
  }
  if (buffered !== "") yield buffered;
}
