import { describe, expect, it } from "vitest";
import { barPercent, rawRows, sampledRows, type StepDists } from "../src/lib/sampled";

describe("barPercent", () => {
  it.each([
    [0, 0],
    [0.25, 25],
    [0.031, 3.1],
    [1, 100],
    [1.0000001, 100],
    [-0.1, 0],
    [NaN, 0],
    [Infinity, 0],
  ])("barPercent(%s) = %s", (p, want) => {
    expect(barPercent(p)).toBeCloseTo(want, 9);
  });
});

const sampled: StepDists = {
  token_id: 7,
  topk_ids: [3, 7, 9, 11],
  topk_probs: [0.4, 0.3, 0.2, 0.1],
  topk_tokens: [" a", " b", " c", " d"],
  sampled_topk_ids: [3, 7],
  sampled_topk_probs: [0.55, 0.45],
};

describe("sampledRows", () => {
  it.each([
    ["labels from the raw list, chosen marked", sampled, [[3, " a", 0.55, ""], [7, " b", 0.45, "chosen"]]],
    [
      "an id outside the raw list is labelled by its id",
      { ...sampled, sampled_topk_ids: [3, 42], token_id: 42 },
      [[3, " a", 0.55, ""], [42, "#42", 0.45, "chosen"]],
    ],
    [
      "the server's own labels win",
      { ...sampled, sampled_topk_tokens: ["A", "B"] },
      [[3, "A", 0.55, ""], [7, "B", 0.45, "chosen"]],
    ],
    [
      "greedy: a one-hot",
      { ...sampled, token_id: 3, sampled_topk_ids: [3], sampled_topk_probs: [1] },
      [[3, " a", 1, "chosen"]],
    ],
  ])("%s", (_name, step, want) => {
    expect(sampledRows(step as StepDists).map((r) => [r.id, r.token, r.prob, r.cls])).toEqual(want);
  });
});

describe("rawRows", () => {
  it.each([
    [
      "tokens absent from the sampled list are marked removed",
      sampled,
      [[3, 0.4, ""], [7, 0.3, "chosen"], [9, 0.2, "removed"], [11, 0.1, "removed"]],
    ],
    [
      "nothing removed when every raw token survives",
      { ...sampled, sampled_topk_ids: [3, 7, 9, 11], sampled_topk_probs: [0.3, 0.3, 0.2, 0.2] },
      [[3, 0.4, ""], [7, 0.3, "chosen"], [9, 0.2, ""], [11, 0.1, ""]],
    ],
    [
      "greedy removes all but the argmax",
      { ...sampled, token_id: 3, sampled_topk_ids: [3], sampled_topk_probs: [1] },
      [[3, 0.4, "chosen"], [7, 0.3, "removed"], [9, 0.2, "removed"], [11, 0.1, "removed"]],
    ],
  ])("%s", (_name, step, want) => {
    const rows = rawRows(step as StepDists);
    expect(rows.map((r) => [r.id, r.prob, r.cls])).toEqual(want);
    expect(rows.map((r) => r.note)).toEqual(want.map((w) => (w[2] === "removed" ? "filtered out" : "")));
  });
});
