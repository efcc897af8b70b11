import { describe, expect, it } from "vitest";
import { computeLimits, parseLimit, position, quantile, withOverrides } from "../src/lib/scale";

describe("quantile", () => {
  it.each([
    [[1, 2, 3, 4, 5], 0.5, 3],
    [[1, 2, 3, 4], 0.5, 2.5],
    [[1, 2, 3, 4, 5], 0.25, 2],
    [[7], 0.75, 7],
    [[], 0.5, NaN],
  ])("%j at %d -> %d", (xs, q, want) => {
    expect(quantile(xs, q)).toEqual(want);
  });
});

describe("computeLimits", () => {
  const xs = Array.from({ length: 101 }, (_, i) => i); // 0..100: percentiles are the values
  it.each([
    ["minmax", false, [1, 2, 3], { min: 1, divider: 2, max: 3 }],
    ["raw", false, [1, 2, 3], { min: 1, divider: 2, max: 3 }],
    ["raw", false, [-1, 2, 3], { min: -1, divider: 0, max: 3 }],
    ["minmax", false, [-1, 2, 3], { min: -1, divider: 1, max: 3 }],
    ["minmax", true, [-1, 2, 3], { min: -1, divider: 0, max: 3 }],
    ["minmax", true, [1, 2, 3], { min: 1, divider: 2, max: 3 }],
    ["minmax_clip", false, xs, { min: 1, divider: 50, max: 99 }],
    ["minmax_clip", true, xs.map((v) => v - 50), { min: -49, divider: 0, max: 49 }],
    ["minmax", false, [5, 5], { min: 5, divider: 5, max: 5 }],
  ] as const)("%s signed=%s %j", (scale, signed, values, want) => {
    expect(computeLimits(values as number[], scale, signed)).toEqual(want);
  });
  it("is null without values", () => {
    expect(computeLimits([null, undefined], "minmax", false)).toBeNull();
  });
});

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

describe("withOverrides", () => {
  const lim = { min: 0, divider: 5, max: 10 };
  it.each([
    [{}, false, lim],
    [{ max: 20 }, false, { min: 0, divider: 10, max: 20 }],
    [{ max: 20, divider: 1 }, false, { min: 0, divider: 1, max: 20 }],
    [{ min: -4 }, true, { min: -4, divider: 5, max: 10 }],
  ] as const)("%j signed=%s", (over, signed, want) => {
    expect(withOverrides(lim, over, signed)).toEqual(want);
  });
  it("null stays null", () => {
    expect(withOverrides(null, { min: 1 })).toBeNull();
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
