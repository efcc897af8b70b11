/** What the Explore view colours tokens by. Values and colour scales come from the server's one route
 * (GET /api/traces/{id}/metric); this module only names the metrics and what each request reads. */
import type { ColorMap, Value } from "./color";
import type { Scale } from "./scale";
import type { ColourScale, Trace } from "./types";

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

export interface MetricInfo {
  value: Metric;
  label: string;
  /** the sequential map for one-signed values; signed ones (the server's scale says diverging) use the diverging map */
  map: ColorMap;
  /** what the value at token t means (tooltip) */
  help: string;
  /** needs an attention row/column from the server */
  attention?: "query" | "key";
  /** reads the selected hook point (and its head, for per-head points) */
  hook?: boolean;
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
  { value: "act-norm", label: "activation: norm", map: "oranges", help: "‖x‖", hook: true },
  { value: "act-abssum", label: "activation: sum |x|", map: "oranges", help: "Σ|x|", hook: true },
  { value: "act-value", label: "activation: value of dim", map: "oranges", help: "x[dim]", hook: true },
  { value: "cos-tokens", label: "similarity: to selected token", map: "oranges", help: "cos(x_t, x_selected)", hook: true, bySelected: true },
  { value: "cos-previous", label: "similarity: to previous layer", map: "oranges", help: "cos(x_t, same hook one layer earlier)", hook: true },
  { value: "cos-residual", label: "similarity: to residual it adds to", map: "oranges", help: "cos(x_t, residual stream)", hook: true },
  { value: "neuron", label: "MLP neuron", map: "oranges", help: "neuron activation" },
];
for (const m of METRICS) if (m.attention) m.bySelected = true;

export function metricInfo(m: Metric): MetricInfo {
  return METRICS.find((x) => x.value === m)!;
}

export interface FetchArgs {
  hook: string;
  head: number | null;
  layer: number;
  selected: number;
  dim: number;
  neuron: number;
  scale: Scale;
  skipFirst: boolean;
  rope: string;
}

/** The query of GET /api/traces/{id}/metric for a metric: only what that metric reads. */
export function metricQuery(metric: Metric, a: FetchArgs): Record<string, string | number | null> {
  const info = metricInfo(metric);
  const q: Record<string, string | number | null> = { name: metric, mode: a.scale, skip_first: String(a.skipFirst) };
  if (info.attention) Object.assign(q, { layer: a.layer, head: a.head ?? 0, token: a.selected, rope: a.rope });
  if (info.hook || metric === "norm") Object.assign(q, { hook: a.hook, head: a.head });
  if (metric === "act-value") q.dim = a.dim;
  if (metric === "cos-tokens") q.token = a.selected;
  if (metric === "neuron") Object.assign(q, { layer: a.layer, neuron: a.neuron });
  return q;
}

/** A cache key for a metric's request: the trace, the compared trace (joint limits) and the query. */
export function remoteKey(traceId: string, metric: Metric, a: FetchArgs, withId: string | null = null): string {
  const q = metricQuery(metric, a);
  return [traceId, withId ?? "", ...Object.keys(q).sort().map((k) => `${k}=${q[k] ?? ""}`)].join("|");
}

/** One pane's values as the token view reads them (null -> undefined: no colour). */
export function paneValues(values: ArrayLike<number | null> | undefined, T: number): Value[] {
  const out: Value[] = new Array(T).fill(undefined);
  if (values) for (let t = 0; t < T && t < values.length; t++) out[t] = values[t] ?? undefined;
  return out;
}

/** The colour map a scale is drawn with: diverging for signed values, the metric's sequential map otherwise. */
export function drawnMap(info: MetricInfo, scale: Pick<ColourScale, "kind"> | null): ColorMap | "diverging" {
  return scale?.kind === "diverging" ? "diverging" : info.map;
}

export interface PredRow {
  token: string;
  id: number;
  /** null: the model made it inf or NaN */
  prob: number | null;
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
    rows.push({ token: toks[i], id: ids[i], prob: probs[i] ?? null, actual: ids[i] === id, extra: false });
  }
  if (!rows.some((r) => r.actual)) {
    rows.push({ token: trace.tokens[t], id, prob: trace.true_prob[at] ?? null, actual: true, extra: true });
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

/** Mean of a [layer][head] matrix (mean attention entropy of one generated token) over its finite
 * values (null: inf/NaN left out); NaN when there is none. */
export function mean2d(m: ArrayLike<ArrayLike<number | null>>): number {
  let s = 0;
  let n = 0;
  for (let i = 0; i < m.length; i++) {
    const row = m[i];
    for (let j = 0; j < row.length; j++) {
      const v = row[j];
      if (v !== null && Number.isFinite(v)) (s += v), n++;
    }
  }
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
