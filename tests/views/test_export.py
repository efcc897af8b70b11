"""The HTML export: a pack of the app's own answers, inlined so the file needs no server and no network."""

from __future__ import annotations

import base64
import json
import re
import struct
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.capture.trace import Trace
from lmpeek.errors import InvalidInput
from lmpeek.session import Session
from lmpeek.views.export import Include, export_html, record_pack, request_key, static_pack
from lmpeek.views.widget import app_for

TEXT = "The capital of France is Paris. Über 😀"


@pytest.fixture(scope="module")
def session():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    with Session(model) as s:
        yield s


@pytest.fixture(scope="module")
def stored(session):
    return session.trace(TEXT)


def unpack(pack: bytes) -> tuple[dict, bytes]:
    assert pack[:4] == b"LMPX"
    (n,) = struct.unpack("<I", pack[4:8])
    return json.loads(pack[8 : 8 + n]), pack[8 + n :]


def block(page: str, name: str = "data") -> bytes:
    """One of the page's data blocks (id lmpeek-data / lmpeek-bundle): gzip, then base64."""
    import gzip

    text = re.search(rf'id="lmpeek-{name}" data-encoding="gzip\+base64">(.*?)</script>', page, re.S).group(1)
    return gzip.decompress(base64.b64decode(text))


def body(header: dict, data: bytes, key: str) -> bytes:
    r = header["responses"][key]
    return data[r["offset"] : r["offset"] + r["length"]]


def test_request_key_matches_the_page():
    # web/test/transport.test.ts checks requestKey("GET", "/x?b=a+b&a=1") gives the same
    assert request_key("GET", "/x", {"b": "a b", "a": 1, "c": None}) == "GET /x?a=1&b=a+b"
    assert request_key("get", "/api/health") == "GET /api/health"


def test_include_parses_and_refuses_unknown_items():
    inc = Include.parse("attention=0:1, attention=3:2,lens")
    assert inc.attention == [(0, 1), (3, 2)] and inc.lens
    with pytest.raises(InvalidInput, match="unknown --include item 'heads'"):
        Include.parse("heads")


def test_pack_holds_the_apps_own_answers(session, stored):
    header, data = unpack(record_pack(session, stored.id, Include.parse("attention=1:2")))
    assert header["format"] == "lmpeek.export" and header["trace_id"] == stored.id
    # the trace, as the envelope the server sends
    env = body(header, data, f"GET /api/traces/{stored.id}")
    assert header["responses"][f"GET /api/traces/{stored.id}"]["headers"]["content-type"].startswith(
        "application/vnd.lmpeek.trace"
    )
    t = Trace.from_bytes(env)
    assert t.tokens == stored.trace.tokens
    np.testing.assert_array_equal(t.topk_ids, stored.trace.topk_ids)
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
    assert set(blocks[0].strip()) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def test_a_trace_alone_packs_what_it_holds():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:gpt2")
    t = lmpeek.trace(model, "Hello there")
    header, data = unpack(static_pack(t))
    assert Trace.from_bytes(body(header, data, "GET /api/traces/local")).tokens == t.tokens
    health = json.loads(body(header, data, "GET /api/health"))
    assert health["model"]["name"] == "tiny:gpt2" and header["attention"] == {}
    assert Trace.from_bytes(body(header, data, "GET /api/traces/local")).tokens == t.tokens
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
    for bad, msg in (("heads=1", "unknown --include item"), ("attention=9:0", "has layers 0..1")):
        r = CliRunner().invoke(app, ["export", TEXT, "-m", "tiny:llama", "-o", str(out), "--include", bad])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_a_trace_renders_itself_inline_and_to_a_file(session, tmp_path):
    t = lmpeek.trace(session.model, "Hello again")
    frame = t._repr_html_()
    opening = frame.split(">", 1)[0]
    assert frame.startswith("<iframe srcdoc=") and " src=" not in opening and "&lt;script" in frame
    page = t.to_html(tmp_path / "t.html")
    assert (tmp_path / "t.html").read_text() == page
    with pytest.raises(InvalidInput, match="needs model="):
        t.to_html(include="lens")
    page = t.to_html(model=session, include="attention=0:0")
    header, _ = unpack(block(page))
    assert list(header["attention"]) == ["0,0"]
