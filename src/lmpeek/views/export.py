"""Self-contained HTML: the app's bundle and a trace's recorded responses in one file that opens from
disk with no network and no server.

The exporter asks the app's own routes (in-process, views.asgi) the questions the page will ask and
records the answers: the trace envelope, the model's description, the colour metrics, and whatever
`include` names (attention heads, the logit lens). The page reads them through the same HTTP client it
always uses (web/src/lib/transport.ts: staticFetcher), so an export shows the numbers the app shows;
a question the export did not record is answered with a message naming the `include` that adds it.

File layout: two `<script type="application/octet-stream">` blocks, gzip then base85 (`_base85`: 5
characters per 4 bytes, not base64's 4 per 3, 6% smaller; the page inflates them with the browser's
DecompressionStream): the bundle (made a module through a Blob URL on load, since an inline module
cannot hand its exports to another script) and the data. Nothing is spliced into JavaScript source,
and the alphabet has no `<`, so a block cannot end early.

Data block ("pack"): b"LMPX", uint32 little-endian header length, the JSON header, then the bodies.
Header: {"format": "lmpeek.export", "version": "2.0", "trace_id", "hint", "responses": {"GET
/path?sorted-query": {"status", "headers", "parts": [[offset, length], …]}}, "attention": {"layer,head":
{"T", "offset", "scales"}}}. A body is its parts joined; a JSON body's long number arrays are parts of
their own, stored once however many answers repeat them (the 18 metric answers share 3 `values`
arrays; the q·k answers of one query share its scores and weights). An attention head is stored as
its causal triangle (row q holds keys 0..q) in float16: T(T+1) bytes, half of the full [T, T].

`include` (Include.parse; `--include` of `lmpeek export`): attention=L:H (a head: the Explore metric
and the Attention tab's head view), lens (the logit lens of every token), grid (the Attention tab's
model view of the window it opens on), grid=START:END (the model view of that window: what the tab
asks while it shows tokens START..END-1), qk=L:H:Q (the neuron view of query Q against every key),
flow=TOKEN (the information-flow graph of the prediction at TOKEN at the slider stops FLOW_THRESHOLDS,
no contrast; `flow` alone: the last token), why or why=METHOD (the Why tab's attribution of the next
token, by METHOD, default integrated_gradients, over words, with its faithfulness: the answer of the
POST /api/why/attribute the page makes, recorded under its body as the features export records its
POSTs, and GET /api/why/methods listing that body as `recorded`, so the page shows it at once;
anything else in the Why tab is "not in this export").
"""

from __future__ import annotations

import gzip
import html
import json
import re
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np

from lmpeek.errors import InvalidInput

FORMAT = "lmpeek.export"
VERSION = "2.0"  # 2: a response body is a list of parts (1: one offset and length)
MAGIC = b"LMPX"
ENVELOPE = "application/vnd.lmpeek.trace"
HINT = (
    "Export again with e.g. `lmpeek export TEXT -o FILE --include attention=0:1,lens`, "
    "or open the text in lmpeek serve"
)
_HEADERS_KEPT = ("content-type", "x-shape", "x-nonfinite", "x-window", "x-pool", "retry-after")


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
    grid: bool = False  # the Attention tab's model view of the window it opens on
    windows: list[tuple[int, int]] = field(default_factory=list)  # more model-view windows (start, end)
    qk: list[tuple[int, int, int]] = field(default_factory=list)  # (layer, head, query): every key <= query
    flow: list[int] = field(default_factory=list)  # tokens whose information flow is recorded (-1: the last)
    why: str | None = None  # the method of the recorded attribution (the Why tab), None: none
    why_options: dict[str, Any] = field(default_factory=dict)  # its other request fields (target, …)
    # an attribution already computed (lmpeek.show(attribution)): (request body, result event), recorded
    # as the answer instead of running one
    why_answer: tuple[dict[str, Any], dict[str, Any]] | None = None

    @classmethod
    def parse(cls, spec: str | Sequence[str] | None) -> Include:
        """'attention=0:1,attention=3:2,lens,grid,grid=64:128,qk=1:2:7,flow=5' (or a list of such items)."""
        inc = cls()
        items: Iterable[str] = spec.split(",") if isinstance(spec, str) else (spec or [])
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            if m := re.fullmatch(r"attention=(\d+):(\d+)", item):
                inc.attention.append((int(m.group(1)), int(m.group(2))))
            elif item == "lens":
                inc.lens = True
            elif item == "grid":
                inc.grid = True
            elif m := re.fullmatch(r"grid=(\d+):(\d+)", item):
                start, end = int(m.group(1)), int(m.group(2))
                if end <= start:
                    raise InvalidInput(f"--include {item}: the window START:END needs END > START")
                inc.windows.append((start, end))
            elif m := re.fullmatch(r"qk=(\d+):(\d+):(\d+)", item):
                inc.qk.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
            elif item == "flow":
                inc.flow.append(-1)
            elif m := re.fullmatch(r"flow=(\d+)", item):
                inc.flow.append(int(m.group(1)))
            elif item == "why":
                inc.why = WHY_METHOD
            elif m := re.fullmatch(r"why=(\w+)", item):
                inc.why = m.group(1)  # checked by the route when recorded (the methods need torch)
            else:
                raise InvalidInput(
                    f"unknown --include item '{item}': use attention=LAYER:HEAD, lens, grid, grid=START:END, "
                    "qk=LAYER:HEAD:QUERY, flow, flow=TOKEN, why or why=METHOD"
                )
        return inc


