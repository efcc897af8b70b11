import { describe, expect, it } from "vitest";
import {
  changed,
  diffParts,
  diffText,
  formProblem,
  klText,
  layerName,
  parseProb,
  probText,
  requestBody,
  rows,
  sharedMax,
  signed,
  sparkBars,
  topTokens,
  writtenVariants,
  type AblationParams,
  type AblationVariant,
} from "../src/lib/ablation";

const base: AblationParams = { prompt: "The cat sat.", rows: [{ label: "", text: "" }], auto: "sentences", target: null, maxNewTokens: 12, seed: 3 };

function variant(label: string, over: Partial<AblationVariant> = {}): AblationVariant {
  return {
    label, text: label, token_ids: [1], target_logprob: -1, target_prob: 0.5, delta_logprob: 0, topk_ids: [7, 8, 9, 10],
    topk_probs: [0.5, 0.2, 0.1, 0.05], topk_tokens: [" a", " b", " c", " d"], kl: 0, generated_ids: [], generation: "",
    diff: [], resid_norms: [1, 2], resid_norm_diff: [0, 0], resid_delta_norm: [0, 0], ...over,
  };
}

describe("ablation request", () => {
  it("sends written variants (blank rows skipped, blank labels dropped) and the automatic kind", () => {
    const rowsIn = [{ label: " mine ", text: "A cat" }, { label: "", text: "  " }, { label: "", text: "Dogs" }];
    expect(writtenVariants(rowsIn)).toEqual([{ text: "A cat", label: "mine" }, { text: "Dogs" }]);
    expect(requestBody({ ...base, rows: rowsIn })).toEqual({
      prompt: "The cat sat.", variants: [{ text: "A cat", label: "mine" }, { text: "Dogs" }], max_new_tokens: 12, top_k: 5,
      auto: "sentences", replace_with: "pad",
    });
  });

  it("maps the automatic choices; seed only for plausible; target only when chosen", () => {
    expect(requestBody({ ...base, auto: "none" })).toEqual({ prompt: "The cat sat.", variants: [], max_new_tokens: 12, top_k: 5 });
    expect(requestBody({ ...base, auto: "words" })).toMatchObject({ auto: "words", replace_with: "pad" });
    expect(requestBody({ ...base, auto: "pad" })).toMatchObject({ auto: "replace", replace_with: "pad" });
    const pl = requestBody({ ...base, auto: "plausible", target: 42 });
    expect(pl).toMatchObject({ auto: "replace", replace_with: "plausible", seed: 3, target: 42 });
    expect("seed" in requestBody({ ...base, auto: "words" })).toBe(false);
    expect("target" in requestBody(base)).toBe(false);
  });

  it("says why the form cannot run, as the server would refuse", () => {
    expect(formProblem(base)).toBe("");
    expect(formProblem({ ...base, prompt: "  " })).toMatch(/prompt/);
    expect(formProblem({ ...base, auto: "none" })).toMatch(/variant/);
    expect(formProblem({ ...base, auto: "none", rows: [{ label: "", text: "x" }] })).toBe("");
    expect(formProblem({ ...base, rows: Array.from({ length: 65 }, () => ({ label: "", text: "x" })) })).toMatch(/at most 64/);
    expect(formProblem({ ...base, maxNewTokens: 65 })).toMatch(/0 to 64/);
    expect(formProblem({ ...base, maxNewTokens: 1.5 })).toMatch(/0 to 64/);
  });
});

