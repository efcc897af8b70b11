/** The Why tab's Steering section: the request body from the form, and the display of the answer
 * (POST /api/why/steer, server/routes_steering.py). The numbers come from the server: Δ log-p[t] =
 * log p_steered(t) − log p_plain(t) of each steered token (both teacher-forced on the steered text),
 * KL[t] = KL(p_steered ‖ p_plain) of the distributions that chose it; this module only shapes them. */
import type { SteerNode, SteerRequest, WhySteerPlain, WhySteerResult, WhySteerRun } from "./api-types";
import { divergingColour } from "./why";

export type { SteerRequest } from "./api-types";

/** The result event (server/responses.py WhySteerResult) and its parts. */
export type SteerPlain = WhySteerPlain;
export type SteerRun = WhySteerRun;
export type SteerResult = WhySteerResult;

export type DirectionKind = "neuron" | "feature" | "mean_difference" | "node";
export type PositionsKind = "all" | "prompt" | "from";
export const POINTS = ["hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"] as const;
export type Point = (typeof POINTS)[number];

export const MODES = [
  { value: "add", label: "add", help: "x ← x + c·u: push along the direction" },
  { value: "project", label: "project", help: "x ← x − (x·u)u + c·u: set the component along u to c (c = 0 removes it)" },
  { value: "cap", label: "cap", help: "x ← x − max(0, x·u − c)·u: the component along u at most c" },
] as const;

/** What the form holds. layer null: the direction's own layer (a neuron's, a feature source's, a
 * node's), or the middle layer for a mean difference; point null: the direction's own point. A node
 * direction: the activation of `nodeText` ("": the prompt) at blocks.{nodeLayer}.{nodePoint}, token
 * `nodePosition` (negative: from the end). */
export interface SteerForm {
  prompt: string;
  kind: DirectionKind;
  neuronLayer: number;
  neuronIndex: number;
  source: string;
  featureIndex: number;
  positive: string;
  negative: string;
  nodeText: string;
  nodeLayer: number;
  nodePoint: Point;
  nodePosition: number;
  layer: number | null;
  point: Point | null;
  mode: "add" | "project" | "cap";
  strength: number;
  positions: PositionsKind;
  start: number;
  seed: number;
  maxNewTokens: number;
  temperature: number;
  sweep: boolean;
}

/** One prompt per non-blank line. */
export function promptLines(text: string): string[] {
  return text
    .split("\n")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** POST /api/why/steer's body. */
export function steerBody(f: SteerForm): SteerRequest {
  const direction =
    f.kind === "neuron"
      ? { kind: "neuron" as const, layer: f.neuronLayer, index: f.neuronIndex }
      : f.kind === "feature"
        ? { kind: "feature" as const, source: f.source, index: f.featureIndex }
        : f.kind === "node"
          ? nodeDirection(f)
          : { kind: "mean_difference" as const, positive: promptLines(f.positive), negative: promptLines(f.negative) };
  const body: SteerRequest = {
    prompt: f.prompt,
    direction,
    mode: f.mode,
    strength: f.strength,
    positions: f.positions,
    seed: f.seed,
    max_new_tokens: f.maxNewTokens,
    temperature: f.temperature,
    sweep: f.sweep,
  };
  if (f.layer !== null) body.layers = [f.layer];
  if (f.point !== null) body.point = f.point;
  if (f.positions === "from") body.start = f.start;
  return body;
}

/** A node direction as the server takes it (no `text`: the prompt's own activation). */
export function nodeDirection(f: Pick<SteerForm, "nodeText" | "nodeLayer" | "nodePoint" | "nodePosition">): SteerNode {
  const d: SteerNode = { kind: "node", hook: `blocks.${f.nodeLayer}.${f.nodePoint}`, position: f.nodePosition };
  if (f.nodeText.trim()) d.text = f.nodeText;
  return d;
}

/** The form's node fields from a node direction (a "steer…" request), or null for another kind. */
export function nodeFields(d: SteerRequest["direction"]): Pick<SteerForm, "nodeText" | "nodeLayer" | "nodePoint" | "nodePosition"> | null {
  if (d.kind !== "node") return null;
  const m = /^blocks\.(\d+)\.(hook_.+)$/.exec(d.hook);
  if (!m || !(POINTS as readonly string[]).includes(m[2])) return null;
  return { nodeText: d.text ?? "", nodeLayer: Number(m[1]), nodePoint: m[2] as Point, nodePosition: d.position };
}

/** The hook a flow-graph node writes (the direction "steer…" on it takes): MLP → hook_mlp_out,
 * attention → hook_attn_out, residual → hook_resid_post; the embedding has none to steer along. */
export function flowNodeHook(kind: string, layer: number): string | null {
  const point = kind === "mlp" ? "hook_mlp_out" : kind === "attn" ? "hook_attn_out" : kind === "resid" ? "hook_resid_post" : null;
  return point && layer >= 0 ? `blocks.${layer}.${point}` : null;
}

/** Why the form cannot run yet ("" when it can). */
export function formProblem(f: SteerForm): string {
  if (!f.prompt.trim()) return "write a prompt";
  if (f.kind === "feature" && !f.source) return "no feature source is served: pick a neuron or a mean difference";
  if (f.kind === "mean_difference" && (!promptLines(f.positive).length || !promptLines(f.negative).length))
    return "a mean difference needs at least one prompt on each side (one per line)";
  if (f.kind === "node" && !Number.isInteger(f.nodePosition)) return "pick the node's token";
  return "";
}

/** The five strengths a sweep runs (steering.SWEEP, with the sign of the strength). */
export const SWEEP = [0.25, 0.5, 1, 2, 4];
export function sweepStrengths(strength: number): number[] {
  const sign = strength < 0 ? -1 : 1;
  return SWEEP.map((s) => sign * s);
}

/** "c = 2 × 41.3 = 82.6" (c per hook: strength × that hook's mean norm over the prompt). */
export function cText(strength: number, norm: number | null): string {
  if (norm === null) return `c = ${fmtNum(strength)} × the layer's mean norm`;
  return `c = ${fmtNum(strength)} × ${fmtNum(norm)} = ${fmtNum(strength * norm)}`;
}

export function fmtNum(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e4 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toFixed(digits)).toString();
}

