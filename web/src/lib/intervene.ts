/**
 * The Why tab's "Ablate / patch" section (WhyIntervene) and the "ablate" / "patch…" actions the other
 * views offer (InterveneActions): the edits they build, their labels, the result's colours. The edits
 * are POST /api/why/intervene's (lib/actions.svelte.ts documents them); every number shown is the
 * server's (attribution/intervene_job.py).
 */
import { getContext, setContext } from "svelte";
import { interpolateRdBu } from "d3-scale-chromatic";
import type { Api } from "./api";
import { headHook, neuronHook, requestIntervention, type AblateDirection, type Edit } from "./actions.svelte";

export type { InterveneTop, InterveneResult } from "./api-types";

export const MAX_NEW_TOKENS = 64;

// ---- whether this page can run interventions (the live app: not an export or a notebook output)

const KEY = Symbol("lmpeek-interventions");

/** App: say whether the actions may be offered (only where the Why tab exists). */
export function allowInterventions(on: boolean): void {
  setContext(KEY, on);
}

/** A view: whether to show "ablate" / "patch…" (call during component init). */
export function interventionsAllowed(): boolean {
  return getContext<boolean | undefined>(KEY) === true;
}

// ---- the edits an action builds

export type Target =
  | { kind: "head"; layer: number; head: number }
  | { kind: "neuron"; layer: number; index: number }
  | { kind: "feature"; source: string; index: number }
  /** a whole vector at `hook` (blocks.L.hook_mlp_out, hook_resid_post, …), at `positions` (null: all) */
  | { kind: "hook"; hook: string; positions: number[] | null; label: string };

export function targetLabel(t: Target): string {
  if (t.kind === "head") return `head ${t.layer}.${t.head}`;
  if (t.kind === "neuron") return `neuron ${t.layer}.${t.index}`;
  if (t.kind === "feature") return `feature ${t.source}#${t.index}`;
  return t.label;
}

/** The edit "ablate" takes on `t` (zero; a feature: its decoded contribution removed). */
export function ablateEdit(t: Target): Edit {
  const label = targetLabel(t);
  if (t.kind === "head") return { action: "ablate", hook: headHook(t.layer), mode: "zero", index: t.head, label };
  if (t.kind === "neuron") return { action: "ablate", hook: neuronHook(t.layer), mode: "zero", index: t.index, label };
  if (t.kind === "feature") return { action: "ablate_feature", source_name: t.source, index: t.index, label };
  return { action: "ablate", hook: t.hook, mode: "zero", positions: t.positions, label };
}

/** The edit "patch…" takes on `t`: its value from prompt B (a neuron: resampled from B, the same thing). */
export function patchEdit(t: Target, source: string): Edit {
  const label = targetLabel(t);
  if (t.kind === "head") return { action: "patch", hook: headHook(t.layer), head: t.head, source, label };
  if (t.kind === "neuron") return { action: "ablate", hook: neuronHook(t.layer), mode: "resample", index: t.index, source, label };
  if (t.kind === "feature") throw new Error("a feature is ablated, not patched");
  return { action: "patch", hook: t.hook, positions: t.positions, source, label };
}

/** What an edit does, in words (the server's labels say the same: intervene_job.label_of). */
export function editLabel(e: Edit): string {
  const pos = e.positions?.length ? ` @ ${e.positions.slice(0, 6).join(",")}${e.positions.length > 6 ? "…" : ""}` : "";
  let what: string;
  if (e.action === "ablate_feature") what = `ablate feature ${e.source_name}#${e.index}`;
  else if (e.action === "patch") what = `patch ${e.hook}${e.head != null ? ` head ${e.head}` : ""} from B`;
  else what = `${e.mode ?? "zero"}-ablate ${e.hook}${e.index != null ? ` [${e.index}]` : ""}${e.direction ? ` along ${directionLabel(e.direction)}` : ""}`;
  return e.label ? `${e.label}: ${what}${pos}` : `${what}${pos}`;
}

/** A direction in words (intervene_job._direction_label says the same). */
export function directionLabel(d: AblateDirection): string {
  if (d.kind === "neuron") return `neuron ${d.layer}.${d.index}`;
  if (d.kind === "feature") return `feature ${d.source_name}#${d.index}`;
  return `node ${d.hook} @ #${d.position}${d.text ? " of another text" : ""}`;
}

/** The points a direction can be ablated at (residual-sized: [T, d_model]). */
export const DIRECTION_POINTS = ["hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"] as const;

/** "ablate a direction": the component of blocks.{layer}.{point} along `d` set to 0 / its mean over
 * the text / prompt B's (mode), at `positions` (null: all). */
export function directionEdit(layer: number, point: (typeof DIRECTION_POINTS)[number], d: AblateDirection, mode: "zero" | "mean" | "resample", positions: number[] | null, source: string | null): Edit {
  const direction = d.kind === "node" && !d.text?.trim() ? { kind: d.kind, hook: d.hook, position: d.position } : d;
  return { action: "ablate", hook: `blocks.${layer}.${point}`, mode, direction, positions, source };
}

/** The request body (no null / empty keys: the server's defaults). */
export function requestBody(text: string, edits: Edit[], maxNewTokens: number, topK: number): Record<string, unknown> {
  const clean = edits.map((e) => Object.fromEntries(Object.entries(e).filter(([, v]) => v !== null && v !== undefined && v !== "")) as Edit);
  return { text, edits: clean, max_new_tokens: maxNewTokens, top_k: topK };
}

/** "1, 3-5,9" → [1, 3, 4, 5, 9]; "" → null (every position); a bad part → undefined. */
export function parsePositions(s: string): number[] | null | undefined {
  const parts = s.split(",").map((p) => p.trim()).filter(Boolean);
  if (!parts.length) return null;
  const out: number[] = [];
  for (const p of parts) {
    const m = /^(\d+)(?:\s*[-–]\s*(\d+))?$/.exec(p);
    if (!m) return undefined;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a || b - a > 4096) return undefined;
    for (let i = a; i <= b; i++) out.push(i);
  }
  return out;
}

/** The text an action runs on: the trace's own text (the view shows a stored trace). */
export async function traceText(client: Pick<Api, "getTrace">, traceId: string): Promise<string> {
  return (await client.getTrace(traceId)).text;
}

/** Run `edit` on the trace's text in the Why tab. */
export async function act(client: Pick<Api, "getTrace">, traceId: string | null, text: string | null, edit: Edit): Promise<void> {
  const t = text ?? (traceId ? await traceText(client, traceId) : "");
  requestIntervention({ text: t, edits: [edit], run: !!t.trim() });
}

// ---- the result's display

/** Δ log p as a diverging colour: red where the edit lowered the actual token's probability, blue
 * where it raised it; `max` (> 0) is the scale's end (the largest |Δ| of the text). */
export function deltaColour(v: number | null, max: number): string {
  if (v === null || !Number.isFinite(v) || max <= 0) return "transparent";
  const x = Math.max(-1, Math.min(1, v / max));
  return interpolateRdBu(0.5 + x / 2);
}

/** The text colour over `deltaColour(v, max)`: white on the dark ends, else the page's own. */
export function deltaInk(v: number | null, max: number): string | null {
  return v !== null && Number.isFinite(v) && max > 0 && Math.abs(v) / max > 0.55 ? "#fff" : null;
}

/** The scale's end: the largest finite |Δ log p| (at least 1e-6). */
export function deltaMax(values: (number | null)[]): number {
  let m = 1e-6;
  for (const v of values) if (v !== null && Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  return m;
}
