// Drives Debian's Chromium with playwright-core for the Deno tests (tests/_browser.ts), under Node.js:
// playwright-core is a Node program, and Node runs it most reliably.
//
// Protocol: one JSON object per line. The first line on stdout is {"ready": true, "version": ...} once
// Chromium runs (or {"error": ...}); then each request on stdin {"id", "method", "params"} gets one
// reply {"id", "result"} or {"id", "error"}. Closing stdin (or the "close" method) closes Chromium and ends
// the process. Page events (responses, failed requests, console messages, page errors) are buffered per
// page and fetched with "events".
//
//   node tools/e2e/browser.mjs '{"executablePath": "/usr/bin/chromium", "userDataDir": "/tmp/x"}'

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
];

const options = JSON.parse(process.argv[2] ?? "{}");
const send = (message) => process.stdout.write(JSON.stringify(message) + "\n");

let context;
try {
  context = await chromium.launchPersistentContext(options.userDataDir, {
    executablePath: options.executablePath ?? "/usr/bin/chromium",
    headless: true,
    args: [...CHROMIUM_ARGS, ...(options.args ?? [])],
    viewport: options.viewport ?? { width: 1280, height: 800 },
    timeout: 60_000,
  });
} catch (error) {
  send({ error: `Cannot start Chromium: ${error.message}` });
  process.exit(1);
}

const pages = new Map();
let nextPage = 1;

function track(page) {
  const id = nextPage++;
  const state = { page, events: { responses: [], failures: [], console: [], errors: [] } };
  page.on("response", (response) => {
    const request = response.request();
    state.events.responses.push({
      url: response.url(),
      method: request.method(),
      status: response.status(),
      resourceType: request.resourceType(),
      contentType: response.headers()["content-type"] ?? "",
      accept: request.headers()["accept"] ?? "",
    });
  });
  page.on("requestfailed", (request) => {
    state.events.failures.push({
      url: request.url(),
      method: request.method(),
      error: request.failure()?.errorText ?? "failed",
    });
  });
  page.on("console", (message) => {
    const location = message.location();
    state.events.console.push({
      type: message.type(),
      text: message.text(),
      url: location?.url ?? "",
    });
  });
  page.on("pageerror", (error) => state.events.errors.push(String(error?.stack ?? error)));
  pages.set(id, state);
  return id;
}

function pageOf(params) {
  const state = pages.get(params.page);
  if (!state) throw new Error(`No page ${params.page}`);
  return state;
}

// Functions arrive as source text; `arg` is passed to them.
const fn = (source) => new Function(`return (${source});`)();

const methods = {
  async newPage() {
    return track(await context.newPage());
  },
  async addInitScript(params) {
    await pageOf(params).page.addInitScript({ content: params.script });
  },
  async goto(params) {
    const response = await pageOf(params).page.goto(params.url, {
      waitUntil: params.waitUntil ?? "load",
      timeout: params.timeout ?? 30_000,
    });
    return response ? response.status() : null;
  },
  async waitForFunction(params) {
    const handle = await pageOf(params).page.waitForFunction(fn(params.fn), params.arg, {
      timeout: params.timeout ?? 30_000,
      polling: params.polling ?? 100,
    });
    const value = await handle.jsonValue();
    await handle.dispose();
    return value;
  },
  async waitForSelector(params) {
    await pageOf(params).page.waitForSelector(params.selector, {
      state: params.state ?? "visible",
      timeout: params.timeout ?? 30_000,
    });
  },
  async evaluate(params) {
    return await pageOf(params).page.evaluate(fn(params.fn), params.arg);
  },
  async click(params) {
    await pageOf(params).page.click(params.selector, { timeout: params.timeout ?? 10_000 });
  },
  async fill(params) {
    await pageOf(params).page.fill(params.selector, params.value, { timeout: params.timeout ?? 10_000 });
  },
  async press(params) {
    await pageOf(params).page.press(params.selector, params.key, { timeout: params.timeout ?? 10_000 });
  },
  async screenshot(params) {
    await pageOf(params).page.screenshot({ path: params.path, fullPage: params.fullPage ?? false });
  },
  events(params) {
    const state = pageOf(params);
    const events = state.events;
    if (params.clear !== false) state.events = { responses: [], failures: [], console: [], errors: [] };
    return events;
  },
  async closePage(params) {
    await pageOf(params).page.close();
    pages.delete(params.page);
  },
  async close() {
    await shutdown();
  },
};

let closing;
function shutdown() {
  closing ??= (async () => {
    try {
      await context.close();
    } finally {
      setTimeout(() => process.exit(0), 10);
    }
  })();
  return closing;
}

send({ ready: true, version: context.browser()?.version() ?? "unknown" });

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  if (line.trim() === "") return;
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    send({ id: null, error: `Not JSON: ${line.slice(0, 200)}` });
    return;
  }
  try {
    const method = methods[request.method];
    if (!method) throw new Error(`Unknown method ${request.method}`);
    const result = await method(request.params ?? {});
    send({ id: request.id, result: result ?? null });
  } catch (error) {
    send({ id: request.id, error: String(error?.message ?? error) });
  }
});
lines.on("close", () => shutdown());
process.on("SIGTERM", () => shutdown());
