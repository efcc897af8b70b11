/** The Why tab's pure helpers: request parameters, the attribution stream's events, the display of
 * signed scores (|·| and normalisation are display options only: the server's scores are signed and
 * additive) and the faithfulness curves' geometry. The numbers themselves come from the server. */
import { interpolateRdBu } from "d3-scale-chromatic";
import type { WhyFaithfulness, WhyResult } from "./api-types";
import type { Trace } from "./types";

export type { WhyFaithfulness, WhyMethods, WhyResult } from "./api-types";
export { estimateText, fraction } from "./job.svelte";

/** POST /api/why/attribute's body. target / contrast: token ids (from the model's top-k), null = the
 * model's top prediction / no contrast. */
export interface WhyParams {
  text: string;
  target: number | null;
  contrast: number | null;
  method: string;
  features: string;
  steps: number | null;
  faithfulness: boolean;
}

/** The request body: no target/contrast/steps keys when not chosen (the server's defaults). */
export function requestBody(p: WhyParams): Record<string, unknown> {
  const out: Record<string, unknown> = { text: p.text, method: p.method, features: p.features, faithfulness: p.faithfulness };
  if (p.target !== null) out.target = p.target;
  if (p.contrast !== null) out.contrast = p.contrast;
  if (p.steps !== null) out.steps = p.steps;
  return out;
}

export interface Choice {
  id: number;
  label: string;
  prob: number | null;
}

/** The model's top-k predictions after the text's last token (the target and contrast pickers). */
export function topChoices(trace: Pick<Trace, "topk_ids" | "topk_probs" | "topk_tokens">): Choice[] {
  const t = trace.topk_ids.length - 1;
  if (t < 0) return [];
  const ids = Array.from(trace.topk_ids[t]);
  return ids.map((id, j) => ({ id, label: trace.topk_tokens[t][j], prob: trace.topk_probs[t][j] ?? null }));
}

/** Each segment's score over the whole target (rows summed: log-probs of a span add). */
export function totals(result: Pick<WhyResult, "scores" | "segments">): number[] {
  const out = new Array<number>(result.segments.length).fill(0);
  for (const row of result.scores) row.forEach((v, j) => (out[j] += v ?? 0));
  return out;
}

export interface DisplayOptions {
  abs: boolean;
  normalise: boolean;
}

/** The shown values: |·| if asked, divided by the largest magnitude if normalised (then in [-1, 1]). */
export function displayScores(values: number[], opts: DisplayOptions): number[] {
  let out = opts.abs ? values.map(Math.abs) : values.slice();
  if (opts.normalise) {
    const m = Math.max(0, ...out.map(Math.abs));
    out = out.map((v) => (m > 0 ? v / m : 0));
  }
  return out;
}

/** Diverging colour of v on [-max, max]: red positive, blue negative, white at 0 (RdBu). */
export function divergingColour(v: number, max: number): string {
  const t = max > 0 ? Math.max(-1, Math.min(1, v / max)) : 0;
  return interpolateRdBu(0.5 - 0.5 * t);
}

/** A score as shown (3 decimals, signed): what the page's numbers are compared against. */
export function scoreText(v: number): string {
  const s = v.toFixed(3);
  return v >= 0 && !s.startsWith("-") ? `+${s}` : s === "-0.000" ? "+0.000" : s;
}

export interface Limits {
  lo: number;
  hi: number;
}

/** y limits of the faithfulness chart: every curve and the random band, padded a little. */
export function curveLimits(f: WhyFaithfulness): Limits {
  const xs: number[] = [];
  const push = (a: (number | null)[]) => a.forEach((v) => v !== null && Number.isFinite(v) && xs.push(v));
  push(f.deletion);
  push(f.insertion);
  for (const b of [f.random_deletion, f.random_insertion]) {
    push(b.mean.map((m, i) => (m === null || b.std[i] === null ? null : m - (b.std[i] as number))));
    push(b.mean.map((m, i) => (m === null || b.std[i] === null ? null : m + (b.std[i] as number))));
  }
  if (!xs.length) return { lo: 0, hi: 1 };
  let lo = Math.min(...xs);
  let hi = Math.max(...xs);
  if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
  const pad = (hi - lo) * 0.05;
  return { lo: lo - pad, hi: hi + pad };
}

/** SVG polyline points of a curve over k/n ∈ [0, 1] in a w × h box (nulls skipped). */
export function curvePoints(values: (number | null)[], w: number, h: number, lim: Limits): string {
  const n = Math.max(1, values.length - 1);
  const y = (v: number) => h - ((v - lim.lo) / (lim.hi - lim.lo)) * h;
  return values
    .map((v, k) => (v === null ? null : `${((k / n) * w).toFixed(2)},${y(v).toFixed(2)}`))
    .filter((p) => p !== null)
    .join(" ");
}

/** SVG polygon points of the band mean ± std. */
export function bandPoints(mean: (number | null)[], std: (number | null)[], w: number, h: number, lim: Limits): string {
  const hi = mean.map((m, i) => (m === null || std[i] === null ? null : m + (std[i] as number)));
  const lo = mean.map((m, i) => (m === null || std[i] === null ? null : m - (std[i] as number)));
  const top = curvePoints(hi, w, h, lim);
  const bottom = curvePoints(lo, w, h, lim).split(" ").reverse().join(" ");
  return top && bottom ? `${top} ${bottom}` : "";
}
