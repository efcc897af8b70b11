"""GET /api/traces/{id} and POST /api/trace: JSON by default, the binary envelope when asked for."""

from __future__ import annotations

import gzip

import httpx
import numpy as np
import pytest

from lmpeek import schema
from lmpeek.capture.trace import Trace
from lmpeek.server.trace_body import wants_envelope

TEXT = "The cat sat on the mat. Zürich 🙂"
ENVELOPE = "application/vnd.lmpeek.trace"


def test_the_envelope_holds_what_the_json_holds(client, tid):
    j = client.get(f"/api/traces/{tid}").json()
    r = client.get(f"/api/traces/{tid}", headers={"accept": ENVELOPE})
    assert r.status_code == 200
    assert r.headers["content-type"] == ENVELOPE
    assert r.headers["content-encoding"] == "gzip"  # the test client takes gzip, as browsers do
    assert "Accept" in r.headers["vary"]
    assert schema.decode(r.content).header["id"] == tid
    t = Trace.from_bytes(r.content)
    assert t.tokens == j["tokens"] and t.text == j["text"] and t.model == j["model"]
    assert [b.hex() for b in t.token_bytes] == j["token_bytes"] and t.partial == j["partial"]
    assert t.token_ids.tolist() == j["token_ids"] and t.offsets.tolist() == j["offsets"]
    assert t.topk_ids.tolist() == j["topk_ids"] and t.topk_tokens == j["topk_tokens"]
    # float32 summaries exactly (JSON writes each float32 as the double it is)
    for name in ("topk_probs", "entropy", "true_prob"):
        np.testing.assert_array_equal(getattr(t, name), np.array(j[name], dtype=np.float32), err_msg=name)
    np.testing.assert_array_equal(t.loss[:-1], np.array(j["loss"][:-1], dtype=np.float32))
    assert np.isnan(t.loss[-1]) and j["loss"][-1] is None
    assert list(t.norms) == list(j["norms"])
    for k, v in j["norms"].items():
        np.testing.assert_array_equal(t.norms[k], np.array(v, dtype=np.float32), err_msg=k)
    # attention entropy as float16 ("compact")
    np.testing.assert_allclose(t.attn_entropy, np.array(j["attn_entropy"]), rtol=2**-11, atol=0)
    assert schema.decode(r.content).header["buffers"]["attn_entropy"]["dtype"] == "float16"


def test_json_stays_the_default(client, tid):
    for accept in (None, "application/json", "*/*", "text/html,*/*;q=0.8", f"{ENVELOPE};q=0"):
        headers = {"accept": accept} if accept else {}
        r = client.get(f"/api/traces/{tid}", headers=headers)
        assert r.headers["content-type"] == "application/json", accept
        assert r.json()["id"] == tid


def test_accept_negotiation_follows_q_values():
    assert wants_envelope(ENVELOPE)
    assert wants_envelope(f"{ENVELOPE}, application/json;q=0.9")
    assert wants_envelope(f"application/json;q=0.5, {ENVELOPE}")
    assert not wants_envelope(f"application/json, {ENVELOPE};q=0.5")
    assert not wants_envelope(f"{ENVELOPE};q=0")
    assert not wants_envelope(f"{ENVELOPE};q=oops")
    assert not wants_envelope(None) and not wants_envelope("") and not wants_envelope("*/*")


def test_without_gzip_the_envelope_goes_as_it_is(client, tid):
    url = f"/api/traces/{tid}"
    for coding, zipped in (("identity", False), ("gzip;q=0", False), ("br, gzip", True)):
        r = client.get(url, headers={"accept": ENVELOPE, "accept-encoding": coding})
        assert (r.headers.get("content-encoding") == "gzip") is zipped, coding
        assert r.content[:4] == b"LMPK"  # (httpx undoes the gzip)
    # what went over the wire, before httpx undid the gzip
    with client.stream("GET", url, headers={"accept": ENVELOPE, "accept-encoding": "gzip"}) as r:
        wire = b"".join(r.iter_raw())
    assert gzip.decompress(wire)[:4] == b"LMPK"
    assert len(wire) == int(r.headers["content-length"])


def test_post_trace_answers_with_the_envelope(client):
    r = client.post("/api/trace", json={"text": TEXT, "top_k": 3}, headers={"accept": ENVELOPE})
    assert r.status_code == 200 and r.headers["content-type"] == ENVELOPE
    tid = schema.decode(r.content).header["id"]
    t = Trace.from_bytes(r.content)
    assert t.topk_ids.shape == (len(t), 3)
    again = client.get(f"/api/traces/{tid}").json()  # stored under the id the envelope names
    assert again["tokens"] == t.tokens and again["topk_tokens"] == t.topk_tokens
    assert client.post("/api/trace", json={"text": TEXT}).headers["content-type"] == "application/json"


def test_an_unknown_trace_is_a_json_404_either_way(client):
    r = client.get("/api/traces/0123456789abcdef", headers={"accept": ENVELOPE})
    assert r.status_code == 404 and "no trace with id" in r.json()["detail"]


@pytest.mark.parametrize("accept", [ENVELOPE, "application/json"])
def test_openapi_lists_both_media_types(client, accept):
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in (("/api/traces/{trace_id}", "get"), ("/api/trace", "post")):
        assert accept in paths[path][method]["responses"]["200"]["content"], path


def test_encoding_runs_off_the_event_loop(client, tid, monkeypatch):
    """While one envelope is being encoded (made slow here), health still answers."""
    import asyncio
    import threading
    import time

    import lmpeek.server.trace_body as trace_body

    started, finished, real = threading.Event(), threading.Event(), trace_body.encode_trace

    def slow(*args, **kw):
        started.set()
        time.sleep(1.0)  # blocking: on the event loop this would hold every other request
        finished.set()
        return real(*args, **kw)

    monkeypatch.setattr(trace_body, "encode_trace", slow)

    async def both():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            big = asyncio.create_task(http.get(f"/api/traces/{tid}", headers={"accept": ENVELOPE}))
            while not started.is_set():
                await asyncio.sleep(0.01)
            health = await http.get("/api/health")
            answered_while_encoding = not finished.is_set()
            return health, answered_while_encoding, await big

    health, answered_while_encoding, big = asyncio.run(both())
    assert health.status_code == 200 and answered_while_encoding
    assert big.status_code == 200 and big.headers["content-type"] == ENVELOPE
