/** Hook points: names, labels, which need a head, and the trace summaries that already hold a norm. */
import { COMPONENTS, type Component, type HookPoint } from "./types";

/** Used until /api/components answers (and if it never does): the residual-stream points. */
export const FALLBACK_POINTS: HookPoint[] = COMPONENTS.map((c) => ({
  hook: `blocks.{l}.hook_${c}`,
  point: `hook_${c}`,
  per_head: false,
  per_layer: true,
}));

export const DEFAULT_POINT = "blocks.{l}.hook_resid_post";

/** The full hook name at a layer: "blocks.{l}.hook_resid_post" at 3 -> "blocks.3.hook_resid_post". */
export function hookName(template: string, layer: number): string {
  return template.replaceAll("{l}", String(layer));
}

/** A short label for the select: "resid_post", "attn.q", "embed", "ln2.normalized (before gain)".
 * Norm points say which side of the gain they are (TransformerLens 4: `hook_normalized` is x / rms
 * before the gain, `hook_out` after it), since the two differ by the gain's scale. */
export function pointLabel(p: HookPoint): string {
  if (p.hook === "hook_embed") return "embed";
  const point = p.point ?? p.hook.replace(/^blocks\.\{l\}\./, "");
  const label = point.replace(/(^|\.)hook_/, "$1");
  const gain = /(^|\.)hook_normalized$/.test(point) ? " (before gain)" : /^(ln\w*)\.hook_out$/.test(point) ? " (after gain)" : "";
  return label + gain + (p.per_head ? " ·head" : "");
}

/** The trace-summary component a point's norm is stored under ("blocks.{l}.hook_attn_out" -> "attn_out"). */
export function summaryComponent(template: string): Component | null {
  const m = /^blocks\.\{l\}\.hook_(\w+)$/.exec(template);
  if (!m) return null;
  return (COMPONENTS as readonly string[]).includes(m[1]) ? (m[1] as Component) : null;
}

/** The component /api/compare takes for a point (resid_post when the point has none). */
export function compareComponent(template: string): Component {
  return summaryComponent(template) ?? "resid_post";
}

/** Points whose vector was added to a residual stream (cos-residual applies). */
export function addsToResidual(template: string): boolean {
  return /hook_attn_out$|hook_mlp_out$|attn\.hook_result$/.test(template);
}

export function findPoint(points: HookPoint[], template: string): HookPoint | undefined {
  return points.find((p) => p.hook === template);
}
