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

/** A number the chart can place: not null (the server's inf/NaN), not undefined, finite. */
export function isNum(v: number | null | undefined): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

/** Bars for a histogram's token and median counts on a shared y scale, in the plot box whose top-left
 * corner is (left, top); x maps values to pixels, y counts. null when the bins have no range (the
 * server sends null edges when the vector has no finite value: nothing can be placed). A bin whose
 * edges or count is missing is left out, a gap: never a bar of 0. */
export function histogramBars(h: Histogram, width: number, height: number, left = 0, top = 0) {
  const n = Math.min(h.token.length, h.median.length, h.edges.length - 1);
  const lo = h.edges[0];
  const hi = h.edges[n];
  if (!(n > 0) || !isNum(lo) || !isNum(hi)) return null;
  const x = linear(lo, hi, left, left + width);
  let most = 0;
  for (let i = 0; i < n; i++) for (const c of [h.token[i], h.median[i]]) if (isNum(c)) most = Math.max(most, c);
  const y = linear(0, most || 1, top + height, top);
  const bars = (counts: ArrayLike<number | null>): Bar[] => {
    const out: Bar[] = [];
    for (let i = 0; i < n; i++) {
      const c = counts[i];
      const a = h.edges[i];
      const b = h.edges[i + 1];
      if (!isNum(c) || !(c > 0) || !isNum(a) || !isNum(b)) continue;
      const x0 = x(a);
      const x1 = x(b);
      out.push({ x: x0, y: y(c), w: Math.max(0.5, x1 - x0 - 0.3), h: top + height - y(c), i });
    }
    return out;
  };
  return { token: bars(h.token), median: bars(h.median), x, y, lo, hi, most, zero: lo < 0 && hi > 0 ? x(0) : null };
}

/** A polyline's `points` for a series with gaps: one string per run of consecutive values the chart
 * can place (isNum), so a missing value (null: inf/NaN) breaks the line instead of pulling it to 0 or
 * writing NaN into the SVG. A run of one value has no line (its dot shows it). */
export function lineRuns(values: ArrayLike<number | null>, x: (i: number) => number, y: (v: number) => number): string[] {
  const runs: string[] = [];
  let run: string[] = [];
  for (let i = 0; i <= values.length; i++) {
    const v = i < values.length ? values[i] : null;
    if (isNum(v)) {
      run.push(`${x(i)},${y(v)}`);
      continue;
    }
    if (run.length > 1) runs.push(run.join(" "));
    run = [];
  }
  return runs;
}

/** The largest |v| over the values the chart can place; 0 when there is none. */
export function absMax(values: ArrayLike<number | null>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (isNum(v)) m = Math.max(m, Math.abs(v));
  }
  return m;
}

export interface SignedBar {
  /** the index (the layer) */
  i: number;
  x: number;
  w: number;
  y: number;
  h: number;
  /** the value; null: missing (inf/NaN), drawn as a hatched box over the plot's height */
  v: number | null;
}

/** Bars from a zero line for signed values over a plot [left, left + width] × [0, height], the y scale
 * symmetric (±m, m the largest |value|). A missing value gets a box over the whole height, to be drawn
 * hatched: not a bar of 0, which would read as "no difference". */
export function signedBars(values: ArrayLike<number | null>, left: number, width: number, height: number) {
  const m = Math.max(1e-9, absMax(values));
  const y = linear(-m, m, height, 0);
  const bw = width / Math.max(1, values.length);
  const bars: SignedBar[] = [];
  for (let i = 0; i < values.length; i++) {
    const raw = values[i];
    const v = isNum(raw) ? raw : null;
    const x = left + i * bw + 0.5;
    const w = Math.max(1, bw - 1);
    if (v === null) bars.push({ i, x, w, y: 0, h: height, v });
    else bars.push({ i, x, w, y: Math.min(y(v), y(0)), h: Math.abs(y(v) - y(0)), v });
  }
  return { y, bw, m, bars };
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
