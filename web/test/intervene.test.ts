import { describe, expect, it } from "vitest";
import { pendingSerial, take } from "../src/lib/actions.svelte";
import { ablateEdit, act, directionEdit, directionLabel, deltaColour, deltaInk, deltaMax, editLabel, parsePositions, patchEdit, requestBody, targetLabel } from "../src/lib/intervene";

describe("the edits an action builds", () => {
  it("ablates a head, a neuron, a feature and a hook point as POST /api/why/intervene takes them", () => {
    expect(ablateEdit({ kind: "head", layer: 1, head: 3 })).toEqual({ action: "ablate", hook: "blocks.1.attn.hook_z", mode: "zero", index: 3, label: "head 1.3" });
    expect(ablateEdit({ kind: "neuron", layer: 0, index: 77 })).toEqual({ action: "ablate", hook: "blocks.0.mlp.hook_post", mode: "zero", index: 77, label: "neuron 0.77" });
    expect(ablateEdit({ kind: "feature", source: "sae", index: 5 })).toEqual({ action: "ablate_feature", source_name: "sae", index: 5, label: "feature sae#5" });
    const mlp = { kind: "hook" as const, hook: "blocks.2.hook_mlp_out", positions: [4], label: "MLP L2 @ #4" };
    expect(ablateEdit(mlp)).toEqual({ action: "ablate", hook: "blocks.2.hook_mlp_out", mode: "zero", positions: [4], label: "MLP L2 @ #4" });
    expect(targetLabel(mlp)).toBe("MLP L2 @ #4");
  });

  it("patches a head or a vector from prompt B, and resamples a neuron from it", () => {
    expect(patchEdit({ kind: "head", layer: 1, head: 3 }, "B")).toEqual({ action: "patch", hook: "blocks.1.attn.hook_z", head: 3, source: "B", label: "head 1.3" });
    expect(patchEdit({ kind: "neuron", layer: 1, index: 9 }, "B")).toEqual({ action: "ablate", hook: "blocks.1.mlp.hook_post", mode: "resample", index: 9, source: "B", label: "neuron 1.9" });
    expect(patchEdit({ kind: "hook", hook: "blocks.0.hook_resid_post", positions: [2], label: "r" }, "B")).toMatchObject({ action: "patch", positions: [2], source: "B" });
    expect(() => patchEdit({ kind: "feature", source: "s", index: 1 }, "B")).toThrow();
  });

  it("labels edits as the server does (intervene_job.label_of)", () => {
    expect(editLabel(ablateEdit({ kind: "head", layer: 0, head: 1 }))).toBe("head 0.1: zero-ablate blocks.0.attn.hook_z [1]");
    expect(editLabel({ action: "patch", hook: "blocks.1.hook_resid_pre", positions: [1, 2, 3, 4, 5, 6, 7] })).toBe("patch blocks.1.hook_resid_pre from B @ 1,2,3,4,5,6…");
    expect(editLabel({ action: "ablate_feature", source_name: "s", index: 2 })).toBe("ablate feature s#2");
  });

  it("ablates a residual direction, labelled as the server labels it", () => {
    const node = directionEdit(1, "hook_resid_pre", { kind: "node", text: " ", hook: "blocks.0.hook_mlp_out", position: -2 }, "mean", [2, 3], null);
    expect(node).toEqual({ action: "ablate", hook: "blocks.1.hook_resid_pre", mode: "mean", direction: { kind: "node", hook: "blocks.0.hook_mlp_out", position: -2 }, positions: [2, 3], source: null });
    expect(editLabel(node)).toBe("mean-ablate blocks.1.hook_resid_pre along node blocks.0.hook_mlp_out @ #-2 @ 2,3");
    const other = directionEdit(0, "hook_attn_out", { kind: "node", text: "Paris", hook: "blocks.0.hook_attn_out", position: 1 }, "zero", null, null);
    expect(other.direction).toEqual({ kind: "node", text: "Paris", hook: "blocks.0.hook_attn_out", position: 1 });
    expect(directionLabel(other.direction!)).toBe("node blocks.0.hook_attn_out @ #1 of another text");
    expect(editLabel(directionEdit(0, "hook_resid_post", { kind: "neuron", layer: 0, index: 5 }, "zero", null, null))).toBe("zero-ablate blocks.0.hook_resid_post along neuron 0.5");
    expect(directionLabel({ kind: "feature", source_name: "sae", index: 4 })).toBe("feature sae#4");
    expect(requestBody("t", [directionEdit(0, "hook_mlp_out", { kind: "neuron", layer: 1, index: 2 }, "zero", null, null)], 0, 1).edits).toEqual([
      { action: "ablate", hook: "blocks.0.hook_mlp_out", mode: "zero", direction: { kind: "neuron", layer: 1, index: 2 } },
    ]);
  });

  it("drops empty keys from the body", () => {
    const body = requestBody("hi", [{ action: "ablate", hook: "h", index: null, positions: null, source: "" }], 5, 3);
    expect(body).toEqual({ text: "hi", edits: [{ action: "ablate", hook: "h" }], max_new_tokens: 5, top_k: 3 });
  });

  it("parses positions", () => {
    expect(parsePositions("")).toBeNull();
    expect(parsePositions(" 1, 3-5 ,9")).toEqual([1, 3, 4, 5, 9]);
    expect(parsePositions("x")).toBeUndefined();
    expect(parsePositions("5-3")).toBeUndefined();
  });
});

describe("an action lands in the Why tab", () => {
  it("runs the trace's own text with the edit", async () => {
    const before = pendingSerial();
    const client = { getTrace: async (id: string) => ({ text: `text of ${id}` }) } as never;
    await act(client, "t1", null, ablateEdit({ kind: "head", layer: 0, head: 2 }));
    expect(pendingSerial()).toBe(before + 1);
    expect(take()).toEqual({ text: "text of t1", edits: [ablateEdit({ kind: "head", layer: 0, head: 2 })], run: true });
    expect(take()).toBeNull(); // taken once
  });

  it("only fills the form when there is no text (the Why tab keeps its own)", async () => {
    await act({ getTrace: async () => ({ text: "" }) } as never, null, "", ablateEdit({ kind: "feature", source: "s", index: 1 }));
    expect(take()).toMatchObject({ text: "", run: false });
  });
});

describe("Δ log p colours", () => {
  it("is red where the edit lowered the token, blue where it raised it, clear where unknown", () => {
    const red = deltaColour(-2, 2);
    const blue = deltaColour(2, 2);
    const rgb = (c: string) => c.match(/\d+/g)!.map(Number);
    expect(rgb(red)[0]).toBeGreaterThan(rgb(red)[2]);
    expect(rgb(blue)[2]).toBeGreaterThan(rgb(blue)[0]);
    expect(deltaColour(null, 1)).toBe("transparent");
    expect(deltaColour(Number.NaN, 1)).toBe("transparent");
    expect(deltaColour(-5, 1)).toBe(red); // clamped
    expect(deltaMax([null, -3, 2, Number.POSITIVE_INFINITY])).toBe(3);
    expect(deltaInk(-2, 2)).toBe("#fff"); // readable on the dark ends
    expect(deltaInk(0.1, 2)).toBeNull();
  });
});
