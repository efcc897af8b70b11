import { describe, expect, it } from "vitest";
import { absMax, attentionLines, cellTokens, headColour, HEAD_COLOURS, inWindow, shiftWindow, stepToken, thumbColour, weightOutside, windowAround } from "../src/lib/attention";

describe("token windows", () => {
  it("centres on the token, stays inside the text, shrinks to a short text", () => {
    expect(windowAround(1000, 500, 64)).toEqual({ start: 468, end: 532 });
    expect(windowAround(1000, 3, 64)).toEqual({ start: 0, end: 64 });
    expect(windowAround(1000, 999, 64)).toEqual({ start: 936, end: 1000 });
    expect(windowAround(20, 7, 64)).toEqual({ start: 0, end: 20 });
    expect(windowAround(20, 50, 8)).toEqual({ start: 12, end: 20 }); // a token past the end: the last window
  });
  it("scrolls by a delta without leaving the text or changing width", () => {
    expect(shiftWindow(100, { start: 10, end: 42 }, 16)).toEqual({ start: 26, end: 58 });
    expect(shiftWindow(100, { start: 10, end: 42 }, -16)).toEqual({ start: 0, end: 32 });
    expect(shiftWindow(100, { start: 60, end: 92 }, 50)).toEqual({ start: 68, end: 100 });
  });
  it("arrow keys move the selection; the window follows by the smallest shift", () => {
    const win = { start: 10, end: 20 };
    expect(stepToken(100, win, 15, 1)).toEqual({ selected: 16, win });
    expect(stepToken(100, win, 19, 1)).toEqual({ selected: 20, win: { start: 11, end: 21 } });
    expect(stepToken(100, win, 10, -1)).toEqual({ selected: 9, win: { start: 9, end: 19 } });
    expect(stepToken(100, { start: 0, end: 10 }, 0, -1)).toEqual({ selected: 0, win: { start: 0, end: 10 } });
    expect(stepToken(100, { start: 90, end: 100 }, 99, 1).selected).toBe(99);
  });
  it("membership and thumbnail cells", () => {
    expect(inWindow({ start: 4, end: 8 }, 4)).toBe(true);
    expect(inWindow({ start: 4, end: 8 }, 8)).toBe(false);
    expect(cellTokens({ start: 10, end: 21 }, 4, 0)).toEqual([10, 14]);
    expect(cellTokens({ start: 10, end: 21 }, 4, 2)).toEqual([18, 21]); // the last cell covers fewer tokens
  });
});

describe("head view lines", () => {
  const row = [0.1, 0.002, 0.5, 0.398, null, 0];
  it("from the selected query to each key in the window, y at row centres", () => {
    const lines = attentionLines(row, 3, { start: 1, end: 5 }, 10, "from");
    expect(lines).toEqual([
      { query: 3, key: 2, weight: 0.5, y1: 25, y2: 15 },
      { query: 3, key: 3, weight: 0.398, y1: 25, y2: 25 },
    ]); // key 0 is outside the window, key 1 under the minimum weight, key 4 missing
  });
  it("to the selected key from each query", () => {
    const col = [0, 0, 0.9, 0.25, 0.01];
    const lines = attentionLines(col, 2, { start: 0, end: 5 }, 12, "to", 0.02);
    expect(lines.map((l) => [l.query, l.key, l.y1, l.y2])).toEqual([[2, 2, 30, 30], [3, 2, 42, 30]]);
  });
  it("nothing when the selected token is outside the window", () => {
    expect(attentionLines(row, 0, { start: 1, end: 5 }, 10, "from")).toEqual([]);
  });
  it("weight the window leaves out", () => {
    expect(weightOutside(row, { start: 2, end: 6 })).toBeCloseTo(0.102);
  });
});

describe("colours and scales", () => {
  it("heads get distinct colours, cycled", () => {
    expect(new Set(HEAD_COLOURS.map((_, i) => headColour(i))).size).toBe(HEAD_COLOURS.length);
    expect(headColour(HEAD_COLOURS.length + 1)).toBe(headColour(1));
  });
  it("thumbnail ramp: white at 0, darkest at 1, clamped, NaN as 0", () => {
    expect(thumbColour(0)).toEqual([255, 255, 255]);
    expect(thumbColour(1)).toEqual([37, 99, 235]);
    expect(thumbColour(4)).toEqual(thumbColour(1));
    expect(thumbColour(NaN)).toEqual([255, 255, 255]);
  });
  it("absMax skips missing values and is never 0", () => {
    expect(absMax([1, -3, null, 2])).toBe(3);
    expect(absMax([0, null])).toBeGreaterThan(0);
  });
});

describe("the Attention tab in the URL", async () => {
  const { decodeViewState, encodeViewState } = await import("../src/lib/viewstate");
  it("round-trips view=attention", () => {
    expect(decodeViewState(`#${encodeViewState({ view: "attention", explore: {} })}`).view).toBe("attention");
  });
});
