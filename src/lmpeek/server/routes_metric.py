"""GET /api/traces/{id}/metric: any value the Explore view colours tokens by, with its colour scale.

The values come from the computations the other routes use (the trace summary, routes_analysis'
activation/similarity/neuron functions, app.py's attention slice); the scale from analysis.scales, the
one implementation of colour limits. The page only draws what it gets. `with=<another trace>` answers
the same metric for a second text and limits shared by both (texts compared side by side).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query

from lmpeek.analysis.scales import colour_scales
from lmpeek.server import guard
from lmpeek.server.finite import floats
from lmpeek.server.guard import TraceId
from lmpeek.server.routes_analysis import _lost_values_ok, activation_values, neuron_values, similarity_values

# metric -> what kind of number it is (analysis.scales: decides the colour map and natural range)
QUANTITY: dict[str, str] = {
    "loss": "magnitude",
    "entropy": "magnitude",
    "prob": "probability",
    "norm": "magnitude",
    "act-norm": "magnitude",
    "act-abssum": "magnitude",
    "act-value": "signed",
    "cos-tokens": "cosine",
    "cos-previous": "cosine",
    "cos-residual": "cosine",
    "neuron": "signed",
    "attn-from": "probability",
    "attn-to": "probability",
}
_SUMMARY = {"loss": "loss", "entropy": "entropy", "prob": "true_prob"}
_ACTIVATION = {"act-norm": "norm", "act-abssum": "abs_sum", "act-value": "value"}
_SIMILARITY = {"cos-tokens": "tokens", "cos-previous": "previous", "cos-residual": "residual"}
_NORM_IN_SUMMARY = re.compile(r"blocks\.\d+\.hook_(resid_pre|attn_out|resid_mid|mlp_out|resid_post)")


def _summary_metric(trace, name: str) -> np.ndarray:
    """loss / entropy / prob per token, read from the trace's summary arrays (one place to change the
    per-token convention: which prediction position t shows).

    Each token shows the prediction that produced it (as in Generate): token t gets the values of the
    prediction made at position t-1 (the summary arrays are indexed by the position that predicts);
    the first token has none (NaN)."""
    by_position = np.asarray(getattr(trace, _SUMMARY[name]), dtype=np.float64)
    out = np.full(by_position.shape, np.nan)
    out[1:] = by_position[:-1]
    return out


def metric_body(
    name: str, arrays: list[np.ndarray], leaves: list[list[int]], mode: str, skip_first: bool
) -> dict[str, Any]:
    """What GET .../metric answers: the values of one trace (and of a second, `with`) and their colour
    scales from analysis.scales (joint limits). Also what an export of a Trace alone records."""
    scales = colour_scales(arrays, QUANTITY[name], mode, skip_first=skip_first, leave_out=leaves)
    out: dict[str, Any] = {"name": name, "values": floats(arrays[0]), "scale": scales[0].to_json()}
    if len(arrays) > 1:
        out["values_with"] = floats(arrays[1])
        out["scale_with"] = scales[1].to_json()
    return out


def summary_metric_body(trace, name: str, mode: str, skip_first: bool) -> dict[str, Any]:
    """metric_body for loss / entropy / prob, which the trace alone answers (no model needed)."""
    return metric_body(name, [_summary_metric(trace, name)], [[]], mode, skip_first)


def _need(name: str, **given: Any) -> None:
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise HTTPException(422, detail=f"metric '{name}' needs {' and '.join(missing)}")


Int = Annotated[int | None, Query(ge=0)]


def add_metric_routes(
    app: FastAPI,
    holder,
    traces,
    component: Callable[[str, str, int | None], np.ndarray],
    get_trace: Callable[[str], Any],
    attention_slice: Callable[..., np.ndarray],
) -> None:
    def vectors(trace_id: str, hook: str, head: int | None) -> np.ndarray:
        x = component(trace_id, hook, head)
        return x.reshape(x.shape[0], -1)  # [T, D]

    def values_of(trace_id: str, name: str, p: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
        """The metric's values [T] for one trace, and tokens its limits leave out by definition."""
        if name in _SUMMARY:
            return _summary_metric(get_trace(trace_id), name), []
        if name in ("attn-from", "attn-to"):
            _need(name, layer=p["layer"], head=p["head"], token=p["token"])
            t = p["token"]
            if name == "attn-from":
                row = attention_slice(trace_id, p["layer"], p["head"], t, None, p["rope"])[0]
                out = row.astype(np.float64)
                out[t + 1 :] = np.nan  # keys after the query: not attended (causal)
            else:
                col = attention_slice(trace_id, p["layer"], p["head"], None, t, p["rope"])[0]
                out = col.astype(np.float64)
                out[:t] = np.nan  # queries before the key cannot see it
            return out, []
        if name == "neuron":
            _need(name, layer=p["layer"], neuron=p["neuron"])
            x = component(trace_id, f"blocks.{p['layer']}.mlp.hook_post", None)
            return neuron_values(x, p["neuron"]), []
        _need(name, hook=p["hook"])
        hook, head = p["hook"], p["head"]
        if name == "norm" and head is None and _NORM_IN_SUMMARY.fullmatch(hook):
            norms = get_trace(trace_id).norms
            if hook in norms:  # computed in the forward pass: no recomputation
                return np.asarray(norms[hook], dtype=np.float64), []
        if name in ("norm", *_ACTIVATION):
            stat = _ACTIVATION.get(name, "norm")
            return activation_values(vectors(trace_id, hook, head), stat, p["dim"]), []
        kind = _SIMILARITY[name]
        if kind == "tokens":
            _need(name, token=p["token"])
        token = p["token"] or 0
        model = holder.ready()
        cos = similarity_values(model, lambda h, hd: vectors(trace_id, h, hd), hook, head, token, kind)
        return cos, [token] if kind == "tokens" else []  # a token's cosine with itself is 1 by definition

    @app.get("/api/traces/{trace_id}/metric")
    @_lost_values_ok
    def metric(
        trace_id: TraceId,
        name: Annotated[str, Query(description=f"one of {', '.join(QUANTITY)}", max_length=40)],
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
        if name not in QUANTITY:
            raise HTTPException(422, detail=f"unknown metric '{name}': use one of {', '.join(QUANTITY)}")
        p = {"hook": hook, "head": head, "dim": dim, "layer": layer, "neuron": neuron, "token": token,
             "rope": rope}  # fmt: skip
        values, leave = values_of(trace_id, name, p)
        arrays, leaves = [values], [leave]
        if with_ is not None:
            other = get_trace(with_)  # 404, or 409 for a trace of another model
            q = dict(p, token=None if token is None else min(token, max(len(other) - 1, 0)))
            more, leave_b = values_of(with_, name, q)
            arrays.append(more)
            leaves.append(leave_b)
        return metric_body(name, arrays, leaves, mode, skip_first)