# The Attention tab's first window (web/src/views/AttentionView.svelte: width 64 around the selected
# token, 0 when a page opens) and its thumbnail size (web/src/lib/attention.ts THUMB_CELLS)
GRID_WIDTH = 64
THUMB_CELLS = 64
# the information-flow slider stops an export records (web/src/lib/flow.ts THRESHOLDS; 0.04 the default),
# written as the page's query writes them (String(0.1) == "0.1" == str(0.1))
FLOW_THRESHOLDS = (0.02, 0.04, 0.06, 0.1)
# the Why tab's recorded attribution: the app's default method, over words (WhyAttribution.svelte's
# default features), with its faithfulness
WHY_METHOD = "integrated_gradients"
WHY_FEATURES = "words"


def window_around(T: int, token: int, width: int) -> tuple[int, int]:
    """web/src/lib/attention.ts windowAround: `width` tokens holding `token`, as centred as T allows."""
    w = max(1, min(width, T))
    t = max(0, min(token, T - 1))
    start = max(0, min(t - w // 2, T - w))
    return start, start + w


def grid_windows(T: int, include: Include) -> list[tuple[int, int]]:
    """The model-view windows an export records: the one the Attention tab opens on (`grid`), then
    each `grid=START:END` clamped to the text."""
    out = [window_around(T, 0, GRID_WIDTH)] if include.grid else []
    for start, end in include.windows:
        if start >= T:
            raise InvalidInput(f"--include grid={start}:{end}: the text has {T} tokens (0..{T - 1})")
        win = (start, min(end, T))
        if win not in out:
            out.append(win)
    return out


# a flat JSON array of numbers (or nulls) long enough to be worth storing once: the metric answers
# repeat their `values` in every scale mode, the q·k answers of one query repeat its scores and weights
_ARRAY = re.compile(rb"\[[-+0-9.eEnul,]{512,}\]")


class _Recorder:
    def __init__(self, app: Any):
        self.app = app
        self.responses: dict[str, dict[str, Any]] = {}
        self.bodies: list[bytes] = []
        self.size = 0
        self.stored: dict[bytes, int] = {}  # bytes -> offset: a repeated part is stored once

    def add_body(self, body: bytes) -> int:
        offset = self.size
        self.bodies.append(body)
        self.size += len(body)
        pad = (-self.size) % 8  # typed-array views need aligned offsets
        if pad:
            self.bodies.append(b"\0" * pad)
            self.size += pad
        return offset

    def add_part(self, part: bytes) -> list[int]:
        """[offset, length] of `part`, stored once however many responses hold it."""
        offset = self.stored.get(part)
        if offset is None:
            offset = self.stored[part] = self.add_body(part)
        return [offset, len(part)]

    def ask(
        self, path: str, params: dict[str, Any] | None = None, accept: str | None = None
    ) -> tuple[Any, bytes]:
        """The app's answer to GET `path`?`params` (head, body), not recorded."""
        from lmpeek.views.asgi import fetch_sync

        url = request_key("GET", path, params).split(" ", 1)[1]
        return fetch_sync(self.app, "GET", url, {"accept": accept} if accept else None)

    def record(self, path: str, params: dict[str, Any] | None = None, accept: str | None = None) -> int:
        key = request_key("GET", path, params)
        if key in self.responses:
            return self.responses[key]["status"]
        head, body = self.ask(path, params, accept)
        headers = {k: v for k, v in head.headers.items() if k.lower() in _HEADERS_KEPT}
        self.put(key, head.status, headers, body)
        return head.status

    def detail(self, path: str, params: dict[str, Any] | None = None) -> str:
        """The error message of a recorded answer (its `detail`, or the body as text)."""
        r = self.responses[request_key("GET", path, params)]
        body = b"".join(self.bodies)
        text = b"".join(body[o : o + n] for o, n in r["parts"]).decode("utf-8", "replace")
        try:
            return str(json.loads(text).get("detail", text))
        except (ValueError, AttributeError):
            return text[:300]

    def put(self, key: str, status: int, headers: dict[str, str], body: bytes) -> None:
        """A response; a JSON body is kept as parts (its long number arrays apart), each part stored
        once; an envelope's buffers are byte-shuffled (see `shuffle_envelope`). The page joins and
        unshuffles them back into the same bytes (transport.ts recordedBody)."""
        kind = headers.get("content-type", "")
        cuts = [0]
        if kind.startswith("application/json"):
            for m in _ARRAY.finditer(body):
                cuts += [m.start(), m.end()]
        cuts.append(len(body))
        regions: list[list[int]] = []
        if kind.startswith(ENVELOPE) and status == 200:
            body, regions = shuffle_envelope(body)
        parts = [self.add_part(body[a:b]) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
        self.responses[key] = {"status": status, "headers": headers, "parts": parts}
        if regions:
            self.responses[key]["shuffled"] = regions

    def put_json(self, path: str, data: Any, params: dict[str, Any] | None = None) -> None:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
        self.put(request_key("GET", path, params), 200, {"content-type": "application/json"}, body)

    def pack(self, **header: Any) -> bytes:
        """The data block (see the module doc): the header (format, version, the responses and what
        `header` adds: trace_id, hint, attention, …), then the bodies."""
        full = {"format": FORMAT, "version": VERSION, **header, "responses": self.responses}
        head = json.dumps(full, ensure_ascii=False, separators=(",", ":")).encode()
        head += b" " * ((-(8 + len(head))) % 8)  # bodies start 8-aligned
        return MAGIC + struct.pack("<I", len(head)) + head + b"".join(self.bodies)


def shuffle(data: bytes, itemsize: int) -> bytes:
    """Byte planes: every value's first byte, then every second byte… (the exponent bytes of floats
    repeat much more than their mantissas, so gzip finds them: about 11% off a 4,096-token envelope)."""
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def shuffle_envelope(body: bytes) -> tuple[bytes, list[list[int]]]:
    """An envelope (lmpeek.schema) with each of its buffers of 2-, 4- or 8-byte items shuffled in
    place, and the [offset, nbytes, itemsize] of each (buffers sharing bytes share one region)."""
    from lmpeek.schema import decode

    out = bytearray(body)
    regions = []
    for spec in {s["offset"]: s for s in decode(body).header["buffers"].values()}.values():
        size = {"float16": 2, "float32": 4, "int32": 4, "float64": 8}.get(spec["dtype"], 1)
        offset, n = int(spec["offset"]), int(spec["nbytes"])
        if size > 1 and n >= 2 * size:
            out[offset : offset + n] = shuffle(body[offset : offset + n], size)
            regions.append([offset, n, size])
    return bytes(out), sorted(regions)


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
    put_envelope(rec, trace, trace_id)
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
    for params in attention_requests(session, trace_id, include):
        path = params.pop("__path__")
        status = rec.record(path, params, accept=params.pop("__accept__", None))
        if status != 200:  # a head or token out of range: say so now, not in the page
            raise InvalidInput(f"--include: {path.rsplit('/', 1)[1]} {params}: {rec.detail(path, params)}")
    if include.why_answer is not None:
        put_why(rec, *include.why_answer)
    elif include.why is not None:
        record_why(rec, {**why_request(trace.text, include.why), **include.why_options})
    return rec.pack(trace_id=trace_id, hint=HINT, attention=attention)


def why_request(text: str, method: str = WHY_METHOD) -> dict[str, Any]:
    """The body of the POST /api/why/attribute an export records (the page posts it back as is)."""
    return {"text": text, "method": method, "features": WHY_FEATURES, "faithfulness": True}


def record_why(rec: _Recorder, body: dict[str, Any]) -> dict[str, Any]:
    """Record the Why tab's attribution for `body`: the stream's `estimate` and `result` events (its
    progress is of no use in a file) under the POST's key, and GET /api/why/methods naming `body` as
    recorded. Returns the result event's JSON; a refused request or an `error` event raises here."""
    from lmpeek.views.asgi import fetch_sync

    path = "/api/why/attribute"
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    head, raw = fetch_sync(rec.app, "POST", path, headers, json.dumps(body).encode())
    text = raw.decode("utf-8", "replace")
    if head.status != 200:
        try:
            detail = json.loads(text).get("detail", text)
        except (ValueError, AttributeError):
            detail = text[:300]
        raise InvalidInput(f"--include why={body['method']}: {detail}")
    events = [(e, d) for e, d in _sse_events(text) if e in ("estimate", "result", "error")]
    if not events or events[-1][0] != "result":
        detail = events[-1][1] if events else text[:300]
        raise InvalidInput(f"--include why={body['method']}: {detail}")
    _put_why_events(rec, body, events)
    return json.loads(events[-1][1])


def put_why(rec: _Recorder, body: dict[str, Any], result: dict[str, Any]) -> None:
    """Record `result` (a WhyResult's JSON) as the answer to the POST of `body`, no forward run."""
    estimate = json.dumps({"forwards": 0, "seconds": 0.0, "cached": True})
    _put_why_events(rec, body, [("estimate", estimate), ("result", json.dumps(result, allow_nan=False))])


def _put_why_events(rec: _Recorder, body: dict[str, Any], events: list[tuple[str, str]]) -> None:
    from lmpeek.views.features_export import post_key

    stream = "".join(f"event: {e}\ndata: {d}\n\n" for e, d in events).encode()
    rec.put(post_key("/api/why/attribute", body), 200, {"content-type": "text/event-stream"}, stream)
    _, methods = rec.ask("/api/why/methods")
    rec.put_json("/api/why/methods", {**json.loads(methods), "recorded": [body]})


def _sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) of a server-sent-events body (one data line per event, as server/sse.py sends)."""
    out, event = [], "message"
    for line in text.splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, line[6:]))
    return out


def put_envelope(rec: _Recorder, trace: Any, trace_id: str) -> None:
    """The trace's envelope as the page gets it from GET /api/traces/{id}, less what no view of a page
    reads from it (schema.OMITTABLE: the per-layer norms and the attention entropy, three quarters of
    a 4,096-token envelope; the panels that show them ask routes, recorded or "not in this export")."""
    from lmpeek.schema import OMITTABLE, encode_trace

    envelope = encode_trace(trace, precision="compact", trace_id=trace_id, omit=OMITTABLE)
    rec.put(request_key("GET", f"/api/traces/{trace_id}"), 200, {"content-type": ENVELOPE}, envelope)


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


def attention_requests(session: Any, trace_id: str, include: Include) -> list[dict[str, Any]]:
    """The Attention tab's questions an `include` answers, as web/src/lib/api.ts asks them: the model
    view of each window (attentionGrid: start, end, size), the neuron view of query Q against every
    key it sees (qk: layer, head, query, key), and the information flow of each token at each of
    FLOW_THRESHOLDS (web/src/lib/flow.ts flowPath: token, threshold)."""
    T = len(session.get(trace_id))
    out: list[dict[str, Any]] = []
    for start, end in grid_windows(T, include):
        out.append({"__path__": f"/api/traces/{trace_id}/attention_grid", "start": start, "end": end,
                    "size": THUMB_CELLS, "__accept__": "application/octet-stream"})  # fmt: skip
    for layer, head, query in include.qk:
        if query >= T:
            raise InvalidInput(f"--include qk={layer}:{head}:{query}: the text has {T} tokens (0..{T - 1})")
        path = f"/api/traces/{trace_id}/qk"
        out += [
            {"__path__": path, "layer": layer, "head": head, "query": query, "key": k}
            for k in range(query + 1)
        ]
    for token in dict.fromkeys(T - 1 if t == -1 else t for t in include.flow):
        if token >= T:
            raise InvalidInput(f"--include flow={token}: the text has {T} tokens (0..{T - 1})")
        path = f"/api/traces/{trace_id}/flow"
        out += [{"__path__": path, "token": token, "threshold": t} for t in FLOW_THRESHOLDS]
    return out


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
<style>html, body {{ margin: 0; height: 100%; background: #fff; }} #lmpeek {{ height: 100%; }}
.inline, .inline body, .inline #lmpeek {{ height: auto; }}</style>
</head>
<body>
<div id="lmpeek"></div>
<script type="application/octet-stream" id="lmpeek-data" data-encoding="gzip+base85"
  data-length="{data_length}">{data}</script>
<script type="application/octet-stream" id="lmpeek-bundle" data-encoding="gzip+base85"
  data-length="{bundle_length}">{bundle}</script>
<script type="module">
// both blocks are gzip, then base85: 5 characters per 4 bytes, big-endian, in this alphabet (the
// browser's own DecompressionStream inflates them: no library, no network)
const ALPHABET = {alphabet};
const digit = new Uint8Array(128);
for (let i = 0; i < 85; i++) digit[ALPHABET.charCodeAt(i)] = i;
const bytes = (id) => {{
  const block = document.getElementById(id);
  const text = block.textContent.trim();
  const n = Number(block.dataset.length);
  const raw = new Uint8Array(Math.ceil(n / 4) * 4);
  const view = new DataView(raw.buffer);
  for (let i = 0, j = 0; j < raw.length; i += 5, j += 4) {{
    let v = 0;
    for (let k = 0; k < 5; k++) v = v * 85 + digit[text.charCodeAt(i + k)];
    view.setUint32(j, v);
  }}
  return new Response(new Blob([raw.subarray(0, n)]).stream().pipeThrough(new DecompressionStream("gzip")));
}};
const code = await bytes("lmpeek-bundle").blob();
const {{ render }} = await import(URL.createObjectURL(new Blob([code], {{ type: "text/javascript" }})));
const pack = new Uint8Array(await bytes("lmpeek-data").arrayBuffer());
const inline = window.parent !== window;
// inline in a notebook output (iframe_html): as tall as the content, which the output is told
if (inline) document.documentElement.classList.add("inline");
render(document.getElementById("lmpeek"), {{ pack, view: {view} }});
if (inline) {{
  const height = () => Math.ceil(document.body.getBoundingClientRect().height);  // not the viewport's
  const post = () => parent.postMessage({{ lmpeek: "height", height: height() }}, "*");
  new ResizeObserver(post).observe(document.body);
  post();
}}
</script>
</body>
</html>
"""


# printable ASCII but " ' < > \\ & ` / and -: no `<` (nothing can close the <script> block or open a
# comment in it) and nothing a JavaScript string literal would need escaped
_ALPHABET = "".join(c for c in map(chr, range(33, 127)) if c not in "\"'<>\\&`/-")
assert len(_ALPHABET) == 85


def _base85(data: bytes) -> str:
    """5 characters of _ALPHABET per 4 bytes (big-endian; the last group padded with zeros: the page
    is told the length)."""
    words = np.frombuffer(data + b"\0" * (-len(data) % 4), dtype=">u4").astype(np.int64)
    digits = np.empty((len(words), 5), dtype=np.uint8)
    for i in range(4, -1, -1):
        words, digits[:, i] = np.divmod(words, 85)
    return np.frombuffer(_ALPHABET.encode("ascii"), dtype=np.uint8)[digits].tobytes().decode("ascii")


def _gzip(data: bytes) -> bytes:
    """gzip level 9, no timestamp: the same input gives the same file. It roughly halves the bundle
    (~300 kB to ~93 kB); a trace's floats shrink less (see shuffle_envelope)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def export_html(
    session: Any,
    trace_id: str,
    include: Include | str | None = None,
    title: str | None = None,
    app: Any = None,
    view: str = "explore",
) -> str:
    """The whole HTML file for one stored trace of `session` (`app`: the server asking for it, whose
    routes answer; default: an app over the Session, as the notebook widget has). `view`: the tab it
    opens on, "explore" or "attention"."""
    inc = include if isinstance(include, Include) else Include.parse(include)
    trace = session.get(trace_id)
    return page_html(
        record_pack(session, trace_id, inc, app),
        title or f"lmpeek · {session.model.name} · {trace.text[:60]}",
        view,
    )


def trace_html(
    trace: Any, model: Any = None, include: Include | str | None = None, view: str = "explore"
) -> str:
    """A Trace as an HTML file: with `model` (a LoadedModel or Session) it is run again so that
    `include` (attention heads, the lens) can be recomputed; without, what the Trace holds."""
    if model is None:
        if include:
            raise InvalidInput("include= needs model=…: a Trace alone holds no attention patterns or lens")
        name = trace.model.get("name", "a model") if isinstance(trace.model, dict) else "a model"
        return page_html(static_pack(trace), f"lmpeek · {name} · {trace.text[:60]}", view)
    from lmpeek.views.widget import session_for

    session = session_for(model)
    return export_html(session, session.trace(trace.token_ids).id, include, view=view)


def attribution_html(model: Any, text: str, method: str = WHY_METHOD, **options: Any) -> str:
    """`lmpeek attribute TEXT --html FILE`: the export of TEXT with its attribution recorded, opening
    on the Why tab. `options`: more POST /api/why/attribute fields (features, target, contrast, steps;
    None left out)."""
    from lmpeek.views.widget import session_for

    session = session_for(model)
    inc = Include(why=method, why_options={k: v for k, v in options.items() if v is not None})
    return export_html(session, session.trace(text).id, inc, view="why")


# what an export can open on (no Generate: nothing runs in a file); "features": a features export
# (views.features_export), whose pack holds the Features tab's answers; "why": an export with a
# recorded attribution (--include why)
VIEWS = ("explore", "attention", "features", "why")


def page_html(pack: bytes, title: str, view: str = "explore") -> str:
    from lmpeek import __version__
    from lmpeek.views.bundle import bundle_js

    if view not in VIEWS:
        raise InvalidInput(f"an export opens on {' or '.join(VIEWS)}, not {view!r}")
    return _PAGE.format(
        version=__version__,
        title=html.escape(title),
        view=json.dumps(view),
        data=_base85(data := _gzip(pack)),
        data_length=len(data),
        bundle=_base85(code := _gzip(bundle_js().encode("utf-8"))),
        bundle_length=len(code),
        alphabet=json.dumps(_ALPHABET),
    )


def iframe_html(page: str, height: int = 640, max_height: int = 1600) -> str:
    """The page inline in a notebook output (`_repr_html_`): an iframe whose srcdoc is the page, never a
    link to a local file, so VS Code, Colab and nbconvert's HTML show it without a kernel extension.

    Its height follows the content: the page posts its height ({"lmpeek": "height"}) and the script
    beside the iframe sets it (at most `max_height`; the page scrolls inside past that). Where an
    output's scripts do not run, the box stays `height` px and its bottom edge can be dragged."""
    box = f"lmpeek-{uuid.uuid4().hex[:12]}"
    frame = (f'<div id="{box}" style="height: {int(height)}px; resize: vertical; overflow: hidden; '
             'border: 1px solid #e3e5e8; border-radius: 4px">'
             f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width: 100%; height: 100%; border: 0; '
             'display: block" sandbox="allow-scripts"></iframe></div>')  # fmt: skip
    script = (
        "<script>(function () {"
        f'var box = document.getElementById("{box}"); if (!box) return;'
        'var frame = box.querySelector("iframe");'
        'window.addEventListener("message", function (e) {'
        'if (e.source !== frame.contentWindow || !e.data || e.data.lmpeek !== "height") return;'
        "var h = Math.ceil(Number(e.data.height));"
        f'if (h > 0) box.style.height = Math.min({int(max_height)}, h) + "px";'
        "});})();</script>"
    )
    return frame + script


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
    from lmpeek.analysis.metrics import summary_metric_json
    from lmpeek.analysis.scales import MODES

    put_envelope(rec, trace, trace_id)
    for name in ("loss", "entropy", "prob"):  # the same answers the route gives (no model needed)
        for mode in MODES:
            for skip in (True, False):
                params = {"name": name, "mode": mode, "skip_first": "true" if skip else "false"}
                answer = summary_metric_json(trace, name, mode, skip)
                rec.put_json(f"/api/traces/{trace_id}/metric", answer, params)
    hint = HINT.replace("Export again", "Show it with a model (lmpeek.show(trace, model=…))")
    return rec.pack(trace_id=trace_id, hint=hint, attention={})
