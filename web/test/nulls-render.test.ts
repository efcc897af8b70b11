// @vitest-environment node
/** The charts and tables that show server numbers, rendered (svelte/server) with nulls where the model
 * made a value inf or NaN: gaps, "–" and hatched boxes, and no NaN in any SVG attribute. Prop-only
 * components (the panels around them load the data), so they render here without a DOM or a server. */
import { render } from "svelte/server";
import { describe, expect, it } from "vitest";
import CompareChart from "../src/components/CompareChart.svelte";
import HistogramChart from "../src/components/HistogramChart.svelte";
import LayersChart from "../src/components/LayersChart.svelte";
import LensTable from "../src/components/LensTable.svelte";
import ProbBars from "../src/components/ProbBars.svelte";
import type { Compare, Histogram, LogitLens, StepNorms, VectorData } from "../src/lib/types";

/** No NaN or Infinity as a value: not in an attribute (a coordinate; titles may name "inf/NaN" as the
 * reason a value is missing), not as text; and no null written out. */
function expectClean(html: string) {
  for (const [, name, value] of html.matchAll(/([\w:-]+)="([^"]*)"/g)) {
    if (name !== "title") expect(value, `${name}="${value}"`).not.toMatch(/NaN|Infinity|null/);
  }
  const text = html.replace(/<[^>]*>/g, " ");
  expect(text).not.toMatch(/(?<!inf\/)NaN|Infinity|∞|\bnull\b/);
}

const attrs = (html: string, tag: string, name: string) =>
  [...html.matchAll(new RegExp(`<${tag}\\b[^>]*\\b${name}="([^"]*)"`, "g"))].map((m) => m[1]);

describe("LayersChart", () => {
  const shown = { resid_pre: false, attn_out: false, resid_mid: false, mlp_out: true, resid_post: true };
  const norms: StepNorms = {
    resid_pre: [1, 1, 1, 1],
    attn_out: [1, 1, 1, 1],
    resid_mid: [1, 1, 1, 1],
    mlp_out: [2, null, 3, 4], // a layer the model lost: a gap
    resid_post: [null, null, null, null], // all lost: no line, no dots
  };
  it.each([false, true])("a lost norm breaks its line and has no dot (log %s)", (log) => {
    const html = render(LayersChart, { props: { norms, nLayers: 4, shown, log } }).body;
    expectClean(html);
    const lines = attrs(html, "polyline", "data-series");
    expect(lines).toEqual(["mlp_out"]); // layers 2..3 (layer 0 alone has no line); resid_post none
    expect(attrs(html, "polyline", "points")[0].split(" ")).toHaveLength(2);
    expect(attrs(html, "circle", "cy")).toHaveLength(3); // mlp_out's three values
  });
  it("every norm lost: axes only", () => {
    const all = { ...norms, mlp_out: [null, null, null, null] };
    const html = render(LayersChart, { props: { norms: all, nLayers: 4, shown, log: false } }).body;
    expectClean(html);
    expect(attrs(html, "polyline", "points")).toEqual([]);
    expect(attrs(html, "circle", "cy")).toEqual([]);
  });
});

describe("HistogramChart", () => {
  const OUT = { low: null, high: null, dims: [], values: [] };
  const vec = (data: (number | null)[]): VectorData => ({ hook: "h", head: null, token: 0, shape: [data.length], data });
  it("a vector with no finite value: says so, draws no bars", () => {
    const h: Histogram = { nonfinite: 4, edges: [null, null, null], token: [0, 4], median: [0, 4], outliers: OUT };
    const html = render(HistogramChart, { props: { h, v: vec([null, null, null, null]), dim: 1, onpickdim: () => {} } }).body;
    expectClean(html);
    expect(html).toContain('data-testid="hist-none"');
    expect(html).toContain("4 dimensions inf/NaN");
    expect(html).not.toContain("<rect");
    expect(html).toMatch(/dim 1 = <b>– \(inf\/NaN\)<\/b>/); // the chosen dimension's value: lost, not 0
  });
  it("some values lost: the bins that are there, a gap for the rest, lost outlier values as –", () => {
    const h: Histogram = {
      nonfinite: 1,
      edges: [-2, -1, null, 1, 2],
      token: [1, 2, 0, 1],
      median: [1, null, 1, 1],
      outliers: { low: -5, high: null, dims: [3], values: [null] },
    };
    const html = render(HistogramChart, { props: { h, v: vec([0.5, -1.5, null, null]), dim: 2, onpickdim: () => {} } }).body;
    expectClean(html);
    expect(attrs(html, "rect", "x").length).toBe(4); // token bins 0 and 3, median bins 0 and 3
    expect(html).not.toContain('data-testid="hist-dim-marker"'); // a lost value has no marker
    expect(html).toContain('data-testid="hist-nonfinite"');
    expect(html).toMatch(/data-dim="3"[^>]*>3<small[^>]*>–<\/small>/);
  });
});

