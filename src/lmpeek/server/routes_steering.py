"""The Why tab's Steering section (issue 13): steered and plain generations side by side, streamed.

`POST /api/why/steer` checks the request and resolves the direction on the model's thread (bad input
answers 4xx before any stream: an unknown features source is 404, an index out of range, a vector of
the wrong size or an empty prompt list 400 or 422; a node's layer or position out of range 400),
then streams `estimate`, `progress` and `result` or `error`, as every long Why job (server/sse.py).
The job is attribution.steering_job.start_steering; a repeat comes from the Session's cache, closing
the connection cancels it.

The result: the plain generation once, and per strength (one, or five with `sweep`) the steered
generation with, at each steered token t, delta_logp[t] = log p_steered(t) − log p_plain(t) (both
models' log-probabilities of the steered text's token, teacher-forced) and kl[t] = KL(p_steered ‖
p_plain) of the next-token distributions that chose t; `c` is strength × each hook's mean norm.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lmpeek.server.finite import clean
from lmpeek.server.guard import Index, hook_name
from lmpeek.server.sse import SSE_RESPONSES, long_run_stream

MAX_PROMPT = 20_000  # characters
MAX_SET_TEXT = 2_000  # characters per prompt of a mean difference


class SteerFeature(BaseModel):
    kind: Literal["feature"]
    source: str = Field(min_length=1, max_length=400, description="A features source id (GET /api/features).")
    index: Index


class SteerNeuron(BaseModel):
    kind: Literal["neuron"]
    layer: Index
    index: Index


class SteerMeanDifference(BaseModel):
    kind: Literal["mean_difference"]
    positive: list[Annotated[str, Field(min_length=1, max_length=MAX_SET_TEXT)]] = Field(max_length=64)
    negative: list[Annotated[str, Field(min_length=1, max_length=MAX_SET_TEXT)]] = Field(max_length=64)


class SteerVector(BaseModel):
    kind: Literal["vector"]
    values: list[float] = Field(max_length=65_536, description="d_model numbers.")


# a flow-graph node's point: residual-sized, written by a layer (whether the layer exists: checked later)
NODE_HOOK = r"^blocks\.[0-9]{1,4}\.(hook_resid_pre|hook_resid_post|hook_attn_out|hook_mlp_out)$"


NodeHook = hook_name(
    NODE_HOOK,
    "blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.hook_attn_out or blocks.L.hook_mlp_out",
)


class SteerNode(BaseModel):
    kind: Literal["node"]
    text: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPT,
        description="The text whose activation to take (default: the prompt).",
    )
    hook: NodeHook = Field(
        description="A flow node's MLP: hook_mlp_out, attention: hook_attn_out, residual: hook_resid_post."
    )
    position: int = Field(
        ge=-1_000_000, le=1_000_000, strict=True, description="The token (negative: from the end)."
    )


Direction = Annotated[
    SteerFeature | SteerNeuron | SteerMeanDifference | SteerVector | SteerNode,
    Field(discriminator="kind"),
]


class SteerRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT)
    direction: Direction
    layers: list[Index] | None = Field(
        None,
        max_length=8,
        description="Layers to steer at (default: the direction's own, else the middle one).",
    )
    point: Literal["hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out"] | None = Field(
        None, description="Where in each layer (default: the direction's own point, else hook_resid_pre)."
    )
    positions: Literal["all", "prompt", "from"] = Field(
        "all", description="all (prompt and generated), the prompt only, or from token `start` on."
    )
    start: Index = 0
    mode: Literal["add", "project", "cap"] = "add"
    strength: float = Field(1.0, ge=-100, le=100, description="A fraction of each hook's mean norm.")
    seed: int = Field(0, ge=0, le=2**31 - 1, strict=True)
    max_new_tokens: int = Field(32, ge=1, le=128, strict=True)
    temperature: float = Field(1.0, ge=0, le=10, description="0: greedy.")
    sweep: bool = Field(False, strict=True, description="Five strengths (0.25…4 with strength's sign).")


def result_json(run: Any) -> dict[str, Any]:
    """A SteeringRun as the `result` event (WhySteerResult; non-finite numbers become null)."""
    first = run.results[0]
    runs = []
    for r in run.results:
        runs.append(
            {
                "strength": r.strength,
                "c": [r.strength * n for n in r.norms],
                "ids": r.steered_ids.tolist(),
                "tokens": r.steered_tokens,
                "text": r.steered_text,
                "delta_logp": r.delta_logp.tolist(),
                "kl": r.kl.tolist(),
                "mean_kl": float(r.kl.mean()) if r.kl.size else 0.0,
                "fluency": r.fluency,
                "same": r.steered_ids.tolist() == r.plain_ids.tolist(),
            }
        )
    return clean(
        {
            "prompt_tokens": run.prompt_tokens,
            "hooks": run.hooks,
            "norms": list(first.norms),
            "positions": run.positions,
            "mode": run.mode,
            "direction": run.direction,
            "seed": first.seed,
            "sweep": run.sweep,
            "plain": {
                "ids": first.plain_ids.tolist(),
                "tokens": first.plain_tokens,
                "text": first.plain_text,
            },
            "runs": runs,
            "cached": bool(run.cached),
        }
    )


def add_steering_routes(app: FastAPI, holder: Any) -> None:
    """The route; `holder` (server.app.ModelHolder) runs model jobs, `app.state.features` (a
    FeatureService) holds the feature sources a direction may name."""

    def source(name: str) -> Any:  # on the model's thread: loads the source with the model once
        service = app.state.features
        return service.source(name)

    @app.post("/api/why/steer", response_class=StreamingResponse, responses=SSE_RESPONSES)
    async def why_steer(req: SteerRequest, request: Request) -> StreamingResponse:
        """Server-sent events: `estimate`, `progress`, then `result` (WhySteerResult) or `error`
        (see the module docstring). Closing the connection cancels the job."""
        from lmpeek.attribution.steering_job import start_steering

        session = holder.session()
        args = req.model_dump()
        run = await holder.run(lambda: start_steering(session, sources=source, **args), request, "steer")
        return long_run_stream(holder, run, "steer", result_json)
