/**
 * The Features tab: its calls to the features routes (see notes/features_api.md: sources, the feature
 * list and page of a database, a text's activations) and the pure logic its components draw with:
 * token labels to display, the two highlight colours, histogram bars, quantile words, tooltips.
 * Calls go through the Api (lib/api.ts), so the notebook widget's and an export's transports serve them
 * as they serve every other route; nothing here touches the DOM.
 */
import { interpolatePRGn } from "d3-scale-chromatic";
import { query, type Api } from "./api";
import { cssRgb, divergingRgb, luminance, parseRgb } from "./color";
import { fmt } from "./format";
import { position } from "./scale";
import { mergeTokens, visibleToken, type MergedToken } from "./tokens";

// ---- the server's shapes ------------------------------------------------------------------------

// Generated from the response models in src/lmpeek/server/responses.py (scripts/api_types.py), under the
// names this tab uses; null stands for a number the database does not have (no position counted) or
// that is not finite. Only the request body and the sort keys are written here.
export type {
  FeatureDatabaseInfo as FeatureDatabase,
  FeatureDocument,
  FeatureList,
  FeatureRow,
  FeatureSourceInfo,
  FeatureSources,
  FeatureToken as OnlineToken,
  FeatureExample as Example,
  FeaturePage as FeaturePageData,
  FeatureActivations as OnlineAnswer,
  LogitToken as LogitEntry,
  QuantileBin,
  RankedFeature as RankEntry,
  FeatureGeneration as GeneratedAnswer,
} from "./api-types";
import type {
  FeatureGeneration as GeneratedAnswer,
  FeatureActivations as OnlineAnswer,
  FeatureDocument,
  FeatureSourceInfo,
  FeatureList,
  FeaturePage as FeaturePageData,
  FeatureSources,
  RankedFeature as RankEntry,
} from "./api-types";

/** relevance: the search's rank (best first; feature order without a query) */
export const SORTS = ["density", "max", "count", "mean", "feature", "relevance"] as const;
export type SortKey = (typeof SORTS)[number];

export type RankBy = "activation" | "quantile";

export interface OnlineRequest {
  text: string;
  features: number[] | null;
  rank: RankBy;
  top: number;
  exclude_template: boolean;
}

// ---- the calls ----------------------------------------------------------------------------------

const enc = encodeURIComponent;
const JSON_BODY = { "content-type": "application/json" };

export function fetchSources(api: Api, signal?: AbortSignal): Promise<FeatureSources> {
  return api.call("/api/features", { signal });
}

export interface ListQuery {
  q: string;
  sort: SortKey;
  order: "desc" | "asc";
  offset: number;
  limit: number;
}

export function fetchList(api: Api, source: string, p: ListQuery, signal?: AbortSignal): Promise<FeatureList> {
  // relevance has one useful order (best match first): the server's default
  const order = p.sort === "relevance" ? undefined : p.order;
  return api.call(`/api/features/${enc(source)}/list?${query({ q: p.q || undefined, sort: p.sort, order, offset: p.offset, limit: p.limit })}`, { signal });
}

export function fetchFeature(api: Api, source: string, feature: number, signal?: AbortSignal): Promise<FeaturePageData> {
  return api.call(`/api/features/${enc(source)}/${feature}`, { signal });
}

export function fetchDocument(api: Api, source: string, feature: number, doc: number, signal?: AbortSignal): Promise<FeatureDocument> {
  return api.call(`/api/features/${enc(source)}/${feature}/document/${doc}`, { signal });
}

export function saveLabel(api: Api, source: string, feature: number, label: string, notes: string): Promise<void> {
  return api.send(`/api/features/${enc(source)}/${feature}/label`, { method: "PUT", headers: JSON_BODY, body: JSON.stringify({ label, notes }) });
}

export function fetchActivations(api: Api, source: string, body: OnlineRequest, signal?: AbortSignal): Promise<OnlineAnswer> {
  return api.call(`/api/features/${enc(source)}/activations`, { method: "POST", headers: JSON_BODY, body: JSON.stringify(body), signal });
}

/** What the online panel's Generate adds to a request: how the model continues the text (as the
 * Generate tab: temperature 0 = greedy; a seed repeats a sampled run). */
export interface GenerateOptions {
  max_new_tokens: number;
  temperature: number;
  seed: number | null;
}

