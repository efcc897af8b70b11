import { describe, expect, it } from "vitest";
import { outside, parseLimit, position, SCALES, withOverrides } from "../src/lib/scale";

describe("position", () => {
  const lim = { min: -2, divider: 0, max: 4 };
  it.each([
    [-2, 0],
    [-1, 0.25],
    [0, 0.5],
    [2, 0.75],
    [4, 1],
    [10, 1],
    [-10, 0],
  ])("%d -> %d", (v, t) => {
    expect(position(v, lim)).toBeCloseTo(t, 10);
  });
  it("missing values and limits give null", () => {
    expect(position(null, lim)).toBeNull();
    expect(position(undefined, lim)).toBeNull();
    expect(position(NaN, lim)).toBeNull();
    expect(position(1, null)).toBeNull();
  });
  it("a one-point scale puts values above it at 1, at it in the middle, below at 0", () => {
    const one = { min: 5, divider: 5, max: 5 };
    expect([position(6, one), position(5, one), position(4, one)]).toEqual([1, 0.5, 0]);
  });
});

describe("outside", () => {
  const lim = { min: -2, divider: 0, max: 4 };
  it.each([
    [5, "high"],
    [4, null],
    [-2, null],
    [-2.5, "low"],
    [null, null],
    [NaN, null],
  ])("%s -> %s", (v, want) => {
    expect(outside(v, lim)).toBe(want);
  });
  it("nothing is outside without limits", () => {
    expect(outside(100, null)).toBeNull();
  });
});

describe("withOverrides: the user's typed limits over the server's scale", () => {
  const seq = { kind: "sequential" as const, min: 0, divider: 5, max: 10 };
  const div = { kind: "diverging" as const, min: -10, divider: 0, max: 10 };
  it.each([
    [seq, {}, { min: 0, divider: 5, max: 10 }],
    [seq, { max: 20 }, { min: 0, divider: 10, max: 20 }], // sequential: stays linear
    [seq, { max: 20, divider: 1 }, { min: 0, divider: 1, max: 20 }],
    [div, { min: -4 }, { min: -4, divider: 0, max: 10 }], // diverging: white stays at 0
    [div, { divider: 2 }, { min: -10, divider: 2, max: 10 }],
  ] as const)("%j %j", (scale, over, want) => {
    expect(withOverrides(scale, over)).toEqual(want);
  });
  it("no scale yet: nothing to draw", () => {
    expect(withOverrides(null, { min: 1 })).toBeNull();
  });
});

describe("SCALES", () => {
  it("are the server's modes, labelled for people", () => {
    expect(SCALES.map((s) => [s.value, s.label])).toEqual([
      ["raw", "raw"],
      ["minmax", "min-max"],
      ["outliers", "clip outliers"],
    ]);
  });
});

describe("parseLimit", () => {
  it.each([
    ["1.5", 1.5],
    [" -2 ", -2],
    ["−3", -3],
    ["1e-3", 0.001],
    ["", undefined],
    ["abc", undefined],
    ["-", undefined],
  ])("%j -> %s", (s, v) => {
    expect(parseLimit(s)).toEqual(v);
  });
});
