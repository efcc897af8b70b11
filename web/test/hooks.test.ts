import { describe, expect, it } from "vitest";
import { query } from "../src/lib/api";
import { histogramBars, extent, linear, nearest, probAlpha } from "../src/lib/charts";
import { colorAt } from "../src/lib/color";
import { addsToResidual, compareComponent, hookName, pointLabel, summaryComponent } from "../src/lib/hooks";

describe("hookName", () => {
  it.each([
    ["blocks.{l}.hook_resid_post", 3, "blocks.3.hook_resid_post"],
    ["blocks.{l}.attn.hook_q", 0, "blocks.0.attn.hook_q"],
    ["hook_embed", 5, "hook_embed"],
    ["ln_final.hook_normalized", 1, "ln_final.hook_normalized"],
  ])("%s at %d", (t, l, want) => {
    expect(hookName(t, l)).toBe(want);
  });
});

describe("pointLabel", () => {
  it.each([
    [{ hook: "hook_embed", per_head: false, per_layer: false }, "embed"],
    [{ hook: "blocks.{l}.attn.hook_q", point: "attn.hook_q", per_head: true, per_layer: true }, "attn.q ·head"],
    [{ hook: "blocks.{l}.hook_resid_post", point: "hook_resid_post", per_head: false, per_layer: true }, "resid_post"],
    [{ hook: "blocks.{l}.mlp.hook_post", per_head: false, per_layer: true }, "mlp.post"],
    [{ hook: "ln_final.hook_normalized", per_head: false, per_layer: false }, "ln_final.normalized (before gain)"],
    [{ hook: "ln_final.hook_out", per_head: false, per_layer: false }, "ln_final.out (after gain)"],
    [{ hook: "blocks.{l}.ln2.hook_normalized", point: "ln2.hook_normalized", per_head: false, per_layer: true }, "ln2.normalized (before gain)"],
    [{ hook: "blocks.{l}.ln1.hook_out", point: "ln1.hook_out", per_head: false, per_layer: true }, "ln1.out (after gain)"],
  ])("%j -> %s", (p, want) => {
    expect(pointLabel(p)).toBe(want);
  });
});

describe("summaryComponent / compareComponent / addsToResidual", () => {
  it.each([
    ["blocks.{l}.hook_resid_post", "resid_post", "resid_post", false],
    ["blocks.{l}.hook_attn_out", "attn_out", "attn_out", true],
    ["blocks.{l}.hook_mlp_out", "mlp_out", "mlp_out", true],
    ["blocks.{l}.attn.hook_result", null, "resid_post", true],
    ["blocks.{l}.mlp.hook_post", null, "resid_post", false],
    ["hook_embed", null, "resid_post", false],
  ])("%s", (t, summary, compare, adds) => {
    expect(summaryComponent(t)).toBe(summary);
    expect(compareComponent(t)).toBe(compare);
    expect(addsToResidual(t)).toBe(adds);
  });
});

describe("query", () => {
  it("leaves out null and undefined", () => {
    expect(query({ hook: "blocks.1.attn.hook_q", head: null, token: 0, x: undefined })).toBe("hook=blocks.1.attn.hook_q&token=0");
  });
});

describe("charts", () => {
  it("linear maps and tolerates a one-point domain", () => {
    expect(linear(0, 10, 0, 100)(5)).toBe(50);
    expect(linear(3, 3, 0, 100)(3)).toBe(50);
  });
  it("extent skips missing values and pads", () => {
    expect(extent([1, null, 3])).toEqual([1, 3]);
    expect(extent([1, 3], 0.5)).toEqual([0, 4]);
    expect(extent([null])).toBeNull();
  });
  it("nearest finds the closest point within the radius", () => {
    expect(nearest([0, 10, 20], [0, 0, 0], 11, 1)).toBe(1);
    expect(nearest([0, 10, 20], [0, 0, 0], 50, 50)).toBe(-1);
  });
  it("histogramBars shares one y scale and skips empty bins", () => {
    const b = histogramBars({ nonfinite: 0, edges: [-1, 0, 1, 2], token: [0, 2, 4], median: [1, 1, 0], outliers: { low: null, high: null, dims: [], values: [] } }, 30, 40);
    expect(b!.token.map((r) => [r.x, r.h])).toEqual([[10, 20], [20, 40]]);
    expect(b!.median.map((r) => [r.x, r.h])).toEqual([[0, 10], [10, 10]]);
    expect(b!.zero).toBe(10);
    expect(b!.x(2)).toBe(30);
  });
  it.each([
    [null, 0],
    [0, 0],
    [0.25, 0.5],
    [1, 1],
  ])("probAlpha(%s) = %d", (p, a) => {
    expect(probAlpha(p)).toBe(a);
  });
});

describe("colorAt", () => {
  it("diverging: blue below, white-ish middle, red above", () => {
    const rgb = (s: string) => s.match(/\d+/g)!.map(Number);
    const [lo, mid, hi] = [0, 0.5, 1].map((t) => rgb(colorAt(t, "diverging", 1).background));
    expect(lo[2]).toBeGreaterThan(lo[0]);
    expect(hi[0]).toBeGreaterThan(hi[2]);
    expect(Math.min(...mid)).toBeGreaterThan(230);
    expect(colorAt(null, "diverging", 1).background).toBe("");
  });
});
