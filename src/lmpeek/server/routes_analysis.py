"""Explore-view analyses of a stored trace: activations, similarities, histograms, scatter, logit lens,
neurons, comparisons. The Session computes each (lmpeek.session, over lmpeek.analysis); these routes
only format its answers. Every number goes out through server.finite: NaN and ±inf (a model that
produced them) become null, never invalid JSON or HTTP 500."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Query

from lmpeek.server import guard
from lmpeek.server.finite import floats as _floats
from lmpeek.server.finite import number
from lmpeek.server.guard import TraceId
from lmpeek.server.responses import Comparison, Histogram, Lens, Neurons, ScaledValues, Scatter, Values, typed


def _lost_values_ok(fn: Callable) -> Callable:
    """Run a route with numpy quiet about inf/NaN: they come from a model that produced them (the trace's
    `nonfinite` says where) and go out as null; numpy's RuntimeWarnings would only fill the log."""

    @functools.wraps(fn)  # FastAPI reads the parameters through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return run


# module level: FastAPI resolves these annotations by name (this module uses postponed annotations)
Hook = Annotated[
    str, Query(description="hook name, e.g. blocks.3.hook_resid_post", pattern=guard.HOOK_PATTERN)
]
TraceIdQuery = Annotated[str, Query(pattern=guard.TRACE_ID_PATTERN, description="a trace id")]
Head = Annotated[int | None, Query(ge=0, description="head, for per-head hook points")]
Token = Annotated[int, Query(ge=0)]

_METRIC_OF_STAT = {"norm": "act-norm", "abs_sum": "act-abssum", "value": "act-value"}


