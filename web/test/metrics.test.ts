import { describe, expect, it } from "vitest";
import { errorMessage } from "../src/lib/api";
import { clampIndex, drawnMap, isTextField, mean2d, METRICS, metricInfo, paneValues, predictionRows, predictionStats, remoteKey } from "../src/lib/metrics";
import type { Trace } from "../src/lib/types";

const trace = {
  id: "t1",
  tokens: ["A", " b", "\n", " c"],
  token_ids: [1, 2, 3, 4],
  offsets: [],
  topk_ids: [
    [2, 9, 8, 7, 6, 5],
    [9, 8, 7, 6, 5, 3],
    [4, 9, 8, 7, 6, 5],
    [1, 2, 3, 4, 5, 6],
  ],
  topk_probs: [
    [0.5, 0.2, 0.1, 0.05, 0.04, 0.03],
    [0.4, 0.2, 0.1, 0.05, 0.04, 0.03],
    [0.9, 0.05, 0.01, 0.01, 0.01, 0.01],
    [0.3, 0.2, 0.1, 0.1, 0.1, 0.1],
  ],
  topk_tokens: [
    [" b", "x", "y", "z", "w", "v"],
    ["x", "y", "z", "w", "v", "\n"],
    [" c", "x", "y", "z", "w", "v"],
    ["A", " b", "\n", " c", "v", "u"],
  ],
  entropy: [1, 2, 0.5, 3],
  loss: [0.69, 4.2, 0.1, null],
  true_prob: [0.5, 0.015, 0.9, null],
  norms: { "blocks.0.hook_resid_post": [10, 20, 30, 40], "blocks.1.hook_attn_out": [1, 2, 3, 4] },
  attn_entropy: [],
  model: {} as Trace["model"],
  text: "A b\n c",
  chat: false,
} as unknown as Trace;

describe("predictionRows: the prediction that produced token t (made at t-1)", () => {
  it("marks the token itself in the previous position's top 5", () => {
    const rows = predictionRows(trace, 1);
    expect(rows).toHaveLength(5);
    expect(rows.map((r) => r.prob)).toEqual([0.5, 0.2, 0.1, 0.05, 0.04]); // position 0's list
    expect(rows.filter((r) => r.actual).map((r) => r.token)).toEqual([" b"]);
  });
  it("appends the token when it is outside the top 5", () => {
    const rows = predictionRows(trace, 2);
    expect(rows).toHaveLength(6);
    expect(rows[5]).toEqual({ token: "\n", id: 3, prob: 0.015, actual: true, extra: true });
  });
  it("the last token has one too; the first token has none", () => {
    expect(predictionRows(trace, 3).filter((r) => r.actual).map((r) => r.token)).toEqual([" c"]);
    expect(predictionRows(trace, 0)).toEqual([]);
    expect(predictionRows(trace, 4)).toEqual([]);
  });
  it("stats of the same prediction", () => {
    expect(predictionStats(trace, 2)).toEqual({ loss: 4.2, prob: 0.015, entropy: 2 });
    expect(predictionStats(trace, 0)).toBeNull();
  });
});

describe("helpers", () => {
  it.each([
    [3, 5, 3],
    [-1, 5, 0],
    [9, 5, 4],
    [2.6, 5, 3],
    [NaN, 5, 0],
    [1, 0, 0],
  ])("clampIndex(%s, %s) = %s", (v, n, want) => {
    expect(clampIndex(v, n)).toBe(want);
  });
  it("mean2d", () => {
    expect(mean2d([[1, 2], [3, 6]])).toBe(3);
    expect(mean2d([])).toBeNaN();
  });
  it("isTextField", () => {
    const el = (tagName: string, extra: object = {}) => ({ tagName, ...extra }) as unknown as Element;
    expect(isTextField(null)).toBe(false);
    expect(isTextField(el("TEXTAREA"))).toBe(true);
    expect(isTextField(el("INPUT", { type: "number" }))).toBe(true);
    expect(isTextField(el("INPUT", { type: "checkbox" }))).toBe(false);
    expect(isTextField(el("BUTTON"))).toBe(false);
  });
  it.each([
    [400, '{"detail": "text is empty"}', "text is empty"],
    [422, '{"detail": [{"loc": ["body", "top_k"], "msg": "too big"}]}', "top_k: too big"],
    [500, "Internal Server Error", "HTTP 500: Internal Server Error"],
    [502, "", "HTTP 502"],
  ])("errorMessage(%s, %j)", (status, body, want) => {
    expect(errorMessage(status, body)).toBe(want);
  });
});

describe("one request per metric (values and scale come from the server)", () => {
  const a = { hook: "blocks.1.hook_resid_post", head: null, layer: 1, selected: 2, dim: 7, neuron: 3, scale: "minmax" as const, skipFirst: true, rope: "full" };
  it("the key holds only what the metric reads", () => {
    // the selection moves: metrics that ignore it keep their key (no refetch, no recolouring)
    expect(remoteKey("t1", "act-norm", { ...a, selected: 5, dim: 9 })).toBe(remoteKey("t1", "act-norm", a));
    expect(remoteKey("t1", "loss", { ...a, hook: "x" })).toBe(remoteKey("t1", "loss", a));
    expect(remoteKey("t1", "cos-tokens", { ...a, selected: 5 })).not.toBe(remoteKey("t1", "cos-tokens", a));
    expect(remoteKey("t1", "act-value", { ...a, dim: 9 })).not.toBe(remoteKey("t1", "act-value", a));
    expect(remoteKey("t1", "neuron", { ...a, neuron: 4 })).not.toBe(remoteKey("t1", "neuron", a));
    expect(remoteKey("t1", "attn-from", { ...a, rope: "applied" })).not.toBe(remoteKey("t1", "attn-from", a));
  });
  it("the scale mode, leaving out the first token and the compared trace are in the key", () => {
    expect(remoteKey("t1", "norm", { ...a, scale: "raw" })).not.toBe(remoteKey("t1", "norm", a));
    expect(remoteKey("t1", "norm", { ...a, skipFirst: false })).not.toBe(remoteKey("t1", "norm", a));
    expect(remoteKey("t1", "norm", a, "t2")).not.toBe(remoteKey("t1", "norm", a));
    expect(remoteKey("t1", "norm", a)).toBe("t1||head=|hook=blocks.1.hook_resid_post|mode=minmax|name=norm|skip_first=true");
  });
  it("paneValues: null -> no colour, one value per token", () => {
    expect(paneValues([1, null, -3], 4)).toEqual([1, undefined, -3, undefined]);
    expect(paneValues(undefined, 2)).toEqual([undefined, undefined]);
  });
  it("drawnMap follows the server's scale kind", () => {
    const norm = METRICS.find((m) => m.value === "norm")!;
    expect(drawnMap(norm, { kind: "sequential" })).toBe("oranges");
    expect(drawnMap(metricInfo("act-value"), { kind: "diverging" })).toBe("diverging");
    expect(drawnMap(metricInfo("prob"), null)).toBe("greens");
  });
});
