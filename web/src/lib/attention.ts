/** Pure helpers of the Attention tab: token windows, thumbnail cells, the head view's line geometry,
 * head colours and the neuron view's bar scale. The numbers themselves come from the server. */

export interface TokenWindow {
  /** first token */
  start: number;
  /** one past the last token */
  end: number;
}

/** Window widths offered; the line views stay at most 256 tokens (a column of labels that scrolls). */
export const WINDOW_WIDTHS = [32, 64, 128, 256] as const;
/** thumbnail cells per side: wider windows are pooled by the server (X-Pool tokens per cell) */
export const THUMB_CELLS = 64;

/** A window of `width` tokens (fewer if the text is shorter) holding `token`, as centred as the text allows. */
export function windowAround(T: number, token: number, width: number): TokenWindow {
  const w = Math.max(1, Math.min(width, T));
  const t = Math.max(0, Math.min(token, T - 1));
  const start = Math.max(0, Math.min(t - Math.floor(w / 2), T - w));
  return { start, end: start + w };
}

/** The window moved by `delta` tokens, kept inside 0..T with its width. */
export function shiftWindow(T: number, win: TokenWindow, delta: number): TokenWindow {
  const w = win.end - win.start;
  const start = Math.max(0, Math.min(win.start + delta, T - w));
  return { start, end: start + w };
}

/** Whether a token lies in the window. */
export function inWindow(win: TokenWindow, token: number): boolean {
  return token >= win.start && token < win.end;
}

/** Tokens one thumbnail cell covers: [from, to). `pool`: tokens per cell (the server's X-Pool). */
export function cellTokens(win: TokenWindow, pool: number, cell: number): [number, number] {
  const from = win.start + cell * pool;
  return [Math.min(from, win.end), Math.min(from + pool, win.end)];
}

/** One line of the head view: from a query (left column) to a key (right column). */
export interface AttentionLine {
  query: number;
  key: number;
  weight: number;
  y1: number;
  y2: number;
}

/** Lines for the selected token, in a window drawn as rows of `rowHeight` px (row i of the window at
 * y = (i + 0.5) × rowHeight in both columns). `direction` "from": `weights` is the selected query's
 * row over keys 0..T-1, one line per key in the window; "to": the selected key's column over queries.
 * Weights below `minWeight` (or missing) draw no line. */
export function attentionLines(
  weights: ArrayLike<number | null>,
  selected: number,
  win: TokenWindow,
  rowHeight: number,
  direction: "from" | "to",
  minWeight = 0.005,
): AttentionLine[] {
  const y = (t: number) => (t - win.start + 0.5) * rowHeight;
  const out: AttentionLine[] = [];
  if (!inWindow(win, selected)) return out;
  for (let t = win.start; t < win.end && t < weights.length; t++) {
    const w = weights[t];
    if (w === null || !Number.isFinite(w) || w < minWeight) continue;
    const [query, key] = direction === "from" ? [selected, t] : [t, selected];
    out.push({ query, key, weight: w, y1: y(query), y2: y(key) });
  }
  return out;
}

/** The attention a window leaves out: weight on tokens outside it (a row's keys before `start`). */
export function weightOutside(weights: ArrayLike<number | null>, win: TokenWindow): number {
  let s = 0;
  for (let t = 0; t < weights.length; t++) {
    const w = weights[t];
    if (!inWindow(win, t) && w !== null && Number.isFinite(w)) s += w;
  }
  return s;
}

/** Distinct colours for overlaid heads (cycled after 12). */
export const HEAD_COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d", "#4f46e5", "#b45309", "#0f766e", "#7c3aed"];

export function headColour(head: number): string {
  return HEAD_COLOURS[((head % HEAD_COLOURS.length) + HEAD_COLOURS.length) % HEAD_COLOURS.length];
}

/** The largest |value| (at least a tiny positive number), for bars drawn on one symmetric scale. */
export function absMax(values: ArrayLike<number | null>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v !== null && Number.isFinite(v)) m = Math.max(m, Math.abs(v));
  }
  return m || 1e-12;
}

/** Grey-to-blue for a thumbnail cell: weights are 0..1, shown with a square-root ramp so that weak
 * patterns stay visible next to a head that puts everything on one token. */
export function thumbColour(w: number): [number, number, number] {
  const x = Number.isFinite(w) ? Math.sqrt(Math.max(0, Math.min(1, w))) : 0;
  return [Math.round(255 - x * 218), Math.round(255 - x * 156), Math.round(255 - x * 20)];
}

/** The selection moved by `delta` tokens (arrow keys), clamped to the text; the window follows it by
 * the smallest shift that keeps the selected token inside. */
export function stepToken(T: number, win: TokenWindow, selected: number, delta: number): { selected: number; win: TokenWindow } {
  const s = Math.max(0, Math.min(T - 1, selected + delta));
  if (inWindow(win, s)) return { selected: s, win };
  return { selected: s, win: shiftWindow(T, win, s < win.start ? s - win.start : s - win.end + 1) };
}
