"""The JSON routes' response models: what /openapi.json describes and web/src/lib/api-types.ts is made
from (scripts/api_types.py), so the server and the page cannot drift apart.

Routes return plain dicts (numbers already made strict-JSON by server.finite: non-finite -> null);
FastAPI checks them against these models and writes them with Pydantic (as it did for the routes'
`-> dict[str, Any]` before they were typed), with `response_model_exclude_unset=True` (see `typed`):
a key the route leaves out (e.g. lens `target` without a target) stays out instead of becoming null.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

Float = float | None  # null where the model produced inf/NaN
Floats = list[Float]
Span = Annotated[list[int], Field(min_length=2, max_length=2)]  # [start, end): TypeScript [number, number]


def typed(model: Any, *, json_dumps: bool = False) -> dict[str, Any]:
    """The route decorator's arguments for a response model (see the module docstring). `json_dumps`:
    written by json.dumps instead (the attention and vector routes, which return a Response for their
    binary forms, always did; Python and Pydantic write some floats differently: 1e-05 / 1e-5)."""
    out = {"response_model": model, "response_model_exclude_unset": True}
    return {**out, "response_class": JSONResponse} if json_dumps else out


def absent() -> Any:
    """The default of a key the route sometimes leaves out, never null (`x: T = absent()`): the schema
    says "optional, a T when present" (TypeScript `x?: T`), not `T | null`. The None default is never
    written (exclude_unset) and Pydantic does not check defaults."""
    return Field(default=None, json_schema_extra=lambda schema: schema.pop("default", None))


class ModelInfo(BaseModel):
    """LoadedModel.info(): keys added there later pass through before this model lists them."""

    model_config = ConfigDict(extra="allow")

    name: str
    architecture: str
    adapter: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    rotary_dims: int | None
    parallel: bool
    vocab_size: int
    context_length: int | None
    origin: str
    source: str | None  # the folder, file or hub id loaded (None for an in-memory model)
    fingerprint: dict[str, str]  # models.fingerprint: name, config, weights, tokenizer, id


class Queue(BaseModel):
    pending: int
    limit: int


class Health(BaseModel):
    status: Literal["loading", "ready", "error"]
    message: str
    model: ModelInfo | None
    queue: Queue
    features_only: bool = absent()  # only when true: no model (lmpeek features serve), only feature databases


class HookPoint(BaseModel):
    hook: str  # `{l}` stands for the layer
    point: str | None = None  # the block's hook point, for per-layer hooks
    per_head: bool
    per_layer: bool


class Vector(BaseModel):
    hook: str
    head: int | None
    token: int
    shape: list[int]
    data: Floats


class Pattern(BaseModel):
    shape: list[int]
    data: list[Floats]


class ColourScale(BaseModel):
    """analysis.scales.ColourScale: the page maps min -> 0, divider -> 0.5, max -> 1 of its colour map."""

    kind: Literal["sequential", "diverging"]
    min: float
    divider: float
    max: float
    mode: str
    left_out: list[int]
    clipped: list[int]


class ScaledValues(BaseModel):
    values: Floats
    scale: ColourScale


class Values(BaseModel):
    values: Floats


class Outliers(BaseModel):
    low: Float
    high: Float
    dims: list[int]
    values: Floats


class Histogram(BaseModel):
    nonfinite: int
    edges: Floats
    token: list[int]
    median: Floats
    outliers: Outliers


class Scatter(BaseModel):
    x: Floats
    y: Floats


class LensTarget(BaseModel):
    id: int
    token: str
    ranks: list[int | None]
    probs: Floats


class Lens(BaseModel):
    ids: list[list[int]]
    probs: list[Floats]
    tokens: list[list[str]]
    target: LensTarget = absent()  # only with `target=`


class Neurons(BaseModel):
    indices: list[int]
    values: Floats


class Comparison(BaseModel):
    layers: int
    mean_norm_a: Floats
    mean_norm_b: Floats
    diff: Floats


class Metric(BaseModel):
    name: str
    values: Floats
    scale: ColourScale
    values_with: Floats = absent()  # only with `with=`
    scale_with: ColourScale = absent()


class TraceSummary(BaseModel):
    """A trace's summaries as JSON (Trace.summary() and its id): [T] per token, [T, k] top-k
    predictions by the position that predicts, norms [L, T] per hook point, attn_entropy [L, H, T].
    The binary envelope (Accept: application/vnd.lmpeek.trace) carries the same (lmpeek.schema)."""

    id: str
    model: ModelInfo
    text: str
    chat: bool
    tokens: list[str]
    token_ids: list[int]
    offsets: list[Span]  # [T, 2] character spans into `text`
    token_bytes: list[str]  # hex: byte pieces merge into characters
    partial: list[bool]
    topk_ids: list[list[int]]
    topk_probs: list[Floats]
    topk_tokens: list[list[str]]
    entropy: Floats
    loss: Floats
    true_prob: Floats
    norms: dict[str, Floats]
    attn_entropy: list[list[Floats]]
    kept: list[str]
    nonfinite: list[str]


class QkPart(BaseModel):
    """One way of scoring a query/key pair: after RoPE ("rotated", what the model scores with), before it
    ("unrotated"), or a model without RoPE ("plain"). products: q_i × k_i per dimension of the head;
    score: dot × scale (softcapped where the model caps), what the softmax sees; scores: every key's
    score for this query (null: masked) and weights their softmax."""

    name: Literal["rotated", "unrotated", "plain"]
    q_hook: str
    k_hook: str
    q: Floats
    k: Floats
    products: Floats
    dot: Float
    score: Float
    scores: Floats
    weights: Floats


class QkTerms(BaseModel):
    """GET /api/traces/{id}/qk: one head's query/key score, term by term; pattern_row: the model's
    pattern row for the query (keys 0..query)."""

    layer: int
    head: int
    kv_head: int
    query: int
    key: int
    scale: float
    softcap: float | None
    window: int | None
    parts: list[QkPart]
    pattern_row: Floats


class StoredTrace(BaseModel):
    id: str
    model: str
    created: float | None
    n_tokens: int | None
    preview: str
    truncated: bool
    other_model: bool


class Sample(BaseModel):
    id: str
    title: str
    kind: str
    chars: int


class SampleText(BaseModel):
    id: str
    title: str
    kind: str
    text: str


class CorpusHit(BaseModel):
    id: str  # "corpus:…": open it with GET /api/samples/{id}
    title: str
    chars: int
    snippet: str  # the best-matching passage, matched words in [brackets]


class CorpusSearch(BaseModel):
    """GET /api/samples/search: documents of the demo corpus, best first."""

    total: int  # matches in all
    documents: int  # documents in the corpus
    items: list[CorpusHit]


# --- POST /api/generate: server-sent events (not in /openapi.json; scripts/api_types.py adds them) ---


class GenerateStart(BaseModel):
    """Event `start`: the prompt's tokens and the seed used (drawn when none was given)."""

    prompt_tokens: list[str]
    prompt_token_bytes: list[str]  # hex
    seed: int


