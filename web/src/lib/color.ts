/** Value -> colour: colour maps with opacity. Colour limits come from the server (analysis.scales). */
import { interpolateBlues, interpolateGreens, interpolateOranges, interpolatePurples, interpolateRdBu, interpolateReds } from "d3-scale-chromatic";

export type Value = number | null | undefined;

export interface Range {
  min: number;
  max: number;
}

/** Map v into [0, 1] by the range (clamped); null for a missing value; 0 or 1 when the range is one point. */
export function normalize(v: Value, range: Range | null): number | null {
  if (v === null || v === undefined || !Number.isFinite(v) || range === null) return null;
  const span = range.max - range.min;
  if (span <= 0) return v >= range.max ? 1 : 0;
  const t = (v - range.min) / span;
  return t < 0 ? 0 : t > 1 ? 1 : t;
}

export type ColorMap = "reds" | "blues" | "greens" | "purples" | "oranges";
const INTERPOLATORS: Record<ColorMap, (t: number) => string> = {
  reds: interpolateReds,
  blues: interpolateBlues,
  greens: interpolateGreens,
  purples: interpolatePurples,
  oranges: interpolateOranges,
};

/** "rgb(1, 2, 3)" or "#010203" -> [1, 2, 3]. */
export function parseRgb(s: string): [number, number, number] {
  const m = /^rgb\(\s*(\d+),\s*(\d+),\s*(\d+)\s*\)$/.exec(s);
  if (m) return [Number(m[1]), Number(m[2]), Number(m[3])];
  const h = /^#([0-9a-f]{6})$/i.exec(s);
  if (h) {
    const n = parseInt(h[1], 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  throw new Error(`cannot parse colour ${s}`);
}

const LUT_SIZE = 256;
const luts = new Map<ColorMap, Uint8Array>();

function lut(map: ColorMap): Uint8Array {
  let table = luts.get(map);
  if (!table) {
    table = new Uint8Array(LUT_SIZE * 3);
    const f = INTERPOLATORS[map];
    for (let i = 0; i < LUT_SIZE; i++) table.set(parseRgb(f(i / (LUT_SIZE - 1))), i * 3);
    luts.set(map, table);
  }
  return table;
}

/**
 * The colour of a normalised value t in [0, 1], blended towards white by (1 - opacity), as [r, g, b].
 * Colour maps start near white, so low values stay quiet and text on them stays readable.
 */
export function rgbAt(t: number, map: ColorMap, opacity = 1): [number, number, number] {
  const table = lut(map);
  const i = Math.round(Math.min(1, Math.max(0, t)) * (LUT_SIZE - 1)) * 3;
  const a = Math.min(1, Math.max(0, opacity));
  const mix = (c: number) => Math.round(255 + (c - 255) * a);
  return [mix(table[i]), mix(table[i + 1]), mix(table[i + 2])];
}

export function cssRgb(rgb: [number, number, number]): string {
  return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
}

/** Relative luminance (sRGB, WCAG) of [r, g, b]. */
export function luminance([r, g, b]: [number, number, number]): number {
  const lin = (c: number) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

export interface TokenColor {
  background: string;
  color: string;
}

/** The diverging map for signed values: t = 0 blue (negative), 0.5 white, 1 red (positive). */
export function divergingRgb(t: number, opacity = 1): [number, number, number] {
  const table = divLut();
  const i = Math.round(Math.min(1, Math.max(0, t)) * (LUT_SIZE - 1)) * 3;
  const a = Math.min(1, Math.max(0, opacity));
  const mix = (c: number) => Math.round(255 + (c - 255) * a);
  return [mix(table[i]), mix(table[i + 1]), mix(table[i + 2])];
}

let divTable: Uint8Array | null = null;
function divLut(): Uint8Array {
  if (!divTable) {
    divTable = new Uint8Array(LUT_SIZE * 3);
    for (let i = 0; i < LUT_SIZE; i++) divTable.set(parseRgb(interpolateRdBu(1 - i / (LUT_SIZE - 1))), i * 3);
  }
  return divTable;
}

/** A colour for a position t in [0, 1] (see scale.position); null -> no colour. */
export function colorAt(t: number | null, map: ColorMap | "diverging", opacity: number): TokenColor {
  if (t === null) return { background: "", color: "" };
  const rgb = map === "diverging" ? divergingRgb(t, opacity) : rgbAt(t, map, opacity);
  return { background: cssRgb(rgb), color: luminance(rgb) < 0.25 ? "#fff" : "" };
}
