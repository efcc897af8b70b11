"""GET /api/traces/{id}/metric: any value the Explore view colours tokens by, with its colour scale.

`Session.metric` computes the values and their scale (analysis.metrics, analysis.scales: the one
implementation of colour limits); this route only formats them. The page only draws what it gets.
`with=<another trace>` answers the same metric for a second text and limits shared by both (texts
compared side by side).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query

from lmpeek.analysis.metrics import QUANTITY, metric_json
from lmpeek.server import guard
from lmpeek.server.guard import TraceId
from lmpeek.server.responses import Metric as MetricResponse
from lmpeek.server.responses import typed
from lmpeek.server.routes_analysis import _lost_values_ok

Int = Annotated[int | None, Query(ge=0)]


def add_metric_routes(app: FastAPI, holder) -> None:
    @app.get("/api/traces/{trace_id}/metric", **typed(MetricResponse))
    @_lost_values_ok
    def metric(
        trace_id: TraceId,
        # the enum is for the schema (clients, the fuzzer); the route answers an unknown name itself
        name: Annotated[
            str, Query(description="the metric", max_length=40, json_schema_extra={"enum": list(QUANTITY)})
        ],
        hook: Annotated[str | None, Query(pattern=guard.HOOK_PATTERN, description="hook point")] = None,
        head: Int = None,
        dim: Int = None,
        layer: Int = None,
        neuron: Int = None,
        token: Annotated[int | None, Query(ge=0, description="the selected token")] = None,
        rope: Literal["full", "applied", "not_applied"] = "full",
        mode: Annotated[Literal["raw", "minmax", "outliers"], Query(description="how limits are found")] = (
            "raw"
        ),
        skip_first: Annotated[bool, Query(description="leave the first token out of the limits")] = False,
        with_: Annotated[
            str | None,
            Query(alias="with", pattern=guard.TRACE_ID_PATTERN, description="a second trace: joint limits"),
        ] = None,
    ) -> dict[str, Any]:
        """Per token values of one Explore metric and its colour scale (analysis.scales): `kind`
        sequential (one-signed: from 0) or diverging (signed: around 0), `min`, `divider`, `max`, the
        `mode`, the tokens `left_out` of the limits and those `clipped` (outside them). With `with`,
        also `values_with` and `scale_with` for the second trace (same limits, its own indices); the
        selected token there is `token` clamped to its length."""
        m = holder.session().metric(
            trace_id, name, hook=hook, head=head, dim=dim, layer=layer, neuron=neuron, token=token, rope=rope,
            mode=mode, skip_first=skip_first, with_=with_,
        )  # fmt: skip
        return metric_json(m)
