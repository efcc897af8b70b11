import { describe, expect, it } from "vitest";
import { interpolateRdBu } from "d3-scale-chromatic";
import { cellTitle, differing, displayGrid, fullDifference, lengthProblem, requestBody, scatter, symmetricMax, valueText, verifiedKeys, type PatchResult } from "../src/lib/patching";
import { divergingColour } from "../src/lib/why";

const result: PatchResult = {
  method: "attribution",
  by: "position",
  hook: "resid_pre",
  grid: [
    [0, -0.5, 0.25],
    [null, 1, -2],
  ],
  rows: ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
  columns: ["The", " cat", " sat"],
  tokens: ["The", " cat", " sat"],
  source_tokens: ["The", " dog", " sat"],
  base: -1,
  full: -3,
  metric: 'log p(" on")',
  target: 7,
  target_token: " on",
  contrast: null,
  contrast_token: null,
  forwards: 1,
  verified: [
    { layer: 1, column: 2, estimate: -2, real: -1.5 },
    { layer: 1, column: 1, estimate: 1, real: 0.5 },
  ],
  spearman: 1,
  cached: false,
};

describe("patching helpers", () => {
  it("builds the request: heads are by head, defaults are left out, verify only for attribution", () => {
    const p = { text: "a", source: "b", hook: "resid_pre" as const, target: null, contrast: null, method: "patch" as const, verify: 10 };
    expect(requestBody(p)).toEqual({ text: "a", source: "b", by: "position", method: "patch", hook: "resid_pre" });
    expect(requestBody({ ...p, hook: "heads", target: 5, contrast: 9, method: "attribution" })).toEqual({
      text: "a",
      source: "b",
      by: "head",
      method: "attribution",
      target: 5,
      contrast: 9,
      verify: 10,
    });
    expect(requestBody({ ...p, target: 0 }).target).toBe(0); // id 0 is a token, not "none"
  });

  it("says both lengths when the prompts differ, nothing while unknown", () => {
    expect(lengthProblem(8, 14)).toContain("A has 8 tokens and B 14");
    expect(lengthProblem(8, 8)).toBe("");
    expect(lengthProblem(null, 3)).toBe("");
  });

  it("shows the change, or a fraction of the whole B − A difference", () => {
    expect(fullDifference(result)).toBe(-2);
    expect(displayGrid(result, false)).toEqual(result.grid);
    expect(displayGrid(result, true)).toEqual([
      [-0, 0.25, -0.125],
      [null, -0.5, 1],
    ]);
    // no difference to divide by: every fraction is undefined
    expect(fullDifference({ base: 1, full: 1 })).toBeNull();
    expect(displayGrid({ ...result, base: 1, full: 1 }, true).flat().every((v) => v === null)).toBe(true);
  });

  it("centres the colour scale on 0 with the largest magnitude at both ends", () => {
    expect(symmetricMax(result.grid)).toBe(2);
    expect(symmetricMax([[0, null]])).toBe(1);
    const m = symmetricMax(result.grid);
    expect(divergingColour(0, m)).toBe(interpolateRdBu(0.5));
    expect(divergingColour(-2, m)).toBe(interpolateRdBu(1));
  });

  it("formats values and readouts", () => {
    expect(valueText(0.25, false)).toBe("+0.250");
    expect(valueText(-0.125, true)).toBe("-12.5%");
    expect(valueText(-0.0001, true)).toBe("0.0%");
    expect(valueText(null, false)).toBe("–");
    expect(cellTitle(result, 0, 1, -0.5, false, 'Δ log p(" on")')).toBe('layer 0 · position 1 " cat" (B: " dog") · Δ log p(" on") -0.500');
    expect(cellTitle({ ...result, by: "head", columns: ["H0", "H1"] }, 1, 1, 0.5, true, "x")).toBe("layer 1 · head 1 · of B − A +50.0%");
  });

  it("marks verified cells and the positions where B differs", () => {
    expect([...verifiedKeys(result)].sort()).toEqual(["1:1", "1:2"]);
    expect(verifiedKeys({ verified: null }).size).toBe(0);
    expect(differing(result)).toEqual([false, true, false]);
  });

  it("puts estimate vs real on one scale: y = x is the diagonal", () => {
    const { points, lo, hi } = scatter([{ layer: 0, column: 0, estimate: 1, real: 1 }, { layer: 0, column: 1, estimate: -1, real: 0.5 }], 100);
    expect(lo).toBeLessThan(-1);
    expect(hi).toBeGreaterThan(1);
    expect(points[0].x).toBeCloseTo(100 - points[0].y); // on the diagonal
    expect(points[1].x).toBeLessThan(points[0].x);
    expect(scatter([], 100).points).toEqual([]);
  });
});
