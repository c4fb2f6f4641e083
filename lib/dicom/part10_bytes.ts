/**
 * The bytes a Part 10 parse works on: the ranges loaded so far of an object ({@linkcode SparseBytes}), and
 * bounds-checked reads over them ({@linkcode Reader}) that throw {@linkcode NeedMore} for bytes not loaded yet
 * (the caller loads them and runs the synchronous parser again).
 *
 * @module
 */

import { MalformedError } from "../util/errors.ts";

/** Thrown inside the synchronous parser when bytes `[start, end)` are not loaded yet. */
export class NeedMore {
  constructor(readonly start: number, readonly end: number) {}
}

/** Thrown when the data set is deflated and must be inflated first. */
export class NeedInflate {}

/**
 * Loaded byte ranges of an object, sorted and found by binary search. Overlapping reads are merged; touching
 * ones are not (that would copy ever larger buffers), so a read across a boundary is assembled on demand.
 */
export class SparseBytes {
  #segments: { start: number; data: Uint8Array }[] = [];
  #hit = 0;

  /** Index of the last segment starting at or before `offset`, or -1. */
  #find(offset: number): number {
    let lo = 0;
    let hi = this.#segments.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#segments[mid].start <= offset) {
        found = mid;
        lo = mid + 1;
      } else {
        hi = mid - 1;
      }
    }
    return found;
  }

  #end(i: number): number {
    return this.#segments[i].start + this.#segments[i].data.length;
  }

  add(start: number, data: Uint8Array): void {
    const end = start + data.length;
    let first = this.#find(start);
    if (first < 0 || this.#end(first) <= start) first++;
    let last = first;
    while (last < this.#segments.length && this.#segments[last].start < end) last++;
    const overlapping = this.#segments.slice(first, last);
    if (overlapping.length === 0) {
      this.#segments.splice(first, 0, { start, data });
      return;
    }
    const lo = Math.min(start, overlapping[0].start);
    const tail = overlapping[overlapping.length - 1];
    const merged = new Uint8Array(Math.max(end, tail.start + tail.data.length) - lo);
    for (const s of overlapping) merged.set(s.data, s.start - lo);
    merged.set(data, start - lo);
    this.#segments.splice(first, overlapping.length, { start: lo, data: merged });
  }

  /** The segment holding all of `[start, end)` (parsing reads along one segment: the last one found is tried first). */
  segment(start: number, end: number): { start: number; data: Uint8Array } | undefined {
    let s = this.#segments[this.#hit];
    if (s === undefined || s.start > start || s.start + s.data.length < end) {
      const i = this.#find(start);
      if (i < 0 || this.#end(i) < end) return undefined;
      this.#hit = i;
      s = this.#segments[i];
    }
    return s;
  }

  get(start: number, end: number): Uint8Array | undefined {
    let i = this.#find(start);
    if (i < 0 || this.#end(i) <= start && end > start) return undefined;
    const s = this.#segments[i];
    if (end <= this.#end(i)) return s.data.subarray(start - s.start, end - s.start);
    const out = new Uint8Array(end - start);
    let at = 0;
    for (; i < this.#segments.length && at < out.length; i++) {
      const seg = this.#segments[i];
      if (at > 0 && seg.start !== start + at) return undefined;
      const piece = seg.data.subarray(start + at - seg.start, Math.min(seg.data.length, end - seg.start));
      out.set(piece, at);
      at += piece.length;
    }
    return at === out.length ? out : undefined;
  }

  /** The run of touching segments containing or ending at `offset`. */
  around(offset: number): { start: number; end: number } | undefined {
    let i = this.#find(offset);
    if (i < 0 || offset > this.#end(i)) return undefined;
    let j = i;
    while (j + 1 < this.#segments.length && this.#segments[j + 1].start === this.#end(j)) j++;
    while (i > 0 && this.#end(i - 1) === this.#segments[i].start) i--;
    return { start: this.#segments[i].start, end: this.#end(j) };
  }
}

/** Bounds-checked reads over loaded bytes, with errors naming the object. */
export class Reader {
  note = "";
  constructor(readonly name: string, readonly size: number, readonly store: SparseBytes) {}

  fail(message: string): never {
    throw new MalformedError(`Cannot parse "${this.name}"${this.note}: ${message}`);
  }

  bytes(offset: number, length: number, what: () => string): Uint8Array {
    if (offset + length > this.size) this.fail(what());
    const b = this.store.get(offset, offset + length);
    if (!b) throw new NeedMore(offset, offset + length);
    return b;
  }

  u16(offset: number, little: boolean, what: () => string): number {
    // straight from the segment: a 2-byte view per read was most of the parser's garbage
    const s = offset + 2 <= this.size ? this.store.segment(offset, offset + 2) : undefined;
    const b = s ? s.data : this.bytes(offset, 2, what);
    const i = s ? offset - s.start : 0;
    return little ? b[i] | b[i + 1] << 8 : b[i] << 8 | b[i + 1];
  }

  u32(offset: number, little: boolean, what: () => string): number {
    const s = offset + 4 <= this.size ? this.store.segment(offset, offset + 4) : undefined;
    const b = s ? s.data : this.bytes(offset, 4, what);
    const i = s ? offset - s.start : 0;
    return (little
      ? b[i] | b[i + 1] << 8 | b[i + 2] << 16 | b[i + 3] << 24
      : b[i] << 24 | b[i + 1] << 16 | b[i + 2] << 8 | b[i + 3]) >>> 0;
  }

  tag(offset: number, little: boolean, what: () => string): number {
    return (this.u16(offset, little, what) << 16 | this.u16(offset + 2, little, what)) >>> 0;
  }
}
