/** The server's JSON shapes (see src/lmpeek/server/app.py). */

export interface ModelInfo {
  name: string;
  architecture: string;
  n_layers: number;
  n_heads: number;
  n_kv_heads?: number;
  d_model: number;
  d_head?: number;
  d_mlp?: number;
  vocab_size: number;
  context_length: number;
  [extra: string]: unknown;
}

export interface Health {
  status: "loading" | "ready" | "error";
  message: string;
  model: ModelInfo | null;
  /** model jobs queued or running, and how many are taken before new ones get 503 */
  queue?: { pending: number; limit: number };
}

/** GET /api/traces: one stored trace, newest first. */
export interface StoredTrace {
  id: string;
  model: string;
  /** Unix seconds */
  created: number;
  n_tokens: number;
  /** the text's first 80 characters */
  preview: string;
  truncated: boolean;
  /** made by another model: this server cannot open it */
  other_model: boolean;
}

export const COMPONENTS = ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"] as const;
export type Component = (typeof COMPONENTS)[number];

/** POST /api/trace and GET /api/traces/{id}. Arrays are indexed by token position t. */
export interface Trace {
  id: string;
  tokens: string[];
  /** [T] each token's exact bytes (hex); byte pieces are merged for display (lib/tokens mergeTokens) */
  token_bytes?: string[];
  /** [T] true when the token is not valid UTF-8 alone (part of a character) */
  partial?: boolean[];
  /** Numeric arrays are ArrayLike: plain arrays from JSON, typed-array views from the binary envelope
   * (lib/envelope); both carry null where the model produced NaN or ±inf. */
  token_ids: ArrayLike<number>;
  offsets: [number, number][];
  /** [T][k]: the prediction made AT position t for token t+1 (the page shows it at token t+1: each token
   * shows the prediction that produced it) */
  topk_ids: ArrayLike<number>[];
  topk_probs: ArrayLike<number>[];
  topk_tokens: string[][];
  entropy: ArrayLike<number | null>;
  /** loss of the actual token t+1; null at the last token */
  loss: ArrayLike<number | null>;
  true_prob: ArrayLike<number | null>;
  /** "blocks.{l}.hook_{component}" -> [T] */
  norms: Record<string, ArrayLike<number | null>>;
  /** [layer][head][T] */
  attn_entropy: ArrayLike<number | null>[][];
  model: ModelInfo;
  text: string;
  chat: boolean;
  /** hook points whose whole arrays the trace kept */
  kept?: string[];
  /** hook points where the model produced inf or NaN ("logits" when the predictions did) */
  nonfinite?: string[];
}

export type StepNorms = Record<Component, number[]>;

/** One `token` event of /api/generate. */
export interface GenStep {
  index: number;
  position: number;
  token: string;
  token_id: number;
  /** the token's exact bytes (hex): byte pieces are merged into characters for display */
  token_bytes?: string;
  prob: number;
  topk_tokens: string[];
  topk_probs: number[];
  topk_ids: number[];
  entropy: number;
  /** the distribution the token was drawn from (after temperature, top-k, top-p; a one-hot for
   * greedy), most likely first; the topk_* above are the raw temperature-1 prediction */
  sampled_prob: number;
  sampled_topk_ids: number[];
  sampled_topk_probs: number[];
  /** labels of sampled_topk_ids, when the server sends them (else read from topk_tokens) */
  sampled_topk_tokens?: string[];
  /** component -> [layer] */
  norms: StepNorms;
  /** [layer][head] */
  attn_entropy: number[][];
  /** the heatmap's colour scale over every step so far (analysis.scales: sequential from 0) */
  attn_entropy_scale?: ColourScale;
}

export interface GenParams {
  prompt: string;
  max_new_tokens: number;
  temperature: number;
  top_p: number;
  top_k: number;
  seed: number | null;
}

export interface Pattern {
  shape: number[];
  data: Float32Array;
}

/** GET /api/components: one selectable hook point; `hook` may hold "{l}" for the layer. */
export interface HookPoint {
  hook: string;
  point?: string;
  per_head: boolean;
  per_layer: boolean;
}

export interface Limits {
  min: number;
  divider: number;
  max: number;
}

/** A metric's colour scale, computed by the server (lmpeek.analysis.scales): the page only draws it. */
export interface ColourScale {
  /** sequential: one-signed values from their floor; diverging: signed values, divider exactly 0 */
  kind: "sequential" | "diverging";
  min: number;
  divider: number;
  max: number;
  mode: string;
  /** token indices the limits were computed without (the first token with skip_first; the selected one for cos-tokens) */
  left_out: number[];
  /** token indices whose value lies outside [min, max] */
  clipped: number[];
}

/** GET /api/traces/{id}/metric: one Explore metric's values with its scale (and a second trace's, `with=`). */
export interface MetricData {
  name: string;
  values: (number | null)[];
  scale: ColourScale;
  values_with?: (number | null)[];
  scale_with?: ColourScale;
}

export interface Activations {
  values: (number | null)[];
  scale: ColourScale;
}

export interface Histogram {
  edges: number[];
  token: number[];
  median: number[];
  outliers: { low: number | null; high: number | null; dims: number[]; values: number[] };
}

export interface VectorData {
  hook: string;
  head: number | null;
  token: number;
  shape: number[];
  data: number[];
}

export interface LogitLens {
  tokens: string[][];
  probs: number[][];
  ids: number[][];
  /** with ?target=: that token's rank (1 = most likely) and probability after each layer */
  target?: { id: number; token: string; ranks: number[]; probs: (number | null)[] };
}

export interface Sample {
  id: string;
  title: string;
  kind: string;
  chars: number;
}

export interface Compare {
  layers: number;
  mean_norm_a: number[];
  mean_norm_b: number[];
  diff: number[];
}

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

/** One way of scoring a query/key pair (GET /api/traces/{id}/qk): after RoPE ("rotated", what the model
 * scores with), before it ("unrotated"), or a model without RoPE ("plain"). */
export interface QkPart {
  name: "rotated" | "unrotated" | "plain";
  q_hook: string;
  k_hook: string;
  q: (number | null)[];
  k: (number | null)[];
  /** q_i × k_i per dimension of the head */
  products: (number | null)[];
  dot: number | null;
  /** dot × scale (softcapped where the model caps): what the softmax sees */
  score: number | null;
  /** every key's score for this query (null: masked) and their softmax */
  scores: (number | null)[];
  weights: (number | null)[];
}

export interface QkTerms {
  layer: number;
  head: number;
  kv_head: number;
  query: number;
  key: number;
  scale: number;
  softcap: number | null;
  window: number | null;
  parts: QkPart[];
  /** the model's pattern row for the query (keys 0..query) */
  pattern_row: (number | null)[];
}