/** A Δ log-p as shown (signed, 3 decimals): what the page's numbers are checked against. */
export function deltaText(v: number | null): string {
  if (v === null) return "—";
  const s = v.toFixed(3);
  return s.startsWith("-") && s !== "-0.000" ? s : `+${s === "-0.000" ? "0.000" : s}`;
}

export function klText(v: number | null): string {
  return v === null ? "—" : v.toFixed(4);
}

/** The largest |value| (the colour scale's end; at least 1e-6 so that 0 maps to white). */
export function maxAbs(values: (number | null)[]): number {
  let m = 1e-6;
  for (const v of values) if (v !== null && Math.abs(v) > m) m = Math.abs(v);
  return m;
}

/** A token's background for its Δ log-p (diverging: red where steering made it likelier, blue less). */
export function deltaColour(v: number | null, max: number): string {
  return v === null ? "" : divergingColour(v, max);
}

/** The KL bar's width in [0, 1] of the run's largest KL. */
export function klFraction(v: number | null, max: number): number {
  return v === null || max <= 0 ? 0 : Math.min(1, Math.max(0, v / max));
}

/** Where the steered tokens part from the plain ones: per steered token, whether it differs from the
 * plain token at the same index (or has none there), and the first such index (-1: the same text). */
export function divergence(plain: number[], steered: number[]): { differs: boolean[]; first: number } {
  const differs = steered.map((id, i) => i >= plain.length || plain[i] !== id);
  let first = differs.indexOf(true);
  if (first < 0 && plain.length > steered.length) first = steered.length;
  return { differs, first };
}

export interface SweepRow {
  index: number;
  strength: number;
  c: number[];
  tokens: string[];
  differs: boolean[];
  first: number;
  meanKl: number | null;
  fluency: number | null;
  same: boolean;
}

/** The sweep table: one row per strength. */
export function sweepRows(r: Pick<SteerResult, "plain" | "runs">): SweepRow[] {
  return r.runs.map((run, index) => {
    const { differs, first } = divergence(r.plain.ids, run.ids);
    return { index, strength: run.strength, c: run.c, tokens: run.tokens, differs, first, meanKl: run.mean_kl, fluency: run.fluency, same: run.same };
  });
}

/** The hook the form steers at (as the server picks it: routes_steering / steering_job._hooks), so
 * that c can be shown in absolute units once a run measured that hook's norm. `sourceHook`: the
 * feature source's hook; null when unknown. */
export function formHook(f: SteerForm, nLayers: number, sourceHook: string | null): string | null {
  let own: [number, string] | null = null;
  if (f.kind === "neuron") own = [f.neuronLayer, "hook_resid_post"];
  else if (f.kind === "node") own = [f.nodeLayer, f.nodePoint];
  else if (f.kind === "mean_difference") own = [Math.floor(nLayers / 2), "hook_resid_pre"];
  else {
    const m = sourceHook ? /^blocks\.(\d+)\.(hook_.+)$/.exec(sourceHook) : null;
    if (!m) return null;
    own = [Number(m[1]), (POINTS as readonly string[]).includes(m[2]) ? m[2] : "hook_resid_pre"];
  }
  return `blocks.${f.layer ?? own[0]}.${f.point ?? own[1]}`;
}

/** The hook names shortened for display: "blocks.3.hook_resid_pre" -> "L3 resid_pre". */
export function hookLabel(hook: string): string {
  const m = /^blocks\.(\d+)\.hook_(.+)$/.exec(hook);
  return m ? `L${m[1]} ${m[2]}` : hook;
}
