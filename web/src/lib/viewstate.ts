/**
 * The page's view state in the URL's hash, so a reload or a shared link reopens the same view: which
 * view, the open Explore tabs (stored trace ids), the selected token and every control. Pure: a state
 * in, a string out, and back; decoding never trusts the string (unknown keys are ignored, numbers must be
 * non-negative integers, ids must look like trace ids).
 */

export interface ExploreState {
  /** open tabs, as stored trace ids, in order */
  traces: string[];
  /** the active tab (index into traces) */
  tab: number;
  /** the tab shown beside the active one (-1: none) */
  other: number;
  sideBySide: boolean;
  token: number;
  layer: number;
  head: number;
  /** hook point, e.g. "hook_resid_post" */
  hook: string;
  metric: string;
  dim: number;
  neuron: number;
  scale: string;
  rope: string;
}

export interface ViewState {
  view: "generate" | "explore" | "attention";
  explore: Partial<ExploreState>;
}

const TRACE_ID = /^[0-9a-f]{8,64}$/;
const NAME = /^[A-Za-z0-9_.{}\-]{1,80}$/; // hook points look like "blocks.{l}.hook_resid_post"
const INT_KEYS = ["tab", "other", "token", "layer", "head", "dim", "neuron"] as const;
const NAME_KEYS = ["hook", "metric", "scale", "rope"] as const;

/** "#view=explore&traces=a1b2…,c3d4…&tab=1&token=5&…" (without the leading "#"). */
export function encodeViewState(s: ViewState): string {
  const q = new URLSearchParams();
  q.set("view", s.view);
  const e = s.explore;
  if (e.traces && e.traces.length) q.set("traces", e.traces.join(","));
  for (const k of INT_KEYS) {
    const v = e[k];
    if (v !== undefined && Number.isInteger(v) && v >= 0) q.set(k, String(v));
  }
  if (e.sideBySide) q.set("sbs", "1");
  for (const k of NAME_KEYS) {
    const v = e[k];
    if (v !== undefined && v !== "") q.set(k, v);
  }
  return q.toString();
}

function int(v: string | null): number | undefined {
  if (v === null || !/^\d{1,9}$/.test(v)) return undefined;
  return Number(v);
}

/** The state a hash describes (with or without its "#"); what is missing or malformed is left out. */
export function decodeViewState(hash: string, fallbackView: ViewState["view"] = "generate"): ViewState {
  const q = new URLSearchParams(hash.replace(/^#/, ""));
  const v = q.get("view");
  const explore: Partial<ExploreState> = {};
  const traces = (q.get("traces") ?? "").split(",").filter((id) => TRACE_ID.test(id));
  if (traces.length) explore.traces = traces;
  for (const k of INT_KEYS) {
    const n = int(q.get(k));
    if (n !== undefined) explore[k] = n;
  }
  if (q.get("sbs") === "1") explore.sideBySide = true;
  for (const k of NAME_KEYS) {
    const s = q.get(k);
    if (s !== null && NAME.test(s)) explore[k] = s;
  }
  return { view: v === "explore" || v === "generate" || v === "attention" ? v : fallbackView, explore };
}

/** Where each old tab index lands once some tabs could not be reopened (-1: gone). */
export function remapTabs(kept: boolean[]): (i: number) => number {
  const to: number[] = [];
  let n = 0;
  for (const k of kept) to.push(k ? n++ : -1);
  return (i) => (i >= 0 && i < to.length ? to[i] : -1);
}