class GenerateToken(BaseModel):
    """Event `token`: one generated token. topk_*: the raw temperature-1 prediction; sampled_*: the
    distribution it was drawn from (after temperature, top-k, top-p); norms [L] per component and
    attn_entropy [L, H] at its own position; attn_entropy_scale: one scale for every step so far."""

    index: int
    position: int
    token: str
    token_id: int
    token_bytes: str  # hex
    prob: Float
    topk_tokens: list[str]
    topk_probs: Floats
    topk_ids: list[int]
    entropy: Float
    sampled_prob: Float
    sampled_topk_ids: list[int]
    sampled_topk_probs: Floats
    norms: dict[str, Floats]
    attn_entropy: list[Floats]
    nonfinite: list[str]
    attn_entropy_scale: ColourScale


class GenerateDone(BaseModel):
    """Event `done`: the id of the stored trace of the whole text."""

    trace_id: str


class StreamError(BaseModel):
    """Event `error`: why the stream ended early."""

    detail: str


STREAM_EVENTS: dict[str, type[BaseModel]] = {
    "start": GenerateStart, "token": GenerateToken, "done": GenerateDone, "error": StreamError,
}  # fmt: skip


# --- the Features routes (server/routes_features.py; the contract: docs in lmpeek.features.service) ---


class FeatureDatabaseInfo(BaseModel):
    path: str
    tokens: int | None  # positions counted ("tokens seen")
    documents: int | None
    model: str | None  # the model it was built on
    corpus: str
    format_version: str


