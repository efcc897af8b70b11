import { describe, expect, it } from "vitest";
import { countTicks, fmtValue, histogramBars, valueMarker } from "../src/lib/charts";

describe("valueMarker: a chosen value is never drawn off the chart", () => {
  it("places an in-range value on the scale, unlabelled", () => {
    expect(valueMarker(5, 0, 10, 20, 120)).toEqual({ x: 70, side: "in", label: null });
    expect(valueMarker(0, 0, 10, 20, 120).x).toBe(20);
    expect(valueMarker(10, 0, 10, 20, 120)).toEqual({ x: 120, side: "in", label: null });
  });
  it("puts a value above the range at the right edge with an arrow and its value", () => {
    expect(valueMarker(2345.4, -3, 4, 20, 120)).toEqual({ x: 120, side: "high", label: "▶ 2,345 (off scale)" });
  });
  it("puts a value below the range at the left edge", () => {
    expect(valueMarker(-12000, -3, 4, 20, 120)).toEqual({ x: 20, side: "low", label: "◀ -12,000 (off scale)" });
    expect(valueMarker(-3.5, -3, 4, 20, 120).label).toBe("◀ -3.5 (off scale)");
  });
  it("the marker of an off-range value stays inside the plot box", () => {
    for (const v of [-1e9, -4, 5, 1e9]) {
      const m = valueMarker(v, -3, 4, 20, 120);
      expect(m.x).toBeGreaterThanOrEqual(20);
      expect(m.x).toBeLessThanOrEqual(120);
      expect(m.side).not.toBe("in");
    }
  });
});

describe("chart helpers", () => {
  it("fmtValue groups thousands, keeps small values short", () => {
    expect(fmtValue(22123.7)).toBe("22,124");
    expect(fmtValue(0.012345)).toBe("0.01235");
    expect(fmtValue(-999.5)).toBe("-999.5");
  });
  it("countTicks: 0, a round middle, the top", () => {
    expect(countTicks(768)).toEqual([0, 400, 768]);
    expect(countTicks(1)).toEqual([0, 1]);
    expect(countTicks(0)).toEqual([0]);
  });
  it("histogramBars draws into an offset plot box", () => {
    const h = { nonfinite: 0, edges: [-1, 0, 1, 2], token: [0, 2, 4], median: [1, 1, 0], outliers: { low: null, high: null, dims: [], values: [] } };
    const b = histogramBars(h, 30, 40, 10, 5);
    expect(b!.x(-1)).toBe(10);
    expect(b!.x(2)).toBe(40);
    expect(b!.token.map((r) => [r.x, r.y, r.h])).toEqual([[20, 25, 20], [30, 5, 40]]);
    expect([b!.lo, b!.hi, b!.most]).toEqual([-1, 2, 4]);
  });
});
