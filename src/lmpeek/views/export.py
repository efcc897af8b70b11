"""Self-contained HTML: the app's bundle and a trace's recorded responses in one file that opens from
disk with no network and no server.

The exporter asks the app's own routes (in-process, views.asgi) the questions the page will ask and
records the answers: the trace envelope, the model's description, the colour metrics, and whatever
`include` names (attention heads, the logit lens). The page reads them through the same HTTP client it
always uses (web/src/lib/transport.ts: staticFetcher), so an export shows the numbers the app shows;
a question the export did not record is answered with a message naming the `include` that adds it.

File layout: two `<script type="application/octet-stream">` blocks, gzip then base64 (the page inflates
them with the browser's DecompressionStream): the bundle (made a module through a Blob URL on load,
since an inline module cannot hand its exports to another script) and the data. Nothing is spliced
into JavaScript source, and base64 cannot end a <script> block early.

Data block ("pack"): b"LMPX", uint32 little-endian header length, the JSON header, then the bodies.
Header: {"format": "lmpeek.export", "version": "1.0", "trace_id", "hint", "responses": {"GET
/path?sorted-query": {"status", "headers", "offset", "length"}}, "attention": {"layer,head": {"T",
"offset"}}}. An attention head is stored as its causal triangle (row q holds keys 0..q) in float16:
T(T+1) bytes, half of the full [T, T].
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np

from lmpeek.errors import InvalidInput

FORMAT = "lmpeek.export"
VERSION = "1.0"
MAGIC = b"LMPX"
ENVELOPE = "application/vnd.lmpeek.trace"
HINT = (
    "Export again with e.g. `lmpeek export TEXT -o FILE --include attention=0:1,lens`, "
    "or open the text in lmpeek serve"
)
_HEADERS_KEPT = ("content-type", "x-shape", "x-nonfinite", "retry-after")


def request_key(method: str, path: str, params: dict[str, Any] | None = None) -> str:
    """The key a response is recorded under (web/src/lib/transport.ts requestKey): method, path and
    the query sorted by name; None values left out, as the page's query() does."""
    items = sorted((k, str(v)) for k, v in (params or {}).items() if v is not None)
    return f"{method.upper()} {path}{'?' + urlencode(items) if items else ''}"


@dataclass
class Include:
    """What an export holds beyond the trace and the colour metrics."""

    attention: list[tuple[int, int]] = field(default_factory=list)  # (layer, head)
    lens: bool = False

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None) -> Include:
        """'attention=0:1,attention=3:2,lens' (or a list of such items)."""
        inc = cls()
        items: Iterable[str] = spec.split(",") if isinstance(spec, str) else (spec or [])
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            m = re.fullmatch(r"attention=(\d+):(\d+)", item)
            if m:
                inc.attention.append((int(m.group(1)), int(m.group(2))))
            elif item == "lens":
                inc.lens = True
            else:
                raise InvalidInput(f"unknown --include item '{item}': use attention=LAYER:HEAD or lens")
        return inc


class _Recorder:
    def __init__(self, app: Any):
        self.app = app
        self.responses: dict[str, dict[str, Any]] = {}
        self.bodies: list[bytes] = []
        self.size = 0

    def add_body(self, body: bytes) -> int:
        offset = self.size
        self.bodies.append(body)
        self.size += len(body)
        pad = (-self.size) % 8  # typed-array views need aligned offsets
        if pad:
            self.bodies.append(b"\0" * pad)
            self.size += pad
        return offset

    def record(self, path: str, params: dict[str, Any] | None = None, accept: str | None = None) -> int:
        from lmpeek.views.asgi import fetch_sync

        key = request_key("GET", path, params)
        if key in self.responses:
            return self.responses[key]["status"]
        url = key.split(" ", 1)[1]
        head, body = fetch_sync(self.app, "GET", url, {"accept": accept} if accept else None)
        headers = {k: v for k, v in head.headers.items() if k.lower() in _HEADERS_KEPT}
        self.put(key, head.status, headers, body)
        return head.status

    def put(self, key: str, status: int, headers: dict[str, str], body: bytes) -> None:
        self.responses[key] = {"status": status, "headers": headers, "offset": self.add_body(body),
                               "length": len(body)}  # fmt: skip

    def put_json(self, path: str, data: Any, params: dict[str, Any] | None = None) -> None:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
        self.put(request_key("GET", path, params), 200, {"content-type": "application/json"}, body)


