"""The Why tab's patching grid (issue 13): `POST /api/why/patch` streams a layer × position (or
layer × head) grid of patching prompt B's activations into prompt A, or its attribution-patching
estimate with its top cells checked by real patching, as server-sent events.

The request is checked on the model's thread first (attribution.patching_job.start_patching): empty
prompts, an unknown hook / by / method, prompts of different token lengths (both lengths said) and
targets that are no token answer 4xx before any stream. Then: `estimate` {forwards, seconds, cached},
`progress` {done, total} (sequences) while it runs, and `result` (PatchingResult.to_dict, strict
JSON) or `error` {detail}. Closing the connection cancels the job; a repeat comes from the cache.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lmpeek.attribution.patching_job import MAX_VERIFY
from lmpeek.server.finite import clean
from lmpeek.server.guard import Index
from lmpeek.server.sse import SSE_RESPONSES, long_run_stream

MAX_PATCH_TEXT = 20_000  # characters per prompt; the token limit (patching_job.MAX_TOKENS) binds first

Token = str | Index | None


class PatchRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_PATCH_TEXT, description="Prompt A (clean), patched into.")
    source: str = Field(
        min_length=1,
        max_length=MAX_PATCH_TEXT,
        description="Prompt B (corrupted), whose activations are patched in.",
    )
    hook: str = Field(
        "resid_pre", max_length=32, description="resid_pre, resid_post, attn_out or mlp_out (by position)."
    )
    by: str = Field(
        "position", max_length=16, description="position (layer × position) or head (layer × head)."
    )
    target: Token = Field(
        None, description="The metric's token (text: its first token; or an id): default A's top prediction."
    )
    contrast: Token = Field(None, description="Measure log p(target) − log p(contrast) instead.")
    method: str = Field(
        "patch", max_length=16, description="patch (real patching) or attribution (its estimate)."
    )
    verify: int = Field(
        10,
        ge=0,
        le=MAX_VERIFY,
        strict=True,
        description="Attribution: its top cells checked by real patching.",
    )


def result_json(result: Any) -> dict[str, Any]:
    """A PatchingResult as the `result` event (non-finite numbers, e.g. an undefined ρ, become null)."""
    return clean(result.to_dict())


def add_patching_routes(app: FastAPI, holder: Any) -> None:
    """The route; `holder` (server.app.ModelHolder) runs model jobs."""

    @app.post("/api/why/patch", response_class=StreamingResponse, responses=SSE_RESPONSES)
    async def why_patch(req: PatchRequest, request: Request) -> StreamingResponse:
        """Server-sent events: `estimate`, `progress` (while it runs), then `result` or `error` (see
        the module docstring). Closing the connection cancels the grid."""
        from lmpeek.attribution.patching_job import start_patching

        session = holder.session()
        args = req.model_dump()
        # checks the input (and finds A's top prediction) on the model's thread: bad input is a 4xx
        run = await holder.run(lambda: start_patching(session, **args), request, "patch")
        return long_run_stream(holder, run, "patch", result_json)
