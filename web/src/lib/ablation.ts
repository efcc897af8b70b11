/** The Why tab's prompt ablation (WhyAblation.svelte): the request body, the form's checks, the result's
 * rows (original first; sorted by KL or by the target's change), the regeneration's word diff and the
 * per-layer residual-norm sparkline. The numbers come from the server (lmpeek.ablate_prompt); these only
 * arrange and format them. */
import type { AblateRequest, WhyAblationResult, WhyAblationVariant } from "./api-types";
import { isNum } from "./charts";

export { estimateText, fraction } from "./job.svelte";

export type AblationVariant = WhyAblationVariant;

export type AblationResult = WhyAblationResult;

export const MAX_VARIANTS = 64; // written variants (server/routes_ablation.py)
export const MAX_NEW_TOKENS = 64;

/** A variant the user writes: its text and an optional label. */
export interface VariantRow {
  label: string;
  text: string;
}

/** The automatic variants on offer: what each asks of the server. */
export const AUTO_CHOICES = [
  { id: "none", label: "none", auto: null, replace_with: "pad" },
  { id: "sentences", label: "drop each sentence", auto: "sentences", replace_with: "pad" },
  { id: "words", label: "drop each word", auto: "words", replace_with: "pad" },
  { id: "pad", label: "replace each word with pad", auto: "replace", replace_with: "pad" },
  { id: "plausible", label: "replace each word with a plausible token", auto: "replace", replace_with: "plausible" },
] as const;
export type AutoChoice = (typeof AUTO_CHOICES)[number]["id"];

export interface AblationParams {
  prompt: string;
  rows: VariantRow[];
  auto: AutoChoice;
  target: number | null;
  maxNewTokens: number;
  seed: number;
}

/** The rows that go to the server: blank texts left out, blank labels dropped (the server labels them
 * by their text). */
export function writtenVariants(rows: VariantRow[]): { text: string; label?: string }[] {
  return rows.filter((r) => r.text.trim() !== "").map((r) => (r.label.trim() ? { text: r.text, label: r.label.trim() } : { text: r.text }));
}

/** POST /api/why/ablate's body: no target key for the model's top prediction, no auto for "none". */
export function requestBody(p: AblationParams): AblateRequest {
  const choice = AUTO_CHOICES.find((c) => c.id === p.auto) ?? AUTO_CHOICES[0];
  const out: AblateRequest = { prompt: p.prompt, variants: writtenVariants(p.rows), max_new_tokens: p.maxNewTokens, top_k: 5 };
  if (choice.auto !== null) {
    out.auto = choice.auto;
    out.replace_with = choice.replace_with;
    if (choice.replace_with === "plausible") out.seed = p.seed;
  }
  if (p.target !== null) out.target = p.target;
  return out;
}

/** Why Run is off ("" when the form can run): what the server would refuse, said before asking. */
export function formProblem(p: AblationParams): string {
  if (!p.prompt.trim()) return "write a prompt";
  const n = writtenVariants(p.rows).length;
  if (n === 0 && p.auto === "none") return "write a variant or choose automatic variants";
  if (n > MAX_VARIANTS) return `at most ${MAX_VARIANTS} variants (${n} written)`;
  if (!Number.isInteger(p.maxNewTokens) || p.maxNewTokens < 0 || p.maxNewTokens > MAX_NEW_TOKENS) return `regenerate 0 to ${MAX_NEW_TOKENS} tokens`;
  return "";
}

// ---- the result's rows --------------------------------------------------------------------------------

export interface Row {
  /** 0 for the original, then the variants in the server's order */
  index: number;
  original: boolean;
  v: AblationVariant;
  /** the target's probability minus the original's */
  deltaProb: number | null;
}

export type SortKey = "order" | "kl" | "change";

/** The original first, then the variants: in the server's order, by KL (largest first) or by the
 * target's change (largest drop of log p first); a missing value (null: inf/NaN) goes last. */
export function rows(result: Pick<AblationResult, "original" | "variants">, sort: SortKey = "order"): Row[] {
  const p0 = result.original.target_prob;
  const row = (v: AblationVariant, index: number): Row => ({
    index,
    original: index === 0,
    v,
    deltaProb: isNum(v.target_prob) && isNum(p0) ? v.target_prob - p0 : null,
  });
  const vs = result.variants.map((v, i) => row(v, i + 1));
  const key = (r: Row): number | null => (sort === "kl" ? (isNum(r.v.kl) ? -r.v.kl : null) : sort === "change" ? (isNum(r.v.delta_logprob) ? r.v.delta_logprob : null) : r.index);
  if (sort !== "order") {
    vs.sort((a, b) => {
      const ka = key(a);
      const kb = key(b);
      if (ka === null || kb === null) return ka === null ? (kb === null ? a.index - b.index : 1) : -1;
      return ka - kb || a.index - b.index;
    });
  }
  return [row(result.original, 0), ...vs];
}

