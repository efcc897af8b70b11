import { describe, expect, it } from "vitest";
import type { Api } from "../src/lib/api";
import type { FetchArgs, Metric } from "../src/lib/metrics";
import { fetchMetric } from "../src/lib/remote";

/** A fake client that records which method was called with what. */
function fake() {
  const calls: unknown[][] = [];
  const rec =
    (name: string, result: unknown) =>
    (...args: unknown[]) => {
      calls.push([name, ...args.filter((a) => !(a instanceof AbortSignal))]);
      return Promise.resolve(result);
    };
  const client = {
    attention: rec("attention", { shape: [1, 3], data: new Float32Array([0.5, 0.25, 0.25]) }),
    activations: rec("activations", { values: [1, 2, 3] }),
    similarity: rec("similarity", { values: [1, 0, -1] }),
    neuron: rec("neuron", { values: [0, 1, 2] }),
  } as unknown as Api;
  return { client, calls };
}

const a: FetchArgs = { hook: "blocks.1.attn.hook_q", head: 2, layer: 1, selected: 4, dim: 7, neuron: 9, scale: "minmax_clip", rope: "applied", normRemote: true };

describe("fetchMetric", () => {
  it.each([
    ["attn-from", ["attention", "t", 1, 2, { query: 4 }, "applied"]],
    ["attn-to", ["attention", "t", 1, 2, { key: 4 }, "applied"]],
    ["norm", ["activations", "t", { hook: a.hook, head: 2, stat: "norm", scale: "minmax_clip" }]],
    ["act-norm", ["activations", "t", { hook: a.hook, head: 2, stat: "norm", scale: "minmax_clip" }]],
    ["act-abssum", ["activations", "t", { hook: a.hook, head: 2, stat: "abs_sum", scale: "minmax_clip" }]],
    ["act-value", ["activations", "t", { hook: a.hook, head: 2, stat: "value", dim: 7, scale: "minmax_clip" }]],
    ["cos-tokens", ["similarity", "t", { hook: a.hook, head: 2, token: 4, kind: "tokens" }]],
    ["cos-previous", ["similarity", "t", { hook: a.hook, head: 2, token: 4, kind: "previous" }]],
    ["cos-residual", ["similarity", "t", { hook: a.hook, head: 2, token: 4, kind: "residual" }]],
    ["neuron", ["neuron", "t", 1, 9]],
  ] as [Metric, unknown[]][])("%s", async (m, call) => {
    const f = fake();
    const out = await fetchMetric(f.client, "t", m, a, new AbortController().signal);
    expect(f.calls).toEqual([call]);
    expect(out.values.length).toBe(3);
  });
  it("has nothing to fetch for the trace-summary metrics", async () => {
    const f = fake();
    await expect(fetchMetric(f.client, "t", "loss", a, new AbortController().signal)).rejects.toThrow("nothing to fetch");
  });
});
