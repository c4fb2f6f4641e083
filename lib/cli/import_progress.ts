/**
 * The importer's progress ({@linkcode Progress}): on a terminal one live line rewritten in place (files,
 * bytes, rate, time left), elsewhere (a log, a pipe, CI) a plain line every few seconds. Lines that must stay
 * (a rejected file, the summary) go through {@linkcode Progress.print}, which keeps the live line below them.
 *
 * @module
 */

/** Options for {@linkcode Progress}. */
export interface ProgressOptions {
  /** Files and bytes to import, when known (for the time left). */
  total?: { files: number; bytes: number };
  /** Rewrite one line in place (a terminal), or print a plain line every `interval` ms. */
  live: boolean;
  /** Milliseconds between plain lines (default 5000); the live line is redrawn 4 times a second. */
  interval?: number;
  /** Where the text goes (default standard output). */
  write?: (text: string) => void;
  /** The clock, in milliseconds (default `performance.now`). */
  now?: () => number;
}

const encoder = new TextEncoder();

function writeStdout(text: string): void {
  const bytes = encoder.encode(text);
  let written = 0;
  while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
}

/** Counts files and bytes as they are read, and shows how far the import is. */
export class Progress {
  #total?: { files: number; bytes: number };
  #live: boolean;
  #write: (text: string) => void;
  #now: () => number;
  #started: number;
  #timer?: ReturnType<typeof setInterval>;
  #shown = false;
  /** Files read to their end (or given up). */
  files = 0;
  /** Bytes read. */
  bytes = 0;

  /** Starts showing progress (call {@linkcode Progress.stop} at the end). */
  constructor(options: ProgressOptions) {
    this.#total = options.total;
    this.#live = options.live;
    this.#write = options.write ?? writeStdout;
    this.#now = options.now ?? (() => performance.now());
    this.#started = this.#now();
    const interval = this.#live ? 250 : options.interval ?? 5000;
    this.#timer = setInterval(() => this.#tick(), interval);
  }

  /** Prints `line` to stay, above the live line. */
  print(line: string): void {
    this.#clear();
    this.#write(`${line}\n`);
    if (this.#live) this.#draw();
  }

  /** Stops the timer and clears the live line. */
  stop(): void {
    clearInterval(this.#timer);
    this.#clear();
  }

  /** The progress as words: `12/40 files, 3.1/9.0 MB, 2.5 MB/s, 0:03 left`. */
  describe(): string {
    const seconds = (this.#now() - this.#started) / 1000;
    const rate = seconds > 0 ? this.bytes / seconds : 0;
    const total = this.#total;
    const files = total ? `${this.files}/${total.files} files` : `${this.files} files`;
    const bytes = total
      ? `${megabytes(this.bytes)}/${megabytes(total.bytes)} MB`
      : `${megabytes(this.bytes)} MB`;
    let text = `${files}, ${bytes}, ${megabytes(rate)} MB/s`;
    if (total && rate > 0 && seconds >= 1) {
      text += `, ${clock(Math.max(0, total.bytes - this.bytes) / rate)} left`;
    }
    return text;
  }

  #tick(): void {
    if (this.#live) this.#draw();
    else this.#write(`progress: ${this.describe()}\n`);
  }

  #draw(): void {
    this.#write(`\r\x1b[2K${this.describe()}`);
    this.#shown = true;
  }

  #clear(): void {
    if (!this.#shown) return;
    this.#write("\r\x1b[2K");
    this.#shown = false;
  }
}

function megabytes(bytes: number): string {
  return (bytes / 1e6).toFixed(bytes < 1e8 ? 1 : 0);
}

function clock(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}
