/**
 * `deno task test`: installs what npm can install when it is missing (one line each), runs `deno test` over
 * tests/ (or the paths given), then lists what was skipped for want of a system package and why
 * (tests/_skip.ts records them). Exits with `deno test`'s status.
 *
 * @module
 */

const ROOT = new URL("../", import.meta.url).pathname;

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(ROOT + path);
    return true;
  } catch {
    return false;
  }
}

/** Runs a command in the repository, its output to ours; whether it succeeded. */
async function run(command: string, args: string[]): Promise<boolean> {
  try {
    const { code } = await new Deno.Command(command, {
      args,
      cwd: ROOT,
      stdout: "inherit",
      stderr: "inherit",
    })
      .output();
    return code === 0;
  } catch {
    return false;
  }
}

/** npm-installable prerequisites: [what is checked, what it is, the command that installs it]. */
const NPM: [check: string, what: string, install: [string, ...string[]]][] = [
  ["tools/node_modules/s3rver/package.json", "s3rver", [
    "npm",
    "ci",
    "--prefix",
    "tools",
    "--no-audit",
    "--no-fund",
  ]],
  [
    "tools/e2e/node_modules/dicomweb-client/package.json",
    "playwright-core and dicomweb-client",
    ["npm", "ci", "--prefix", "tools/e2e", "--no-audit", "--no-fund"],
  ],
  ["tools/viewer/node_modules/@ohif/app/package.json", "the OHIF Viewer build", [
    "deno",
    "task",
    "viewer:install",
  ]],
];

for (const [check, what, [command, ...args]] of NPM) {
  if (await exists(check)) continue;
  console.log(`installing ${what} (missing): ${[command, ...args].join(" ")}`);
  if (!await run(command, args)) console.log(`could not install ${what}: the tests that need it will say so`);
}

const skipLog = await Deno.makeTempFile({ prefix: "test-skips-" });
const paths = Deno.args.length > 0 ? Deno.args : ["tests/"];
const { code } = await new Deno.Command(Deno.execPath(), {
  args: ["test", "-P=test", "--parallel=false", ...paths],
  cwd: ROOT,
  env: { TEST_SKIP_LOG: skipLog },
  stdout: "inherit",
  stderr: "inherit",
}).output();
const skipped = (await Deno.readTextFile(skipLog)).split("\n").filter((line) => line !== "");
await Deno.remove(skipLog);
if (skipped.length > 0) {
  console.log(`\nskipped for want of a system package (${skipped.length}; CI installs them all):`);
  for (const line of skipped) console.log(`  - ${line}`);
} else {
  console.log("\nnothing skipped");
}
Deno.exit(code);