def add_analysis_routes(app: FastAPI, holder) -> None:
    @app.get("/api/traces/{trace_id}/activations", **typed(ScaledValues))
    @_lost_values_ok
    def activations(
        trace_id: TraceId,
        hook: Hook,
        head: Head = None,
        stat: Literal["norm", "abs_sum", "value"] = "norm",
        dim: Annotated[int | None, Query(ge=0)] = None,
        scale: Literal["raw", "minmax", "outliers"] = "raw",
        skip_first: bool = False,
    ) -> dict[str, Any]:
        """Per token: the vector's L2 norm, sum of |values|, or one dimension's value (signed), with its
        colour scale (analysis.scales; /metric serves every Explore metric this way)."""
        m = holder.session().metric(
            trace_id, _METRIC_OF_STAT[stat], hook=hook, head=head, dim=dim, mode=scale, skip_first=skip_first
        )
        return {"values": _floats(m.values[0]), "scale": m.scales[0].to_json()}

    @app.get("/api/traces/{trace_id}/similarity", **typed(Values))
    @_lost_values_ok
    def similarity(
        trace_id: TraceId,
        hook: Hook,
        head: Head = None,
        token: Token = 0,
        kind: Literal["tokens", "previous", "residual"] = "tokens",
    ) -> dict[str, Any]:
        """Cosine similarities: the token's vector with every token's; each token's vector with the same
        hook one layer earlier; each token's component with the residual stream it was added to."""
        return {"values": _floats(holder.session().similarity(trace_id, hook, head, token, kind))}

    @app.get("/api/traces/{trace_id}/histogram", **typed(Histogram))
    @_lost_values_ok
    def histogram(
        trace_id: TraceId,
        hook: Hook,
        head: Head = None,
        token: Token = 0,
        bins: Annotated[int, Query(ge=2, le=512)] = 64,
    ) -> dict[str, Any]:
        """The token's histogram over its vector's dimensions, the median histogram of all tokens, and
        the token's outlier dimensions (IQR, factor 3, negatives and positives separately)."""
        h = holder.session().histogram(trace_id, hook, head, token, bins)
        return {
            "nonfinite": h.nonfinite,  # dimensions left out (inf/NaN)
            "edges": _floats(h.edges),
            "token": [int(v) for v in h.token],
            "median": _floats(h.median),
            "outliers": {
                "low": number(h.outliers.low),
                "high": number(h.outliers.high),
                "dims": [int(d) for d in h.outliers.dims],
                "values": _floats(h.outlier_values),
            },
        }

    @app.get("/api/traces/{trace_id}/scatter", **typed(Scatter))
    @_lost_values_ok
    def scatter(
        trace_id: TraceId,
        hook: Hook,
        head: Head = None,
        x: Annotated[int | None, Query(ge=0, description="dimension on the x axis")] = None,
        y: Annotated[int | None, Query(ge=0, description="dimension on the y axis")] = None,
        a: Annotated[int | None, Query(ge=0, description="token on the x axis")] = None,
        b: Annotated[int | None, Query(ge=0, description="token on the y axis")] = None,
    ) -> dict[str, Any]:
        """One dimension against another over tokens (x, y), or two tokens' vectors (a, b)."""
        xs, ys = holder.session().scatter(trace_id, hook, head, x=x, y=y, a=a, b=b)
        return {"x": _floats(xs), "y": _floats(ys)}

    @app.get("/api/traces/{trace_id}/logit_lens", **typed(Lens))
    @_lost_values_ok
    def lens(
        trace_id: TraceId,
        token: Token,
        k: Annotated[int, Query(ge=1, le=50)] = 5,
        target: Annotated[int | None, Query(ge=0, description="a token id to follow")] = None,
    ) -> dict[str, Any]:
        """What each layer's residual stream (resid_post) at position `token` would predict through the
        final norm and the unembedding: top-k tokens and probabilities, a row per layer. With `target`
        (the page sends the token that actually came next, at token + 1): that token's rank and
        probability at every layer, in `target`, also when it is outside the top-k."""
        rows = holder.session().logit_lens(trace_id, token, k, target)
        out: dict[str, Any] = {
            "ids": rows.ids.tolist(),
            "probs": [_floats(row) for row in rows.probs],
            "tokens": rows.tokens,  # byte pieces as <0xC3>, as everywhere
        }
        if rows.target is not None:
            assert rows.target_ranks is not None
            out["target"] = {
                "id": rows.target,
                "token": rows.target_token,
                # a layer whose logits were lost (inf/NaN) ranks nothing: null, as its probability
                "ranks": [
                    int(r) if np.isfinite(p) else None
                    for r, p in zip(rows.target_ranks, rows.target_probs, strict=True)
                ],  # fmt: skip
                "probs": _floats(rows.target_probs),
            }
        return out

    @app.get("/api/traces/{trace_id}/neurons", **typed(Neurons))
    @_lost_values_ok
    def neurons(
        trace_id: TraceId,
        layer: Annotated[int, Query(ge=0)],
        token: Token,
        k: Annotated[int, Query(ge=1, le=200)] = 10,
    ) -> dict[str, Any]:
        """The MLP neurons (mlp.hook_post) most active (by |value|) at one token."""
        idx, vals = holder.session().neurons(trace_id, layer, token, k)
        return {"indices": [int(i) for i in idx], "values": _floats(vals)}

    @app.get("/api/traces/{trace_id}/neuron", **typed(Values))
    @_lost_values_ok
    def neuron(
        trace_id: TraceId, layer: Annotated[int, Query(ge=0)], index: Annotated[int, Query(ge=0)]
    ) -> dict[str, Any]:
        """One MLP neuron's activation over the whole text."""
        return {"values": _floats(holder.session().neuron(trace_id, layer, index))}

    @app.get("/api/compare", **typed(Comparison))
    @_lost_values_ok
    def compare(
        a: TraceIdQuery,
        b: TraceIdQuery,
        which: Annotated[
            Literal["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"], Query(alias="component")
        ] = "resid_post",
    ) -> dict[str, Any]:
        """Per layer: the mean norm of one component over each text's tokens, and their difference."""
        c = holder.session().compare(a, b, which)
        return {
            "layers": len(c.mean_norm_a),
            "mean_norm_a": _floats(c.mean_norm_a),
            "mean_norm_b": _floats(c.mean_norm_b),
            "diff": _floats(c.diff),
        }
