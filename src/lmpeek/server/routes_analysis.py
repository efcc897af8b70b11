"""Explore-view analyses of a stored trace: activations, similarities, histograms, scatter, logit lens,
neurons, comparisons. Each computation is a function in lmpeek.analysis; these routes only fetch the
arrays (recomputed from the stored residual stream) and pass them in. Every number goes out through
server.finite: NaN and ±inf (a model that produced them) become null, never invalid JSON or HTTP 500."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query

from lmpeek.analysis import activations as act
from lmpeek.analysis.lens import logit_lens
from lmpeek.analysis.neurons import neuron_over_text, top_neurons
from lmpeek.analysis.scales import colour_scale
from lmpeek.server import guard
from lmpeek.server.components import parse
from lmpeek.server.finite import floats as _floats
from lmpeek.server.finite import number
from lmpeek.server.guard import TraceId

Component = Callable[[str, str, int | None], np.ndarray]

# what each residual component was added to (DeepPeek's "previous residual")
_ADDED_TO = {
    "hook_attn_out": "hook_resid_pre",
    "attn.hook_result": "hook_resid_pre",
    "hook_mlp_out": "hook_resid_mid",
}


def _lost_values_ok(fn: Callable) -> Callable:
    """Run a route with numpy quiet about inf/NaN: they come from a model that produced them (the trace's
    `nonfinite` says where) and go out as null; numpy's RuntimeWarnings would only fill the log."""

    @functools.wraps(fn)  # FastAPI reads the parameters through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return run


def activation_values(x: np.ndarray, stat: str, dim: int | None) -> np.ndarray:
    """x [T, D] -> [T]: each token's L2 norm ("norm"), Σ|x| ("abs_sum") or one dimension ("value")."""
    if stat == "value":
        if dim is None or dim >= x.shape[1]:
            raise HTTPException(422, detail=f"stat=value needs dim in 0..{x.shape[1] - 1}")
        return act.values(x, dim)
    return np.linalg.norm(x, axis=1) if stat == "norm" else act.abs_sum(x)


def check_token(x: np.ndarray, token: int) -> None:
    if token >= x.shape[0]:
        raise HTTPException(422, detail=f"token must be < {x.shape[0]}")


def similarity_values(
    model, vectors: Callable[[str, int | None], np.ndarray], hook: str, head: int | None, token: int,
    kind: str,
) -> np.ndarray:  # fmt: skip
    """Cosines [T] for one trace: `vectors(hook, head)` gives that trace's [T, D] at a hook point."""
    x = vectors(hook, head)
    check_token(x, token)
    if kind == "tokens":
        return act.cosine_to_tokens(x, token)
    layer, point = parse(model, hook)
    if kind == "previous":
        if layer is None or layer == 0:
            raise HTTPException(422, detail="'previous' needs a block hook at layer >= 1")
        return act.cosine_rows(x, vectors(f"blocks.{layer - 1}.{point}", head))
    if point not in _ADDED_TO:
        raise HTTPException(422, detail=f"'residual' applies to {', '.join(_ADDED_TO)}")
    return act.cosine_rows(x, vectors(f"blocks.{layer}.{_ADDED_TO[point]}", None))


def neuron_values(x: np.ndarray, index: int) -> np.ndarray:
    """One MLP neuron over the text: x is mlp.hook_post [T, d_mlp]."""
    if index >= x.shape[1]:
        raise HTTPException(422, detail=f"index must be < {x.shape[1]}")
    return neuron_over_text(x, index)


# module level: FastAPI resolves these annotations by name (this module uses postponed annotations)
Hook = Annotated[
    str, Query(description="hook name, e.g. blocks.3.hook_resid_post", pattern=guard.HOOK_PATTERN)
]
TraceIdQuery = Annotated[str, Query(pattern=guard.TRACE_ID_PATTERN, description="a trace id")]
Head = Annotated[int | None, Query(ge=0, description="head, for per-head hook points")]
Token = Annotated[int, Query(ge=0)]


