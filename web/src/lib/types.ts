/** The page's types. The server's JSON shapes come from ./api-types (generated from /openapi.json by
 * scripts/api_types.py, from the response models in src/lmpeek/server/responses.py), so the page and
 * the server cannot drift: a shape the server answers is an alias of its generated type here, under the
 * name the page uses; only what the page makes itself (decoded binary bodies, view state) is written
 * by hand. To change a server shape, change its response model and regenerate. */

import type {
  Comparison,
  GenerateRequest,
  GenerateToken,
  Health as HealthAnswer,
  Histogram as HistogramAnswer,
  Lens,
  Metric,
  Pattern as PatternJson,
  QkTerms as QkAnswer,
  ScaledValues,
  StoredTrace as StoredTraceAnswer,
  TraceSummary,
  Vector,
} from "./api-types";

export type {
  ColourScale,
  CorpusHit,
  CorpusSearch,
  HookPoint,
  ModelInfo,
  Neurons,
  QkPart,
  Sample,
  SampleText,
  Scatter,
  Values,
} from "./api-types";

export const COMPONENTS = ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"] as const;
export type Component = (typeof COMPONENTS)[number];

/** Keys of a trace whose numbers the binary envelope (lib/envelope) delivers as typed-array views. */
type TraceArrays = "token_ids" | "topk_ids" | "topk_probs" | "entropy" | "loss" | "true_prob" | "norms" | "attn_entropy";

/** POST /api/trace and GET /api/traces/{id} (TraceSummary). Arrays are indexed by token position t.
 * Numeric arrays are ArrayLike: plain arrays from JSON, typed-array views from the binary envelope; both
 * carry null where the model produced NaN or ±inf. topk_*: [T][k], the prediction made AT position t
 * for token t+1 (the page shows it at token t+1); norms: "blocks.{l}.hook_{component}" -> [T];
 * attn_entropy: [layer][head][T]. */
export interface Trace extends Omit<TraceSummary, TraceArrays> {
  token_ids: ArrayLike<number>;
  topk_ids: ArrayLike<number>[];
  topk_probs: ArrayLike<number | null>[];
  entropy: ArrayLike<number | null>;
  loss: ArrayLike<number | null>;
  true_prob: ArrayLike<number | null>;
  norms: Record<string, ArrayLike<number | null>>;
  attn_entropy: ArrayLike<number | null>[][];
}

/** component -> [layer]; null where the model made the norm inf or NaN. */
export type StepNorms = Record<Component, (number | null)[]>;

/** One `token` event of /api/generate (GenerateToken); norms: component -> [layer], keyed by the page's
 * components. Probabilities, entropies and norms are null where the model made them inf or NaN. */
export interface GenStep extends Omit<GenerateToken, "norms"> {
  norms: StepNorms;
}

/** POST /api/generate's body: the page always sends every field. */
export type GenParams = Required<GenerateRequest>;

/** GET /api/traces/{id}/attention as the page reads it: float16 bytes decoded (the JSON form's `data`
 * is nested lists). */
export interface Pattern extends Omit<PatternJson, "data"> {
  data: Float32Array;
}

export interface Limits {
  min: number;
  divider: number;
  max: number;
}

/** GET /api/traces/{id}/metric: one Explore metric's values with its scale (and a second trace's, `with=`). */
export type MetricData = Metric;
/** GET /api/traces/{id}/activations */
export type Activations = ScaledValues;
/** GET /api/health; an older server sends no `queue` (lib/health reads that as idle). */
export interface Health extends Omit<HealthAnswer, "queue"> {
  queue?: HealthAnswer["queue"];
}

/** GET /api/traces/{id}/histogram; edges are null when the vector has no finite value (nonfinite: how
 * many dimensions were inf/NaN). */
export type Histogram = HistogramAnswer;

/** GET /api/traces: one stored trace, newest first. created (Unix seconds) and n_tokens are null for a
 * row the store's catalogue lacks them for. */
export type StoredTrace = StoredTraceAnswer;
/** GET /api/traces/{id}/vector */
export type VectorData = Vector;
/** GET /api/traces/{id}/logit_lens; with ?target=: that token's rank (1 = most likely) and probability after each layer */
export type LogitLens = Lens;
/** GET /api/compare */
export type Compare = Comparison;
/** GET /api/traces/{id}/qk: the products q_i·k_i behind one attention score (the neuron view). */
export type QkTerms = QkAnswer;

export type Rope = "full" | "applied" | "not_applied";

/** GET /api/traces/{id}/attention_grid: every layer × head over tokens start..end-1, float16 [L, H, n, n];
 * each cell covers `pool` × `pool` tokens (the mean over its queries of their summed weight on its keys). */
export interface AttentionGrid {
  shape: number[];
  data: Float32Array;
  pool: number;
  start: number;
  end: number;
}
