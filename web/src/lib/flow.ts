/**
 * The information-flow graph view's maths (issue 13; LLM Transparency Tool's layout): tokens across,
 * layers up (the embedding at the bottom), per layer a row for the stream after attention (A) and
 * one for the block's output (I), the MLP's node (M) between them, shifted right of its token.
 * The server computes every number (GET /api/traces/{id}/flow, lmpeek.attribution.flow); this only
 * places and styles what it answered.
 */
import { query, type Api } from "./api";
import type { FlowEdge, FlowGraph, FlowNode } from "./api-types";
import { headColour } from "./attention";
import { fmt } from "./format";

export type { FlowEdge, FlowGraph, FlowNode };

/** The slider's stops: LM-TT's range 0.01..0.10 (the library's default 0.04 among them). */
export const THRESHOLDS = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1];
export const DEFAULT_THRESHOLD = 0.04;

export const KIND_COLOURS = { mlp: "#f59e0b", residual: "#9ca3af", negative: "#e11d48" } as const;

export interface FlowGeometry {
  colW: number;
  rowH: number;
  pad: number;
}
export const GEOMETRY: FlowGeometry = { colW: 56, rowH: 26, pad: 24 };

/** The node's row counted from the bottom: embedding 0; layer l's A at 2l+1, M at 2l+1.5, I at 2l+2.
 * A parallel block has no A node: its M sits between I{l-1} and I{l}, as in a sequential one. */
export function nodeRow(layer: number, kind: FlowNode["kind"]): number {
  if (kind === "embed") return 0;
  return 2 * layer + { attn: 1, mlp: 1.5, resid: 2 }[kind];
}

/** Rows in the drawing (0..2L). */
export function rowCount(nLayers: number): number {
  return 2 * nLayers + 1;
}

/** Where a node is drawn (SVG units; y grows down, so the top layer is at the top). */
export function nodePosition(n: Pick<FlowNode, "layer" | "token" | "kind">, nLayers: number, g: FlowGeometry = GEOMETRY): { x: number; y: number } {
  const shift = n.kind === "mlp" ? 0.35 * g.colW : 0;
  return { x: g.pad + n.token * g.colW + shift, y: g.pad + (rowCount(nLayers) - 1 - nodeRow(n.layer, n.kind)) * g.rowH };
}

/** The SVG's size: columns for tokens 0..target (a prediction reads nothing after it). */
export function graphSize(graph: Pick<FlowGraph, "n_layers" | "target">, g: FlowGeometry = GEOMETRY): { width: number; height: number } {
  return { width: 2 * g.pad + graph.target * g.colW + 0.5 * g.colW, height: 2 * g.pad + (rowCount(graph.n_layers) - 1) * g.rowH };
}

/** Stroke width of an edge: proportional to its flow, the largest flow drawn `max` px wide. */
export function edgeWidth(flow: number, maxFlow: number, min = 0.75, max = 8): number {
  if (!(maxFlow > 0)) return min;
  return min + (max - min) * Math.min(1, Math.max(0, flow / maxFlow));
}

/** An edge's colour: by head for head edges, one colour each for MLP and residual edges; with a
 * contrastive target, edges that push toward B (contrast < 0) in their own colour. */
export function edgeColour(e: Pick<FlowEdge, "kind" | "head" | "contrast">): string {
  if (e.contrast !== undefined && e.contrast < 0) return KIND_COLOURS.negative;
  if (e.kind === "head") return headColour(e.head ?? 0);
  return KIND_COLOURS[e.kind];
}

/** The layer an edge belongs to: its target node's (the sum it is a part of). */
export function edgeLayer(target: Pick<FlowNode, "layer">): number {
  return target.layer;
}

/** What hovering an edge says, e.g. "L3 H5 → token 'Paris', flow 0.12 (reads 'France', weight 0.3)". */
export function edgeLabel(e: FlowEdge, byId: Map<string, FlowNode>, tokens: string[]): string {
  const src = byId.get(e.source);
  const dst = byId.get(e.target);
  if (!src || !dst) return "";
  const what = e.kind === "head" ? `L${dst.layer} H${e.head}` : e.kind === "mlp" ? `L${dst.layer} MLP` : `L${dst.layer} residual`;
  const reads = e.kind === "head" ? ` (reads '${tokens[src.token]}', weight ${fmt(e.weight)})` : ` (weight ${fmt(e.weight)})`;
  const contrast = e.contrast !== undefined ? `, Δ log p(A) − log p(B) ${fmt(e.contrast)}` : "";
  return `${what} → token '${tokens[dst.token]}', flow ${fmt(e.flow)}${reads}${contrast}`;
}

/** The route's URL path for one question (an export records answers under it). */
export function flowPath(traceId: string, token: number, threshold: number, contrast: number | null): string {
  return `/api/traces/${encodeURIComponent(traceId)}/flow?${query({ token, threshold, contrast })}`;
}

export function fetchFlow(client: Api, traceId: string, token: number, threshold: number, contrast: number | null, signal?: AbortSignal): Promise<FlowGraph> {
  return client.call<FlowGraph>(flowPath(traceId, token, threshold, contrast), { signal });
}
