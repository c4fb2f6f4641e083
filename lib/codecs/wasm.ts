/**
 * Loading the Emscripten builds of the `@cornerstonejs/codec-*` packages under Deno without file system
 * permissions: the `.wasm` file is compiled through a source-phase import (`import.source`, which Deno
 * resolves in its module cache like any import) and handed to the Emscripten glue through its
 * `instantiateWasm` hook, so the glue never calls `fs.readFileSync`. When `import.source` is not available the
 * bytes are fetched from the file URL instead (that path needs read access to the npm cache).
 *
 * @module
 */

import type { RawImage } from "./mod.ts";
import { MalformedError } from "../util/errors.ts";

/** The embind classes and heap an Emscripten module exposes (only what the codecs use). */
// deno-lint-ignore no-explicit-any
export type EmscriptenModule = Record<string, any>;

/** An Emscripten module factory (`export default function (moduleArg) → Promise<Module>`). */
// deno-lint-ignore no-explicit-any
export type EmscriptenFactory = (moduleArg: Record<string, any>) => Promise<EmscriptenModule>;

/** A loaded codec module plus the lines it printed (OpenJPEG reports errors with printf). */
export interface LoadedCodec {
  /** The instantiated Emscripten module. */
  module: EmscriptenModule;
  /** The last lines printed by the module, newest last (bounded). */
  printed: string[];
}

const compiled = new Map<string, Promise<WebAssembly.Module>>();

/** Compiles the `.wasm` at `url` once per process. */
function compile(url: string): Promise<WebAssembly.Module> {
  let promise = compiled.get(url);
  if (!promise) {
    promise = (async () => {
      try {
        // @ts-expect-error: TypeScript has no types for source-phase imports yet; Deno runs them (no --allow-read needed).
        return await import.source(url) as WebAssembly.Module;
      } catch {
        return await WebAssembly.compile(await (await fetch(url)).arrayBuffer());
      }
    })();
    compiled.set(url, promise);
    promise.catch(() => compiled.delete(url));
  }
  return promise;
}

/**
 * Instantiates an Emscripten factory with the wasm found at `wasmUrl` (a `file:` URL from
 * `import.meta.resolve`). Printing is captured instead of going to stdout.
 */
export async function loadCodec(factory: EmscriptenFactory, wasmUrl: string): Promise<LoadedCodec> {
  const wasm = await compile(wasmUrl);
  const printed: string[] = [];
  const capture = (line: string) => {
    printed.push(String(line));
    if (printed.length > 32) printed.shift();
  };
  const module = await factory({
    print: capture,
    printErr: capture,
    instantiateWasm(
      imports: WebAssembly.Imports,
      done: (instance: WebAssembly.Instance, module: WebAssembly.Module) => void,
    ) {
      WebAssembly.instantiate(wasm, imports).then((instance) => done(instance, wasm));
      return {};
    },
  });
  return { module, printed };
}

/** A lazily loaded codec that can be thrown away and reloaded after a crash (a trapped WASM instance). */
export class CodecSlot {
  #loading?: Promise<LoadedCodec>;
  /** A slot that loads `factory` with the WASM at `wasmUrl` on first use. */
  constructor(readonly factory: () => Promise<EmscriptenFactory>, readonly wasmUrl: string) {}

  /** The loaded codec (loading it on first use). */
  get(): Promise<LoadedCodec> {
    if (!this.#loading) {
      this.#loading = this.factory().then((f) => loadCodec(f, this.wasmUrl));
      this.#loading.catch(() => this.#loading = undefined);
    }
    return this.#loading;
  }

  /** Drops the instance: after a WASM trap its memory may be corrupt. */
  reset(): void {
    this.#loading = undefined;
  }

  /**
   * Drops the instance when its memory grew past `maxBytes` (WASM memory never shrinks: one huge frame would
   * otherwise pin that much memory in every worker for good). The next use instantiates it afresh.
   */
  trim(loaded: LoadedCodec, maxBytes = 256 * 1024 * 1024): void {
    const heap = loaded.module.HEAPU8 as Uint8Array | undefined;
    if (heap && heap.length > maxBytes) this.reset();
  }
}

/** The text of an error thrown by Emscripten code (C++ exceptions arrive as numbers or strings). */
export function wasmMessage(error: unknown, printed: string[] = []): string {
  const errors = printed.filter((l) => /error/i.test(l)).map((l) => l.replace(/^\[ERROR\]\s*/, "").trim());
  if (errors.length) return errors.slice(-2).join("; ");
  if (error instanceof Error) return error.message;
  if (typeof error === "number") return "the codec rejected the data";
  return String(error);
}

/** A copy of `view` (WASM memory views die with the next allocation or `delete()`). */
export function copyOut(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();
}

/** The frame info every cornerstone decoder reports. */
export interface WasmFrameInfo {
  /** Columns. */
  width: number;
  /** Rows. */
  height: number;
  /** Samples per pixel. */
  componentCount: number;
  /** Bits per sample. */
  bitsPerSample: number;
  /** Whether the samples are signed. */
  isSigned?: boolean;
}

/** The size and samples of a decoded frame, as a `RawImage` starts. */
export function sizeOf(
  info: WasmFrameInfo,
  bytes: Uint8Array,
): Pick<RawImage, "width" | "height" | "components" | "bytes"> {
  return { width: info.width, height: info.height, components: info.componentCount, bytes };
}

/**
 * Decodes `data` with a cornerstone WASM decoder class (`J2KDecoder`, `HTJ2KDecoder`, `JpegLSDecoder`,
 * `JPEGDecoder`: the same protocol): `image` describes what came out. Errors say what could not be decoded
 * (`what`) with the codec's own message when it gives one; a WASM trap drops the instance, and one whose
 * memory grew large is trimmed.
 */
export async function decodeWith(
  slot: CodecSlot,
  className: string,
  what: string,
  data: Uint8Array,
  image: (codec: EmscriptenModule, info: WasmFrameInfo, bytes: Uint8Array) => RawImage,
): Promise<RawImage> {
  const loaded = await slot.get();
  const { module, printed } = loaded;
  printed.length = 0;
  const codec = new module[className]();
  try {
    codec.getEncodedBuffer(data.length).set(data);
    codec.decode();
    return image(codec, codec.getFrameInfo(), copyOut(codec.getDecodedBuffer()));
  } catch (error) {
    let detail = wasmMessage(error, printed);
    try {
      const last = codec.getLastErrorMessage?.();
      if (last) detail = last;
      else if (typeof error === "number" && module.getExceptionMessage) {
        detail = module.getExceptionMessage(error);
      }
    } catch { /* keep the generic text */ }
    if (error instanceof WebAssembly.RuntimeError) slot.reset();
    throw new MalformedError(`Cannot decode ${what}: ${detail}`, { cause: error });
  } finally {
    try {
      codec.delete();
    } catch { /* instance trapped */ }
    slot.trim(loaded);
  }
}
