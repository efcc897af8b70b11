import { describe, expect, it } from "vitest";
import { decodeViewState, encodeViewState, remapTabs, type ViewState } from "../src/lib/viewstate";

const full: ViewState = {
  view: "explore",
  explore: {
    traces: ["0123456789abcdef", "fedcba9876543210"],
    tab: 1,
    other: 0,
    sideBySide: true,
    token: 7,
    layer: 2,
    head: 3,
    hook: "blocks.{l}.attn.hook_q",
    metric: "act-value",
    dim: 1535,
    neuron: 12,
    scale: "minmax_clip",
    rope: "applied",
  },
};

describe("view state in the URL", () => {
  it("round-trips every field", () => {
    const hash = encodeViewState(full);
    expect(decodeViewState(`#${hash}`)).toEqual(full);
    expect(decodeViewState(hash)).toEqual(full);
  });
  it("round-trips a bare Generate view", () => {
    const s: ViewState = { view: "generate", explore: {} };
    expect(encodeViewState(s)).toBe("view=generate");
    expect(decodeViewState(encodeViewState(s))).toEqual(s);
  });
  it("zero is kept, side by side off is left out", () => {
    const s: ViewState = { view: "explore", explore: { token: 0, layer: 0, sideBySide: false } };
    expect(decodeViewState(encodeViewState(s))).toEqual({ view: "explore", explore: { token: 0, layer: 0 } });
  });
  it("ignores malformed and unknown parts instead of trusting them", () => {
    const s = decodeViewState("#view=admin&traces=../etc,0123456789abcdef,<x>&token=-1&layer=2.5&head=1e3&dim=7&hook=a%20b&metric=loss&evil=1");
    expect(s).toEqual({ view: "generate", explore: { traces: ["0123456789abcdef"], dim: 7, metric: "loss" } });
  });
  it("falls back to the given view when the hash names none", () => {
    expect(decodeViewState("", "explore").view).toBe("explore");
  });
  it("remapTabs closes the gaps of tabs that could not be reopened", () => {
    const to = remapTabs([true, false, true]);
    expect([to(0), to(1), to(2), to(5), to(-1)]).toEqual([0, -1, 1, -1, -1]);
  });
});
