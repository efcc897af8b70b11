/** Values the server sends as null (the model made them inf or NaN) stay missing in the page's pure
 * helpers: a gap, "–" or a hatched box, never 0 and never NaN in a coordinate. */
import { describe, expect, it } from "vitest";
import { absMax, histogramBars, isNum, lineRuns, signedBars } from "../src/lib/charts";
import { fmtAgo } from "../src/lib/format";
import { mean2d, predictionRows } from "../src/lib/metrics";
import { barPercent, rawRows, sampledRows, type StepDists } from "../src/lib/sampled";
import type { Histogram, Trace } from "../src/lib/types";

const OUT = { low: null, high: null, dims: [], values: [] };

/** Every number of a chart's geometry (nested objects and arrays): all finite. */
function allFinite(x: unknown): boolean {
  if (typeof x === "number") return Number.isFinite(x);
  if (x === null || typeof x !== "object") return true;
  return Object.values(x).every(allFinite);
}

describe("histogramBars with lost values", () => {
  it("a vector with no finite value (null edges, as the server sends it) has no bars, not bars at 0", () => {
    const h: Histogram = { nonfinite: 8, edges: [null, null, null], token: [0, 8], median: [0, 8], outliers: OUT };
    expect(histogramBars(h, 100, 50)).toBeNull();
  });
  it("a bin with a missing edge or median count is a gap; the others are drawn as without it", () => {
    const h: Histogram = { nonfinite: 1, edges: [0, 1, null, 3, 4], token: [2, 3, 1, 4], median: [1, null, 2, 2], outliers: OUT };
    const b = histogramBars(h, 40, 40)!;
    // bins 1 and 2 touch the missing edge 2: no token bar there; bin 1's median is missing too
    expect(b.token.map((r) => r.i)).toEqual([0, 3]);
    expect(b.median.map((r) => r.i)).toEqual([0, 3]);
    expect(b.most).toBe(4); // the null median is not a count of 0 or NaN on the y scale
    expect(b.token[1]).toEqual({ x: 30, y: 0, w: 9.7, h: 40, i: 3 }); // x: 40 px over [0, 4]
    expect(allFinite(b.token) && allFinite(b.median)).toBe(true);
  });
  it("a null count on either side of a missing range end leaves no chart", () => {
    const h: Histogram = { nonfinite: 0, edges: [0, 1, null], token: [1, 1], median: [1, 1], outliers: OUT };
    expect(histogramBars(h, 40, 40)).toBeNull(); // the range's high end is unknown: no x scale
  });
});

describe("lineRuns: a series with gaps", () => {
  const x = (i: number) => i * 10;
  const y = (v: number) => 100 - v;
  it("breaks the line at null and non-finite values", () => {
    expect(lineRuns([1, 2, null, 4, 5, 6], x, y)).toEqual(["0,99 10,98", "30,96 40,95 50,94"]);
    expect(lineRuns([1, NaN, 3, Infinity, 5], x, y)).toEqual([]); // runs of one point: no line
    expect(lineRuns([null, null], x, y)).toEqual([]);
    expect(lineRuns([1, 2, 3], x, y)).toEqual(["0,99 10,98 20,97"]);
  });
  it("never writes NaN or a missing value as 0", () => {
    const runs = lineRuns([null, 5, null, 7, 8], x, y).join(" ");
    expect(runs).toBe("30,93 40,92");
    expect(runs).not.toMatch(/NaN|,100\b/);
  });
});

describe("signedBars: the Compare panel's a − b per layer", () => {
  it("a missing difference is a full-height box, the scale from the values that are there", () => {
    const g = signedBars([2, null, -1, NaN], 30, 40, 70);
    expect(g.m).toBe(2);
    expect(g.bars.map((b) => b.v)).toEqual([2, null, -1, null]);
    expect(g.bars[1]).toEqual({ i: 1, x: 40.5, w: 9, y: 0, h: 70, v: null });
    expect(g.bars[0]).toMatchObject({ y: 0, h: 35 }); // +2 = the top, from the zero line at 35
    expect(g.bars[2]).toMatchObject({ y: 35, h: 17.5 });
    expect(allFinite(g.bars)).toBe(true);
  });
  it("all missing: boxes only, a finite scale", () => {
    const g = signedBars([null, null], 0, 20, 10);
    expect(g.bars.every((b) => b.v === null && b.h === 10)).toBe(true);
    expect(allFinite(g.bars) && Number.isFinite(g.y(0))).toBe(true);
  });
  it("absMax and isNum read null as missing", () => {
    expect(absMax([null, -3, 2, NaN, -Infinity])).toBe(3);
    expect(absMax([null])).toBe(0);
    expect([0, -1, null, undefined, NaN, Infinity].map(isNum)).toEqual([true, true, false, false, false, false]);
  });
});

describe("probability rows with lost probabilities", () => {
  const step: StepDists = {
    token_id: 3,
    topk_ids: [3, 7],
    topk_probs: [null, 0.25],
    topk_tokens: ["a", "b"],
    sampled_topk_ids: [3],
    sampled_topk_probs: [null],
  };
  it("keep null (shown as – with a hatched track), not 0", () => {
    expect(sampledRows(step).map((r) => r.prob)).toEqual([null]);
    expect(rawRows(step).map((r) => r.prob)).toEqual([null, 0.25]);
    expect(barPercent(null)).toBe(0);
    expect(barPercent(undefined)).toBe(0);
  });
  it("predictionRows keeps a lost top-k or true probability as null (was NaN)", () => {
    const trace = {
      tokens: ["x", "y"],
      token_ids: [1, 2],
      topk_ids: [[5, 6]],
      topk_probs: [[null, 0.1]],
      topk_tokens: [["p", "q"]],
      true_prob: [null],
    } as unknown as Trace;
    const rows = predictionRows(trace, 1);
    expect(rows.map((r) => [r.token, r.prob, r.extra])).toEqual([
      ["p", null, false],
      ["q", 0.1, false],
      ["y", null, true],
    ]);
  });
  it("mean2d leaves out nulls (an all-null step: NaN, which charts draw as a gap)", () => {
    expect(mean2d([[1, null], [3, 5]])).toBe(3);
    expect(mean2d([[null], [null]])).toBeNaN();
    expect(lineRuns([1, mean2d([[null]]), 3], (i) => i, (v) => v)).toEqual([]);
  });
});

describe("fmtAgo: a stored trace's age", () => {
  const now = 1_700_000_000;
  it.each([
    [null, "age unknown"], // the store's catalogue has no time: not "54 years ago" or 1970-01-01
    [undefined, "age unknown"],
    [NaN, "age unknown"],
    [now - 5, "5 s ago"],
    [now - 600, "10 min ago"],
    [now - 7200, "2 h ago"],
    [now - 3 * 86400, "2023-11-11"],
    [now + 30, "0 s ago"], // a clock a little ahead: not a negative age
  ])("fmtAgo(%s) = %s", (created, want) => {
    expect(fmtAgo(created as number | null, now)).toBe(want);
  });
});
