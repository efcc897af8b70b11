/** The Why tab's pure helpers: request parameters, the attribution stream's events, the display of
 * signed scores (|·| and normalisation are display options only: the server's scores are signed and
 * additive) and the faithfulness curves' geometry. The numbers themselves come from the server. */
import { interpolateRdBu } from "d3-scale-chromatic";
import type { WhyFaithfulness, WhyResult } from "./api-types";
import type { Edit, InterventionRequest } from "./actions.svelte";
import type { Trace } from "./types";

export type { WhyFaithfulness, WhyMethods, WhyResult } from "./api-types";
export { estimateText, fraction } from "./job.svelte";

/** POST /api/why/attribute's body. target / contrast: token ids (from the model's top-k), null = the
 * model's top prediction / no contrast. A span target instead: `span` (a continuation, teacher-forced)
 * or `generate` (the model's greedy continuation of N tokens), one row each. `spans`: features =
 * "spans", [start_char, end_char) ranges of the text (tokens outside them are never perturbed). */
export interface WhyParams {
  text: string;
  target: number | null;
  contrast: number | null;
  method: string;
  features: string;
  steps: number | null;
  faithfulness: boolean;
  span?: string | null;
  generate?: number | null;
  score?: Score;
  spans?: [number, number][] | null;
}

export type Score = "logprob" | "prob" | "logit";
export const SCORES: { id: Score; label: string }[] = [
  { id: "logprob", label: "log-prob" },
  { id: "prob", label: "probability" },
  { id: "logit", label: "logit" },
];

/** The request body: no target/contrast/steps/span keys when not chosen (the server's defaults); a span
 * target drops target and contrast (they explain one next token), the score is sent when not log-prob. */
export function requestBody(p: WhyParams): Record<string, unknown> {
  const out: Record<string, unknown> = { text: p.text, method: p.method, features: p.features, faithfulness: p.faithfulness };
  const spanTarget = (p.span ?? null) !== null || (p.generate ?? null) !== null;
  if (p.target !== null && !spanTarget) out.target = p.target;
  if (p.contrast !== null && !spanTarget) out.contrast = p.contrast;
  if (p.steps !== null) out.steps = p.steps;
  if (p.span) out.span = p.span;
  else if (p.generate) out.generate = p.generate;
  if (p.score && p.score !== "logprob") out.score = p.score;
  if (p.features === "spans") out.spans = (p.spans ?? []).map(([a, b]) => [a, b]);
  return out;
}

// ---- user-drawn spans: the prompt's tokens as chips, dragged over to group them -------------------

/** A drawn span: tokens first..end-1 of the prompt. */
export type TokenRange = [number, number];

/** The spans after dragging from token `a` to token `b` (either order): the new span replaces every
 * span it overlaps; the result is sorted. Template tokens (`template[t]`) end a span: a drag over one
 * keeps the part before it (a span may not cross a chat turn). */
export function addSpan(spans: TokenRange[], a: number, b: number, template: boolean[] = []): TokenRange[] {
  let lo = Math.min(a, b);
  let hi = Math.max(a, b) + 1;
  const cut = template.findIndex((t, i) => t && i >= lo && i < hi);
  if (cut === lo) return spans.slice();
  if (cut > lo) hi = cut;
  const kept = spans.filter(([s, e]) => e <= lo || s >= hi);
  return [...kept, [lo, hi] as TokenRange].sort((x, y) => x[0] - y[0]);
}

/** The spans without the one holding token `t`. */
export function removeSpanAt(spans: TokenRange[], t: number): TokenRange[] {
  return spans.filter(([s, e]) => t < s || t >= e);
}

/** Which span holds token t (-1: none). */
export function spanOf(spans: TokenRange[], t: number): number {
  return spans.findIndex(([s, e]) => t >= s && t < e);
}

/** Token ranges as the request's character ranges (what lmpeek's segments.py takes): from the first
 * token's start to the last token's end, by the trace's offsets into its (chat-formatted) text. */
export function charRanges(spans: TokenRange[], offsets: ArrayLike<[number, number]> | [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (const [s, e] of spans) {
    let start = Infinity;
    let end = -Infinity;
    for (let t = s; t < e; t++) {
      const [a, b] = offsets[t];
      if (b > a) {
        start = Math.min(start, a);
        end = Math.max(end, b);
      }
    }
    if (end > start) out.push([start, end]);
  }
  return out;
}

// ---- the token × input matrix of a span target ---------------------------------------------------

export interface Matrix {
  rows: string[]; // target tokens
  cols: string[]; // input segments
  values: number[][]; // [rows][cols], null read as 0
  rowTotals: number[]; // Σ over segments = F(x) − F(x') − δ of each target token
  colTotals: number[]; // Σ over the span = each segment's bar
  max: number; // the colour limit: the largest |cell|
}

/** The matrix a span's result draws: rows the target tokens, columns the segments, with totals. */
export function matrix(result: Pick<WhyResult, "scores" | "segments" | "target_labels">): Matrix {
  const values = result.scores.map((row) => row.map((v) => v ?? 0));
  const rowTotals = values.map((row) => row.reduce((a, v) => a + v, 0));
  const colTotals = totals(result);
  let max = 1e-12;
  for (const row of values) for (const v of row) max = Math.max(max, Math.abs(v));
  return { rows: result.target_labels.slice(), cols: result.segments.map((s) => s.label), values, rowTotals, colTotals, max };
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

// ---- bar actions: ablate / patch a segment's tokens (lib/actions.svelte.ts) ----------------------

/** Where a bar's ablate / patch acts: the residual stream entering block 0, i.e. the embeddings. */
export const EMBED_HOOK = "blocks.0.hook_resid_pre";

/** The token positions of segment j (its [first, end) range). */
export function segmentPositions(result: Pick<WhyResult, "segments">, j: number): number[] {
  const [a, b] = result.segments[j].tokens;
  return Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i);
}

/** The intervention a bar's "ablate" asks for: zero the segment's embeddings, run at once. */
export function ablateRequest(text: string, result: Pick<WhyResult, "segments">, j: number): InterventionRequest {
  const edit: Edit = { action: "ablate", hook: EMBED_HOOK, mode: "zero", positions: segmentPositions(result, j), label: `bar ${JSON.stringify(result.segments[j].label)}` };
  return { text, edits: [edit], run: true };
}

/** The intervention a bar's "patch…" asks for: prompt B's residual stream at the segment's positions. */
export function patchRequest(text: string, result: Pick<WhyResult, "segments">, j: number, source: string): InterventionRequest {
  const edit: Edit = { action: "patch", hook: EMBED_HOOK, source, positions: segmentPositions(result, j), label: `bar ${JSON.stringify(result.segments[j].label)}` };
  return { text, edits: [edit], run: true };
}
