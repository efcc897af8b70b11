"""POST /api/why/attribute (server/routes_why.py): the attribution the library computes, streamed as
events in order, cached, cancellable, refusing bad input before streaming, and never holding the model
so long that a light request waits for the whole job."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.faithfulness import faithfulness as lib_faithfulness

TEXT = "The cat sat on the mat and then it slept"


def _events(response) -> list[tuple[str, dict]]:
    out, event = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
    return out


def _post(client, **body) -> list[tuple[str, dict]]:
    with client.stream("POST", "/api/why/attribute", json={"text": TEXT, **body}) as r:
        assert r.status_code == 200, r.read()
        return _events(r)


class _Slow:
    """Forwards on the attribution's own thread take `delay` s (so it runs long enough to observe);
    counts every forward of the model."""

    def __init__(self, model, delay: float):
        self.delay, self.calls = delay, 0
        self.handle = model.hf.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1
        if threading.current_thread().name == "lmpeek-attribution":
            time.sleep(self.delay)

    def remove(self):
        self.handle.remove()


@pytest.fixture()
def slow(client):
    hook = _Slow(client.app.state.holder.model, 0.03)
    yield hook
    hook.remove()


def test_methods(client):
    out = client.get("/api/why/methods").json()
    names = [m["name"] for m in out["methods"]]
    assert names == list(lmpeek.attribution.methods.METHODS) and out["default"] == "integrated_gradients"
    by = {m["name"]: m for m in out["methods"]}
    assert by["lime"]["sampled"] and not by["lime"]["exact"] and by["occlusion"]["exact"]
    assert by["integrated_gradients"]["default_steps"] == 16 and "words" in out["features"]


def test_result_equals_the_library_and_events_come_in_order(client, slow):
    model = client.app.state.holder.model
    events = _post(client, method="occlusion", features="words")
    kinds = [k for k, _ in events]
    assert kinds[0] == "estimate" and kinds[-1] == "result" and set(kinds[1:-1]) == {"progress"}, kinds
    assert len(kinds) > 3  # the slow forwards made it pause (and report) several times
    done = [d["done"] for k, d in events if k == "progress"]
    assert done == sorted(done) and all(d["done"] <= d["total"] for k, d in events if k == "progress")
    est, res = events[0][1], events[-1][1]
    assert not est["cached"] and est["forwards"] > 0 and est["seconds"] > 0

    direct = lmpeek.attribute(model, TEXT, method="occlusion", features="words")
    np.testing.assert_allclose(res["scores"], direct.scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res["delta"], direct.delta, rtol=1e-6, atol=1e-6)
    assert res["target"] == direct.target and res["baseline"] == direct.baseline and not res["cached"]
    assert [s["label"] for s in res["segments"]] == list(direct.segments.labels)
    # the estimate counts what ran: the attribution's own sequences are exact for occlusion
    n = len(direct.segments)
    assert direct.forwards == 1 + 2 + n

    spans = [list(range(a, b)) for a, b in direct.segments.ranges]
    ids = torch.as_tensor(model.tokenizer(TEXT)["input_ids"])[None]
    with torch.no_grad():
        top = int(model.hf(ids).logits[0, -1].argmax())  # the default target: the top next token
    f = lib_faithfulness(model, TEXT, direct.scores, spans, target=top, baseline="pad")
    got = res["faithfulness"]
    np.testing.assert_allclose(got["deletion"], f.deletion, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["insertion"], f.insertion, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["comprehensiveness"], f.comprehensiveness, rtol=1e-5, atol=1e-5)
    assert got["fractions"] == [0.05, 0.1, 0.2, 0.5] and got["random_orders"] == 8
    assert est["forwards"] >= direct.forwards + f.sequences  # an upper bound of the sequences run


def test_a_repeat_is_answered_from_the_cache_without_a_forward(client):
    first = _post(client, method="gradient_x_input", features="tokens")
    hook = _Slow(client.app.state.holder.model, 0.0)
    try:
        again = _post(client, method="gradient_x_input", features="tokens")
    finally:
        hook.remove()
    assert hook.calls == 0
    assert [k for k, _ in again] == ["estimate", "result"]
    assert again[0][1] == {"forwards": 0, "seconds": 0.0, "cached": True} and again[1][1]["cached"]
    assert again[1][1]["scores"] == first[-1][1]["scores"]


@pytest.mark.parametrize(
    "body",
    [
        {"method": "nope"},
        {"features": "paragraphs"},
        {"text": ""},
        {"steps": 0},
        {"method": "occlusion", "target": ""},
        {"contrast": 10**9},
    ],
)
def test_bad_input_is_refused_before_streaming(client, body):
    r = client.post("/api/why/attribute", json={"text": TEXT, **body})
    assert 400 <= r.status_code < 500 and r.json()["detail"], (body, r.status_code, r.text)


def test_closing_the_stream_cancels_the_attribution(client, slow):
    worker = client.app.state.holder.worker
    before = worker.counts["cancelled"]
    with client.stream("POST", "/api/why/attribute", json={"text": TEXT + " again", "method": "shapley",
                                                          "features": "words"}) as r:  # fmt: skip
        lines = r.iter_lines()
        while not next(lines).startswith("event: progress"):
            pass
    deadline = time.monotonic() + 10
    # the count goes up as the job is cancelled, the queue empties when its worker turn ends: wait for both
    while (worker.counts["cancelled"] == before or worker.pending()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.counts["cancelled"] == before + 1 and worker.pending() == 0
    calls = slow.calls
    time.sleep(0.2)
    assert slow.calls == calls  # the attribution's thread stopped: no forward after the cancel
    assert not any(t.name == "lmpeek-attribution" for t in threading.enumerate())
    assert client.post("/api/trace", json={"text": "next"}).status_code == 200


def test_a_light_request_is_answered_while_an_attribution_runs(client, slow):
    order: list[str] = []
    first_progress = threading.Event()

    def stream():
        with client.stream("POST", "/api/why/attribute", json={"text": TEXT + " twice", "method": "shapley",
                                                              "features": "words"}) as r:  # fmt: skip
            for kind, _ in _events_live(r, first_progress):
                if kind == "result":
                    order.append("result")

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert first_progress.wait(30)
    r = client.post("/api/trace", json={"text": "a light request"})
    assert r.status_code == 200
    order.append("trace")
    streamer.join(120)
    assert order == ["trace", "result"]  # answered between the attribution's turns, not after it


def _events_live(response, first_progress: threading.Event):
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
            if event == "progress":
                first_progress.set()
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])
