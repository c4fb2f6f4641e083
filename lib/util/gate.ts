/**
 * A counting semaphore: at most `count` holders at once, the others wait in order.
 *
 * @module
 */

/** A counting semaphore. */
export class Gate {
  #free: number;
  #waiting: (() => void)[] = [];

  /** A gate letting `count` holders in at once. */
  constructor(count: number) {
    this.#free = count;
  }

  /** Waits for a place. */
  async enter(): Promise<void> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  /** Gives a place back. */
  leave(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}
