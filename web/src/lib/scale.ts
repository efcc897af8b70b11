/**
 * Colour limits: min, divider and max. A value maps to [0, 1] piecewise linearly, min -> 0,
 * divider -> 0.5, max -> 1, so one editable triple drives both sequential maps (divider in the
 * middle by default) and diverging ones (divider at 0 by default: negative below, positive above).
 */
import type { Value } from "./color";
import type { Limits } from "./types";

export type Scale = "raw" | "minmax" | "minmax_clip";

export const SCALES: { value: Scale; label: string }[] = [
  { value: "raw", label: "raw" },
  { value: "minmax", label: "min-max" },
  { value: "minmax_clip", label: "min-max excl. outliers (1–99%)" },
];

function finite(values: ArrayLike<Value>): number[] {
  const out: number[] = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v !== null && v !== undefined && Number.isFinite(v)) out.push(v);
  }
  return out;
}

/** The q-quantile (0..1) of sorted numbers, linear interpolation. */
export function quantile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * Limits for values, the server's rules (lmpeek.analysis.activations.normalise): raw and minmax span
 * the smallest to the largest value, minmax_clip the 1st to 99th percentile (outliers clip). The
 * divider is the midpoint, except at 0 when the values have both signs and the scale is raw, or the
 * metric is signed (a diverging map is white at 0).
 */
export function computeLimits(values: ArrayLike<Value>, scale: Scale, signed: boolean): Limits | null {
  const xs = finite(values).sort((a, b) => a - b);
  if (!xs.length) return null;
  const [min, max] = scale === "minmax_clip" ? [quantile(xs, 0.01), quantile(xs, 0.99)] : [xs[0], xs[xs.length - 1]];
  const mixed = min < 0 && max > 0;
  return { min, divider: mixed && (signed || scale === "raw") ? 0 : (min + max) / 2, max };
}

/** A value in [0, 1] through the limits (clamped); null when missing. */
export function position(v: Value, lim: Limits | null): number | null {
  if (v === null || v === undefined || !Number.isFinite(v) || lim === null) return null;
  const { min, divider, max } = lim;
  let t: number;
  if (v >= divider) {
    const span = max - divider;
    t = span > 0 ? 0.5 + (0.5 * (v - divider)) / span : v > divider ? 1 : 0.5;
  } else {
    const span = divider - min;
    t = span > 0 ? (0.5 * (v - min)) / span : 0;
  }
  return t < 0 ? 0 : t > 1 ? 1 : t;
}

/**
 * Limits with the user's edits laid over them (undefined keeps the computed one). An unsigned scale's
 * divider follows the edited min/max to stay in the middle unless it was edited itself.
 */
export function withOverrides(lim: Limits | null, over: Partial<Limits>, signed = false): Limits | null {
  if (!lim) return null;
  const min = over.min ?? lim.min;
  const max = over.max ?? lim.max;
  const divider = over.divider ?? (signed ? lim.divider : (min + max) / 2);
  return { min, divider, max };
}

/** Parse what was typed into a limit box: a finite number, or undefined (keep the computed limit). */
export function parseLimit(s: string): number | undefined {
  const t = s.trim().replace(/−/g, "-");
  if (!t) return undefined;
  const v = Number(t);
  return Number.isFinite(v) ? v : undefined;
}
