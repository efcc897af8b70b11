/** The Why tab's patching grid (POST /api/why/patch): the request body, the grid as shown (the metric's
 * change, or a fraction of the whole B − A difference: a display option only, the server's values are
 * signed changes of the metric), its colour scale, each cell's readout, and the estimate-vs-real scatter
 * of attribution patching. The numbers themselves come from the server. */
import type { PatchRequest, WhyPatchCell, WhyPatchResult } from "./api-types";
import { scoreText } from "./why";

export type { PatchRequest } from "./api-types";

export type PatchCell = WhyPatchCell;

/** The stream's `result` (responses.WhyPatchResult). */
export type PatchResult = WhyPatchResult;

/** What is patched: a hook per position, or every head's output (hook_z) at all positions. */
export const HOOKS = [
  { id: "resid_pre", label: "residual stream", title: "each layer's input (hook_resid_pre) at one position" },
  { id: "attn_out", label: "attention output", title: "each layer's attention output (hook_attn_out) at one position" },
  { id: "mlp_out", label: "MLP output", title: "each layer's MLP output (hook_mlp_out) at one position" },
  { id: "heads", label: "heads (layer × head)", title: "one head's output (attn.hook_z) at every position" },
] as const;
export type HookChoice = (typeof HOOKS)[number]["id"];

export interface PatchParams {
  text: string;
  source: string;
  hook: HookChoice;
  target: number | null;
  contrast: number | null;
  method: "patch" | "attribution";
  verify: number;
}

/** The request body: "heads" is by="head"; no target/contrast keys when not chosen (A's top prediction,
 * no contrast); verify only for attribution patching. */
export function requestBody(p: PatchParams): PatchRequest {
  const heads = p.hook === "heads";
  const out: PatchRequest = { text: p.text, source: p.source, by: heads ? "head" : "position", method: p.method };
  if (!heads) out.hook = p.hook;
  if (p.target !== null) out.target = p.target;
  if (p.contrast !== null) out.contrast = p.contrast;
  if (p.method === "attribution") out.verify = p.verify;
  return out;
}

/** Why the prompts cannot be patched position by position (or head by head, at every position), or "". */
export function lengthProblem(a: number | null, b: number | null): string {
  if (a === null || b === null || a === b) return "";
  return `A has ${a} tokens and B ${b}: patching needs prompts of equal length (change words for words of as many tokens)`;
}

/** The whole B − A difference of the metric, M(B) − M(A), or null when there is none to divide by. */
export function fullDifference(r: Pick<PatchResult, "base" | "full">): number | null {
  if (r.base === null || r.full === null) return null;
  const d = r.full - r.base;
  return Math.abs(d) > 1e-9 ? d : null;
}

/** The grid as shown: the metric's change, or (fraction) that change over M(B) − M(A), null where
 * undefined (a non-finite value, or no difference to divide by). */
export function displayGrid(r: Pick<PatchResult, "grid" | "base" | "full">, fraction: boolean): (number | null)[][] {
  const d = fraction ? fullDifference(r) : 1;
  return r.grid.map((row) => row.map((v) => (v === null || d === null || !Number.isFinite(v) ? null : v / d)));
}

/** The colour scale's half-width: the largest |value| (1 when there is none), so 0 sits in the middle. */
export function symmetricMax(grid: (number | null)[][]): number {
  let m = 0;
  for (const row of grid) for (const v of row) if (v !== null && Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  return m > 0 ? m : 1;
}

/** A shown value: signed with 3 decimals, or a percentage of the B − A difference. */
export function valueText(v: number | null, fraction: boolean): string {
  if (v === null || !Number.isFinite(v)) return "–";
  if (!fraction) return scoreText(v);
  const s = (v * 100).toFixed(1);
  return `${v >= 0 && !s.startsWith("-") ? "+" : ""}${s === "-0.0" ? "0.0" : s}%`;
}

/** A cell's readout: layer, the column (token and position, or head) and the value. */
export function cellTitle(r: Pick<PatchResult, "by" | "columns" | "source_tokens" | "rows">, layer: number, column: number, value: number | null, fraction: boolean, unit: string): string {
  const where =
    r.by === "head"
      ? `head ${column}`
      : `position ${column} ${JSON.stringify(r.columns[column] ?? "")}${r.source_tokens[column] !== undefined && r.source_tokens[column] !== r.columns[column] ? ` (B: ${JSON.stringify(r.source_tokens[column])})` : ""}`;
  return `layer ${layer} · ${where} · ${fraction ? "of B − A" : unit} ${valueText(value, fraction)}`;
}

/** Keys "layer:column" of the verified cells (outlined in the grid). */
export function verifiedKeys(r: Pick<PatchResult, "verified">): Set<string> {
  return new Set((r.verified ?? []).map((c) => `${c.layer}:${c.column}`));
}

/** Columns where B's token differs from A's (by position): what the patch can carry. */
export function differing(r: Pick<PatchResult, "tokens" | "source_tokens">): boolean[] {
  return r.tokens.map((t, i) => r.source_tokens[i] !== t);
}

export interface ScatterPoint {
  x: number;
  y: number;
  cell: PatchCell;
}

/** Estimate (x) vs real (y) in a size × size box on one shared, padded scale (so y = x is the
 * diagonal from the bottom left to the top right); `lo`/`hi` are the scale's ends. */
export function scatter(cells: PatchCell[], size: number): { points: ScatterPoint[]; lo: number; hi: number } {
  const vals = cells.flatMap((c) => [c.estimate, c.real]).filter((v) => Number.isFinite(v));
  let lo = vals.length ? Math.min(0, ...vals) : -1;
  let hi = vals.length ? Math.max(0, ...vals) : 1;
  if (hi - lo < 1e-9) [lo, hi] = [lo - 1, hi + 1];
  const pad = (hi - lo) * 0.06;
  lo -= pad;
  hi += pad;
  const at = (v: number) => ((v - lo) / (hi - lo)) * size;
  return { points: cells.map((c) => ({ x: at(c.estimate), y: size - at(c.real), cell: c })), lo, hi };
}