describe("CompareChart", () => {
  it("a lost layer is a hatched box, the others bars from the zero line", () => {
    const d: Compare = { layers: 3, mean_norm_a: [3, null, 1], mean_norm_b: [1, 2, 2], diff: [2, null, -1] };
    const html = render(CompareChart, { props: { d } }).body;
    expectClean(html.replace(/data-values="[^"]*"/, "")); // the raw answer (with its null) stays as data
    expect(attrs(html, "svg", "data-missing")).toEqual(["1"]);
    const missing = [...html.matchAll(/<rect class="missing[^"]*" data-layer="(\d)"[^>]*fill="url\(#([^)]+)\)"/g)];
    expect(missing.map((m) => m[1])).toEqual(["1"]);
    expect(html).toContain(`<pattern id="${missing[0][2]}"`); // the hatching it refers to is defined
    expect(html).toContain("a−b – (inf/NaN)");
    expect(attrs(html, "rect", "height").map(Number)).toEqual([35, 70, 17.5]);
  });
});

describe("LensTable", () => {
  const d: LogitLens = {
    ids: [[4, 5], [4, 5]],
    probs: [[0.6, 0.2], [null, null]], // layer 1 lost (inf in the residual stream)
    tokens: [["a", "b"], ["c", "d"]],
    target: { id: 5, token: "b", ranks: [2, 1], probs: [0.2, null] },
  };
  it("a lost probability is a hatched cell reading –, with no rank", () => {
    const html = render(LensTable, { props: { d, tokenId: 5 } }).body;
    expectClean(html);
    const rows = html.split('data-testid="lens-row"').slice(1);
    expect(rows[0]).toContain("#2 · 20.0%");
    expect(rows[1]).toContain("#– · –"); // a rank from NaN logits means nothing
    expect(rows[1]).toMatch(/class="[^"]*\bmissing\b/);
    expect(rows[0]).not.toMatch(/class="[^"]*\bmissing\b/);
    expect(rows[1].match(/<span class="t[^"]*">–<\/span>/g)).toHaveLength(2);
    expect(rows[1]).not.toMatch(/background: rgba/); // no shade that would read as a probability
    expect(attrs(html, "td", "data-rank")).toEqual(["2", "1"]); // the server's numbers stay as data
  });
});

describe("ProbBars (Generate's and Explore's prediction rows)", () => {
  it("a lost probability: a hatched track and –, no bar; the others as before", () => {
    const rows = [
      { token: "a", prob: null, cls: "chosen" },
      { token: "b", prob: 0.25 },
    ];
    const html = render(ProbBars, { props: { rows, rowTestid: "r" } }).body;
    expectClean(html);
    const [lost, kept] = html.split('data-testid="r"').slice(1);
    expect(lost).toMatch(/data-prob=""/);
    expect(lost).toMatch(/class="track[^"]*\bmissing\b/);
    expect(lost).toMatch(/<span class="p[^"]*">–<\/span>/);
    expect(kept).toMatch(/data-prob="0.25"/);
    expect(kept).toContain("width: 25%");
    expect(kept).not.toMatch(/\bmissing\b/);
  });
});
