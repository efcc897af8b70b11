/** What the Explore view colours tokens by, as pure functions of a trace. */
import type { ColorMap, Range, Value } from "./color";
import { valueRange } from "./color";
import { computeLimits, type Scale } from "./scale";
import type { Component, Limits, Trace } from "./types";

export type Metric =
  | "loss"
  | "entropy"
  | "prob"
  | "norm"
  | "attn-from"
  | "attn-to"
  | "act-norm"
  | "act-abssum"
  | "act-value"
  | "cos-tokens"
  | "cos-previous"
  | "cos-residual"
  | "neuron";

/** What a metric fetches from the server (per trace), besides the trace summaries. */
export type Remote = "attention" | "activations" | "similarity" | "neuron";

export interface MetricInfo {
  value: Metric;
  label: string;
  map: ColorMap | "diverging";
  /** what the value at token t means (tooltip) */
  help: string;
  /** needs an attention row/column from the server */
  attention?: "query" | "key";
  /** fetched from the server */
  remote?: Remote;
  /** reads the selected hook point (and its head, for per-head points) */
  hook?: boolean;
  /** negative and positive values: diverging colours, divider at 0 */
  signed?: boolean;
  /** the scale select applies */
  scaled?: boolean;
  /** depends on the selected token */
  bySelected?: boolean;
}

export const METRICS: MetricInfo[] = [
  // each token shows the prediction that produced it (made at the previous position), as in Generate
  { value: "loss", label: "loss of this token", map: "reds", help: "loss of this token (−log p, predicted at the previous position)" },
  { value: "entropy", label: "entropy of its prediction", map: "purples", help: "entropy of the prediction of this token" },
  { value: "prob", label: "prob. of this token", map: "greens", help: "probability the previous position gave this token" },
  { value: "norm", label: "norm", map: "oranges", help: "norm" },
  { value: "attn-from", label: "attention from selected", map: "blues", help: "attention from selected", attention: "query" },
  { value: "attn-to", label: "opposite attention (to selected)", map: "blues", help: "attention to selected", attention: "key" },
  { value: "act-norm", label: "activation: norm", map: "oranges", help: "‖x‖", remote: "activations", hook: true, scaled: true },
  { value: "act-abssum", label: "activation: sum |x|", map: "oranges", help: "Σ|x|", remote: "activations", hook: true, scaled: true },
  { value: "act-value", label: "activation: value of dim", map: "diverging", help: "x[dim]", remote: "activations", hook: true, scaled: true, signed: true },
  { value: "cos-tokens", label: "similarity: to selected token", map: "diverging", help: "cos(x_t, x_selected)", remote: "similarity", hook: true, scaled: true, signed: true, bySelected: true },
  { value: "cos-previous", label: "similarity: to previous layer", map: "diverging", help: "cos(x_t, same hook one layer earlier)", remote: "similarity", hook: true, scaled: true, signed: true },
  { value: "cos-residual", label: "similarity: to residual it adds to", map: "diverging", help: "cos(x_t, residual stream)", remote: "similarity", hook: true, scaled: true, signed: true },
  { value: "neuron", label: "MLP neuron", map: "diverging", help: "neuron activation", remote: "neuron", scaled: true, signed: true },
];
METRICS.find((m) => m.value === "norm")!.scaled = true;
for (const m of METRICS) if (m.attention) (m.remote = "attention"), (m.bySelected = true);

export function metricInfo(m: Metric): MetricInfo {
  return METRICS.find((x) => x.value === m)!;
}

export function normKey(layer: number, component: Component): string {
  return `blocks.${layer}.hook_${component}`;
}

export interface MetricArgs {
  layer: number;
  /** the summary component holding the norm at the selected hook point (null: fetched as act-norm) */
  component: Component | null;
  selected: number;
  /** the attention row (attn-from) or column (attn-to) for `selected`, length T */
  pattern?: ArrayLike<number> | null;
  /** values fetched from the server for remote metrics (length T) */
  remote?: ArrayLike<number | null> | null;
}

/**
 * The metric's value for every token (undefined where it has none: the first token's loss, entropy and
 * probability (nothing predicts it), keys after the selected query, queries before the selected key,
 * attention not fetched yet).
 */
export function metricValues(trace: Trace, metric: Metric, args: MetricArgs): Value[] {
  const T = trace.tokens.length;
  const out: Value[] = new Array(T).fill(undefined);
  const fromArray = (a: ArrayLike<number | null> | undefined) => {
    if (!a) return;
    for (let t = 0; t < T && t < a.length; t++) out[t] = a[t] ?? undefined;
  };
  // the summary arrays are indexed by the position that predicts: token t shows position t-1's
  const ofPrediction = (a: ArrayLike<number | null>) => {
    for (let t = 1; t < T && t - 1 < a.length; t++) out[t] = a[t - 1] ?? undefined;
  };
  switch (metric) {
    case "loss":
      ofPrediction(trace.loss);
      break;
    case "entropy":
      ofPrediction(trace.entropy);
      break;
    case "prob":
      ofPrediction(trace.true_prob);
      break;
    case "norm":
      if (args.component) fromArray(trace.norms[normKey(args.layer, args.component)]);
      else fromArray(args.remote ?? undefined);
      break;
    case "attn-from": {
      const p = args.pattern;
      if (!p) break;
      for (let k = 0; k <= args.selected && k < T; k++) out[k] = p[k];
      break;
    }
    case "attn-to": {
      const p = args.pattern;
      if (!p) break;
      for (let q = args.selected; q < T; q++) out[q] = p[q];
      break;
    }
    default:
      fromArray(args.remote ?? undefined);
  }
  return out;
}

