"""GET /api/traces/{id}/flow: the route's graph is lmpeek.flow(...).to_json() on the same text (the
library's graph, tested in tests/attribution/test_flow.py against a dense implementation), bad input
is a 4xx with a message, and answers come from the Session's cache (no second forward)."""

from __future__ import annotations

import pytest

import lmpeek
from lmpeek.attribution import flow as flow_module

TEXT = "The capital of France is Paris. The capital of Germany is"
MODEL = "tiny:llama"


def get(client, tid, **params):
    return client.get(f"/api/traces/{tid}/flow", params=params)


def same(got, want):
    """Equal graphs: the same nodes and edges in the same order, numbers to float rounding."""
    assert {k: got[k] for k in ("tokens", "target", "n_layers", "parallel", "contrastive")} == {
        k: want[k] for k in ("tokens", "target", "n_layers", "parallel", "contrastive")
    }
    for a, b in (
        [(got["prediction"], want["prediction"])]
        + list(zip(got["nodes"], want["nodes"], strict=True))
        + list(zip(got["edges"], want["edges"], strict=True))
    ):
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if not isinstance(v, float)} == {
            k: v for k, v in b.items() if not isinstance(v, float)
        }
        assert {k: v for k, v in a.items() if isinstance(v, float)} == pytest.approx(
            {k: v for k, v in b.items() if isinstance(v, float)}, rel=1e-6, abs=1e-9
        )


@pytest.mark.parametrize("token, threshold", [(-1, 0.04), (5, 0.02), (-1, 0.1), (-1, 0.01)])
def test_the_route_answers_the_library_graph(client, tid, token, threshold):
    model = client.app.state.holder.model
    T = len(client.get(f"/api/traces/{tid}").json()["tokens"])
    token = token % T
    r = get(client, tid, token=token, threshold=threshold)
    assert r.status_code == 200, r.text
    want = lmpeek.flow(model, TEXT, token=token, threshold=threshold).to_json()
    same(r.json(), want)
    assert len(want["edges"]) > 0 and r.json()["threshold"] == threshold


def test_contrast_edges_carry_their_effect(client, tid):
    model = client.app.state.holder.model
    g = get(client, tid, token=3).json()
    b = (g["prediction"]["id"] + 1) % 100
    r = get(client, tid, token=3, contrast=b)
    assert r.status_code == 200, r.text
    want = lmpeek.flow(model, TEXT, token=3, contrastive=b).to_json()
    same(r.json(), want)
    assert all("contrast" in e for e in r.json()["edges"]) and r.json()["contrastive"]["b_id"] == b
    assert "contrast" not in g["edges"][0]  # left out, not null, without a contrast


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"token": 10_000}, 422, "token"),
        ({"token": -1}, 422, "token"),
        ({"token": 0, "threshold": 0}, 422, "threshold"),
        ({"token": 0, "threshold": 1.5}, 422, "threshold"),
        ({"token": 0, "threshold": "nan"}, 422, "threshold"),
        ({}, 422, "token"),
        ({"token": 0, "contrast": 10**9}, 400, "contrastive"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(client, tid, params, status, words):
    r = get(client, tid, **params)
    assert r.status_code == status, r.text
    assert words in r.text


def test_unknown_trace_is_404(client):
    assert get(client, "nope", token=0).status_code == 404


def test_answers_are_cached_and_one_forward_serves_every_threshold(client, monkeypatch):
    """A new trace: the first answer makes one Decomposition (one forward); other thresholds, tokens
    and the same question again make none, and the same question is not even re-walked."""
    tid = client.post("/api/trace", json={"text": TEXT + " Rome"}).json()["id"]
    made, walks = [], []
    real_init, real_walk = flow_module.Decomposition.__init__, flow_module.walk

    def init(self, *a, **k):
        made.append(1)
        real_init(self, *a, **k)

    def walk(*a, **k):
        walks.append(1)
        return real_walk(*a, **k)

    monkeypatch.setattr(flow_module.Decomposition, "__init__", init)
    monkeypatch.setattr(flow_module, "walk", walk)
    first = get(client, tid, token=4, threshold=0.03).json()
    assert (len(made), len(walks)) == (1, 1)
    assert get(client, tid, token=4, threshold=0.03).json() == first
    assert (len(made), len(walks)) == (1, 1)  # the answer itself was cached
    other = get(client, tid, token=4, threshold=0.08).json()
    get(client, tid, token=2, threshold=0.03)
    assert (len(made), len(walks)) == (1, 3)  # re-walked, no second forward
    ids = {(e["source"], e["target"], e["head"]) for e in other["edges"]}
    assert ids <= {
        (e["source"], e["target"], e["head"]) for e in first["edges"]
    }  # a higher threshold only prunes
