"""A trace's summaries as an HTTP body: JSON by default, the binary envelope when asked for.

`Accept: application/vnd.lmpeek.trace` gets the envelope (lmpeek.schema, "compact" precision), gzipped
when the client accepts gzip: at 4,096 tokens of the default model the envelope is 4.9 MB and 3.9 MB
gzipped, against 33 MB of JSON (benchmarks/envelope_size.py). Browsers undo the gzip in their network
stack, off the page's main thread. Both bodies are built by the caller on a worker thread, never on
the event loop.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

from fastapi.responses import Response

from lmpeek.schema import MEDIA_TYPE, encode_trace

GZIP_LEVEL = 6  # 190 ms for the 4,096-token envelope here; level 1 saves 75 ms but stays 60 kB larger


def _accepted(header: str) -> dict[str, float]:
    """media type (or coding) -> q, from an Accept or Accept-Encoding header."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        if not name:
            continue
        q = 1.0
        for p in params:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        out[name.lower()] = max(q, out.get(name.lower(), 0.0))
    return out


def wants_envelope(accept: str | None) -> bool:
    """True when the client lists the envelope's media type at least as high as JSON (or */*)."""
    types = _accepted(accept or "")
    q = types.get(MEDIA_TYPE, 0.0)
    return q > 0 and q >= max(types.get(t, 0.0) for t in ("application/json", "application/*", "*/*"))


def trace_body(
    trace_id: str, trace: Any, accept: str | None, accept_encoding: str | None, json_body: Callable[[], bytes]
) -> Response:
    """The response for one trace: the envelope (maybe gzipped) or `json_body()`. Call it off the loop."""
    vary = {"Vary": "Accept, Accept-Encoding"}
    if not wants_envelope(accept):
        return Response(json_body(), media_type="application/json", headers=vary)
    body = encode_trace(trace, precision="compact", trace_id=trace_id)
    if _accepted(accept_encoding or "").get("gzip", 0.0) > 0:
        return Response(
            gzip.compress(body, GZIP_LEVEL, mtime=0),
            media_type=MEDIA_TYPE,
            headers={**vary, "Content-Encoding": "gzip"},
        )
    return Response(body, media_type=MEDIA_TYPE, headers=vary)
