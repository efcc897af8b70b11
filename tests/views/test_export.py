"""The HTML export: a pack of the app's own answers, inlined so the file needs no server and no network."""

from __future__ import annotations

import html
import json
import re
import struct
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek import schema
from lmpeek.capture.trace import Trace
from lmpeek.errors import InvalidInput
from lmpeek.session import Session
from lmpeek.views.export import (
    Include,
    export_html,
    grid_windows,
    record_pack,
    request_key,
    shuffle,
    static_pack,
    window_around,
)
from lmpeek.views.widget import app_for

TEXT = "The capital of France is Paris. Über 😀"


@pytest.fixture(scope="module")
def stored(session):
    return session.trace(TEXT)


def unpack(pack: bytes) -> tuple[dict, bytes]:
    assert pack[:4] == b"LMPX"
    (n,) = struct.unpack("<I", pack[4:8])
    return json.loads(pack[8 : 8 + n]), pack[8 + n :]


def block(page: str, name: str = "data") -> bytes:
    """One of the page's data blocks (id lmpeek-data / lmpeek-bundle): gzip, then base85 in the page's
    alphabet (decoded here digit by digit, apart from the exporter's numpy encoder)."""
    import gzip

    m = re.search(
        rf'id="lmpeek-{name}" data-encoding="gzip\+base85"\s+data-length="(\d+)">(.*?)</script>', page, re.S
    )
    alphabet = json.loads(re.search(r"const ALPHABET = (\"[^\n]*\");", page).group(1))
    digit = {c: i for i, c in enumerate(alphabet)}
    text, raw = m.group(2).strip(), bytearray()
    for i in range(0, len(text), 5):
        v = 0
        for c in text[i : i + 5]:
            v = v * 85 + digit[c]
        raw += v.to_bytes(4, "big")
    return gzip.decompress(bytes(raw[: int(m.group(1))]))


