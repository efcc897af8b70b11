"""The notebook widget's kernel side: the page's requests, as widget messages, answered by the app's own
routes in-process (the same bytes the server sends), streams included; and lmpeek.show's modes."""

from __future__ import annotations

import asyncio
import json
import warnings

import pytest

import lmpeek
from lmpeek.capture.trace import Trace
from lmpeek.session import Session
from lmpeek.views.widget import Widget, session_for, show


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:llama")


@pytest.fixture(scope="module")
def session(model):
    return session_for(model)


def ask(
    widget: Widget, msg: dict, body: bytes = b"", abort_after: int | None = None
) -> tuple[dict, bytes, list]:
    """Send one fetch message; returns the head, the body and every message the kernel sent."""
    sent: list[tuple[dict, list]] = []

    def send(content, buffers=None):
        sent.append((content, list(buffers or [])))
        if abort_after is not None and content.get("kind") == "chunk" and len(sent) == abort_after:
            widget._on_msg(widget, {"kind": "abort", "id": msg["id"]}, [])

    widget.send = send  # type: ignore[method-assign]
    asyncio.run(widget._fetch(msg, body))
    head = next(c for c, _ in sent if c["kind"] == "head")
    data = b"".join(bytes(b[0]) for c, b in sent if c["kind"] == "chunk")
    assert sent[-1][0] == {"kind": "end", "id": msg["id"]}
    return head, data, sent


def test_requests_are_answered_by_the_apps_routes(session):
    w = Widget(session)
    head, data, _ = ask(w, {"kind": "fetch", "id": "1", "method": "GET", "url": "/api/health"})
    assert head["status"] == 200 and json.loads(data)["model"]["name"] == "tiny:llama"
    req = json.dumps({"text": "Hello there, widget", "top_k": 5}).encode()
    head, data, _ = ask(w, {"kind": "fetch", "id": "2", "method": "POST", "url": "/api/trace",
                            "headers": {"content-type": "application/json"}}, req)  # fmt: skip
    got = json.loads(data)
    stored = session.get(got["id"])
    assert got["tokens"] == stored.tokens and len(got["topk_ids"][0]) == 5
    head, data, _ = ask(
        w, {"kind": "fetch", "id": "3", "method": "GET", "url": "/api/traces/0123456789abcdef"}
    )
    assert head["status"] == 404 and "no trace with id" in json.loads(data)["detail"]


def test_a_generation_streams_event_by_event_and_stops_when_the_page_aborts(session):
    w = Widget(session)
    req = json.dumps({"prompt": "Once upon", "max_new_tokens": 6, "temperature": 0.0}).encode()
    msg = {"kind": "fetch", "id": "g", "method": "POST", "url": "/api/generate",
           "headers": {"content-type": "application/json"}}  # fmt: skip
    head, data, sent = ask(w, msg, req)
    assert head["headers"]["content-type"].startswith("text/event-stream")
    events = [f.split("\n", 1)[0] for f in data.decode().strip().split("\n\n")]
    assert events[0] == "event: start" and events.count("event: token") == 6 and events[-1] == "event: done"
    assert sum(1 for c, _ in sent if c["kind"] == "chunk") >= 8  # one message per event, not one at the end
    # the page gives up after the first token: the generation is cancelled, the stream ends early
    long = json.dumps({"prompt": "Once upon", "max_new_tokens": 200, "temperature": 0.0}).encode()
    _, data, _ = ask(w, dict(msg, id="h"), long, abort_after=3)
    assert data.decode().count("event: token") < 200


def test_show_modes(model, session):
    t = lmpeek.trace(model, "Just a trace")
    alone = show(t)
    assert not alone.live and alone.pack[:4] == b"LMPX" and alone.view == "explore"
    live = show("Some text", model=model)
    assert live.live and session.get(live.trace_id).text == "Some text"
    again = show(t, model=model)  # run again on the model: any layer can then be recomputed
    assert session.get(again.trace_id).tokens == t.tokens and session.store.has_resid(again.trace_id)
    assert show(live.trace_id, model=session).trace_id == live.trace_id
    gen = show("Write a haiku", model=model, view="generate")
    assert gen.view == "generate" and gen.prompt == "Write a haiku"
    # the Attention tab first, with a model (live) or of a Trace alone (what it holds)
    attn = show("Some text", model=model, view="attention")
    assert attn.live and attn.view == "attention" and session.get(attn.trace_id).text == "Some text"
    assert show(t, view="attention").view == "attention"
    with pytest.raises(ValueError, match="one of 'explore', 'attention', 'generate'"):
        show("Some text", model=model, view="heads")
    with pytest.raises(ValueError, match="needs model="):
        show(t, view="generate")
    with pytest.raises(ValueError, match="needs model="):
        show("text without a model")
    assert isinstance(Trace.from_bytes(t.to_bytes()), Trace)


def test_one_session_per_model(model):
    s = session_for(model)
    assert session_for(model) is s and session_for(s) is s and isinstance(s, Session)
