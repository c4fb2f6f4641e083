/**
 * A small URLPattern router: exact path patterns, per-method handlers, `HEAD` served by `GET`,
 * and 405 with `Allow` for a known path with an unknown method.
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

/** Dispatches requests by path and method. */
export class Router {
  readonly #routes: { pattern: URLPattern; methods: Map<string, Handler> }[] = [];
  readonly #base: string;

  /** `basePath` prefixes every route (e.g. `/dicomweb`). */
  constructor(basePath = "") {
    this.#base = basePath;
  }

  /** Adds a path (URLPattern pathname syntax, e.g. `/aets/:aet/studies/:study`) with its handlers. */
  add(pathname: string, methods: Partial<Record<"GET" | "POST" | "PUT" | "DELETE", Handler>>): this {
    const map = new Map<string, Handler>();
    for (const [method, handler] of Object.entries(methods)) if (handler) map.set(method, handler);
    this.#routes.push({ pattern: new URLPattern({ pathname: this.#base + pathname }), methods: map });
    return this;
  }

  /** Finds the handler for `method` and `url`. */
  match(method: string, url: URL): Match {
    // Several routes may share a path with different methods (QIDO GET and STOW POST on /studies).
    const all = new Map<string, Handler>();
    let matched = false;
    for (const { pattern, methods } of this.#routes) {
      const result = pattern.exec({ pathname: url.pathname });
      if (!result) continue;
      matched = true;
      const handler = methods.get(method) ?? (method === "HEAD" ? methods.get("GET") : undefined);
      if (handler) {
        const params: Record<string, string> = {};
        for (const [name, value] of Object.entries(result.pathname.groups)) {
          if (value !== undefined) params[name] = value;
        }
        return { kind: "found", handler, params };
      }
      for (const [m, h] of methods) if (!all.has(m)) all.set(m, h);
    }
    return matched ? { kind: "method", allow: allowed(all) } : { kind: "none" };
  }
}

function allowed(methods: Map<string, Handler>): string[] {
  const allow = [...methods.keys()];
  if (methods.has("GET")) allow.push("HEAD");
  allow.push("OPTIONS");
  return allow;
}
