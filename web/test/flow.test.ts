// The information-flow view's layout maths (lib/flow.ts), against positions worked out by hand.
import { describe, expect, it } from "vitest";
import { HEAD_COLOURS } from "../src/lib/attention";
import { edgeColour, edgeLabel, edgeWidth, flowPath, GEOMETRY, graphSize, KIND_COLOURS, nodePosition, nodeRow, rowCount, THRESHOLDS, DEFAULT_THRESHOLD, type FlowEdge, type FlowNode } from "../src/lib/flow";

const g = { colW: 10, rowH: 5, pad: 2 };

describe("flow layout", () => {
  it("stacks embedding, then A, M, I per layer", () => {
    expect(nodeRow(-1, "embed")).toBe(0);
    expect([nodeRow(0, "attn"), nodeRow(0, "mlp"), nodeRow(0, "resid")]).toEqual([1, 1.5, 2]);
    expect([nodeRow(3, "attn"), nodeRow(3, "mlp"), nodeRow(3, "resid")]).toEqual([7, 7.5, 8]);
    expect(rowCount(4)).toBe(9);
  });
  it("puts the embedding at the bottom and the last block output at the top", () => {
    // 2 layers: rows 0..4; y = pad + (4 - row) * rowH
    expect(nodePosition({ layer: -1, token: 3, kind: "embed" }, 2, g)).toEqual({ x: 2 + 30, y: 2 + 20 });
    expect(nodePosition({ layer: 1, token: 0, kind: "resid" }, 2, g)).toEqual({ x: 2, y: 2 });
    expect(nodePosition({ layer: 0, token: 1, kind: "attn" }, 2, g)).toEqual({ x: 12, y: 2 + 15 });
    // the MLP node sits between A and I, shifted right of its token's column
    expect(nodePosition({ layer: 0, token: 1, kind: "mlp" }, 2, g)).toEqual({ x: 12 + 3.5, y: 2 + 12.5 });
    expect(graphSize({ n_layers: 2, target: 3 }, g)).toEqual({ width: 4 + 30 + 5, height: 4 + 20 });
    expect(GEOMETRY.colW).toBeGreaterThan(0);
  });
  it("scales widths by flow and colours edges by kind, head and sign", () => {
    expect(edgeWidth(0.5, 1, 1, 9)).toBe(5);
    expect(edgeWidth(1, 1, 1, 9)).toBe(9);
    expect(edgeWidth(0.2, 0, 1, 9)).toBe(1);
    expect(edgeColour({ kind: "head", head: 2, contrast: undefined })).toBe(HEAD_COLOURS[2]);
    expect(edgeColour({ kind: "head", head: 2 + HEAD_COLOURS.length })).toBe(HEAD_COLOURS[2]);
    expect(edgeColour({ kind: "mlp", head: null })).toBe(KIND_COLOURS.mlp);
    expect(edgeColour({ kind: "residual", head: null, contrast: 0.3 })).toBe(KIND_COLOURS.residual);
    expect(edgeColour({ kind: "head", head: 1, contrast: -0.01 })).toBe(KIND_COLOURS.negative);
  });
  it("labels a hovered edge with its layer, head, tokens and flow", () => {
    const nodes: FlowNode[] = [
      { id: "I2_1", layer: 2, token: 1, kind: "resid", influence: 0.5 },
      { id: "A3_4", layer: 3, token: 4, kind: "attn", influence: 0.4 },
    ];
    const e: FlowEdge = { source: "I2_1", target: "A3_4", kind: "head", head: 5, weight: 0.3, flow: 0.12 };
    const byId = new Map(nodes.map((n) => [n.id, n]));
    const tokens = ["a", "France", "b", "c", "Paris"];
    expect(edgeLabel(e, byId, tokens)).toBe("L3 H5 → token 'Paris', flow 0.12 (reads 'France', weight 0.3)");
    expect(edgeLabel({ ...e, contrast: -0.25 }, byId, tokens)).toContain(", Δ log p(A) − log p(B) -0.25");
  });
  it("asks the route with the slider's value and leaves out a missing contrast", () => {
    expect(flowPath("a b", 3, 0.04, null)).toBe("/api/traces/a%20b/flow?token=3&threshold=0.04");
    expect(flowPath("x", 0, 0.1, 7)).toBe("/api/traces/x/flow?token=0&threshold=0.1&contrast=7");
    expect(THRESHOLDS).toContain(DEFAULT_THRESHOLD);
  });
});
