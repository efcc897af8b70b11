/**
 * The page's view state in the URL's hash, so a reload or a shared link reopens the same view: which
 * view, the open Explore tabs (stored trace ids), the selected token and every control, and the Features
 * tab's source, open feature and highlighted features (keys "f.*"). Pure: a state
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

/** The Features tab: the source, its sub-view, the open feature and the highlighted ones. */
export interface FeaturesState {
  /** a source id ("neurons:12", a database's source name) */
  source: string;
  mode: "text" | "browse";
  /** the feature whose page is open */
  feature: number;
  /** the features highlighted in slots A and B */
  a: number;
  b: number;
}

export interface ViewState {
  view: "generate" | "explore" | "attention" | "features" | "why";
  explore: Partial<ExploreState>;
  /** only when something of the Features tab is set */
  features?: Partial<FeaturesState>;
}

const TRACE_ID = /^[0-9a-f]{8,64}$/;
const NAME = /^[A-Za-z0-9_.{}\-]{1,80}$/; // hook points look like "blocks.{l}.hook_resid_post"
const INT_KEYS = ["tab", "other", "token", "layer", "head", "dim", "neuron"] as const;
const NAME_KEYS = ["hook", "metric", "scale", "rope"] as const;
// a feature source id is a user's spec or a folder's name: any printable text, kept short
const SOURCE = /^[^\p{Cc}\p{Cf}]{1,200}$/u;
// the Features tab's keys, prefixed so they never meet Explore's
const FEATURE_INTS = { feature: "f.feature", a: "f.a", b: "f.b" } as const;
const VIEWS = ["generate", "explore", "attention", "features", "why"] as const;

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
  const f = s.features ?? {};
  if (f.source) q.set("f.source", f.source);
  if (f.mode) q.set("f.mode", f.mode);
  for (const [k, name] of Object.entries(FEATURE_INTS) as [keyof typeof FEATURE_INTS, string][]) {
    const v = f[k];
    if (v !== undefined && Number.isInteger(v) && v >= 0) q.set(name, String(v));
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
  const features: Partial<FeaturesState> = {};
  const source = q.get("f.source");
  if (source !== null && SOURCE.test(source)) features.source = source;
  const mode = q.get("f.mode");
  if (mode === "text" || mode === "browse") features.mode = mode;
  for (const [k, name] of Object.entries(FEATURE_INTS) as [keyof typeof FEATURE_INTS, string][]) {
    const n = int(q.get(name));
    if (n !== undefined) features[k] = n;
  }
  const view = (VIEWS as readonly string[]).includes(v ?? "") ? (v as ViewState["view"]) : fallbackView;
  return Object.keys(features).length ? { view, explore, features } : { view, explore };
}

/** Where each old tab index lands once some tabs could not be reopened (-1: gone). */
export function remapTabs(kept: boolean[]): (i: number) => number {
  const to: number[] = [];
  let n = 0;
  for (const k of kept) to.push(k ? n++ : -1);
  return (i) => (i >= 0 && i < to.length ? to[i] : -1);
}
