"""The attention overview's routes (model view thumbnails, neuron view q·k terms): thin over the Session
(lmpeek.session_attention computes; this module only formats)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Response

from lmpeek.server.guard import TraceId
from lmpeek.server.responses import QkTerms, typed


def _session(app: FastAPI):
    """The app's one Session (the model holder's; 503 while the model loads)."""
    return app.state.holder.session()


def add_attention_routes(app: FastAPI) -> None:
    @app.get(
        "/api/traces/{trace_id}/attention_grid",
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def attention_grid(
        trace_id: TraceId,
        start: Annotated[int, Query(ge=0, description="first token of the window")] = 0,
        end: Annotated[int | None, Query(ge=1, description="one past the last token (default: all)")] = None,
        size: Annotated[int, Query(ge=1, le=128, description="thumbnail cells per side at most")] = 64,
    ) -> Response:
        """Every layer × head's attention over the window start..end-1 (queries and keys): float16
        little-endian bytes [L, H, n, n] (shape in X-Shape). When the window is wider than `size`, each
        cell covers X-Pool × X-Pool tokens: the mean over its queries of their summed weight on its keys
        (lmpeek.analysis.attention_overview.pool_window). Weights on keys before `start` are not shown."""
        from lmpeek.session_attention import attention_grid as grid

        g = grid(_session(app), trace_id, start, end, size)
        headers = {
            "X-Shape": ",".join(map(str, g.patterns.shape)),
            "X-Window": f"{g.start},{g.end}",
            "X-Pool": str(g.factor),
            "Access-Control-Expose-Headers": "X-Shape, X-Window, X-Pool",
        }
        body = g.patterns.astype("<f2").tobytes()
        return Response(body, media_type="application/octet-stream", headers=headers)

    @app.get("/api/traces/{trace_id}/qk", **typed(QkTerms))
    def qk_terms(
        trace_id: TraceId,
        layer: Annotated[int, Query(ge=0)],
        head: Annotated[int, Query(ge=0)],
        query: Annotated[int, Query(ge=0, description="the attending token")],
        key: Annotated[int, Query(ge=0, description="the token attended to (<= query)")],
    ) -> dict[str, Any]:
        """The elementwise products q_i·k_i over the head's dimensions that make up one pre-softmax
        score (sum × scale, softcapped where the model caps), after RoPE ("rotated", what the model
        scores with) and before it ("unrotated"); "plain" for a model without RoPE. Each part has the
        scores of every key the query sees and their softmax; `pattern_row` is the model's pattern row
        (the attention route's), which the rotated/plain softmax reproduces. Masked keys: null."""
        from lmpeek.server.finite import floats, number
        from lmpeek.session_attention import qk

        a = qk(_session(app), trace_id, layer, head, query, key)
        parts = [
            {
                "name": p.name, "q_hook": p.q_hook, "k_hook": p.k_hook, "q": floats(p.q), "k": floats(p.k),
                "products": floats(p.terms.products), "dot": number(p.terms.dot),
                "score": number(p.terms.score),
                "scores": floats(p.terms.scores), "weights": floats(p.terms.weights),
            }
            for p in a.parts
        ]  # fmt: skip
        return {
            "layer": a.layer, "head": a.head, "kv_head": a.kv_head, "query": a.query, "key": a.key,
            "scale": a.scale, "softcap": a.softcap, "window": a.window, "parts": parts,
            "pattern_row": floats(a.pattern_row),
        }  # fmt: skip