def record_pack(session: Any, trace_id: str, include: Include | None = None, app: Any = None) -> bytes:
    """Ask the app the page's questions about one stored trace and pack the answers (see module doc)."""
    from lmpeek.views.widget import app_for

    include = include or Include()
    app = app if app is not None else app_for(session)  # the server passes itself
    rec = _Recorder(app)
    trace = session.get(trace_id)
    T = len(trace)
    health = {"status": "ready", "message": f"{session.model.name} (exported)", "model": session.model.info(),
              "queue": {"pending": 0, "limit": 0}}  # fmt: skip
    rec.put_json("/api/health", health)
    rec.record("/api/components")
    rec.record(f"/api/traces/{trace_id}", accept=ENVELOPE)
    rec.put_json("/api/samples", [])
    for params in default_requests(session, trace_id):
        rec.record(params.pop("__path__"), params)
    attention: dict[str, dict[str, Any]] = {}
    for layer, head in include.attention:
        full = session.attention(trace_id, layer, head)  # [T, T] float16
        tri = np.ascontiguousarray(full[np.tril_indices(T)], dtype="<f2")
        attention[f"{layer},{head}"] = {"T": T, "offset": rec.add_body(tri.tobytes()),
                                        "scales": _attention_scales(rec, trace_id, layer, head)}  # fmt: skip
    if include.lens:
        for params in lens_requests(session, trace_id):
            rec.record(params.pop("__path__"), params)
    header = {"format": FORMAT, "version": VERSION, "trace_id": trace_id, "hint": HINT,
              "responses": rec.responses, "attention": attention}  # fmt: skip
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    head += b" " * ((-(8 + len(head))) % 8)  # bodies start 8-aligned
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(rec.bodies)


def _attention_scales(rec: _Recorder, trace_id: str, layer: int, head: int) -> dict[str, Any]:
    """The colour scale of attention from / to a token, as the metric route computes it, in the raw
    mode: attention's natural range 0..1, the same for every token, so one answer serves them all
    (the page's values come from the embedded pattern; other modes are not in an export)."""
    from lmpeek.views.asgi import fetch_sync

    out = {}
    for name in ("attn-from", "attn-to"):
        for skip in ("true", "false"):
            params = {"name": name, "layer": layer, "head": head, "token": 0, "rope": "full", "mode": "raw",
                      "skip_first": skip}  # fmt: skip
            url = request_key("GET", f"/api/traces/{trace_id}/metric", params).split(" ", 1)[1]
            head_, body = fetch_sync(rec.app, "GET", url)
            if head_.status != 200:
                raise RuntimeError(
                    f"the metric route refused {name} of layer {layer} head {head}: {body[:300]!r}"
                )
            out[f"{name},{skip}"] = json.loads(body)["scale"]
    return out


def default_requests(session: Any, trace_id: str) -> list[dict[str, Any]]:
    """The questions the Explore view asks of its per-token metrics that a trace alone answers (loss,
    entropy, probability), in every scale mode, with and without the first token in the limits."""
    from lmpeek.analysis.scales import MODES

    path = f"/api/traces/{trace_id}/metric"
    names, skips = ("loss", "entropy", "prob"), ("true", "false")
    return [
        {"__path__": path, "name": n, "mode": m, "skip_first": s} for n in names for m in MODES for s in skips
    ]


