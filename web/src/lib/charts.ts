/** Geometry for the small charts (pure: numbers in, rectangles and scales out). */
import { fmt } from "./format";
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

/** Bars for a histogram's token and median counts on a shared y scale, in the plot box whose top-left
 * corner is (left, top); x maps values to pixels, y counts. */
export function histogramBars(h: Histogram, width: number, height: number, left = 0, top = 0) {
  const n = Math.min(h.token.length, h.median.length, h.edges.length - 1);
  const lo = h.edges[0];
  const hi = h.edges[n];
  const x = linear(lo, hi, left, left + width);
  let most = 0;
  for (let i = 0; i < n; i++) most = Math.max(most, h.token[i] ?? 0, h.median[i] ?? 0);
  const y = linear(0, most || 1, top + height, top);
  const bars = (counts: number[]): Bar[] => {
    const out: Bar[] = [];
    for (let i = 0; i < n; i++) {
      const c = counts[i] ?? 0;
      if (!(c > 0)) continue;
      const x0 = x(h.edges[i]);
      const x1 = x(h.edges[i + 1]);
      out.push({ x: x0, y: y(c), w: Math.max(0.5, x1 - x0 - 0.3), h: top + height - y(c), i });
    }
    return out;
  };
  return { token: bars(h.token), median: bars(h.median), x, y, lo, hi, most, zero: lo < 0 && hi > 0 ? x(0) : null };
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

/** A value with thousands separators when large ("2,345", "-12,000"), else 4 significant digits. */
export function fmtValue(v: number): string {
  if (!Number.isFinite(v)) return Number.isNaN(v) ? "–" : v > 0 ? "∞" : "-∞";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return fmt(v, 4);
}

/** Where a chosen value goes on an axis spanning [lo, hi] drawn over pixels [x0, x1]. */
export interface ValueMarker {
  /** pixel position: the value's, or the near edge when it lies outside [lo, hi] */
  x: number;
  /** "in": on the scale; "low" / "high": off it, drawn at that edge with an arrow */
  side: "in" | "low" | "high";
  /** for an off-scale value: "◀ -2,345 (off scale)" / "▶ 2,345 (off scale)"; null when on the scale */
  label: string | null;
}

/** The marker for `value` on an axis [lo, hi] → [x0, x1]: an off-range value sits at the edge, labelled,
 * so the dimension one picks for being an outlier is never drawn off the chart (invisible). */
export function valueMarker(value: number, lo: number, hi: number, x0: number, x1: number): ValueMarker {
  if (value < lo) return { x: x0, side: "low", label: `◀ ${fmtValue(value)} (off scale)` };
  if (value > hi) return { x: x1, side: "high", label: `▶ ${fmtValue(value)} (off scale)` };
  return { x: linear(lo, hi, x0, x1)(value), side: "in", label: null };
}

/** Round tick values for [0, top] counts: 0, a round middle, and top itself. */
export function countTicks(top: number): number[] {
  if (!(top > 0)) return [0];
  const mid = top / 2;
  const p = 10 ** Math.floor(Math.log10(mid));
  const round = Math.max(1, Math.round(mid / p) * p);
  return round < top ? [0, round, top] : [0, top];
}