class RecordedTexts(BaseModel):
    """A features export's texts (views/features_export.py): the page asks POST .../activations for each
    with `features` and `top` as here, either rank and either exclude_template, and gets the recorded
    answers; anything else is "not in this export"."""

    texts: list[str]
    features: list[int]
    top: int


class FeatureSourceInfo(BaseModel):
    """A source the Features routes take as {source}: `online` when the loaded model computes it on any
    text; `message` (only when not online) says why not."""

    id: str
    name: str
    kind: str
    n_features: int
    hooks: list[str]
    online: bool
    database: FeatureDatabaseInfo | None
    message: str = absent()
    recorded: RecordedTexts = absent()  # an export only: the texts whose answers it holds


class FeatureSources(BaseModel):
    """GET /api/features: listed sources (any neurons:L is taken too when a model is loaded)."""

    sources: list[FeatureSourceInfo]
    model: str | None


class FeatureRow(BaseModel):
    feature: int
    density: float
    max: Float  # null: no positions counted
    count: int
    mean: Float
    label: str
    top_tokens: list[str]  # up to 5 labels of the tokens its top examples peak on


class FeatureList(BaseModel):
    total: int
    items: list[FeatureRow]


class FeatureHistogram(BaseModel):
    edges: Floats  # counts + 1 edges; the last may be null (the open bin up to inf)
    counts: list[int]


class QuantileBin(BaseModel):
    bin: int
    lo: float
    hi: float
    count: int
    share: float


class LogitToken(BaseModel):
    token: int
    label: str
    value: Float


class LogitHistogram(BaseModel):
    counts: list[int]
    lo: Float
    hi: Float


class FeatureLogits(BaseModel):
    top: list[LogitToken]
    bottom: list[LogitToken]
    histogram: LogitHistogram


class CorrelatedFeature(BaseModel):
    feature: int
    pearson: Float
    cosine: Float


class FeatureExample(BaseModel):
    """A window of a stored document around `pos` (at `index` in the window): its tokens and the
    feature's activations on them (0 where it is off)."""

    bin: int
    rank: int
    score: Float
    doc: int
    pos: int
    start: int
    index: int
    token_ids: list[int]
    tokens: list[str]
    acts: Floats


class FeatureExamples(BaseModel):
    top: list[FeatureExample]
    quantile: list[FeatureExample]


class FeaturePage(BaseModel):
    """GET /api/features/{source}/{feature}: everything the database holds about one feature
    (FeatureDB.feature) with its label and notes."""

    source: str
    feature: int
    n: int
    count: int
    count_neg: int
    density: float
    sum: Float
    mean: Float
    std: Float
    max: Float
    min: Float
    histogram: FeatureHistogram
    quantile_bins: list[QuantileBin]
    logits: FeatureLogits | None
    correlated: list[CorrelatedFeature]
    examples: FeatureExamples
    label: str
    notes: str


class FeatureDocument(BaseModel):
    doc: int
    path: str
    part: int
    token_ids: list[int]
    tokens: list[str]


class FeatureToken(BaseModel):
    id: int
    label: str
    template: bool  # written by the chat template, not the user


class RankedFeature(BaseModel):
    feature: int
    value: Float
    quantile: Float  # in the corpus (null without a database)


class TextFeature(BaseModel):
    feature: int
    max: Float
    tokens_active: int
    quantile: Float  # of `max` (null without a database)