def lens_requests(session: Any, trace_id: str) -> list[dict[str, Any]]:
    """The logit lens of every token as the page asks for it: how the prediction of token t formed,
    read at position t - 1 and following token t's id (web/src/components/LogitLensPanel.svelte)."""
    ids = session.get(trace_id).token_ids
    path = f"/api/traces/{trace_id}/logit_lens"
    return [{"__path__": path, "token": t - 1, "k": 5, "target": int(ids[t])} for t in range(1, len(ids))]


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="lmpeek {version}">
<title>{title}</title>
<style>html, body {{ margin: 0; height: 100%; background: #fff; }} #lmpeek {{ height: 100%; }}</style>
</head>
<body>
<div id="lmpeek"></div>
<script type="application/octet-stream" id="lmpeek-data" data-encoding="gzip+base64">{data}</script>
<script type="application/octet-stream" id="lmpeek-bundle" data-encoding="gzip+base64">{bundle}</script>
<script type="module">
// both blocks are gzip, then base64 (the browser's own DecompressionStream: no library, no network)
const bytes = (id) => {{
  const b64 = document.getElementById(id).textContent.trim();
  const raw = Uint8Array.fromBase64
    ? Uint8Array.fromBase64(b64)
    : Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Response(new Blob([raw]).stream().pipeThrough(new DecompressionStream("gzip")));
}};
const code = await bytes("lmpeek-bundle").blob();
const {{ render }} = await import(URL.createObjectURL(new Blob([code], {{ type: "text/javascript" }})));
const pack = new Uint8Array(await bytes("lmpeek-data").arrayBuffer());
render(document.getElementById("lmpeek"), {{ pack, view: "explore" }});
</script>
</body>
</html>
"""


def _gzip_base64(data: bytes) -> str:
    """gzip (level 9, no timestamp: the same input gives the same file) then base64: the only characters
    in a data block are A-Z a-z 0-9 + / =, which cannot end a <script> block early. gzip roughly halves
    the envelope (float32 norms and probabilities) and takes the bundle from ~280 kB to ~85 kB."""
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")


def export_html(
    session: Any,
    trace_id: str,
    include: Include | str | None = None,
    title: str | None = None,
    app: Any = None,
) -> str:
    """The whole HTML file for one stored trace of `session` (`app`: the server asking for it, whose
    routes answer; default: an app over the Session, as the notebook widget has)."""
    inc = include if isinstance(include, Include) else Include.parse(include)
    trace = session.get(trace_id)
    return page_html(
        record_pack(session, trace_id, inc, app),
        title or f"lmpeek · {session.model.name} · {trace.text[:60]}",
    )


def trace_html(trace: Any, model: Any = None, include: Include | str | None = None) -> str:
    """A Trace as an HTML file: with `model` (a LoadedModel or Session) it is run again so that
    `include` (attention heads, the lens) can be recomputed; without, what the Trace holds."""
    if model is None:
        if include:
            raise InvalidInput("include= needs model=…: a Trace alone holds no attention patterns or lens")
        name = trace.model.get("name", "a model") if isinstance(trace.model, dict) else "a model"
        return page_html(static_pack(trace), f"lmpeek · {name} · {trace.text[:60]}")
    from lmpeek.views.widget import session_for

    session = session_for(model)
    return export_html(session, session.trace(trace.token_ids).id, include)


def page_html(pack: bytes, title: str) -> str:
    from lmpeek import __version__
    from lmpeek.views.bundle import bundle_js

    return _PAGE.format(
        version=__version__,
        title=html.escape(title),
        data=_gzip_base64(pack),
        bundle=_gzip_base64(bundle_js().encode("utf-8")),
    )


def iframe_html(page: str, height: int = 640) -> str:
    """The page inline in a notebook output (`_repr_html_`): an iframe whose srcdoc is the page, never a
    link to a local file, so VS Code, Colab and nbconvert's HTML show it without a kernel extension."""
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width: 100%; height: {int(height)}px; '
            'border: 1px solid #e3e5e8; border-radius: 4px" sandbox="allow-scripts"></iframe>')  # fmt: skip


def static_pack(trace: Any) -> bytes:
    """A pack of what a Trace alone can answer (no model: no slices, no lens): its envelope and the
    model's description. The notebook widget shows a Trace this way when given no model."""
    trace_id = "local"
    rec = _Recorder(app=None)
    info = dict(trace.model) if isinstance(trace.model, dict) else {}
    health = {"status": "ready", "message": f"{info.get('name', 'a model')} (a Trace, no model loaded)",
              "model": info, "queue": {"pending": 0, "limit": 0}}  # fmt: skip
    rec.put_json("/api/health", health)
    rec.put_json("/api/components", [])
    rec.put_json("/api/samples", [])
    from lmpeek.analysis.scales import MODES
    from lmpeek.schema import encode_trace
    from lmpeek.server.routes_metric import summary_metric_body

    envelope = encode_trace(trace, precision="compact", trace_id=trace_id)
    rec.put(request_key("GET", f"/api/traces/{trace_id}"), 200, {"content-type": ENVELOPE}, envelope)
    for name in ("loss", "entropy", "prob"):  # the same answers the route gives (no model needed)
        for mode in MODES:
            for skip in (True, False):
                params = {"name": name, "mode": mode, "skip_first": "true" if skip else "false"}
                answer = summary_metric_body(trace, name, mode, skip)
                rec.put_json(f"/api/traces/{trace_id}/metric", answer, params)
    header = {"format": FORMAT, "version": VERSION, "trace_id": trace_id, "hint": HINT.replace(
        "Export again", "Show it with a model (lmpeek.show(trace, model=…))"), "responses": rec.responses,
        "attention": {}}  # fmt: skip
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    head += b" " * ((-(8 + len(head))) % 8)
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(rec.bodies)
