/**
 * Fitting a rendered image into a viewport (PS3.18 8.3.5.1.3): the size it scales to, and area-averaging
 * resampling with precomputed taps.
 *
 * @module
 */

import type { Image8, Viewport } from "./render.ts";

interface Taps {
  index: Int32Array;
  weight: Float32Array;
  start: Int32Array;
}

/** Resampling taps along one axis: `size` outputs from source `[from, from + length)` (negative length flips). */
function taps(from: number, length: number, size: number, limit: number): Taps {
  const flip = length < 0;
  const span = Math.abs(length);
  const origin = flip ? from - span : from;
  const scale = span / size;
  const index: number[] = [];
  const weight: number[] = [];
  const start = new Int32Array(size + 1);
  const clampIndex = (i: number) => i < 0 ? 0 : i >= limit ? limit - 1 : i;
  for (let o = 0; o < size; o++) {
    const oo = flip ? size - 1 - o : o;
    start[o] = index.length;
    if (scale > 1) {
      // Area average of source pixels covered by [a, b).
      const a = origin + oo * scale;
      const b = a + scale;
      let total = 0;
      for (let s = Math.floor(a); s < Math.ceil(b); s++) {
        const w = Math.min(b, s + 1) - Math.max(a, s);
        if (w <= 0) continue;
        index.push(clampIndex(s));
        weight.push(w);
        total += w;
      }
      for (let k = start[o]; k < index.length; k++) weight[k] /= total;
    } else {
      // Bilinear at the output pixel's centre.
      const c = origin + (oo + 0.5) * scale - 0.5;
      const s0 = Math.floor(c);
      const f = c - s0;
      index.push(clampIndex(s0), clampIndex(s0 + 1));
      weight.push(1 - f, f);
    }
  }
  start[size] = index.length;
  return { index: Int32Array.from(index), weight: Float32Array.from(weight), start };
}

/** The output size of a viewport for a source region `sw × sh`: the region scaled to fit, aspect kept. */
export function fitViewport(
  sw: number,
  sh: number,
  vw: number,
  vh: number,
): { width: number; height: number } {
  const scale = Math.min(vw / sw, vh / sh);
  return { width: Math.max(1, Math.round(sw * scale)), height: Math.max(1, Math.round(sh * scale)) };
}

/** Applies a viewport: source region, flips, scaling to fit (see {@linkcode Viewport}). */
export function applyViewport(image: Image8, viewport?: Viewport): Image8 {
  if (!viewport) return image;
  const sx = viewport.sx ?? 0;
  const sy = viewport.sy ?? 0;
  let sw = viewport.sw ?? image.width - sx;
  let sh = viewport.sh ?? image.height - sy;
  if (sw === 0) sw = image.width - sx;
  if (sh === 0) sh = image.height - sy;
  const fromX = sw < 0 ? sx + 1 : sx; // a negative width counts leftwards from sx
  const fromY = sh < 0 ? sy + 1 : sy;
  const { width, height } = fitViewport(Math.abs(sw), Math.abs(sh), viewport.width, viewport.height);
  if (width === image.width && height === image.height && sx === 0 && sy === 0 && sw > 0 && sh > 0) {
    return image;
  }
  return resample(
    image,
    taps(fromX, sw, width, image.width),
    taps(fromY, sh, height, image.height),
    width,
    height,
  );
}

function resample(image: Image8, tx: Taps, ty: Taps, width: number, height: number): Image8 {
  const c = image.channels;
  const src = image.pixels;
  const stride = image.width * c;
  const lineLength = width * c;
  // Horizontal pass, once per source row the vertical pass needs.
  const lines: (Float32Array | undefined)[] = new Array(image.height);
  for (let k = 0; k < ty.index.length; k++) {
    const row = ty.index[k];
    if (lines[row]) continue;
    const line = new Float32Array(lineLength);
    const base = row * stride;
    for (let o = 0; o < width; o++) {
      const from = tx.start[o];
      const to = tx.start[o + 1];
      for (let ch = 0; ch < c; ch++) {
        let sum = 0;
        for (let t = from; t < to; t++) sum += src[base + tx.index[t] * c + ch] * tx.weight[t];
        line[o * c + ch] = sum;
      }
    }
    lines[row] = line;
  }
  // Vertical pass.
  const out = new Uint8Array(lineLength * height);
  const acc = new Float32Array(lineLength);
  for (let o = 0; o < height; o++) {
    acc.fill(0);
    for (let t = ty.start[o]; t < ty.start[o + 1]; t++) {
      const line = lines[ty.index[t]]!;
      const w = ty.weight[t];
      for (let x = 0; x < lineLength; x++) acc[x] += line[x] * w;
    }
    const at = o * lineLength;
    for (let x = 0; x < lineLength; x++) {
      const v = acc[x];
      out[at + x] = v <= 0 ? 0 : v >= 255 ? 255 : (v + 0.5) | 0;
    }
  }
  return { width, height, channels: image.channels, pixels: out };
}

// ---------------------------------------------------------------------------------------------------------
// Encoding
