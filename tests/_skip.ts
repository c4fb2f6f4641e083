/**
 * Skipping for want of a system package. A test that needs one calls {@linkcode skipFor}: outside CI it prints
 * one line naming the package and records it for the run's summary (tests/_run.ts prints the list at the end);
 * under `CI=true` it throws instead, because CI installs everything and a skipped suite there is a failure.
 *
 * @module
 */

/** Whether this is CI (`CI=true`): every prerequisite must be there. */
export const IN_CI = Deno.env.get("CI") === "true";

/**
 * Skips `what` (a test or a step) because `missing` is not installed; `install` says how to get it (an
 * apt-get or npm command). Throws under CI. Returns `true`, so a caller can write `if (x) return skipFor(...)`.
 */
export function skipFor(what: string, missing: string, install: string): true {
  return skipBecause(what, `${missing} is missing (${install})`);
}

/** Like {@linkcode skipFor}, with the reason written out (it names what to install). */
export function skipBecause(what: string, reason: string): true {
  const line = `${what}: ${reason}`;
  if (IN_CI) throw new Error(`${line}; under CI=true every prerequisite must be installed`);
  console.log(`skipped: ${line}`);
  const log = Deno.env.get("TEST_SKIP_LOG");
  if (log) Deno.writeTextFileSync(log, line + "\n", { append: true });
  return true;
}