/** The colour range: attention starts at 0 (it is a share), everything else spans what is shown. */
export function metricRange(metric: Metric, values: Value[]): Range | null {
  const r = valueRange(values);
  if (r === null) return null;
  if (metric === "attn-from" || metric === "attn-to") return { min: 0, max: Math.max(r.max, 1e-9) };
  return r;
}

/** Colour limits for a metric: attention from 0; the scale select for activation-like metrics; else min-max. */
export function metricLimits(metric: Metric, values: Value[], scale: Scale): Limits | null {
  const info = metricInfo(metric);
  if (info.attention) {
    const r = valueRange(values);
    if (!r) return null;
    const max = Math.max(r.max, 1e-9);
    return { min: 0, divider: max / 2, max };
  }
  return computeLimits(values, info.scaled ? scale : "minmax", !!info.signed);
}

export interface FetchArgs {
  hook: string;
  head: number | null;
  layer: number;
  selected: number;
  dim: number;
  neuron: number;
  scale: Scale;
  rope: string;
  /** the norm metric at a point the trace summary lacks */
  normRemote: boolean;
}

/** A cache key for what a metric fetches (null: nothing to fetch). Includes only what the fetch reads. */
export function remoteKey(traceId: string, metric: Metric, a: FetchArgs): string | null {
  const info = metricInfo(metric);
  const h = `${a.hook}|${a.head ?? ""}`;
  switch (info.remote) {
    case "attention":
      return `${traceId}|attn|${a.layer}|${a.head ?? 0}|${info.attention}|${a.selected}|${a.rope}`;
    case "activations":
      return `${traceId}|act|${metric}|${h}|${metric === "act-value" ? a.dim : ""}`;
    case "similarity":
      return `${traceId}|sim|${metric}|${h}|${metric === "cos-tokens" ? a.selected : ""}`;
    case "neuron":
      return `${traceId}|neuron|${a.layer}|${a.neuron}`;
  }
  if (metric === "norm" && a.normRemote) return `${traceId}|act|act-norm|${h}|`;
  return null;
}

export interface PredRow {
  token: string;
  id: number;
  prob: number;
  /** the token that actually came (the selected token itself) */
  actual: boolean;
  /** not among the top n: appended so the actual token is always shown */
  extra: boolean;
}

/**
 * The prediction that produced token t: the top-n made at position t-1, token t itself marked (appended
 * with its probability if it is not among them). The first token has none: []. Metrics of the same
 * prediction (loss, probability, entropy) are those of predictionStats.
 */
export function predictionRows(trace: Trace, t: number, n = 5): PredRow[] {
  if (t < 1 || t >= trace.token_ids.length) return [];
  const at = t - 1;
  const ids = trace.topk_ids[at] ?? [];
  const probs = trace.topk_probs[at] ?? [];
  const toks = trace.topk_tokens[at] ?? [];
  const id = trace.token_ids[t];
  const rows: PredRow[] = [];
  for (let i = 0; i < Math.min(n, ids.length); i++) {
    rows.push({ token: toks[i], id: ids[i], prob: probs[i], actual: ids[i] === id, extra: false });
  }
  if (!rows.some((r) => r.actual)) {
    rows.push({ token: trace.tokens[t], id, prob: trace.true_prob[at] ?? NaN, actual: true, extra: true });
  }
  return rows;
}

/** Loss, probability and entropy of the prediction that produced token t (null for the first token). */
export function predictionStats(trace: Trace, t: number): { loss: number | null; prob: number | null; entropy: number | null } | null {
  if (t < 1 || t >= trace.token_ids.length) return null;
  return { loss: trace.loss[t - 1] ?? null, prob: trace.true_prob[t - 1] ?? null, entropy: trace.entropy[t - 1] ?? null };
}

/** Clamp an integer input to [0, n-1]; NaN -> 0. */
export function clampIndex(v: number, n: number): number {
  if (!Number.isFinite(v) || n <= 0) return 0;
  return Math.min(n - 1, Math.max(0, Math.round(v)));
}

/** Mean of a [layer][head] matrix (mean attention entropy of one generated token). */
export function mean2d(m: number[][]): number {
  let s = 0;
  let n = 0;
  for (const row of m) for (const v of row) if (Number.isFinite(v)) (s += v), n++;
  return n ? s / n : NaN;
}

/** True when keyboard focus is in something that takes arrow keys for itself. */
export function isTextField(el: Element | null): boolean {
  if (!el) return false;
  const tag = el.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT") return true;
  if (tag === "INPUT") {
    const type = (el as HTMLInputElement).type;
    return !["button", "checkbox", "radio", "submit", "reset"].includes(type);
  }
  return (el as HTMLElement).isContentEditable === true;
}