class FeatureActivations(BaseModel):
    """POST /api/features/{source}/activations: per requested feature its values over the tokens (and
    their corpus quantiles), each token's top features, the text's top features."""

    tokens: list[FeatureToken]
    token_bytes: list[str]  # hex per token, as a trace's: the page copies these (a BOS has none)
    features: list[int]
    values: list[Floats]
    quantiles: list[Floats] | None
    ranking: list[list[RankedFeature]]
    top_features: list[TextFeature]


class FlowNode(BaseModel):
    id: str  # LM-TT's names: X_t (embedding), A{l}_t (after attention), M{l}_t (MLP), I{l}_t (block out)
    layer: int  # -1 for the embedding
    token: int
    kind: Literal["embed", "attn", "mlp", "resid"]
    influence: float  # the share of the prediction reaching the node along kept edges
    contrast: float = absent()  # the node's projection on log p(A) − log p(B) (contrastive only)


class FlowEdge(BaseModel):
    source: str  # a node id (the part)
    target: str  # a node id (the sum it is part of)
    kind: Literal["head", "mlp", "residual"]
    head: int | None
    weight: float  # the part's share of the target's sum (proximity importance)
    flow: float  # weight × the target's influence
    contrast: float = absent()  # the part's direct effect on log p(A) − log p(B) (contrastive only)


class FlowPrediction(BaseModel):
    id: int
    token: str
    prob: float


class FlowContrast(BaseModel):
    a: str
    b: str
    a_id: int
    b_id: int
    logprob_diff: float


class FlowGraph(BaseModel):
    """GET /api/traces/{id}/flow: lmpeek.attribution.flow's graph (Graph.to_json) of one prediction."""

    tokens: list[str]
    target: int
    threshold: float
    n_layers: int
    parallel: bool
    prediction: FlowPrediction
    contrastive: FlowContrast | None
    nodes: list[FlowNode]
    edges: list[FlowEdge]


# --- the Why tab (server/routes_why.py): POST /api/why/attribute's events, GET /api/why/methods ---


class WhyMethod(BaseModel):
    name: str
    kind: Literal["gradient", "perturbation"]
    summary: str
    exact: bool  # deterministic scores (no random samples; shapley: exact up to `exact_up_to` segments)
    sampled: bool  # random samples (shapley beyond `exact_up_to` segments, kernel_shap, lime)
    default_steps: int | None  # integrated_gradients: the first round (adaptive: doubled until δ < 5 %)
    default_samples: int | None


class WhyMethods(BaseModel):
    """GET /api/why/methods: the attribution methods, feature kinds and the default method."""

    methods: list[WhyMethod]
    features: list[str]
    default: str
    exact_up_to: int  # shapley is exact (all subsets) up to this many segments
    max_generate: int  # the most tokens a "generate N" target may have
    # an exported page: the POST /api/why/attribute bodies it recorded the answers of (the app: none)
    recorded: list[dict[str, Any]]


class WhyEstimate(BaseModel):
    """Event `estimate`: sequences to run and the seconds they should take (0 when cached)."""

    forwards: int
    seconds: Float
    cached: bool


class WhyProgress(BaseModel):
    """Event `progress`: sequences run so far, of `total` (IG's adaptive steps may raise it)."""

    done: int
    total: int


class WhySegment(BaseModel):
    label: str
    tokens: list[int]  # [first, end) token indices


class WhyBand(BaseModel):
    mean: Floats
    std: Floats


class WhyScalarBand(BaseModel):
    mean: Float
    std: Float


class WhyFaithfulness(BaseModel):
    """Deletion / insertion curves (index k: k segments removed / kept, highest score first), ERASER
    comprehensiveness and sufficiency at each fraction of segments, their AOPC, and the random band."""

    fractions: list[float]
    k: list[int]
    order: list[int]
    deletion: Floats
    insertion: Floats
    comprehensiveness: Floats
    sufficiency: Floats
    aopc_comprehensiveness: Float
    aopc_sufficiency: Float
    deletion_auc: Float
    insertion_auc: Float
    random_deletion: WhyBand
    random_insertion: WhyBand
    random_aopc_comprehensiveness: WhyScalarBand
    random_aopc_sufficiency: WhyScalarBand
    random_orders: int
    full: Float
    empty: Float
    forwards: int
    sequences: int
    baseline: str
    target: str


