import { describe, expect, it } from "vitest";
import type { Api } from "../src/lib/api";
import type { FetchArgs, Metric } from "../src/lib/metrics";
import { fetchMetric } from "../src/lib/remote";

/** A fake client that records the metric queries it was asked. */
function fake() {
  const calls: unknown[][] = [];
  const client = {
    metric: (id: string, q: Record<string, unknown>) => {
      calls.push([id, q]);
      return Promise.resolve({ name: q.name, values: [1, 2, 3], scale: { kind: "sequential", min: 0, divider: 1.5, max: 3, mode: "raw", left_out: [], clipped: [] } });
    },
  } as unknown as Api;
  return { client, calls };
}

const a: FetchArgs = { hook: "blocks.1.attn.hook_q", head: 2, layer: 1, selected: 4, dim: 7, neuron: 9, scale: "outliers", skipFirst: true, rope: "applied" };
const common = { mode: "outliers", skip_first: "true" };
const hooked = { ...common, hook: a.hook, head: 2 };

describe("fetchMetric: one route, only what each metric reads", () => {
  it.each([
    ["loss", { name: "loss", ...common }],
    ["prob", { name: "prob", ...common }],
    ["attn-from", { name: "attn-from", ...common, layer: 1, head: 2, token: 4, rope: "applied" }],
    ["attn-to", { name: "attn-to", ...common, layer: 1, head: 2, token: 4, rope: "applied" }],
    ["norm", { name: "norm", ...hooked }],
    ["act-norm", { name: "act-norm", ...hooked }],
    ["act-abssum", { name: "act-abssum", ...hooked }],
    ["act-value", { name: "act-value", ...hooked, dim: 7 }],
    ["cos-tokens", { name: "cos-tokens", ...hooked, token: 4 }],
    ["cos-previous", { name: "cos-previous", ...hooked }],
    ["cos-residual", { name: "cos-residual", ...hooked }],
    ["neuron", { name: "neuron", ...common, layer: 1, neuron: 9 }],
  ] as [Metric, Record<string, unknown>][])("%s", async (m, q) => {
    const f = fake();
    const out = await fetchMetric(f.client, "t", m, a, null, new AbortController().signal);
    expect(f.calls).toEqual([["t", { ...q, with: null }]]);
    expect(out.values.length).toBe(3);
    expect(out.scale.kind).toBe("sequential");
  });
  it("asks for a compared trace in the same request (joint limits)", async () => {
    const f = fake();
    await fetchMetric(f.client, "t", "act-norm", { ...a, skipFirst: false, scale: "raw" }, "u", new AbortController().signal);
    expect(f.calls).toEqual([["t", { name: "act-norm", mode: "raw", skip_first: "false", hook: a.hook, head: 2, with: "u" }]]);
  });
});
