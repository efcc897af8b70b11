/** Geometry for the small charts (pure: numbers in, rectangles and scales out). */
import type { Histogram } from "./types";

export interface Bar {
  x: number;
  y: number;
  w: number;
  h: number;
  /** the bin */
  i: number;
}

/** A linear map from [d0, d1] to [r0, r1] (the middle of the range when the domain is one point). */
export function linear(d0: number, d1: number, r0: number, r1: number): (v: number) => number {
  const span = d1 - d0;
  if (!(span > 0) || !Number.isFinite(span)) return () => (r0 + r1) / 2;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

/** Bars for a histogram's token and median counts on a shared y scale; x maps values to pixels. */
export function histogramBars(h: Histogram, width: number, height: number) {
  const n = Math.min(h.token.length, h.median.length, h.edges.length - 1);
  const lo = h.edges[0];
  const hi = h.edges[n];
  const x = linear(lo, hi, 0, width);
  let top = 0;
  for (let i = 0; i < n; i++) top = Math.max(top, h.token[i] ?? 0, h.median[i] ?? 0);
  const y = linear(0, top || 1, height, 0);
  const bars = (counts: number[]): Bar[] => {
    const out: Bar[] = [];
    for (let i = 0; i < n; i++) {
      const c = counts[i] ?? 0;
      if (!(c > 0)) continue;
      const x0 = x(h.edges[i]);
      const x1 = x(h.edges[i + 1]);
      out.push({ x: x0, y: y(c), w: Math.max(0.5, x1 - x0 - 0.3), h: height - y(c), i });
    }
    return out;
  };
  return { token: bars(h.token), median: bars(h.median), x, zero: lo < 0 && hi > 0 ? x(0) : null };
}

/** Extent of the finite numbers (null when none), padded by `pad` of the span on each side. */
export function extent(values: ArrayLike<number | null>, pad = 0): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || !Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (lo === Infinity) return null;
  const p = (hi - lo || Math.abs(hi) || 1) * pad;
  return [lo - p, hi + p];
}

/** Index of the point nearest to (px, py) in pixel space within maxDist, or -1. */
export function nearest(xs: ArrayLike<number>, ys: ArrayLike<number>, px: number, py: number, maxDist = 8): number {
  let best = -1;
  let bd = maxDist * maxDist;
  for (let i = 0; i < xs.length; i++) {
    const dx = xs[i] - px;
    const dy = ys[i] - py;
    const d = dx * dx + dy * dy;
    if (d <= bd) (bd = d), (best = i);
  }
  return best;
}

/** Background alpha for a probability cell: sqrt so small probabilities still show. */
export function probAlpha(p: number | null | undefined): number {
  if (p === null || p === undefined || !(p > 0)) return 0;
  return Math.min(1, Math.sqrt(p));
}
