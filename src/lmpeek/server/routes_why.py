"""The Why tab's routes (issue 13): an attribution of your text, streamed as server-sent events.

`POST /api/why/attribute` explains the next token (`target`, `contrast`) or a span of tokens after
the text, one row each (`span`: a continuation, teacher-forced; `generate`: the model's greedy
continuation of N tokens): the token × input matrix, one teacher-forced pass per perturbation for all
rows. `score`: logprob, prob or logit. `features`: a kind, or "spans" with user-drawn `spans`
(character ranges; tokens outside them are never perturbed). It checks the request and finds the
target (one job on the model's queue; bad input answers 4xx before any stream), then streams:
`estimate` {forwards, seconds, cached}, `progress` {done, total} while it runs, and `result`
(Attribution.to_dict() with its faithfulness) or `error` {detail}; every stream ends with one of the
two. The attribution is one generator job that runs in turns (Session.start_attribution,
lmpeek.turns), so slices and summaries are answered between its batches; closing the connection
cancels it. Results are cached by the Session: a repeat streams its estimate (cached) and result at
once. `GET /api/why/methods` lists the methods.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator

from lmpeek.server import responses
from lmpeek.server.finite import clean
from lmpeek.server.guard import Index
from lmpeek.server.sse import SSE_RESPONSES, long_run_stream

MAX_WHY_TEXT = 20_000  # characters; attributions cost forwards per segment, so keep texts modest
MAX_SPANS = 256  # user-drawn spans (features=spans)
MAX_GENERATE = 64  # tokens a "generate N" target may have
SCORE_NAMES = {"logprob": "log_prob", "prob": "prob", "logit": "logit"}  # the request's -> the library's


class AttributeRequest(BaseModel):
    text: str = Field(
        min_length=1, max_length=MAX_WHY_TEXT, description="The text whose next token to explain."
    )
    target: str | Index | None = Field(
        None, description="The token to explain (its first token; an id): default the model's top prediction."
    )
    contrast: str | Index | None = Field(None, description="Explain log p(target) − log p(contrast) instead.")
    method: str = Field("integrated_gradients", max_length=64)
    features: str = Field(
        "tokens", max_length=32, description="tokens, words, sentences, lines, or spans (give `spans`)."
    )
    spans: list[tuple[Index, Index]] | None = Field(
        None,
        max_length=MAX_SPANS,
        description="features=spans: [start_char, end_char) ranges of the text, each one feature; "
        "tokens outside every span are never perturbed.",
    )
    steps: int | None = Field(None, ge=1, le=4096, strict=True, description="IG steps (default: adaptive).")
    faithfulness: bool = Field(
        True, strict=True, description="Also compute deletion/insertion curves and AOPC."
    )
    span: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_WHY_TEXT,
        description="Explain this continuation (teacher-forced after the text), one row per token.",
    )
    generate: int | None = Field(
        None, ge=1, le=MAX_GENERATE, strict=True,
        description="Explain the model's own greedy continuation of N tokens (generated first).",
    )  # fmt: skip
    score: Literal["logprob", "prob", "logit"] = Field(
        "logprob", description="What F reads: log-probability, probability or logit."
    )

    @model_validator(mode="after")
    def _consistent(self) -> AttributeRequest:
        # said before any stream (a 422), not as an error event
        if self.span is not None and self.generate is not None:
            raise ValueError("give either span (a continuation) or generate (N tokens), not both")
        if (self.features == "spans") != (self.spans is not None):
            raise ValueError(
                "features=spans goes with `spans` ([start_char, end_char] ranges), and only with it"
            )
        return self

    def session_args(self) -> dict[str, Any]:
        """Session.start_attribution's arguments."""
        args = self.model_dump(exclude={"spans", "score"})
        if self.spans is not None:
            args["features"] = [tuple(s) for s in self.spans]
        args["score"] = SCORE_NAMES[self.score]
        return args