/** The text continued by the model, then the features of the prompt and the response together (one
 * answer: the activations' shape plus prompt_tokens, response, seed, stopped). */
export function fetchGeneration(api: Api, source: string, body: OnlineRequest & GenerateOptions, signal?: AbortSignal): Promise<GeneratedAnswer> {
  return api.call(`/api/features/${enc(source)}/generate`, { method: "POST", headers: JSON_BODY, body: JSON.stringify(body), signal });
}

/** The text box after keeping a generated response: plain text continues; a chat prompt that ended on
 * a user turn gets the response as the assistant's turn (the server opened it); "user<eot>" (an open
 * assistant turn) and a prompt ending on an assistant turn continue that turn. */
export function withResponse(text: string, response: string): string {
  if (!text.includes("<eot>")) return text + response;
  const turns = text.split("<eot>");
  if (turns[turns.length - 1].trim() === "") return text + response;
  return turns.length % 2 === 1 ? `${text}<eot>${response}` : text + response;
}

/** The sources the picker offers: the server's, then `neurons:L` for every layer of a loaded model that
 * the server did not list (the routes accept any of them). */
export function pickerSources(listed: FeatureSourceInfo[], model: { n_layers: number; d_mlp?: number | null } | null): FeatureSourceInfo[] {
  const out = [...listed];
  if (!model) return out;
  const have = new Set(listed.map((s) => s.id));
  for (let l = 0; l < model.n_layers; l++) {
    const id = `neurons:${l}`;
    if (have.has(id)) continue;
    out.push({ id, name: id, kind: "neurons", n_features: model.d_mlp ?? 0, hooks: [`blocks.${l}.mlp.hook_post`], online: true, database: null });
  }
  return out;
}

// ---- tokens -------------------------------------------------------------------------------------

// A label marks a byte that is not part of a whole character as `<0xC3>` (capture/tokens.byte_label).
// Only bytes ≥ 0x80 can be such a byte (below that every byte is a whole character), so a literal
// "<0x41>" in the text is never mistaken for one.
const BYTE_MARKER = /<0x([89A-F][0-9A-F])>/g;

/** A label's exact bytes as hex ("<0xE6>" markers back to their byte, the rest as UTF-8). */
export function labelHex(label: string): string {
  let hex = "";
  let at = 0;
  const utf8 = (s: string) => Array.from(new TextEncoder().encode(s), (b) => b.toString(16).padStart(2, "0")).join("");
  for (const m of label.matchAll(BYTE_MARKER)) {
    const i = m.index ?? 0;
    hex += utf8(label.slice(at, i)) + m[1].toLowerCase();
    at = i + m[0].length;
  }
  return hex + utf8(label.slice(at));
}

/** Labels as displayed, as Explore shows a trace's tokens: consecutive byte pieces decoded together, a
 * split character shown once, on its first piece (lib/tokens.mergeTokens). `bytes`: each token's exact
 * bytes (hex) when the server sent them (an online answer's token_bytes, as a trace's); else the bytes
 * the labels spell. */
export function displayTokens(labels: string[], bytes?: string[] | null): MergedToken[] {
  return mergeTokens(labels, bytes && bytes.length === labels.length ? bytes : labels.map(labelHex));
}

/** The exact text of some tokens (what "copy" puts on the clipboard): markers decoded back to characters.
 * With `bytes` (see displayTokens) a token that stands for no bytes of the text (a BOS "<s>",
 * sentencepiece's prepended space) copies as nothing, as Explore's copy; from labels alone it copies
 * its label. */
export function tokensText(labels: string[], bytes?: string[] | null): string {
  return displayTokens(labels, bytes)
    .map((m) => m.text)
    .join("");
}

/** What copying tokens `first`..`last` (inclusive) of a FeatureText puts on the clipboard (tokensText of
 * those tokens, their bytes when known). */
export function selectionText(labels: string[], bytes: string[] | null | undefined, first: number, last: number): string {
  return tokensText(labels.slice(first, last + 1), bytes && bytes.length === labels.length ? bytes.slice(first, last + 1) : null);
}

/** The value array of a whole document with an example's window placed at `start` (null outside it:
 * the database keeps activations only around each example). */
export function placeWindow(length: number, start: number, acts: ArrayLike<number | null>): (number | null)[] {
  const out: (number | null)[] = new Array(length).fill(null);
  for (let i = 0; i < acts.length; i++) if (start + i >= 0 && start + i < length) out[start + i] = acts[i];
  return out;
}

