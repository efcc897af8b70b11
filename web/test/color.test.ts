import { describe, expect, it } from "vitest";
import { colorAt, luminance, normalize, parseRgb, rgbAt } from "../src/lib/color";

describe("normalize", () => {
  const r = { min: 2, max: 4 };
  it.each([
    [2, r, 0],
    [3, r, 0.5],
    [4, r, 1],
    [10, r, 1],
    [-5, r, 0],
    [null, r, null],
    [undefined, r, null],
    [NaN, r, null],
    [3, null, null],
    [5, { min: 5, max: 5 }, 1],
    [4, { min: 5, max: 5 }, 0],
  ])("normalize(%s, %j) = %s", (v, range, want) => {
    expect(normalize(v as number, range)).toBe(want);
  });
});

describe("colours", () => {
  it("parses rgb and hex", () => {
    expect(parseRgb("rgb(1, 2, 3)")).toEqual([1, 2, 3]);
    expect(parseRgb("#0a0b0c")).toEqual([10, 11, 12]);
    expect(() => parseRgb("red")).toThrow();
  });
  it("maps low values near white and high values dark", () => {
    const lo = rgbAt(0, "reds");
    const hi = rgbAt(1, "reds");
    expect(luminance(lo)).toBeGreaterThan(0.85);
    expect(luminance(hi)).toBeLessThan(0.1);
  });
  it("opacity 0 is white, opacity 1 is the map", () => {
    expect(rgbAt(1, "blues", 0)).toEqual([255, 255, 255]);
    expect(rgbAt(1, "blues", 1)).toEqual(rgbAt(1, "blues"));
  });
  it("clamps t", () => {
    expect(rgbAt(2, "greens")).toEqual(rgbAt(1, "greens"));
    expect(rgbAt(-1, "greens")).toEqual(rgbAt(0, "greens"));
  });
  it.each([
    [null, "", ""],
    [0, "rgb(", ""],
    [1, "rgb(", "#fff"],
  ])("colorAt(%s)", (t, bgPrefix, fg) => {
    const c = colorAt(t, "purples", 1);
    expect(c.background.startsWith(bgPrefix)).toBe(true);
    expect(c.color).toBe(fg);
  });
});
