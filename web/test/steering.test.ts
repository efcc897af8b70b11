import { describe, expect, it } from "vitest";
import { interpolateRdBu } from "d3-scale-chromatic";
import {
  cText,
  deltaColour,
  deltaText,
  divergence,
  formHook,
  flowNodeHook,
  formProblem,
  hookLabel,
  nodeFields,
  klFraction,
  maxAbs,
  promptLines,
  steerBody,
  sweepRows,
  sweepStrengths,
  type SteerForm,
} from "../src/lib/steering";
import { lastAction, requestSteering, steeringSerial, takeSteering } from "../src/lib/actions.svelte";

const FORM: SteerForm = {
  prompt: "I think",
  kind: "neuron",
  neuronLayer: 1,
  neuronIndex: 7,
  source: "res-l1",
  featureIndex: 5,
  positive: " good \n\nnice\n",
  negative: "bad",
  nodeText: "",
  nodeLayer: 2,
  nodePoint: "hook_mlp_out",
  nodePosition: -1,
  layer: null,
  point: null,
  mode: "add",
  strength: 2,
  positions: "all",
  start: 3,
  seed: 4,
  maxNewTokens: 16,
  temperature: 0.5,
  sweep: false,
};

describe("steerBody", () => {
  it("sends the neuron, the server's defaults left out", () => {
    expect(steerBody(FORM)).toEqual({
      prompt: "I think",
      direction: { kind: "neuron", layer: 1, index: 7 },
      mode: "add",
      strength: 2,
      positions: "all",
      seed: 4,
      max_new_tokens: 16,
      temperature: 0.5,
      sweep: false,
    });
  });

  it("sends a feature, a layer and point, and the start only with positions 'from'", () => {
    const b = steerBody({ ...FORM, kind: "feature", layer: 0, point: "hook_mlp_out", positions: "from", mode: "cap" });
    expect(b.direction).toEqual({ kind: "feature", source: "res-l1", index: 5 });
    expect(b.layers).toEqual([0]);
    expect(b.point).toBe("hook_mlp_out");
    expect(b.start).toBe(3);
    expect(b.mode).toBe("cap");
    expect(steerBody({ ...FORM, positions: "prompt" }).start).toBeUndefined();
  });

  it("sends a mean difference's prompts one per non-blank line, trimmed", () => {
    expect(steerBody({ ...FORM, kind: "mean_difference" }).direction).toEqual({ kind: "mean_difference", positive: ["good", "nice"], negative: ["bad"] });
    expect(promptLines(" \n \n")).toEqual([]);
  });
});

describe("a graph node direction", () => {
  it("sends the hook and token, and the text only when it is not the prompt", () => {
    expect(steerBody({ ...FORM, kind: "node" }).direction).toEqual({ kind: "node", hook: "blocks.2.hook_mlp_out", position: -1 });
    expect(steerBody({ ...FORM, kind: "node", nodeText: "Paris", nodePosition: 0 }).direction).toEqual({ kind: "node", text: "Paris", hook: "blocks.2.hook_mlp_out", position: 0 });
  });

  it("steers by default where the node writes", () => {
    expect(formHook({ ...FORM, kind: "node" }, 4, null)).toBe("blocks.2.hook_mlp_out");
    expect(formHook({ ...FORM, kind: "node", layer: 0, point: "hook_resid_pre" }, 4, null)).toBe("blocks.0.hook_resid_pre");
  });

  it("maps flow-graph nodes to the hook they write, and back into the form", () => {
    expect([flowNodeHook("mlp", 3), flowNodeHook("attn", 0), flowNodeHook("resid", 1), flowNodeHook("embed", -1)]).toEqual(["blocks.3.hook_mlp_out", "blocks.0.hook_attn_out", "blocks.1.hook_resid_post", null]);
    expect(nodeFields({ kind: "node", hook: "blocks.3.hook_attn_out", position: 4 })).toEqual({ nodeText: "", nodeLayer: 3, nodePoint: "hook_attn_out", nodePosition: 4 });
    expect(nodeFields({ kind: "node", hook: "blocks.3.mlp.hook_post", position: 4 })).toBeNull();
    expect(nodeFields({ kind: "neuron", layer: 1, index: 2 })).toBeNull();
  });

  it("passes a steering request from a view to the Steering section once", () => {
    const before = steeringSerial();
    requestSteering({ text: "The cat", direction: { kind: "node", hook: "blocks.1.hook_mlp_out", position: 1 } });
    expect(steeringSerial()).toBe(before + 1);
    expect(lastAction()).toBe("steering");
    expect(takeSteering()).toEqual({ text: "The cat", direction: { kind: "node", hook: "blocks.1.hook_mlp_out", position: 1 } });
    expect(takeSteering()).toBeNull();
  });
});

