/**
 * Drawing with a colour scale the server computed (lmpeek.analysis.scales, the one implementation of
 * colour limits): a value maps to [0, 1] piecewise linearly, min -> 0, divider -> 0.5, max -> 1. The
 * page never finds limits itself; it only lays the user's typed edits over the server's.
 */
import type { Value } from "./color";
import type { ColourScale, Limits } from "./types";

/** How the server finds the limits (query `mode`). */
export type Scale = "raw" | "minmax" | "outliers";

export const SCALES: { value: Scale; label: string; help: string }[] = [
  { value: "raw", label: "raw", help: "the natural range (probability 0–1, cosine −1–1), else from 0 to the largest value (±largest |value| for signed values)" },
  { value: "minmax", label: "min-max", help: "the data's smallest to largest value (signed values: ±largest |value|)" },
  { value: "outliers", label: "clip outliers", help: "min-max of the values inside Tukey's fences (Q1 − 1.5·IQR … Q3 + 1.5·IQR); the rest are marked ▲/▼" },
];

/** A value in [0, 1] through the limits (clamped); null when missing. Same rule as analysis.scales.apply_limits. */
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

/** Where a value lies against the limits: "high" above max, "low" below min, null inside or missing. */
export function outside(v: Value, lim: Limits | null): "high" | "low" | null {
  if (v === null || v === undefined || !Number.isFinite(v) || lim === null) return null;
  return v > lim.max ? "high" : v < lim.min ? "low" : null;
}

/**
 * The server's limits with the user's edits laid over them (undefined keeps the server's). A diverging
 * scale keeps its divider (0) unless it was edited; a sequential one's divider follows the edited
 * min/max to stay in the middle (the map stays linear) unless it was edited itself.
 */
export function withOverrides(scale: Pick<ColourScale, "kind" | "min" | "divider" | "max"> | null, over: Partial<Limits>): Limits | null {
  if (!scale) return null;
  const min = over.min ?? scale.min;
  const max = over.max ?? scale.max;
  const divider = over.divider ?? (scale.kind === "diverging" ? scale.divider : (min + max) / 2);
  return { min, divider, max };
}

/** Parse what was typed into a limit box: a finite number, or undefined (keep the computed limit). */
export function parseLimit(s: string): number | undefined {
  const t = s.trim().replace(/−/g, "-");
  if (!t) return undefined;
  const v = Number(t);
  return Number.isFinite(v) ? v : undefined;
}
