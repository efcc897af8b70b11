/** What the Explore view colours tokens by, as pure functions of a trace. */
import type { ColorMap, Range, Value } from "./color";
import { valueRange } from "./color";
import type { Component, Trace } from "./types";

export type Metric = "loss" | "entropy" | "prob" | "norm" | "attn-from" | "attn-to";

export interface MetricInfo {
  value: Metric;
  label: string;
  map: ColorMap;
  /** what the value at token t means (tooltip) */
  help: string;
  /** needs an attention row/column from the server */
  attention?: "query" | "key";
}

export const METRICS: MetricInfo[] = [
  { value: "loss", label: "loss (next token)", map: "reds", help: "loss of the next token" },
  { value: "entropy", label: "entropy", map: "purples", help: "entropy of the prediction" },
  { value: "prob", label: "prob. of next token", map: "greens", help: "probability of the next token" },
  { value: "norm", label: "norm", map: "oranges", help: "norm" },
  { value: "attn-from", label: "attention from selected", map: "blues", help: "attention from selected", attention: "query" },
  { value: "attn-to", label: "opposite attention (to selected)", map: "blues", help: "attention to selected", attention: "key" },
];

export function metricInfo(m: Metric): MetricInfo {
  return METRICS.find((x) => x.value === m)!;
}

export function normKey(layer: number, component: Component): string {
  return `blocks.${layer}.hook_${component}`;
}

export interface MetricArgs {
  layer: number;
  component: Component;
  selected: number;
  /** the attention row (attn-from) or column (attn-to) for `selected`, length T */
  pattern?: ArrayLike<number> | null;
}

/**
 * The metric's value for every token (undefined where it has none: the last token's loss, keys after
 * the selected query, queries before the selected key, attention not fetched yet).
 */
export function metricValues(trace: Trace, metric: Metric, args: MetricArgs): Value[] {
  const T = trace.tokens.length;
  const out: Value[] = new Array(T).fill(undefined);
  const fromArray = (a: ArrayLike<number | null> | undefined) => {
    if (!a) return;
    for (let t = 0; t < T && t < a.length; t++) out[t] = a[t] ?? undefined;
  };
  switch (metric) {
    case "loss":
      fromArray(trace.loss);
      break;
    case "entropy":
      fromArray(trace.entropy);
      break;
    case "prob":
      fromArray(trace.true_prob);
      break;
    case "norm":
      fromArray(trace.norms[normKey(args.layer, args.component)]);
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

export interface PredRow {
  token: string;
  id: number;
  prob: number;
  /** the token that actually came next */
  actual: boolean;
  /** not among the top n: appended so the actual token is always shown */
  extra: boolean;
}

/** The top-n predictions at t, the actual next token marked (appended with its probability if absent). */
export function predictionRows(trace: Trace, t: number, n = 5): PredRow[] {
  const ids = trace.topk_ids[t] ?? [];
  const probs = trace.topk_probs[t] ?? [];
  const toks = trace.topk_tokens[t] ?? [];
  const nextId = t + 1 < trace.token_ids.length ? trace.token_ids[t + 1] : undefined;
  const rows: PredRow[] = [];
  for (let i = 0; i < Math.min(n, ids.length); i++) {
    rows.push({ token: toks[i], id: ids[i], prob: probs[i], actual: ids[i] === nextId, extra: false });
  }
  if (nextId !== undefined && !rows.some((r) => r.actual)) {
    const p = trace.true_prob[t];
    rows.push({ token: trace.tokens[t + 1], id: nextId, prob: p ?? NaN, actual: true, extra: true });
  }
  return rows;
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
