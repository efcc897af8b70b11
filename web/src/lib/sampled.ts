/** The Generate panel's two distributions for one step: the one the token was drawn from (after
 * temperature, top-k, top-p) and the raw temperature-1 prediction, with the tokens the filters removed. */

export interface ProbRow {
  token: string;
  /** null: the model made it inf or NaN (shown as "–" with no bar) */
  prob: number | null;
  id?: number;
  /** extra classes: "chosen", "actual", "extra", "removed" */
  cls?: string;
  note?: string;
}

/** The fields of a generation step these rows are built from (see GenStep). */
export interface StepDists {
  token_id: number;
  topk_ids: number[];
  topk_probs: (number | null)[];
  topk_tokens: string[];
  sampled_topk_ids: number[];
  sampled_topk_probs: (number | null)[];
  sampled_topk_tokens?: string[];
}

/** A bar's width in percent of its track: probabilities on a fixed 0–100 % scale (never scaled to the
 * largest shown, which would make a 3 % winner look as sure as a 99 % one). */
export function barPercent(prob: number | null | undefined): number {
  if (prob === null || prob === undefined || !Number.isFinite(prob) || prob <= 0) return 0;
  return Math.min(1, prob) * 100;
}

/** Label of a token id: the server's label for the sampled list, else the raw list's, else the id. */
function labelOf(step: StepDists, id: number, i: number): string {
  const own = step.sampled_topk_tokens?.[i];
  if (own !== undefined) return own;
  const j = step.topk_ids.indexOf(id);
  return j >= 0 ? step.topk_tokens[j] : `#${id}`;
}

/** The distribution the token was drawn from, the drawn token marked "chosen". */
export function sampledRows(step: StepDists): ProbRow[] {
  return step.sampled_topk_ids.map((id, i) => ({
    id,
    token: labelOf(step, id, i),
    prob: step.sampled_topk_probs[i] ?? null,
    cls: id === step.token_id ? "chosen" : "",
  }));
}

/** The raw temperature-1 prediction; tokens absent from the sampled list were removed by the filters
 * (top-k / top-p, or greedy decoding) and could not be drawn. */
export function rawRows(step: StepDists): ProbRow[] {
  const kept = new Set(step.sampled_topk_ids);
  return step.topk_ids.map((id, i) => {
    const removed = !kept.has(id);
    const cls = [id === step.token_id ? "chosen" : "", removed ? "removed" : ""].filter(Boolean).join(" ");
    return { id, token: step.topk_tokens[i], prob: step.topk_probs[i] ?? null, cls, note: removed ? "filtered out" : "" };
  });
}