/** The top-n tokens with their probabilities. */
export function topTokens(v: Pick<AblationVariant, "topk_tokens" | "topk_probs">, n = 3): { token: string; prob: number | null }[] {
  return v.topk_tokens.slice(0, n).map((token, j) => ({ token, prob: v.topk_probs[j] ?? null }));
}

/** A probability as shown: a percentage with one decimal from 0.1 %, else 2 significant digits in
 * exponent form (a random model's probabilities are tiny, and "<0.1%" would hide every change). */
export function probText(p: number | null | undefined): string {
  if (p === null || p === undefined || !Number.isFinite(p)) return "–";
  if (p >= 0.001) return `${(p * 100).toFixed(1)}%`;
  return p === 0 ? "0" : p.toExponential(1);
}

/** A shown probability read back (for tests): "12.3%" -> 0.123, "4.5e-5" -> 4.5e-5. */
export function parseProb(s: string): number | null {
  if (s === "–") return null;
  return s.endsWith("%") ? parseFloat(s) / 100 : parseFloat(s);
}

/** A signed number with 3 decimals ("+0.123", "-1.500"; "–" when missing). */
export function signed(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const s = v.toFixed(digits);
  if (/^-0\.?0*$/.test(s)) return `+${s.slice(1)}`; // a tiny negative rounds to zero: no sign flip shown
  return v >= 0 ? `+${s}` : s;
}

/** KL as shown: 3 decimals ("–" when missing). */
export function klText(v: number | null | undefined): string {
  return v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(3);
}

// ---- the regeneration's word diff --------------------------------------------------------------------

export interface DiffPart {
  op: "=" | "-" | "+";
  text: string;
}

/** The server's word diff as parts to draw: kept words plain, removed ones struck through, added ones
 * marked. Parts are whole runs of words; the view puts a space between them. */
export function diffParts(diff: [string, string][]): DiffPart[] {
  return diff.filter(([, w]) => w !== "").map(([op, text]) => ({ op: op === "-" || op === "+" ? op : "=", text }));
}

/** The diff as wdiff text (what `lmpeek ablate` prints): [-removed-] {+added+}. */
export function diffText(diff: [string, string][]): string {
  return diffParts(diff)
    .map((p) => (p.op === "=" ? p.text : p.op === "-" ? `[-${p.text}-]` : `{+${p.text}+}`))
    .join(" ");
}

/** Whether the regeneration changed at all. */
export function changed(diff: [string, string][]): boolean {
  return diff.some(([op, w]) => op !== "=" && w !== "");
}

// ---- the per-layer residual-norm sparkline -------------------------------------------------------------

/** The largest |value| over every row's series (one scale for the whole table, so bars compare across
 * rows); at least a tiny positive number. */
export function sharedMax(series: (number | null)[][]): number {
  let m = 0;
  for (const s of series) for (const v of s) if (isNum(v)) m = Math.max(m, Math.abs(v));
  return Math.max(m, 1e-9);
}

export interface SparkBar {
  i: number;
  x: number;
  y: number;
  w: number;
  h: number;
  v: number | null;
}

/** Signed bars from a middle zero line in a width × height box, |v| = max filling half the height; a
 * missing value (null) gets a full-height box, drawn hatched, never a bar of 0. */
export function sparkBars(values: (number | null)[], max: number, width: number, height: number): SparkBar[] {
  const n = Math.max(1, values.length);
  const bw = width / n;
  const mid = height / 2;
  return values.map((raw, i) => {
    const x = i * bw + 0.5;
    const w = Math.max(1, bw - 1);
    if (!isNum(raw)) return { i, x, y: 0, w, h: height, v: null };
    const h = (Math.min(Math.abs(raw), max) / max) * mid;
    return { i, x, y: raw >= 0 ? mid - h : mid, w, h, v: raw };
  });
}

/** A hook as a layer's short name for the sparkline's tooltip: "blocks.3.hook_resid_pre" -> "L3 in",
 * the last hook_resid_post -> "L5 out". */
export function layerName(hook: string): string {
  const m = /^blocks\.(\d+)\.hook_resid_(pre|post)$/.exec(hook);
  return m ? `L${m[1]} ${m[2] === "pre" ? "in" : "out"}` : hook;
}