def add_analysis_routes(app: FastAPI, holder, traces, component: Component, get_trace) -> None:
    def vectors(trace_id: str, hook: str, head: int | None) -> np.ndarray:
        x = component(trace_id, hook, head)
        return x.reshape(x.shape[0], -1)  # [T, D]

    @app.get("/api/traces/{trace_id}/activations")
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
        values = activation_values(vectors(trace_id, hook, head), stat, dim)
        quantity = "signed" if stat == "value" else "magnitude"
        return {"values": _floats(values),
                "scale": colour_scale(values, quantity, scale, skip_first=skip_first).to_json()}  # fmt: skip

    @app.get("/api/traces/{trace_id}/similarity")
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
        model = holder.ready()
        return {"values": _floats(similarity_values(model, lambda h, hd: vectors(trace_id, h, hd), hook, head,
                                                    token, kind))}  # fmt: skip

    @app.get("/api/traces/{trace_id}/histogram")
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
        x = vectors(trace_id, hook, head)
        check_token(x, token)
        h = act.histogram(x, token, bins=bins)
        out = act.iqr_outliers(x[token])
        return {
            "nonfinite": int(x[token].size - np.isfinite(x[token]).sum()),  # dimensions left out (inf/NaN)
            "edges": _floats(h.edges),
            "token": [int(v) for v in h.token],
            "median": _floats(h.median),
            "outliers": {
                "low": number(out.low),
                "high": number(out.high),
                "dims": [int(d) for d in out.dims],
                "values": _floats(x[token][np.asarray(out.dims, dtype=int)]),
            },
        }

    @app.get("/api/traces/{trace_id}/scatter")
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
        v = vectors(trace_id, hook, head)
        if x is not None and y is not None:
            if max(x, y) >= v.shape[1]:
                raise HTTPException(422, detail=f"dimensions must be < {v.shape[1]}")
            return {"x": _floats(act.values(v, x)), "y": _floats(act.values(v, y))}
        if a is not None and b is not None:
            check_token(v, max(a, b))
            return {"x": _floats(v[a]), "y": _floats(v[b])}
        raise HTTPException(422, detail="give x and y (dimensions) or a and b (tokens)")

    @app.get("/api/traces/{trace_id}/logit_lens")
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
        import torch

        model = holder.ready()
        t = get_trace(trace_id)
        if token >= len(t):
            raise HTTPException(422, detail=f"token must be < {len(t)}")
        if not traces.has_resid(trace_id):
            raise HTTPException(409, detail="this trace has no stored residual stream; run the text again")
        resid = np.stack([traces.resid(trace_id, layer + 1)[token] for layer in range(model.n_layers)])
        b = model.bound
        norm = b.module(b.adapter.final_norm)
        unembed = b.module(b.adapter.unembed)
        if target is not None and target >= unembed.weight.shape[0]:
            raise HTTPException(422, detail=f"target: must be a token id < {unembed.weight.shape[0]}")

        def final_norm(v: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return norm(torch.as_tensor(v, dtype=torch.float32)).numpy()

        bias = getattr(unembed, "bias", None)
        result = holder.call(
            lambda: logit_lens(
                resid,
                final_norm,
                unembed.weight.detach().float().numpy(),
                None if bias is None else bias.detach().float().numpy(),
                k=k,
                target=target,
            ),
            "lens",
        )
        from lmpeek.capture.trace import decode_topk

        out: dict[str, Any] = {
            "ids": result.ids.tolist(),
            "probs": [_floats(row) for row in result.probs],
            "tokens": decode_topk(model.tokenizer, result.ids),  # byte pieces as <0xC3>, as everywhere
        }
        if target is not None:
            out["target"] = {
                "id": target,
                "token": decode_topk(model.tokenizer, np.array([[target]]))[0][0],
                "ranks": result.target_rank.tolist(),
                "probs": _floats(result.target_prob),
            }
        return out

    @app.get("/api/traces/{trace_id}/neurons")
    @_lost_values_ok
    def neurons(
        trace_id: TraceId,
        layer: Annotated[int, Query(ge=0)],
        token: Token,
        k: Annotated[int, Query(ge=1, le=200)] = 10,
    ) -> dict[str, Any]:
        """The MLP neurons (mlp.hook_post) most active (by |value|) at one token."""
        x = component(trace_id, f"blocks.{layer}.mlp.hook_post", None)
        check_token(x, token)
        idx, vals = top_neurons(x, token, k=k)
        return {"indices": [int(i) for i in idx], "values": _floats(vals)}

    @app.get("/api/traces/{trace_id}/neuron")
    @_lost_values_ok
    def neuron(
        trace_id: TraceId, layer: Annotated[int, Query(ge=0)], index: Annotated[int, Query(ge=0)]
    ) -> dict[str, Any]:
        """One MLP neuron's activation over the whole text."""
        x = component(trace_id, f"blocks.{layer}.mlp.hook_post", None)
        return {"values": _floats(neuron_values(x, index))}

    @app.get("/api/compare")
    @_lost_values_ok
    def compare(
        a: TraceIdQuery,
        b: TraceIdQuery,
        which: Annotated[
            Literal["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"], Query(alias="component")
        ] = "resid_post",
    ) -> dict[str, Any]:
        """Per layer: the mean norm of one component over each text's tokens, and their difference."""
        ta, tb = get_trace(a), get_trace(b)
        ma, mb = ta.norm_matrix(which).mean(1), tb.norm_matrix(which).mean(1)
        return {
            "layers": len(ma),
            "mean_norm_a": _floats(ma),
            "mean_norm_b": _floats(mb),
            "diff": _floats(ma - mb),
        }