class WhyResult(BaseModel):
    """Event `result`: lmpeek.attribute's answer (Attribution.to_dict) and its faithfulness."""

    method: str
    target: str
    target_labels: list[str]
    baseline: str
    features: str
    segments: list[WhySegment]
    tokens: list[str]
    scores: list[Floats]  # [targets, segments], signed
    delta: Floats
    relative_delta: Floats
    f_input: Floats
    f_baseline: Floats
    steps: int | None
    samples: int | None
    forwards: int
    seconds: float
    faithfulness: WhyFaithfulness | None
    cached: bool


WHY_EVENTS: dict[str, type[BaseModel]] = {
    "estimate": WhyEstimate, "progress": WhyProgress, "result": WhyResult, "error": StreamError,
}  # fmt: skip


# --- the Why tab's patching grid (server/routes_patching.py): POST /api/why/patch's events ---


class WhyPatchCell(BaseModel):
    """A cell of an attribution-patching grid checked by real patching."""

    layer: int
    column: int  # a position of A, or a head
    estimate: float  # the attribution-patching estimate of the change
    real: float  # the change real patching gives


class WhyPatchResult(BaseModel):
    """Event `result` of POST /api/why/patch: grid[layer][column] = M(A with that cell from B) − M(A)
    (method "patch"), or its attribution-patching estimate (method "attribution", with the `verified`
    cells patched for real and the Spearman ρ of the two)."""

    method: Literal["patch", "attribution"]
    by: Literal["position", "head"]
    hook: str  # the short hook name ("z" for heads)
    grid: list[Floats]  # [layers, columns], signed
    rows: list[str]  # the hook patched per layer
    columns: list[str]  # A's tokens (by position) or "H0", "H1", … (by head)
    tokens: list[str]  # A's tokens
    source_tokens: list[str]  # B's tokens
    base: Float  # M(A)
    full: Float  # M(B): what patching everything from B gives
    metric: str  # the metric's label, e.g. log p(" Paris")
    target: int
    target_token: str
    contrast: int | None
    contrast_token: str | None
    forwards: int  # batched patching forwards run
    verified: list[WhyPatchCell] | None
    spearman: Float  # null for method "patch", or when ρ is undefined (fewer than 2 cells, a constant side)
    cached: bool


PATCH_EVENTS: dict[str, type[BaseModel]] = {
    "estimate": WhyEstimate, "progress": WhyProgress, "result": WhyPatchResult, "error": StreamError,
}  # fmt: skip


# --- the Why tab's "Ablate / patch" (server/routes_intervene.py): POST /api/why/intervene's result ---


class InterveneTop(BaseModel):
    id: int
    token: str
    prob: Float
    other: Float  # the same token's probability in the other run (plain <-> edited)


class InterveneTop1(BaseModel):
    id: int
    token: str
    plain_logp: Float
    edited_logp: Float
    delta: Float  # edited - plain


class InterveneDiff(BaseModel):
    op: Literal["=", "-", "+"]  # in both / only plain / only edited
    text: str


class InterveneResult(BaseModel):
    """Event `result` of POST /api/why/intervene: the text plain vs edited (attribution.intervene_job)."""

    tokens: list[str]
    labels: list[str]  # the edits applied, in words
    plain_top: list[InterveneTop]  # the last position's top-k
    edited_top: list[InterveneTop]
    top1: InterveneTop1
    delta_logp: Floats  # [T] log p_edited(x_i | x_<i) - log p_plain(...); null at 0
    kl: Floats  # [T] KL(plain || edited) of the next-token distribution after token i
    plain_text: str  # greedy regenerations
    edited_text: str
    diff: list[InterveneDiff]
    forwards: int
    cached: bool


