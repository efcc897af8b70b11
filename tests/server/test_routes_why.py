"""POST /api/why/attribute (server/routes_why.py): the attribution the library computes, streamed as
events in order, cached, cancellable, refusing bad input before streaming, and never holding the model
so long that a light request waits for the whole job."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sse_client import SlowForwards, cancel_at_first_progress, light_request_while_running, post_events

import lmpeek
from lmpeek.attribution.faithfulness import faithfulness as lib_faithfulness

TEXT = "The cat sat on the mat and then it slept"


def _post(client, **body) -> list[tuple[str, dict]]:
    return post_events(client, "/api/why/attribute", {"text": TEXT, **body})


@pytest.fixture()
def slow(client):
    hook = SlowForwards(client.app.state.holder.model, 0.03, "lmpeek-attribution")
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
    assert direct.forwards == 1 + 1 + n  # the target-finding forward gave F(x); F(x'); n occlusions

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
    hook = SlowForwards(client.app.state.holder.model, 0.0, "lmpeek-attribution")
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
    body = {"text": TEXT + " again", "method": "shapley", "features": "words"}
    cancel_at_first_progress(client, "/api/why/attribute", body, slow)
    assert client.post("/api/trace", json={"text": "next"}).status_code == 200


def test_a_light_request_is_answered_while_an_attribution_runs(client, slow):
    body = {"text": TEXT + " twice", "method": "shapley", "features": "words"}
    _, order = light_request_while_running(client, "/api/why/attribute", body)
    assert order == ["trace", "result"]  # answered between the attribution's turns, not after it