// ---- colours: one or two features at once ------------------------------------------------------

/** The two highlight slots. A colours the token's background (red positive, blue negative: the
 * diverging map of Explore); B a bar under it (green positive, purple negative), so both stay readable
 * on one token. */
export const SLOTS = [
  { name: "A", how: "background", positive: "#b2182b", negative: "#2166ac" },
  { name: "B", how: "underline", positive: "#1b7837", negative: "#762a83" },
] as const;
export type Slot = 0 | 1;

/** A feature's colour scale: zero in the middle (no colour), `max` (≥ 0) at the positive end, `min`
 * (≤ 0) at the negative end. Each side is scaled to its own extreme: many features are far larger
 * above zero than below (a SiLU neuron reaches about −0.28 only), and a symmetric ±max scale would
 * leave every negative value white. The tooltip gives the numbers. */
export interface Span {
  min: number;
  max: number;
}

/** The span of some values: the most negative finite one (0 when none) and the largest (0 when none). */
export function valueSpan(values: ArrayLike<number | null | undefined>): Span {
  let min = 0;
  let max = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return { min, max };
}

/** A value's colour in a slot ("" for none: zero, missing, or no scale on its side). */
export function slotColor(slot: Slot, v: number | null | undefined, span: Span): string {
  if (v === null || v === undefined || !Number.isFinite(v) || v === 0) return "";
  if (v > 0 ? !(span.max > 0) : !(span.min < 0)) return "";
  const t = position(v, { min: span.min, divider: 0, max: span.max })!;
  if (slot === 0) return cssRgb(divergingRgb(t, 0.9));
  return cssRgb(parseRgb(interpolatePRGn(t)));
}

export interface TokenPaint {
  background: string;
  /** the text colour on a dark background */
  color: string;
  /** slot B's bar under the token */
  bar: string;
}

const NO_SPAN: Span = { min: 0, max: 0 };

/** How one token is painted with slot A's and slot B's values (either may be absent). */
export function paintToken(a: number | null | undefined, spanA: Span | null | undefined, b: number | null | undefined, spanB: Span | null | undefined): TokenPaint {
  const background = slotColor(0, a, spanA ?? NO_SPAN);
  // dark ends of the map: white text (as colorAt does for Explore)
  const color = background && luminance(parseRgb(background)) < 0.25 ? "#fff" : "";
  return { background, color, bar: slotColor(1, b, spanB ?? NO_SPAN) };
}

// ---- words --------------------------------------------------------------------------------------

/** A corpus quantile in words: "p50", "top 0.1%" above the 99th percentile, "max" at 1; "–" when unknown. */
export function fmtQuantile(q: number | null | undefined): string {
  if (q === null || q === undefined || !Number.isFinite(q)) return "–";
  if (q >= 1) return "max";
  if (q >= 0.99) return `top ${fmt((1 - q) * 100, 2)}%`;
  return `p${Math.floor(Math.max(0, q) * 100)}`;
}

/** A density (share of tokens) in words: "1.23%", "<0.01%" for tiny ones, "0" for none. */
export function fmtDensity(d: number | null | undefined): string {
  if (d === null || d === undefined || !Number.isFinite(d)) return "–";
  if (d === 0) return "0";
  if (d < 1e-4) return "<0.01%";
  return `${fmt(d * 100, 3)}%`;
}

/** One highlighted feature's value at a token, for the tooltip. */
export interface TipValue {
  slot: Slot;
  feature: number;
  value: number | null | undefined;
  quantile?: number | null;
}

/** The tooltip's lines for one token: position, token and id, then each highlighted feature's value
 * (and its corpus quantile when known). */
export function tokenTip(i: number, label: string, id: number | undefined, values: TipValue[]): string[] {
  const lines = [`#${i} ${visibleToken(label)}${id === undefined ? "" : ` · id ${id}`}`];
  for (const v of values) {
    const q = v.quantile === undefined ? "" : ` · ${fmtQuantile(v.quantile)}`;
    lines.push(`${SLOTS[v.slot].name} #${v.feature}: ${v.value === null || v.value === undefined ? "–" : fmt(v.value, 4)}${q}`);
  }
  return lines;
}

