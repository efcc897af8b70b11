"""The Features tab's routes (issue 12, "Online dashboard" + "Browse"): feature databases and sources
by id, a database's feature list (FTS5 search), feature pages, documents and labels, and feature
activations of the user's text (or of the text continued by the model: the generate route).
`lmpeek.features.service.FeatureService` computes everything; these routes only format it. Database
reads run in the server's thread pool; activations and generations run the model, so they are jobs on
the model's queue like every other model request. Without a model (`lmpeek features serve`) both
answer 409.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, Field

from lmpeek.server import responses
from lmpeek.server.finite import clean
from lmpeek.server.responses import typed

MAX_FEATURE_TEXT = 50_000  # characters; the service also caps tokens (service.MAX_TOKENS)

SourceId = Annotated[
    str, PathParam(min_length=1, max_length=300, description="a source id, as GET /api/features lists it")
]
FeatureIndex = Annotated[int, PathParam(ge=0, le=2**31 - 1, description="the feature's index")]


class ActivationsRequest(BaseModel):
    text: str = Field(
        min_length=1,
        max_length=MAX_FEATURE_TEXT,
        description="Text to run; '<eot>' separates chat turns (user, assistant, user, ...).",
    )
    features: list[Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)]] | None = Field(
        None, max_length=32, description="Features whose values over the tokens to return."
    )
    rank: Literal["activation", "quantile"] = Field(
        "activation", description="Rank each token's features by value, or by the value's corpus quantile."
    )
    top: int = Field(5, ge=1, le=50, strict=True, description="Ranked features per token.")
    exclude_template: bool = Field(
        False, strict=True, description="Leave chat-template tokens out of rankings."
    )


class GenerateFeaturesRequest(ActivationsRequest):
    """Your text continued by the model (as the Generate tab does), then its features."""

    text: str = Field(
        min_length=1,
        max_length=MAX_FEATURE_TEXT,
        description="The prompt; '<eot>' separates chat turns (the template's assistant turn is opened).",
    )
    max_new_tokens: int = Field(32, ge=1, le=2048, strict=True)
    temperature: float = Field(0.0, ge=0.0, le=100.0, strict=True, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, strict=True)
    top_k: int = Field(0, ge=0, le=2**31 - 1, strict=True, description="0 = off.")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, strict=True)


class FeatureGeneration(responses.FeatureActivations):
    """POST /api/features/{source}/generate: the activations of the prompt and the model's response
    together (tokens[prompt_tokens:] are the response), from one forward over the final ids."""

    prompt_tokens: int
    response: str  # the response's text (special tokens left out)
    seed: int  # the seed used (drawn when none was given): send it back to repeat a sampled run
    stopped: Literal["eos", "length"]  # the model ended its turn, or max_new_tokens was reached


class LabelRequest(BaseModel):
    label: str = Field(max_length=500)
    notes: str = Field("", max_length=20_000)


def add_feature_routes(app: FastAPI, holder: Any, service: Any) -> None:
    """The routes over `service` (a FeatureService); `holder` (server.app.ModelHolder) runs model jobs."""
    from lmpeek.server.routes_crosscoder import add_crosscoder_routes  # before /{feature}: not an index

    add_crosscoder_routes(app, holder, service)

    @app.get("/api/features", **typed(responses.FeatureSources))
    def feature_sources() -> dict[str, Any]:
        """The feature sources served: databases' sources and given specs, each with its id, size, hook
        points, whether the loaded model computes it (`online`) and its database."""
        return clean(service.sources())

    @app.get("/api/features/{source}/list", **typed(responses.FeatureList))
    def feature_list(
        source: SourceId,
        q: Annotated[
            str,
            Query(max_length=500, description="FTS5 search over labels, notes and peak tokens (token:WORD)"),
        ] = "",
        sort: Literal["feature", "density", "max", "count", "mean", "relevance"] = "feature",
        order: Literal["desc", "asc"] | None = None,
        offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict[str, Any]:
        """One page of the source's features (needs a database): `total` matching `q`, and per feature
        its density, max, count, mean, label and top tokens. Default order: descending, except by
        feature index (and by relevance: best match first)."""
        return clean(service.feature_list(source, q, sort, order, offset, limit))

    @app.get("/api/features/{source}/{feature}", **typed(responses.FeaturePage))
    def feature_page(source: SourceId, feature: FeatureIndex) -> dict[str, Any]:
        """Everything the database holds about one feature, with its label and notes."""
        return clean(service.feature(source, feature))

    @app.get("/api/features/{source}/{feature}/document/{doc}", **typed(responses.FeatureDocument))
    def feature_document(
        source: SourceId, feature: FeatureIndex, doc: Annotated[int, PathParam(ge=0, le=2**31 - 1)]
    ) -> dict[str, Any]:
        """A stored document whole (an example's wider context)."""
        return service.document(source, feature, doc)

    @app.put("/api/features/{source}/{feature}/label", status_code=204, response_class=Response)
    def feature_label(source: SourceId, feature: FeatureIndex, body: LabelRequest) -> Response:
        """Store a label and notes (both empty: remove them); searchable at once. Stored in the
        database file, or in a sidecar file when it is read-only."""
        service.set_label(source, feature, body.label, body.notes)
        return Response(status_code=204)

    @app.post("/api/features/{source}/activations", **typed(responses.FeatureActivations))
    async def feature_activations(
        source: SourceId, req: ActivationsRequest, request: Request
    ) -> dict[str, Any]:
        """The source's features on your text, from one forward on the model's queue: tokens (chat
        template tokens flagged), the requested features' values and corpus quantiles, each token's
        `top` features (by value or by quantile: quantile needs a database) and the text's top features."""
        holder.ready()  # 503 while the model loads; 409 when this server has no model

        def run() -> dict[str, Any]:
            return service.activations(
                source,
                req.text,
                req.features,
                rank=req.rank,
                top=req.top,
                exclude_template=req.exclude_template,
            )

        out = await holder.run(run, request, "features")
        return clean(out)

    @app.post("/api/features/{source}/generate", **typed(FeatureGeneration))
    async def feature_generate(
        source: SourceId, req: GenerateFeaturesRequest, request: Request
    ) -> dict[str, Any]:
        """Your text continued by the model (max_new_tokens, temperature 0 = greedy, top_p, top_k,
        seed, as POST /api/generate), then the features of the prompt and the response together as the
        activations route gives them, with `prompt_tokens` (where the response starts), `response`,
        `seed` and `stopped`. One job on the model's queue, one generation step per turn (other
        requests interleave); a client that goes away cancels it."""
        holder.ready()

        def run() -> Any:  # checks everything, then a generator of steps that returns the answer
            return service.generation(source, **req.model_dump())

        out = await holder.run(run, request, "features")
        return clean(out)
