/**
 * Settings given as strings (environment variables, a JSON config file): trimmed values, whole numbers in a
 * range and booleans, with every problem collected as a sentence naming the variable and the fix, so the server
 * reports them all at start-up.
 *
 * @module
 */

/** Reads settings given as strings, collecting problems in the style of `config.ts`. */
export interface SettingsReader {
  /** The trimmed value, or undefined when unset or blank. */
  get(name: string): string | undefined;
  /** A whole number from `min` to `max`, or `fallback` when unset (a problem when invalid). */
  integer(name: string, fallback: number, min: number, max: number): number;
  /** `true`/`false` (also 1/0, yes/no, on/off), or `fallback` when unset. */
  boolean(name: string, fallback: boolean): boolean;
  /** Adds a problem (a full sentence: `NAME=... is not valid: use ...`). */
  problem(text: string): void;
}

/**
 * A {@linkcode SettingsReader} over `env` that pushes each problem onto `problems`.
 *
 * @example
 * ```ts
 * import { settingsReader } from "./settings.ts";
 * const problems: string[] = [];
 * settingsReader({ N: "x" }, problems).integer("N", 1, 0, 9); // 1
 * problems[0]; // 'N="x" is not valid: use a whole number from 0 to 9'
 * ```
 */
export function settingsReader(env: Record<string, string | undefined>, problems: string[]): SettingsReader {
  const get = (name: string) => {
    const value = env[name];
    return value === undefined || value.trim() === "" ? undefined : value.trim();
  };
  return {
    get,
    integer(name, fallback, min, max) {
      const raw = get(name);
      if (raw === undefined) return fallback;
      const n = Number(raw);
      if (!/^\d+$/.test(raw) || n < min || n > max) {
        problems.push(
          `${name}=${JSON.stringify(raw)} is not valid: use a whole number from ${min} to ${max}`,
        );
        return fallback;
      }
      return n;
    },
    boolean(name, fallback) {
      const raw = get(name)?.toLowerCase();
      if (raw === undefined) return fallback;
      if (["1", "true", "yes", "on"].includes(raw)) return true;
      if (["0", "false", "no", "off"].includes(raw)) return false;
      problems.push(`${name}=${JSON.stringify(raw)} is not valid: use true or false`);
      return fallback;
    },
    problem(text) {
      problems.push(text);
    },
  };
}