/** A token's ranking as rows to show: value and quantile in words, and which slot (if any) shows it. */
export function rankRows(ranking: RankEntry[] | undefined, highlighted: (number | null)[]): { feature: number; value: string; quantile: string; slot: Slot | null }[] {
  return (ranking ?? []).map((r) => {
    const at = highlighted.indexOf(r.feature);
    return { feature: r.feature, value: fmt(r.value, 4), quantile: fmtQuantile(r.quantile), slot: at === 0 || at === 1 ? at : null };
  });
}

/** The highlighted features after picking `feature` for `slot`: a feature is in one slot at most (picking
 * it for the other slot moves it); picking it again where it is clears that slot. */
export function pickSlot(hl: [number | null, number | null], slot: Slot, feature: number): [number | null, number | null] {
  const out: [number | null, number | null] = [...hl];
  if (out[slot] === feature) {
    out[slot] = null;
    return out;
  }
  const other = slot === 0 ? 1 : 0;
  if (out[other] === feature) out[other] = null;
  out[slot] = feature;
  return out;
}

// ---- the activation histogram ------------------------------------------------------------------

export interface HistBar {
  x: number;
  w: number;
  y: number;
  h: number;
  lo: number;
  /** null: the last bin runs to infinity */
  hi: number | null;
  count: number;
}

/** Bars for the database's histogram of activations > 0 over its geometric edges, on a log-value x axis
 * (plot [left, left + width] × [top, top + height]); bins holding nothing at either end are left out.
 * A bin from 0 is drawn one bin wide (log 0 has no place); a last bin to infinity too. */
export function histBars(edges: (number | null)[], counts: number[], width: number, height: number, left = 0, top = 0) {
  let first = 0;
  let last = counts.length - 1;
  while (first <= last && !(counts[first] > 0)) first++;
  while (last >= first && !(counts[last] > 0)) last--;
  if (first > last) return null;
  // a bin's drawn edges in log10: geometric edges are a constant step apart
  const step = (() => {
    for (let i = 0; i + 1 < edges.length; i++) {
      const a = edges[i];
      const b = edges[i + 1];
      if (a !== null && b !== null && a > 0 && b > a && Number.isFinite(b)) return Math.log10(b / a);
    }
    return 1;
  })();
  const logLo = (i: number) => {
    const a = edges[i];
    const b = edges[i + 1];
    if (a !== null && a > 0) return Math.log10(a);
    return b !== null && b > 0 && Number.isFinite(b) ? Math.log10(b) - step : 0;
  };
  const logHi = (i: number) => {
    const b = edges[i + 1];
    return b !== null && b !== undefined && Number.isFinite(b) ? Math.log10(b) : logLo(i) + step;
  };
  const x0 = logLo(first);
  const x1 = logHi(last);
  const sx = (v: number) => left + ((v - x0) / (x1 - x0 || 1)) * width;
  let most = 0;
  for (let i = first; i <= last; i++) most = Math.max(most, counts[i] ?? 0);
  const bars: HistBar[] = [];
  for (let i = first; i <= last; i++) {
    const c = counts[i] ?? 0;
    if (!(c > 0)) continue;
    const h = (c / most) * height;
    const a = sx(logLo(i));
    const hi = edges[i + 1];
    bars.push({ x: a, w: Math.max(0.8, sx(logHi(i)) - a - 0.4), y: top + height - h, h, lo: edges[i] ?? 0, hi: hi !== null && hi !== undefined && Number.isFinite(hi) ? hi : null, count: c });
  }
  /** where a value > 0 lies on the axis (clamped to the plot) */
  const at = (v: number) => (v > 0 ? Math.min(left + width, Math.max(left, sx(Math.log10(v)))) : left);
  return { bars, most, lo: 10 ** x0, hi: 10 ** x1, at };
}

// ---- the crosscoder page (a model-diff crosscoder: base and chat model; server routes_crosscoder) -----

export type { CrosscoderPair, CrosscoderSummary, NormClass } from "./api-types";
import type { CrosscoderPair, CrosscoderSummary, NormClass } from "./api-types";

/** The relative decoder norm's classes (the server's `classes`, in its order), coloured: base-only blue,
 * shared grey-violet, chat-only orange; "other" and "dead" quiet. */
export const CLASS_COLOURS: Record<string, string> = {
  "base-only": "#2563eb",
  shared: "#7c3aed",
  "chat-only": "#ea580c",
  other: "#cbd5e1",
  dead: "#e5e7eb",
};
export const classColour = (name: string | undefined) => CLASS_COLOURS[name ?? ""] ?? "#cbd5e1";

