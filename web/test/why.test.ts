import { describe, expect, it } from "vitest";
import { interpolateRdBu } from "d3-scale-chromatic";
import { bandPoints, curveLimits, curvePoints, displayScores, divergingColour, estimateText, fraction, requestBody, scoreText, topChoices, totals } from "../src/lib/why";
import type { WhyFaithfulness } from "../src/lib/why";

describe("why helpers", () => {
  it("sums target rows per segment", () => {
    const r = { scores: [[1, -2, null], [0.5, 0.5, 3]], segments: [0, 1, 2].map((j) => ({ label: `s${j}`, tokens: [j, j + 1] })) };
    expect(totals(r)).toEqual([1.5, -1.5, 3]);
  });

  it("abs and normalise are display options", () => {
    expect(displayScores([2, -4, 1], { abs: false, normalise: false })).toEqual([2, -4, 1]);
    expect(displayScores([2, -4, 1], { abs: true, normalise: false })).toEqual([2, 4, 1]);
    expect(displayScores([2, -4, 1], { abs: false, normalise: true })).toEqual([0.5, -1, 0.25]);
    expect(displayScores([0, 0], { abs: false, normalise: true })).toEqual([0, 0]);
  });

  it("colours on a diverging scale: red positive, blue negative, white at zero", () => {
    expect(divergingColour(0, 1)).toBe(interpolateRdBu(0.5));
    expect(divergingColour(1, 1)).toBe(interpolateRdBu(0)); // RdBu starts red
    expect(divergingColour(-5, 1)).toBe(interpolateRdBu(1)); // clamped
    expect(divergingColour(3, 0)).toBe(interpolateRdBu(0.5));
  });

  it("shows scores signed with 3 decimals", () => {
    expect(scoreText(1.23456)).toBe("+1.235");
    expect(scoreText(-0.0004)).toBe("+0.000");
    expect(scoreText(-2)).toBe("-2.000");
  });

  it("builds the request without unset keys; progress as a fraction", () => {
    const p = { text: "hi", target: null, contrast: 7, method: "occlusion", features: "words", steps: null, faithfulness: true };
    expect(requestBody(p)).toEqual({ text: "hi", method: "occlusion", features: "words", faithfulness: true, contrast: 7 });
    expect(fraction({ done: 3, total: 12 })).toBe(0.25);
    expect(fraction({ done: 30, total: 12 })).toBe(1);
    expect(fraction(null)).toBe(0);
  });

  it("words the estimate", () => {
    expect(estimateText({ forwards: 1234, seconds: 5.06, cached: false })).toBe("~1,234 forwards · ~5.1 s");
    expect(estimateText({ forwards: 3, seconds: 0.01, cached: false })).toBe("~3 forwards · < 1 s");
    expect(estimateText({ forwards: 0, seconds: 0, cached: true })).toMatch(/cached/);
  });

  it("reads the top-k after the last token", () => {
    const tr = { topk_ids: [[1, 2], [5, 6]], topk_probs: [[0.5, 0.4], [0.7, null]], topk_tokens: [["a", "b"], [" x", " y"]] };
    expect(topChoices(tr)).toEqual([{ id: 5, label: " x", prob: 0.7 }, { id: 6, label: " y", prob: null }]);
  });

  it("places curves and the random band in the box", () => {
    const f = { deletion: [0, -2, -4], insertion: [-4, -1, 0], random_deletion: { mean: [0, -1, -4], std: [0, 1, 0] }, random_insertion: { mean: [-4, -3, 0], std: [0, 1, 0] } } as unknown as WhyFaithfulness;
    const lim = curveLimits(f);
    expect(lim.lo).toBeCloseTo(-4 - 0.2);
    expect(lim.hi).toBeCloseTo(0 + 0.2);
    const exact = { lo: -4, hi: 0 };
    expect(curvePoints([0, -2, -4], 100, 40, exact)).toBe("0.00,0.00 50.00,20.00 100.00,40.00");
    expect(curvePoints([0, null, -4], 100, 40, exact)).toBe("0.00,0.00 100.00,40.00");
    expect(bandPoints([0, -2], [1, 1], 100, 40, { lo: -4, hi: 2 })).toBe("0.00,6.67 100.00,20.00 100.00,33.33 0.00,20.00");
  });
});
