import { describe, expect, it } from "vitest";
import { errorMessage } from "../src/lib/api";
import { clampIndex, isTextField, mean2d, metricLimits, metricRange, metricValues, predictionRows, predictionStats, remoteKey } from "../src/lib/metrics";
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

const base = { layer: 0, component: "resid_post" as const, selected: 2 };

describe("metricValues", () => {
  it.each([
    // token t shows the prediction that produced it: position t-1's; the first token has none
    ["loss", base, [undefined, 0.69, 4.2, 0.1]],
    ["entropy", base, [undefined, 1, 2, 0.5]],
    ["prob", base, [undefined, 0.5, 0.015, 0.9]],
    ["norm", base, [10, 20, 30, 40]],
    ["norm", { ...base, layer: 1, component: "attn_out" as const }, [1, 2, 3, 4]],
    ["norm", { ...base, layer: 5 }, [undefined, undefined, undefined, undefined]],
    ["attn-from", base, [undefined, undefined, undefined, undefined]],
    ["attn-from", { ...base, pattern: [0.5, 0.25, 0.25, 0] }, [0.5, 0.25, 0.25, undefined]],
    ["attn-to", { ...base, pattern: [0, 0, 0.4, 0.1] }, [undefined, undefined, 0.4, 0.1]],
  ] as const)("%s %j", (metric, args, want) => {
    expect(metricValues(trace, metric, args)).toEqual(want);
  });
});

describe("metricRange", () => {
  it("attention ranges start at 0", () => {
    expect(metricRange("attn-from", [undefined, 0.2, 0.6])).toEqual({ min: 0, max: 0.6 });
  });
  it("other metrics span the values", () => {
    expect(metricRange("loss", [1, 3, undefined])).toEqual({ min: 1, max: 3 });
    expect(metricRange("loss", [undefined])).toBeNull();
  });
});

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

describe("remote metrics", () => {
  const a = { hook: "blocks.1.hook_resid_post", head: null, layer: 1, selected: 2, dim: 7, neuron: 3, scale: "minmax" as const, rope: "full", normRemote: false };
  it.each([
    ["loss", a, null],
    ["norm", a, null],
    ["norm", { ...a, normRemote: true }, "t1|act|act-norm|blocks.1.hook_resid_post||"],
    ["act-value", a, "t1|act|act-value|blocks.1.hook_resid_post||7"],
    ["act-norm", { ...a, dim: 9 }, "t1|act|act-norm|blocks.1.hook_resid_post||"],
    ["cos-tokens", a, "t1|sim|cos-tokens|blocks.1.hook_resid_post||2"],
    ["cos-previous", a, "t1|sim|cos-previous|blocks.1.hook_resid_post||"],
    ["neuron", a, "t1|neuron|1|3"],
    ["attn-from", { ...a, head: 2, rope: "applied" }, "t1|attn|1|2|query|2|applied"],
  ] as const)("%s -> %s", (m, args, key) => {
    expect(remoteKey("t1", m, args)).toBe(key);
  });
  it("remote values fill the fetched metrics; the norm falls back to them off the summary", () => {
    const remote = [1, null, -3, 4];
    expect(metricValues(trace, "act-value", { ...base, remote })).toEqual([1, undefined, -3, 4]);
    expect(metricValues(trace, "norm", { ...base, component: null, remote })).toEqual([1, undefined, -3, 4]);
    expect(metricValues(trace, "neuron", { ...base, remote: null })).toEqual([undefined, undefined, undefined, undefined]);
  });
  it.each([
    ["attn-from", [0.2, 0.5], "minmax_clip", { min: 0, divider: 0.25, max: 0.5 }],
    ["loss", [1, 3], "raw", { min: 1, divider: 2, max: 3 }],
    ["act-norm", [1, 3], "raw", { min: 1, divider: 2, max: 3 }],
    ["act-value", [-1, 3], "minmax", { min: -1, divider: 0, max: 3 }],
  ] as const)("metricLimits %s %j %s", (m, v, scale, want) => {
    expect(metricLimits(m, [...v], scale)).toEqual(want);
  });
});