/** At most this many features side by side (the pair route's limit). */
export const MAX_PAIR = 8;

export function fetchCrosscoder(api: Api, source: string, signal?: AbortSignal): Promise<CrosscoderSummary> {
  return api.call(`/api/features/${enc(source)}/crosscoder`, { signal });
}

export function fetchPair(api: Api, source: string, body: { text: string; features: number[] }, signal?: AbortSignal): Promise<CrosscoderPair> {
  return api.call(`/api/features/${enc(source)}/pair`, { method: "POST", headers: JSON_BODY, body: JSON.stringify(body), signal });
}

/** The class a relative norm r falls in by the server's class ranges (for colouring a histogram bin by
 * its middle): the first non-"other" range holding r, else "other"; null r (dead) -> "dead". */
export function classAt(r: number | null, classes: NormClass[]): string {
  if (r === null || !Number.isFinite(r)) return "dead";
  for (const c of classes) {
    if (c.name === "other" || c.lo === null || c.hi === null) continue;
    const lo = c.name === "chat-only" ? r > c.lo : r >= c.lo;
    const hi = c.name === "base-only" ? r < c.hi : r <= c.hi;
    if (lo && hi) return c.name;
  }
  return "other";
}

export interface NormBar {
  x: number;
  w: number;
  y: number;
  h: number;
  lo: number;
  hi: number;
  count: number;
  cls: string;
}

/** Bars for the relative-norm histogram over [0, 1] (plot [left, left + width] × [top, top + height]),
 * each coloured by the class of its middle; empty bins drawn as nothing. */
export function normBars(edges: number[], counts: number[], classes: NormClass[], width: number, height: number, left = 0, top = 0): NormBar[] {
  const most = Math.max(0, ...counts);
  const out: NormBar[] = [];
  for (let i = 0; i < counts.length; i++) {
    const lo = edges[i];
    const hi = edges[i + 1];
    const h = most > 0 ? (counts[i] / most) * height : 0;
    out.push({ x: left + lo * width, w: Math.max(0.5, (hi - lo) * width - 1), y: top + height - h, h, lo, hi, count: counts[i], cls: classAt((lo + hi) / 2, classes) });
  }
  return out;
}

/** The features of class `k` (an index into `classes`), ordered by relative norm (ascending; dead ones
 * last, by index), at most `limit`. */
export function featuresOfClass(s: Pick<CrosscoderSummary, "class_of" | "relative_norm">, k: number | null, limit = 200): number[] {
  const ids: number[] = [];
  for (let j = 0; j < s.class_of.length; j++) if (k === null || s.class_of[j] === k) ids.push(j);
  const r = (j: number) => s.relative_norm[j] ?? Infinity;
  ids.sort((a, b) => r(a) - r(b) || a - b);
  return ids.slice(0, limit);
}

/** Feature ids typed as "3, 17 42": the valid ones (integers in [0, n)), each once, at most MAX_PAIR. */
export function parseFeatureIds(text: string, n: number): number[] {
  const out: number[] = [];
  for (const part of text.split(/[\s,;]+/)) {
    if (!/^\d+$/.test(part)) continue;
    const v = Number(part);
    if (v < n && !out.includes(v)) out.push(v);
    if (out.length >= MAX_PAIR) break;
  }
  return out;
}

/** The tooltip's lines for token i of feature k of a pair answer: token and id, the activation, both
 * models' contributions and the bias (the pre-activation is their sum), both models' hook norms. */
export function pairTip(p: CrosscoderPair, k: number, i: number): string[] {
  const t = p.tokens[i];
  const base = p.base[k]?.[i];
  const chat = p.chat[k]?.[i];
  const bias = p.bias[k];
  return [
    `#${i} ${visibleToken(t?.label ?? "")}${t ? ` · id ${t.id}` : ""}`,
    `feature #${p.features[k]}: activation ${fmt(p.activation[k]?.[i], 4)}`,
    `pre-activation: base ${fmt(base, 4)} + chat ${fmt(chat, 4)} + bias ${fmt(bias, 4)}`,
    `‖x‖ base ${fmt(p.norms.base[i], 4)} · chat ${fmt(p.norms.chat[i], 4)}`,
  ];
}
