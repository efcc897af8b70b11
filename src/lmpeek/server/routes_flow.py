"""The information-flow graph of a stored trace (issue 13): thin over `Session.flow`, which computes
it on the model's queue (lmpeek.attribution.flow) and caches it; this module only formats."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query

from lmpeek.server.guard import TraceId
from lmpeek.server.responses import FlowGraph, typed


def add_flow_routes(app: FastAPI) -> None:
    @app.get("/api/traces/{trace_id}/flow", **typed(FlowGraph))
    def flow(
        trace_id: TraceId,
        token: Annotated[int, Query(ge=0, description="the position whose prediction is explained")],
        threshold: Annotated[
            float, Query(gt=0, le=1, description="the smallest share of the prediction an edge keeps")
        ] = 0.04,
        contrast: Annotated[
            int | None,
            Query(ge=0, description="token id B: edges carry their effect on log p(top) − log p(B)"),
        ] = None,
    ) -> dict[str, Any]:
        """Nodes (embedding, after-attention, MLP, block output per layer and token) with the share of
        the prediction reaching them, and the kept edges (heads, MLPs, residual) with their share of
        their target's sum and the flow they carry: `lmpeek.flow(model, text, token, threshold,
        contrastive=B).to_json()` on the trace's tokens."""
        # on a server thread, as the other slices: a cached answer comes back at once, without waiting
        # behind a long job; the forward and the walk run on the model's queue (Session.flow)
        return app.state.holder.session().flow(trace_id, token, threshold, contrast).to_json()