def faithfulness_json(f: Any) -> dict[str, Any]:
    """Faithfulness (attribution.faithfulness) as WhyFaithfulness."""

    def band(b: Any) -> dict[str, Any]:
        return {"mean": b.mean.tolist(), "std": b.std.tolist()}

    def scalar(b: Any) -> dict[str, Any]:
        return {"mean": float(b.mean), "std": float(b.std)}

    return {
        "fractions": list(f.fractions),
        "k": list(f.k),
        "order": [int(i) for i in f.order],
        "deletion": f.deletion.tolist(),
        "insertion": f.insertion.tolist(),
        "comprehensiveness": f.comprehensiveness.tolist(),
        "sufficiency": f.sufficiency.tolist(),
        "aopc_comprehensiveness": f.aopc_comprehensiveness,
        "aopc_sufficiency": f.aopc_sufficiency,
        "deletion_auc": f.deletion_auc,
        "insertion_auc": f.insertion_auc,
        "random_deletion": band(f.random_deletion),
        "random_insertion": band(f.random_insertion),
        "random_aopc_comprehensiveness": scalar(f.random_aopc_comprehensiveness),
        "random_aopc_sufficiency": scalar(f.random_aopc_sufficiency),
        "random_orders": len(f.random_orders),
        "full": f.full,
        "empty": f.empty,
        "forwards": f.forwards,
        "sequences": f.sequences,
        "baseline": f.baseline,
        "target": f.target,
    }


def result_json(result: Any) -> dict[str, Any]:
    """A Session WhyResult as the `result` event (strict JSON: non-finite numbers become null)."""
    out = result.attribution.to_dict()
    out["faithfulness"] = faithfulness_json(result.faithfulness) if result.faithfulness is not None else None
    out["cached"] = bool(result.cached)
    return clean(out)


def methods_json() -> dict[str, Any]:
    from lmpeek.attribution.methods import IG_FIRST_STEPS, METHODS, SHAPLEY_EXACT_MAX
    from lmpeek.attribution.segments import KINDS

    samples = {"shapley": 25, "kernel_shap": 200, "lime": 200}  # methods.py's defaults
    return {
        "methods": [
            {
                "name": m.name,
                "kind": m.kind,
                "summary": m.summary,
                "exact": m.name not in ("kernel_shap", "lime"),
                "sampled": m.name in samples,
                "default_steps": IG_FIRST_STEPS if m.name == "integrated_gradients" else None,
                "default_samples": samples.get(m.name),
            }
            for m in METHODS.values()
        ],
        "features": [*KINDS, "spans"],
        "default": "integrated_gradients",
        "exact_up_to": SHAPLEY_EXACT_MAX,
        "max_generate": MAX_GENERATE,
        # an export's page (views/export.py) lists the requests whose answers it holds; the app none
        "recorded": [],
    }


def add_why_routes(app: FastAPI, holder: Any) -> None:
    """The routes; `holder` (server.app.ModelHolder) runs model jobs."""

    @app.get("/api/why/methods", **responses.typed(responses.WhyMethods))
    def why_methods() -> dict[str, Any]:
        """The attribution methods (gradient or perturbation, exact or sampled, default steps and
        samples), the feature kinds and the default method."""
        return methods_json()

    @app.post(
        "/api/why/attribute",
        response_class=StreamingResponse,
        responses=SSE_RESPONSES,
    )
    async def why_attribute(req: AttributeRequest, request: Request) -> StreamingResponse:
        """Server-sent events: `estimate`, `progress` (while it runs), then `result` or `error`
        (see the module docstring). Closing the connection cancels the attribution."""
        session = holder.session()
        args = req.session_args()
        # checks the input and finds the target on the model's thread: bad input is a 4xx, not a stream
        run = await holder.run(lambda: session.start_attribution(**args), request, "attribute")

        return long_run_stream(holder, run, "attribute", result_json)