def body(header: dict, data: bytes, key: str) -> bytes:
    """A recorded answer: its parts joined, byte planes put back (the page's transport.ts recordedBody)."""
    r = header["responses"][key]
    out = bytearray(b"".join(data[o : o + n] for o, n in r["parts"]))
    for o, n, size in r.get("shuffled", []):
        out[o : o + n] = np.frombuffer(bytes(out[o : o + n]), np.uint8).reshape(size, n // size).T.tobytes()
    return bytes(out)


def test_request_key_matches_the_page():
    # web/test/transport.test.ts checks requestKey("GET", "/x?b=a+b&a=1") gives the same
    assert request_key("GET", "/x", {"b": "a b", "a": 1, "c": None}) == "GET /x?a=1&b=a+b"
    assert request_key("get", "/api/health") == "GET /api/health"


def test_include_parses_and_refuses_unknown_items():
    inc = Include.parse("attention=0:1, attention=3:2,lens")
    assert inc.attention == [(0, 1), (3, 2)] and inc.lens and not inc.grid and not inc.qk
    inc = Include.parse(["grid", "grid=64:128", "qk=1:2:7"])
    assert inc.grid and inc.windows == [(64, 128)] and inc.qk == [(1, 2, 7)]
    with pytest.raises(InvalidInput, match="unknown --include item 'heads'"):
        Include.parse("heads")
    with pytest.raises(InvalidInput, match="END > START"):
        Include.parse("grid=5:5")


def test_the_grid_windows_are_the_ones_the_page_asks():
    # web/src/lib/attention.ts windowAround: the Attention tab opens on 64 tokens around token 0
    assert grid_windows(10, Include(grid=True)) == [(0, 10)]
    assert grid_windows(500, Include(grid=True, windows=[(100, 164), (0, 64), (480, 999)])) == [
        (0, 64), (100, 164), (480, 500)
    ]  # fmt: skip
    assert window_around(500, 250, 64) == (218, 282) and window_around(500, 499, 64) == (436, 500)
    with pytest.raises(InvalidInput, match="has 500 tokens"):
        grid_windows(500, Include(windows=[(500, 600)]))


def test_pack_holds_the_attention_overview_the_page_asks_for(session, stored):
    from lmpeek.session_attention import attention_grid, qk
    from lmpeek.views.asgi import fetch_sync

    T = len(stored.trace)
    header, data = unpack(record_pack(session, stored.id, Include.parse("grid,grid=2:6,qk=1:2:5")))
    app = app_for(session)
    # the model view: the route's bytes and headers, under the key web/src/lib/api.ts asks
    for start, end in ((0, T), (2, 6)):
        key = request_key(
            "GET", f"/api/traces/{stored.id}/attention_grid", {"start": start, "end": end, "size": 64}
        )
        r = header["responses"][key]
        assert r["headers"]["x-window"] == f"{start},{end}" and r["headers"]["x-pool"] == "1"
        g = attention_grid(session, stored.id, start, end, 64)
        assert r["headers"]["x-shape"] == ",".join(map(str, g.patterns.shape))
        np.testing.assert_array_equal(np.frombuffer(body(header, data, key), "<f2"), g.patterns.ravel())
    # the neuron view of query 5: every key it sees, each the route's answer, its numbers the Session's
    keys = sorted(k for k in header["responses"] if "/qk?" in k)
    assert len(keys) == 6
    for k in range(6):
        key = request_key("GET", f"/api/traces/{stored.id}/qk", {"layer": 1, "head": 2, "query": 5, "key": k})
        got = json.loads(body(header, data, key))
        assert body(header, data, key) == fetch_sync(app, "GET", key.split(" ", 1)[1])[1]
        want = qk(session, stored.id, 1, 2, 5, k)
        assert got["parts"][0]["dot"] == pytest.approx(float(want.parts[0].terms.dot), rel=1e-6)
        np.testing.assert_allclose(got["pattern_row"][:6], want.pattern_row[:6], rtol=1e-6)
    # a head or a query out of range is refused when exporting, not shown as an error in the page
    with pytest.raises(InvalidInput, match="qk"):
        record_pack(session, stored.id, Include.parse("qk=0:99:1"))
    with pytest.raises(InvalidInput, match="tokens"):
        record_pack(session, stored.id, Include.parse(f"qk=0:0:{T}"))


def test_repeated_parts_are_stored_once_and_envelopes_shuffled(session):
    stored = session.trace(" ".join([TEXT] * 8))  # long enough for its values arrays to be parts
    header, data = unpack(record_pack(session, stored.id))
    metric = [r for k, r in header["responses"].items() if "/metric?" in k]
    values = {tuple(r["parts"][1]) for r in metric}  # '{"name":…,"values":' [values] ',"scale":…}'
    assert len(metric) == 18 and len(values) == 3  # loss, entropy, prob: one values array each
    env = header["responses"][f"GET /api/traces/{stored.id}"]
    assert env["shuffled"] and all(size in (2, 4) for _, _, size in env["shuffled"])
    first = env["parts"][0][0]
    assert data[first : first + 4] == b"LMPK"  # the envelope's own header is left as it is
    # unshuffled, it is the route's envelope less what schema.OMITTABLE names
    want = schema.encode_trace(stored.trace, "compact", stored.id, omit=schema.OMITTABLE)
    assert body(header, data, f"GET /api/traces/{stored.id}") == want
    assert shuffle(b"abcdef", 2) == b"acebdf"


def test_views_do_not_import_the_server():
    import subprocess
    import sys

    code = ("import sys, lmpeek.views.export as e, lmpeek.views.widget; from lmpeek.schema import Trace; "
            "print(sorted(m for m in sys.modules if m.startswith('lmpeek.server')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pack_holds_the_apps_own_answers(session, stored):
    header, data = unpack(record_pack(session, stored.id, Include.parse("attention=1:2")))
    assert header["format"] == "lmpeek.export" and header["trace_id"] == stored.id
    # the trace, as the envelope the server sends
    env = body(header, data, f"GET /api/traces/{stored.id}")
    assert header["responses"][f"GET /api/traces/{stored.id}"]["headers"]["content-type"].startswith(
        "application/vnd.lmpeek.trace"
    )
    # less what no view of the page reads from it (their panels ask routes): the per-layer norms and
    # the attention entropy; what is left is the Trace's own
    got = schema.decode(env)
    assert got.header["omitted"] == ["norms", "attn_entropy"] and got.header["norms"] == []
    assert not [n for n in got.arrays if n.startswith("norms/") or n == "attn_entropy"]
    assert got.header["tokens"] == stored.trace.tokens
    for name in ("token_ids", "topk_ids", "topk_probs", "entropy", "loss", "true_prob"):
        np.testing.assert_array_equal(got.arrays[name], getattr(stored.trace, name))
    with pytest.raises(schema.TraceFormatError, match="leaves out norms, attn_entropy"):
        Trace.from_bytes(env)  # not a whole Trace, and says so
    # every recorded metric equals what the route answers now
    from lmpeek.views.asgi import fetch_sync

    app = app_for(session)
    keys = [k for k in header["responses"] if "/metric?" in k]
    assert len(keys) == 18  # loss, entropy, prob × 3 modes × with/without the first token
    for key in keys:
        head, want = fetch_sync(app, "GET", key.split(" ", 1)[1])
        assert head.status == 200 and body(header, data, key) == want
    # the attention head: the causal triangle of the pattern the Session computes
    T = len(stored.trace)
    emb = header["attention"]["1,2"]
    tri = np.frombuffer(data[emb["offset"] : emb["offset"] + T * (T + 1)], dtype="<f2")
    full = session.attention(stored.id, 1, 2)
    np.testing.assert_array_equal(tri, full[np.tril_indices(T)])
    # its colour scale is the route's, the same for every token in the raw mode
    for token in (0, 3, T - 1):
        params = {"name": "attn-from", "layer": 1, "head": 2, "token": token, "rope": "full", "mode": "raw",
                  "skip_first": "true"}  # fmt: skip
        key = request_key("GET", f"/api/traces/{stored.id}/metric", params)
        _, got = fetch_sync(app, "GET", key.split(" ", 1)[1])
        assert json.loads(got)["scale"] == emb["scales"]["attn-from,true"]


def test_html_is_self_contained_and_cannot_break_out_of_its_scripts(session, stored):
    page = export_html(session, stored.id)
    assert "<script src" not in page and "http://" not in page.split("<script", 1)[0]
    blocks = re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S)
    assert len(blocks) == 3  # data, bundle, loader: every '</script' inside the bundle was escaped
    pack = block(page)
    header, _ = unpack(pack)
    assert header["trace_id"] == stored.id
    bundle = block(page, "bundle").decode()
    assert "export default" in bundle or "export{" in bundle.replace(" ", "")
    alphabet = json.loads(re.search(r"const ALPHABET = (\"[^\n]*\");", page).group(1))
    assert len(set(alphabet)) == 85 and not set(alphabet) & set("<&\"'\\") and "<!--" not in blocks[0]
    assert set(blocks[0].strip()) <= set(alphabet) and set(blocks[1].strip()) <= set(alphabet)


def test_a_trace_alone_packs_what_it_holds():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:gpt2")
    t = lmpeek.trace(model, "Hello there")
    header, data = unpack(static_pack(t))
    assert schema.decode(body(header, data, "GET /api/traces/local")).header["tokens"] == t.tokens
    health = json.loads(body(header, data, "GET /api/health"))
    assert health["model"]["name"] == "tiny:gpt2" and header["attention"] == {}
    # the colour metrics a trace alone answers: what the route answers for the same text
    from lmpeek.views.asgi import fetch_sync

    with Session(model) as s:
        stored = s.trace("Hello there")
        app = app_for(s)
        for key in [k for k in header["responses"] if "/metric?" in k]:
            _, want = fetch_sync(app, "GET", key.split(" ", 1)[1].replace("/local/", f"/{stored.id}/"))
            assert json.loads(body(header, data, key)) == json.loads(want), key


def test_cli_export_writes_one_file_and_refuses_bad_includes(tmp_path):
    from typer.testing import CliRunner

    from lmpeek.cli import app

    out = tmp_path / "report.html"
    r = CliRunner().invoke(app, ["export", TEXT, "-m", "tiny:llama", "-o", str(out), "--include",
                                 "attention=1:0,lens"], catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "MB" in r.output
    page = out.read_text()
    header, _ = unpack(block(page))
    assert list(header["attention"]) == ["1,0"]
    assert any("/logit_lens?" in k for k in header["responses"])
    bad_items = (("heads=1", "unknown --include item"), ("attention=9:0", "has layers 0..1"),
                 ("qk=0:9:1", "--include qk=0:9:1: tiny:llama has"), ("qk=0:0:999", "tokens"))  # fmt: skip
    for bad, msg in bad_items:
        r = CliRunner().invoke(app, ["export", TEXT, "-m", "tiny:llama", "-o", str(out), "--include", bad])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_a_trace_renders_itself_inline_and_to_a_file(session, tmp_path):
    t = lmpeek.trace(session.model, "Hello again")
    frame = t._repr_html_()
    iframe = re.search(r"<iframe [^>]*>", frame).group(0)
    assert iframe.startswith("<iframe srcdoc=") and " src=" not in iframe and "&lt;script" in frame
    # where an output runs no script: a fixed height to start from, and the user can drag it taller
    box = re.match(r'<div id="(lmpeek-[0-9a-f]+)" style="([^"]*)"', frame)
    assert "height: 640px" in box.group(2) and "resize: vertical" in box.group(2)
    # where it does: the page inside says how tall it is, the script beside the iframe sets the box
    script = frame.rsplit("<script>", 1)[1]
    assert f'getElementById("{box.group(1)}")' in script and 'lmpeek !== "height"' in script
    assert "parent.postMessage" in html.unescape(frame) and "ResizeObserver" in html.unescape(frame)
    page = t.to_html(tmp_path / "t.html")
    assert (tmp_path / "t.html").read_text() == page
    with pytest.raises(InvalidInput, match="needs model="):
        t.to_html(include="lens")
    page = t.to_html(model=session, include="attention=0:0")
    header, _ = unpack(block(page))
    assert list(header["attention"]) == ["0,0"]