describe("formProblem", () => {
  it("says what is missing", () => {
    expect(formProblem(FORM)).toBe("");
    expect(formProblem({ ...FORM, prompt: "  " })).toMatch(/prompt/);
    expect(formProblem({ ...FORM, kind: "feature", source: "" })).toMatch(/no feature source/);
    expect(formProblem({ ...FORM, kind: "mean_difference", negative: "\n" })).toMatch(/each side/);
  });
});

describe("formHook", () => {
  it("is where the server steers by default, or the chosen layer and point", () => {
    expect(formHook(FORM, 4, null)).toBe("blocks.1.hook_resid_post");
    expect(formHook({ ...FORM, kind: "mean_difference" }, 4, null)).toBe("blocks.2.hook_resid_pre");
    expect(formHook({ ...FORM, kind: "feature" }, 4, "blocks.3.hook_resid_post")).toBe("blocks.3.hook_resid_post");
    expect(formHook({ ...FORM, kind: "feature", layer: 0 }, 4, "blocks.3.hook_resid_post")).toBe("blocks.0.hook_resid_post");
    expect(formHook({ ...FORM, kind: "feature" }, 4, null)).toBeNull();
    expect(formHook({ ...FORM, layer: 2, point: "hook_attn_out" }, 4, null)).toBe("blocks.2.hook_attn_out");
  });
});

describe("display", () => {
  it("sweeps five strengths with the strength's sign", () => {
    expect(sweepStrengths(3)).toEqual([0.25, 0.5, 1, 2, 4]);
    expect(sweepStrengths(-0.1)).toEqual([-0.25, -0.5, -1, -2, -4]);
  });

  it("shows c in absolute units when the norm is known", () => {
    expect(cText(2, 40)).toBe("c = 2 × 40 = 80");
    expect(cText(-0.5, null)).toBe("c = -0.5 × the layer's mean norm");
  });

  it("colours Δ log-p on a symmetric diverging scale, with null uncoloured", () => {
    expect(maxAbs([0.5, -2, null])).toBe(2);
    expect(maxAbs([0, null])).toBe(1e-6);
    expect(deltaColour(2, 2)).toBe(interpolateRdBu(0)); // red end: likelier when steered
    expect(deltaColour(-2, 2)).toBe(interpolateRdBu(1));
    expect(deltaColour(0, 2)).toBe(interpolateRdBu(0.5));
    expect(deltaColour(null, 2)).toBe("");
    expect([deltaText(1.23456), deltaText(-0.0001), deltaText(-1), deltaText(null)]).toEqual(["+1.235", "+0.000", "-1.000", "—"]);
    expect([klFraction(0.5, 2), klFraction(3, 2), klFraction(null, 2), klFraction(1, 0)]).toEqual([0.25, 1, 0, 0]);
  });

  it("finds where the steered tokens part from the plain ones", () => {
    expect(divergence([1, 2, 3], [1, 2, 3])).toEqual({ differs: [false, false, false], first: -1 });
    expect(divergence([1, 2, 3], [1, 9, 3, 4])).toEqual({ differs: [false, true, false, true], first: 1 });
    expect(divergence([1, 2, 3], [1, 2])).toEqual({ differs: [false, false], first: 2 }); // ended early
  });

  it("makes one sweep row per strength", () => {
    const run = (strength: number, ids: number[]) => ({ strength, c: [strength * 10], ids, tokens: ids.map(String), text: "", delta_logp: [], kl: [], mean_kl: strength / 10, fluency: 2, same: false });
    const rows = sweepRows({ plain: { ids: [1, 2], tokens: ["1", "2"], text: "12" }, runs: [run(1, [1, 2]), run(2, [3, 2])] });
    expect(rows.map((r) => [r.strength, r.c, r.first, r.differs, r.meanKl])).toEqual([
      [1, [10], -1, [false, false], 0.1],
      [2, [20], 0, [true, false], 0.2],
    ]);
  });

  it("labels hooks briefly", () => {
    expect(hookLabel("blocks.3.hook_resid_pre")).toBe("L3 resid_pre");
    expect(hookLabel("hook_embed")).toBe("hook_embed");
  });
});
