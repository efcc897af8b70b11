"""The crosscoder page's routes (issue 12, "Crosscoder page"): a model-diff crosscoder's relative decoder
norms (shared / base-only / chat-only) from its weights, and both models side by side on your text.

    GET  /api/features/{source}/crosscoder   the weights' part: no model needed (lmpeek features serve)
    POST /api/features/{source}/pair          {text, features (<= 8)}: both models' forwards, one job

The app serves the chat model and holds the base model beside it (`lmpeek serve CHAT --base-model BASE
--features-source CROSSCODER_FOLDER`, create_app(base_model=...)); `load_base` loads it with the chat
model's loader (same dtype / device flags) and refuses a pair whose tokenizers differ. Everything is
computed by lmpeek.features.service.FeatureService (crosscoder, pair) and features.crosscoder
(page_summary, contributions); these routes only format it. Both forwards run on the model's queue.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Request
from pydantic import AfterValidator, BaseModel, Field

from lmpeek.errors import InvalidInput
from lmpeek.server.finite import clean
from lmpeek.server.responses import FeatureToken, Float, Floats, typed
from lmpeek.server.routes_features import SourceId

MAX_PAIR_TEXT = 50_000  # characters, as the activations route; the service caps tokens
# what the tokenizers of a pair must read alike: prose, code, digits, non-ASCII, and (with a chat
# template) turns
PAIR_CHECK = ("The capital of France is Paris. def add(a, b): return a + b  # 12345 naïve café 日本語",
              "Hello!<eot>Hi, how can I help?<eot>Add 2 and 3.")  # fmt: skip


def load_base(base: Any, chat: Any, loader: Any = None) -> Any:
    """The base model of a crosscoder pair: `base` loaded (a source string, with `loader` as the chat
    model was; or a loaded model as is), checked to read text as `chat` does (a crosscoder reads both
    models on the same token ids). None when `base` is None."""
    if base is None:
        return None
    if isinstance(base, str):
        if loader is not None:
            base = loader(base)
        else:
            from lmpeek.api import load

            base = load(base, progress=False)
    from lmpeek.features.crosscoder import shared_ids

    for text in PAIR_CHECK:
        try:
            shared_ids((base, chat), text)
        except InvalidInput as err:
            raise InvalidInput(f"--base-model {base.name} cannot be paired with {chat.name}: {err}") from None
    return base


# --- requests and responses ------------------------------------------------------------------------


def _not_blank(value: str) -> str:
    if value.strip() == "":
        raise ValueError("must not be empty: give some text to run both models on")
    return value


class PairRequest(BaseModel):
    text: Annotated[str, AfterValidator(_not_blank)] = Field(
        max_length=MAX_PAIR_TEXT, description="Text to run; '<eot>' separates chat turns."
    )
    features: list[Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)]] = Field(
        default_factory=list, max_length=8, description="Features to show side by side (at most 8)."
    )


class NormHistogram(BaseModel):
    edges: list[float]  # bins + 1 edges over [0, 1]
    counts: list[int]  # dead features (no decoder norm) are left out


class NormClass(BaseModel):
    """One class of features by relative decoder norm r: base-only r < hi, shared lo <= r <= hi,
    chat-only r > lo, other: between the ranges, dead: both decoder norms 0 (lo/hi null)."""

    name: str
    count: int
    lo: float | None
    hi: float | None


class ModelPair(BaseModel):
    base: Floats
    chat: Floats


class CrosscoderSummary(BaseModel):
    """GET /api/features/{source}/crosscoder: per feature the relative decoder norm ‖W_dec chat‖ /
    (‖W_dec base‖ + ‖W_dec chat‖) (null: dead), both decoder norms and its class (an index into
    `classes`); the norm's histogram; `online`: both models are served (the pair route works)."""

    source: str
    hook: str
    layout: str
    code_normalization: str
    n_features: int
    d_model: int
    relative_norm: Floats
    decoder_norms: ModelPair
    histogram: NormHistogram
    classes: list[NormClass]
    class_of: list[int]
    online: bool


class CrosscoderPair(BaseModel):
    """POST /api/features/{source}/pair: for K features and T tokens, the activation [K][T] (as every
    view shows it), each model's contribution to the pre-activation [K][T] (x'_l · W_enc[l, :, j]; the
    pre-activation is base + chat + bias), bias and code (the scale applied after relu) [K], the BatchTopK
    threshold (null: none); each model's hook-value norm per token; each feature's relative norm and
    class."""

    tokens: list[FeatureToken]
    features: list[int]
    activation: list[Floats]
    base: list[Floats]
    chat: list[Floats]
    bias: Floats
    code: Floats
    threshold: Float
    norms: ModelPair
    relative_norm: Floats
    class_of: list[int]


def add_crosscoder_routes(app: FastAPI, holder: Any, service: Any) -> None:
    """The routes over `service` (a FeatureService); `holder` (server.app.ModelHolder) runs model jobs.
    Register before /api/features/{source}/{feature}, which would take "crosscoder" for an index."""

    @app.get("/api/features/{source}/crosscoder", **typed(CrosscoderSummary))
    def crosscoder_summary(source: SourceId) -> dict[str, Any]:
        """The crosscoder's relative decoder norms, their histogram and classes (weights only)."""
        return clean(service.crosscoder(source))

    @app.post("/api/features/{source}/pair", **typed(CrosscoderPair))
    async def crosscoder_pair(source: SourceId, req: PairRequest, request: Request) -> dict[str, Any]:
        """Both models on your text, one forward each on the model's queue: per feature its activation
        and which model drives it, token by token."""
        if holder.source is not None:
            holder.ready()  # 503 while the models load
        # without models (lmpeek features serve) the service answers 409, saying --base-model
        out = await holder.run(lambda: service.pair(source, req.text, req.features), request, "features")
        return clean(out)