describe("ablation rows", () => {
  const original = variant("original", { target_prob: 0.5 });
  const vs = [
    variant("a", { kl: 0.1, delta_logprob: -0.2, target_prob: 0.4 }),
    variant("b", { kl: null, delta_logprob: null, target_prob: null }),
    variant("c", { kl: 0.9, delta_logprob: -1.5, target_prob: 0.1 }),
    variant("d", { kl: 0.5, delta_logprob: 0.3, target_prob: 0.7 }),
  ];
  const result = { original, variants: vs };

  it("keeps the original first; sorts by KL or by the target's drop; missing values last", () => {
    expect(rows(result).map((r) => r.v.label)).toEqual(["original", "a", "b", "c", "d"]);
    expect(rows(result, "kl").map((r) => r.v.label)).toEqual(["original", "c", "d", "a", "b"]);
    expect(rows(result, "change").map((r) => r.v.label)).toEqual(["original", "c", "a", "d", "b"]);
    expect(rows(result, "kl")[0].original).toBe(true);
    expect(vs.map((v) => v.label)).toEqual(["a", "b", "c", "d"]); // not sorted in place
  });

  it("gives the target's change of probability against the original", () => {
    const byLabel = Object.fromEntries(rows(result).map((r) => [r.v.label, r.deltaProb]));
    expect(byLabel.original).toBe(0);
    expect(byLabel.a).toBeCloseTo(-0.1, 12);
    expect(byLabel.b).toBeNull();
    expect(byLabel.d).toBeCloseTo(0.2, 12);
  });

  it("lists the top 3 tokens with their probabilities", () => {
    expect(topTokens(original)).toEqual([{ token: " a", prob: 0.5 }, { token: " b", prob: 0.2 }, { token: " c", prob: 0.1 }]);
    expect(topTokens({ topk_tokens: ["x"], topk_probs: [null] })).toEqual([{ token: "x", prob: null }]);
  });

  it("formats numbers so that the shown text reads back", () => {
    expect(probText(0.1234)).toBe("12.3%");
    expect(probText(0.001)).toBe("0.1%");
    expect(probText(4.56e-5)).toBe("4.6e-5");
    expect(probText(null)).toBe("–");
    expect(parseProb("12.3%")).toBeCloseTo(0.123, 12);
    expect(parseProb("4.6e-5")).toBe(4.6e-5);
    expect(signed(0.1234)).toBe("+0.123");
    expect(signed(-1.5)).toBe("-1.500");
    expect(signed(-0.0001)).toBe("+0.000");
    expect(signed(null)).toBe("–");
    expect(klText(0.01234)).toBe("0.012");
    expect(klText(Infinity)).toBe("–");
  });
});

describe("regeneration diff", () => {
  const diff: [string, string][] = [["=", "the"], ["-", "cat sat"], ["+", "dog ran"], ["=", "home"]];

  it("draws removed and added runs of words", () => {
    expect(diffParts(diff)).toEqual([{ op: "=", text: "the" }, { op: "-", text: "cat sat" }, { op: "+", text: "dog ran" }, { op: "=", text: "home" }]);
    expect(diffText(diff)).toBe("the [-cat sat-] {+dog ran+} home"); // what `lmpeek ablate` prints (render_diff)
    expect(changed(diff)).toBe(true);
    expect(changed([["=", "same words"]])).toBe(false);
    expect(diffParts([["=", ""]])).toEqual([]); // an empty regeneration on both sides
  });

  it("rebuilds both texts from the parts", () => {
    const parts = diffParts(diff);
    expect(parts.filter((p) => p.op !== "+").map((p) => p.text).join(" ")).toBe("the cat sat home");
    expect(parts.filter((p) => p.op !== "-").map((p) => p.text).join(" ")).toBe("the dog ran home");
  });
});

describe("residual-norm sparkline", () => {
  it("draws signed bars from the middle on one scale; a missing value as a full-height box", () => {
    const max = sharedMax([[0, 1, -2], [null, 4]]);
    expect(max).toBe(4);
    const bars = sparkBars([4, -2, 0, null], max, 40, 20);
    expect(bars.map((b) => [b.y, b.h])).toEqual([[0, 10], [10, 5], [10, 0], [0, 20]]);
    expect(bars.map((b) => b.v)).toEqual([4, -2, 0, null]);
    expect(bars[1].x).toBeCloseTo(10.5, 12);
    expect(bars[0].w).toBe(9);
    expect(sharedMax([[0, 0]])).toBeGreaterThan(0); // all zero: no division by zero
  });

  it("names the layers", () => {
    expect(layerName("blocks.3.hook_resid_pre")).toBe("L3 in");
    expect(layerName("blocks.5.hook_resid_post")).toBe("L5 out");
    expect(layerName("other")).toBe("other");
  });
});
