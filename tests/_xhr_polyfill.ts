/**
 * `XMLHttpRequest` on top of `fetch`, for browser libraries under test in Deno (dicomweb-client, OHIF's
 * DICOMweb transport, sends everything through XHR). Tests only: asynchronous requests, `responseType`
 * `""`/`"text"`/`"arraybuffer"`/`"json"`, request and response headers, `status`, and the events
 * (`readystatechange`, `loadstart`, `progress`, `load`, `error`, `abort`, `timeout`, `loadend`) as both
 * `on…` properties and listeners.
 *
 * ```ts ignore
 * const restore = installXhrPolyfill();
 * try { ... } finally { restore(); }
 * ```
 *
 * @module
 */

type Handler = ((this: FetchXMLHttpRequest, event: ProgressEvent) => unknown) | null;

/** What `send()` takes: anything `fetch` takes as a body, plus `null`. */
export type XhrBody = BodyInit | null | undefined;

/** An `XMLHttpRequest` whose transport is `fetch`. */
export class FetchXMLHttpRequest extends EventTarget {
  static readonly UNSENT = 0;
  static readonly OPENED = 1;
  static readonly HEADERS_RECEIVED = 2;
  static readonly LOADING = 3;
  static readonly DONE = 4;
  readonly UNSENT = 0;
  readonly OPENED = 1;
  readonly HEADERS_RECEIVED = 2;
  readonly LOADING = 3;
  readonly DONE = 4;

  readyState = 0;
  status = 0;
  statusText = "";
  responseURL = "";
  responseType: "" | "text" | "arraybuffer" | "json" = "";
  /** Milliseconds; 0 means none. */
  timeout = 0;
  withCredentials = false;
  onreadystatechange: Handler = null;
  onloadstart: Handler = null;
  onprogress: Handler = null;
  onload: Handler = null;
  onerror: Handler = null;
  onabort: Handler = null;
  ontimeout: Handler = null;
  onloadend: Handler = null;
  /** Upload events are accepted and never fired. */
  readonly upload: EventTarget = new EventTarget();

  #method = "GET";
  #url = "";
  #requestHeaders = new Headers();
  #responseHeaders: Headers | null = null;
  #bytes: Uint8Array | null = null;
  #response: unknown = null;
  #controller: AbortController | null = null;
  #sent = false;

  /** Only asynchronous requests: `async` false throws. */
  open(method: string, url: string | URL, async = true): void {
    if (async === false) {
      throw new DOMException("Synchronous XMLHttpRequest is not supported", "NotSupportedError");
    }
    this.#controller?.abort();
    this.#method = method;
    this.#url = String(new URL(url, globalThis.location?.href));
    this.#requestHeaders = new Headers();
    this.#responseHeaders = null;
    this.#bytes = null;
    this.#response = null;
    this.#sent = false;
    this.status = 0;
    this.statusText = "";
    this.#setState(1);
  }

  setRequestHeader(name: string, value: string): void {
    if (this.readyState !== 1 || this.#sent) {
      throw new DOMException("setRequestHeader() needs open() and no send() yet", "InvalidStateError");
    }
    this.#requestHeaders.append(name, value);
  }

  /** The response header (several values joined by ", "), or null. */
  getResponseHeader(name: string): string | null {
    return this.#responseHeaders?.get(name) ?? null;
  }

  /** Every response header as `name: value\r\n` lines, names lower-case and sorted. */
  getAllResponseHeaders(): string {
    if (!this.#responseHeaders) return "";
    return [...this.#responseHeaders.entries()].map(([name, value]) => `${name}: ${value}\r\n`).join("");
  }

  overrideMimeType(_mime: string): void {}

  /** The body as `responseType` asks: an `ArrayBuffer`, parsed JSON (null if invalid) or text. */
  get response(): unknown {
    if (this.responseType === "" || this.responseType === "text") return this.responseText;
    return this.readyState === 4 ? this.#response : null;
  }

  get responseText(): string {
    if (this.responseType !== "" && this.responseType !== "text") {
      throw new DOMException(
        `responseText is not available for responseType "${this.responseType}"`,
        "InvalidStateError",
      );
    }
    return this.#bytes ? new TextDecoder().decode(this.#bytes) : "";
  }

  send(body?: XhrBody): void {
    if (this.readyState !== 1 || this.#sent) {
      throw new DOMException("send() needs open()", "InvalidStateError");
    }
    this.#sent = true;
    const controller = new AbortController();
    this.#controller = controller;
    let timedOut = false;
    const timer = this.timeout > 0
      ? setTimeout(() => {
        timedOut = true;
        controller.abort();
      }, this.timeout)
      : undefined;
    const method = this.#method.toUpperCase();
    this.#fire("loadstart", 0, 0);
    fetch(this.#url, {
      method,
      headers: this.#requestHeaders,
      body: method === "GET" || method === "HEAD" ? undefined : body ?? undefined,
      signal: controller.signal,
      credentials: this.withCredentials ? "include" : "same-origin",
    }).then(async (response) => {
      this.status = response.status;
      this.statusText = response.statusText;
      this.responseURL = response.url;
      this.#responseHeaders = response.headers;
      this.#setState(2);
      this.#setState(3);
      const total = Number(response.headers.get("content-length") ?? 0);
      const chunks: Uint8Array[] = [];
      let loaded = 0;
      if (response.body) {
        for await (const chunk of response.body) {
          chunks.push(chunk);
          loaded += chunk.byteLength;
          this.#fire("progress", loaded, total);
        }
      }
      const bytes = new Uint8Array(loaded);
      let at = 0;
      for (const chunk of chunks) {
        bytes.set(chunk, at);
        at += chunk.byteLength;
      }
      this.#bytes = bytes;
      if (this.responseType === "arraybuffer") this.#response = bytes.buffer;
      else if (this.responseType === "json") {
        try {
          this.#response = JSON.parse(new TextDecoder().decode(bytes));
        } catch {
          this.#response = null;
        }
      }
      clearTimeout(timer);
      if (this.#controller !== controller) return; // re-opened meanwhile
      this.#setState(4);
      this.#fire("load", loaded, total);
      this.#fire("loadend", loaded, total);
    }).catch(() => {
      clearTimeout(timer);
      if (this.#controller !== controller) return;
      this.status = 0;
      this.statusText = "";
      this.#responseHeaders = null;
      this.#setState(4);
      this.#fire(timedOut ? "timeout" : controller.signal.aborted ? "abort" : "error", 0, 0);
      this.#fire("loadend", 0, 0);
    });
  }

  abort(): void {
    this.#controller?.abort();
  }

  #setState(state: number): void {
    this.readyState = state;
    this.#fire("readystatechange", 0, 0);
  }

  #fire(type: string, loaded: number, total: number): void {
    const event = new ProgressEvent(type, { loaded, total, lengthComputable: total > 0 });
    this.dispatchEvent(event);
    const handler = (this as unknown as Record<string, Handler>)[`on${type}`];
    if (typeof handler === "function") handler.call(this, event);
  }
}

/** Sets `globalThis.XMLHttpRequest` to {@linkcode FetchXMLHttpRequest}; returns a function that restores it. */
export function installXhrPolyfill(): () => void {
  const global = globalThis as unknown as { XMLHttpRequest?: unknown };
  const had = "XMLHttpRequest" in global;
  const previous = global.XMLHttpRequest;
  global.XMLHttpRequest = FetchXMLHttpRequest;
  return () => {
    if (had) global.XMLHttpRequest = previous;
    else delete global.XMLHttpRequest;
  };
}
