/**
 * A small URLPattern router: exact path patterns, per-method handlers, `HEAD` served by `GET`,
 * and 405 with `Allow` for a known path with an unknown method.
 *
 * Patterns made of plain segments and whole-segment parameters (every route of lib/app/routes.ts but the
 * `(.+)` ones) are matched by comparing segments, as URLPattern would match them; the others by URLPattern,
 * after a check of their leading literal segments (an `exec` costs microseconds, and a request would try them
 * all: ~80 µs a retrieve before).
 *
 * @module
 */

/** What a handler gets. */
export interface RouteContext {
  /** The request. */
  request: Request;
  /** Its URL, parsed. */
  url: URL;
  /** Path parameters, percent-decoding left to the handler (UIDs are validated raw). */
  params: Record<string, string>;
}

/** A route handler. */
export type Handler = (context: RouteContext) => Response | Promise<Response>;

/** The outcome of matching a request. */
export type Match =
  | { kind: "found"; handler: Handler; params: Record<string, string> }
  | { kind: "method"; allow: string[] }
  | { kind: "none" };

/**
 * What a pattern's pathname says for sure about the paths it matches: these segments (split at `/`) are these
 * literals, and there are exactly `segments` of them (`-1`: not known, the pattern has a group, a modifier, a
 * wildcard or a parameter that is not a whole segment from some segment on). Only plain segments are read, so
 * the check never refuses a path the pattern matches. A pattern read whole (`segments` known) is only plain
 * segments and whole-segment parameters: it matches exactly when the literals are equal and each parameter's
 * segment is not empty (URLPattern's `[^/]+?`), so it is matched without URLPattern.
 */
interface Shape {
  literals: [index: number, text: string][];
  /** Each parameter's segment, for a pattern read whole. */
  parameters: [index: number, name: string][];
  segments: number;
}

/** Characters a literal segment is read for (no URLPattern syntax, nothing canonicalized differently). */
const PLAIN = /^[A-Za-z0-9._~-]*$/;
/** A segment that is one named parameter with the default pattern (`[^/]+?`: one segment, never `/`). */
const PARAMETER = /^:[A-Za-z_$][A-Za-z0-9_$]*$/;

function shapeOf(pathname: string): Shape {
  const parts = pathname.split("/");
  const literals: [number, string][] = [];
  const parameters: [number, string][] = [];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    if (PARAMETER.test(part)) parameters.push([i, part.slice(1)]);
    else if (PLAIN.test(part) && part !== "." && part !== "..") literals.push([i, part]);
    else return { literals, parameters: [], segments: -1 };
  }
  return { literals, parameters, segments: parts.length };
}

/** Whether a path split into `parts` may match a pattern of `shape` (false: it cannot). */
function fits(shape: Shape, parts: string[]): boolean {
  if (shape.segments >= 0 && parts.length !== shape.segments) return false;
  for (const [index, text] of shape.literals) if (parts[index] !== text) return false;
  return true;
}

/** The parameters of a path that {@linkcode fits} a pattern read whole, or `null` when one is empty. */
function parametersOf(shape: Shape, parts: string[]): Record<string, string> | null {
  const params: Record<string, string> = {};
  for (const [index, name] of shape.parameters) {
    if (parts[index] === "") return null;
    params[name] = parts[index];
  }
  return params;
}

/** Dispatches requests by path and method. */
export class Router {
  readonly #routes: { pattern: URLPattern; shape: Shape; methods: Map<string, Handler> }[] = [];
  readonly #base: string;

  /** `basePath` prefixes every route (e.g. `/dicomweb`). */
  constructor(basePath = "") {
    this.#base = basePath;
  }

  /** Adds a path (URLPattern pathname syntax, e.g. `/aets/:aet/studies/:study`) with its handlers. */
  add(pathname: string, methods: Partial<Record<"GET" | "POST" | "PUT" | "DELETE", Handler>>): this {
    const map = new Map<string, Handler>();
    for (const [method, handler] of Object.entries(methods)) if (handler) map.set(method, handler);
    const full = this.#base + pathname;
    this.#routes.push({ pattern: new URLPattern({ pathname: full }), shape: shapeOf(full), methods: map });
    return this;
  }

  /** Finds the handler for `method` and `url`. */
  match(method: string, url: URL): Match {
    // Several routes may share a path with different methods (QIDO GET and STOW POST on /studies).
    const all = new Map<string, Handler>();
    let matched = false;
    const parts = url.pathname.split("/");
    for (const { pattern, shape, methods } of this.#routes) {
      if (!fits(shape, parts)) continue;
      const params = shape.segments >= 0 ? parametersOf(shape, parts) : execute(pattern, url.pathname);
      if (params === null) continue;
      matched = true;
      const handler = methods.get(method) ?? (method === "HEAD" ? methods.get("GET") : undefined);
      if (handler) return { kind: "found", handler, params };
      for (const [m, h] of methods) if (!all.has(m)) all.set(m, h);
    }
    return matched ? { kind: "method", allow: allowed(all) } : { kind: "none" };
  }
}

/** The parameters of `pathname` by URLPattern, or `null` when it does not match. */
function execute(pattern: URLPattern, pathname: string): Record<string, string> | null {
  const result = pattern.exec({ pathname });
  if (!result) return null;
  const params: Record<string, string> = {};
  for (const [name, value] of Object.entries(result.pathname.groups)) {
    if (value !== undefined) params[name] = value;
  }
  return params;
}

function allowed(methods: Map<string, Handler>): string[] {
  const allow = [...methods.keys()];
  if (methods.has("GET")) allow.push("HEAD");
  allow.push("OPTIONS");
  return allow;
}
