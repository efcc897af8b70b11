"""The Why tab's "Ablate / patch" route (issue 13): a text run plain and with edits, compared.

`POST /api/why/intervene` {text, edits, max_new_tokens, top_k}: every edit is checked (hook, head or
neuron index, prompt B present and as long as needed, feature source known, a direction's vector
resolved) and the reference
forwards run as one job on the model's queue, so bad input answers 4xx before any stream; then
`estimate`, `progress`…, `result` (attribution.intervene_job: top-k plain vs edited, Δ log p and KL
at every position, the two greedy regenerations and their diff) or `error`. Results are cached; a
repeat streams at once. The edits are those of web/src/lib/actions.svelte.ts (every "ablate" /
"patch…" action in the app sends them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lmpeek.attribution.intervene_job import MAX_EDITS, MAX_NEW_TOKENS
from lmpeek.server.finite import clean
from lmpeek.server.guard import Index, hook_name
from lmpeek.server.routes_steering import NodeHook
from lmpeek.server.routes_why import MAX_WHY_TEXT
from lmpeek.server.sse import SSE_RESPONSES, long_run_stream

# the writable points (attribution.intervene.writable); whether this model has them is checked later
HOOK = (
    r"^(hook_embed|hook_pos_embed|blocks\.[0-9]{1,4}\.(hook_resid_pre|hook_resid_post|hook_attn_out|"
    r"hook_mlp_out|mlp\.hook_post|mlp\.hook_pre|attn\.hook_z))$"
)
Hook = hook_name(
    HOOK,
    "a writable hook point: hook_embed, blocks.L.hook_resid_pre, blocks.L.hook_resid_post, "
    "blocks.L.hook_attn_out, blocks.L.hook_mlp_out, blocks.L.mlp.hook_post, blocks.L.attn.hook_z",
)


class DirectionNeuron(BaseModel):
    kind: Literal["neuron"]
    layer: Index
    index: Index


class DirectionFeature(BaseModel):
    kind: Literal["feature"]
    source_name: str = Field(min_length=1, max_length=200, description="A features source (its decoder row).")
    index: Index


class DirectionNode(BaseModel):
    kind: Literal["node"]
    text: str | None = Field(None, min_length=1, max_length=MAX_WHY_TEXT, description="Default: the text.")
    hook: NodeHook
    position: int = Field(ge=-1_000_000, le=1_000_000, strict=True, description="Negative: from the end.")


AblateDirection = Annotated[DirectionNeuron | DirectionFeature | DirectionNode, Field(discriminator="kind")]


class InterventionEdit(BaseModel):
    action: Literal["ablate", "ablate_feature", "patch"]
    hook: Hook | None = Field(None, description="lmpeek's hook name (a writable point).")
    mode: Literal["zero", "mean", "resample"] | None = Field(None, description="ablate: default zero.")
    index: Index | None = Field(None, description="a head (hook_z), a neuron (mlp.hook_post) or a feature.")
    head: Index | None = Field(None, description="patch: one head of hook_z.")
    positions: list[Index] | None = Field(None, max_length=4096, description="token indices; default all.")
    source: str | None = Field(None, max_length=MAX_WHY_TEXT, description="prompt B (resample, patch).")
    source_name: str | None = Field(None, max_length=200, description="ablate_feature: a features source.")
    label: str | None = Field(None, max_length=200, description="what the action was taken on.")
    direction: AblateDirection | None = Field(
        None,
        description="ablate: only the component along this direction (a residual-sized hook): a neuron's "
        "output vector, a feature's decoder row, or a text's activation at a node.",
    )


class InterveneRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_WHY_TEXT, description="The text to run plain and edited.")
    edits: list[InterventionEdit] = Field(min_length=1, max_length=MAX_EDITS)
    max_new_tokens: int = Field(
        20, ge=0, le=MAX_NEW_TOKENS, strict=True, description="Greedy tokens to write."
    )
    top_k: int = Field(10, ge=1, le=100, strict=True)


def result_json(result: Any) -> dict[str, Any]:
    return clean(result.to_dict())


def add_intervene_routes(app: FastAPI, holder: Any) -> None:
    """The route; `holder` (server.app.ModelHolder) runs model jobs, app.state.features serves the
    feature sources an ablate_feature edit names."""

    @app.post("/api/why/intervene", response_class=StreamingResponse, responses=SSE_RESPONSES)
    async def why_intervene(req: InterveneRequest, request: Request) -> StreamingResponse:
        """Server-sent events: `estimate`, `progress`, then `result` or `error` (see the module
        docstring). Closing the connection cancels the job."""
        from lmpeek.attribution.intervene_job import start_intervention

        session = holder.session()
        features = getattr(app.state, "features", None)
        edits = [e.model_dump(exclude_none=True) for e in req.edits]
        args = {"text": req.text, "edits": edits, "max_new_tokens": req.max_new_tokens, "top_k": req.top_k}
        run = await holder.run(
            lambda: start_intervention(session, features=features, **args), request, "intervene"
        )
        return long_run_stream(holder, run, "intervene", result_json)