INTERVENE_EVENTS: dict[str, type[BaseModel]] = {
    "estimate": WhyEstimate, "progress": WhyProgress, "result": InterveneResult, "error": StreamError,
}  # fmt: skip


# --- the Why tab's Steering (server/routes_steering.py): POST /api/why/steer's events ---


class WhySteerPlain(BaseModel):
    ids: list[int]  # generated tokens only
    tokens: list[str]
    text: str


class WhySteerRun(BaseModel):
    """One steered generation (one strength) beside the plain one, same seed and sampler."""

    strength: float  # a fraction of each hook's mean norm over the prompt
    c: list[float]  # strength × norm, per hook: the length of what is added (add) / the target (project, cap)
    ids: list[int]
    tokens: list[str]
    text: str
    delta_logp: Floats  # per steered token: log p_steered(t) − log p_plain(t), both teacher-forced
    kl: Floats  # per steered token: KL(p_steered ‖ p_plain) of the distributions that chose it
    mean_kl: Float
    fluency: Float  # perplexity of the steered tokens under the plain model
    same: bool  # the steered tokens equal the plain ones


class WhySteerResult(BaseModel):
    """Event `result` of POST /api/why/steer: the plain generation and one steered run per strength."""

    prompt_tokens: list[str]
    hooks: list[str]
    norms: list[float]  # each hook's mean norm over the prompt (what strength multiplies)
    positions: list[int] | None  # absolute positions steered; null: all, generated ones too
    mode: Literal["add", "project", "cap"]
    direction: dict[str, Any]  # the request's direction (no vector values) with `label`, `vector_norms`
    seed: int
    sweep: bool
    plain: WhySteerPlain
    runs: list[WhySteerRun]
    cached: bool


STEER_EVENTS: dict[str, type[BaseModel]] = {
    "estimate": WhyEstimate, "progress": WhyProgress, "result": WhySteerResult, "error": StreamError,
}  # fmt: skip


# --- the Why tab's prompt ablation (server/routes_ablation.py): POST /api/why/ablate's events ---


class WhyAblationVariant(BaseModel):
    """One row of a prompt-ablation study (the original, or a variant of it)."""

    label: str
    text: str  # the variant as text (a token-space replacement: its ids decoded)
    token_ids: list[int]
    target_logprob: Float  # log p(target) at the last position
    target_prob: Float
    delta_logprob: Float  # target_logprob − the original's
    topk_ids: list[int]
    topk_probs: Floats
    topk_tokens: list[str]
    kl: Float  # KL(original ‖ this) of the next-token distributions, nats
    generated_ids: list[int]  # the greedy continuation, eos excluded
    generation: str
    diff: list[Annotated[list[str], Field(min_length=2, max_length=2)]]  # [op "=" | "-" | "+", words]
    resid_norms: Floats  # [layers + 1] ‖h‖ at the last position
    resid_norm_diff: Floats  # [layers + 1] ‖h‖ − ‖h_original‖
    resid_delta_norm: Floats  # [layers + 1] ‖h − h_original‖


class WhyAblationResult(BaseModel):
    """Event `result` of POST /api/why/ablate: lmpeek.ablate_prompt's answer (PromptAblation.to_dict)."""

    prompt: str
    target_id: int
    target_token: str
    original: WhyAblationVariant
    variants: list[WhyAblationVariant]
    auto: Literal["sentences", "words", "replace"] | None
    replace_with: Literal["pad", "plausible"] | None
    resid_hooks: list[str]  # the hook of each resid_* entry
    forwards: int  # batched model forwards (generation's own steps not counted)
    generate_calls: int
    batch_size: int
    seconds: float  # what the study took
    cached: bool


ABLATION_EVENTS: dict[str, type[BaseModel]] = {
    "estimate": WhyEstimate, "progress": WhyProgress, "result": WhyAblationResult, "error": StreamError,
}  # fmt: skip
