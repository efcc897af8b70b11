"""Explore-view analyses over HTTP against independent numpy computations on a full forward's arrays.

The server recomputes each layer from the stored residual stream (float32), so every value agrees with
the full float32 forward within 1e-3 × max|ref| (float16 storage left them up to 2e-2 off).
"""

from __future__ import annotations

import numpy as np
import pytest

import lmpeek

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. def f(x): return x * 2"
BOUND = 1e-3  # × max|ref|


def close(got, want, bound: float = BOUND) -> None:
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), want, rtol=0, atol=bound * np.abs(want).max()
    )


def get(client, tid, what, **params):
    r = client.get(f"/api/traces/{tid}/{what}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_activation_stats(client, full, tid):
    x = full["blocks.1.hook_resid_post"]
    r = get(client, tid, "activations", hook="blocks.1.hook_resid_post", stat="norm")
    close(r["values"], np.linalg.norm(x, axis=1))
    assert r["scale"]["kind"] == "sequential" and r["scale"]["min"] == 0.0  # raw: a norm's floor
    assert r["scale"]["max"] == pytest.approx(max(r["values"]))
    r = get(client, tid, "activations", hook="blocks.1.hook_resid_post", stat="abs_sum", scale="minmax")
    close(r["values"], np.abs(x).sum(1))
    assert (r["scale"]["min"], r["scale"]["max"]) == pytest.approx((min(r["values"]), max(r["values"])))
    r = get(client, tid, "activations", hook="blocks.0.attn.hook_q", head=1, stat="value", dim=3)
    close(r["values"], full["blocks.0.attn.hook_q"][:, 1, 3])
    m = max(abs(v) for v in r["values"])
    want = {"kind": "diverging", "min": -m, "divider": 0.0, "max": m, "mode": "raw"}
    assert r["scale"] == {**want, "left_out": [], "clipped": []}


def test_similarities(client, full, tid):
    x = full["blocks.1.hook_mlp_out"]
    r = get(client, tid, "similarity", hook="blocks.1.hook_mlp_out", token=4, kind="tokens")
    np.testing.assert_allclose(r["values"], [_cos(x[4], v) for v in x], atol=BOUND)
    r = get(client, tid, "similarity", hook="blocks.1.hook_resid_post", token=0, kind="previous")
    prev, cur = full["blocks.0.hook_resid_post"], full["blocks.1.hook_resid_post"]
    np.testing.assert_allclose(r["values"], [_cos(a, b) for a, b in zip(cur, prev, strict=True)], atol=BOUND)
    r = get(client, tid, "similarity", hook="blocks.1.hook_mlp_out", token=0, kind="residual")
    mid = full["blocks.1.hook_resid_mid"]
    np.testing.assert_allclose(r["values"], [_cos(a, b) for a, b in zip(x, mid, strict=True)], atol=BOUND)


def test_histogram_and_outliers(client, full, tid):
    r = get(client, tid, "histogram", hook="blocks.1.hook_resid_post", token=3, bins=16)
    assert len(r["edges"]) == 17 and sum(r["token"]) == 64 and len(r["median"]) == 16
    v = full["blocks.1.hook_resid_post"][3]
    for d in r["outliers"]["dims"]:
        assert (r["outliers"]["high"] is not None and v[d] > r["outliers"]["high"] - 0.1) or (
            r["outliers"]["low"] is not None and v[d] < r["outliers"]["low"] + 0.1
        )


def test_scatter(client, full, tid):
    x = full["blocks.0.hook_attn_out"]
    r = get(client, tid, "scatter", hook="blocks.0.hook_attn_out", x=2, y=5)
    close(r["x"], x[:, 2])
    close(r["y"], x[:, 5])
    r = get(client, tid, "scatter", hook="blocks.0.hook_attn_out", a=1, b=2)
    close(r["x"], x[1])


def test_logit_lens_last_layer_is_the_prediction(client, full, tid):
    r = get(client, tid, "logit_lens", token=5, k=5)
    assert len(r["ids"]) == 2 and len(r["ids"][0]) == 5
    assert r["ids"][-1][0] == int(full.topk_ids[5, 0])
    np.testing.assert_allclose(r["probs"][-1], full.topk_probs[5, :5], atol=BOUND)
    assert r["tokens"][-1] == full.topk_tokens[5][:5]  # the same labels as the predictions panel
    assert "target" not in r


def test_logit_lens_follows_the_actual_next_token(client, full, tid):
    # the page asks at position t-1 for token t: its rank and probability at every layer; the last
    # layer's are the model's own prediction of it
    nxt = int(full.token_ids[6])
    r = get(client, tid, "logit_lens", token=5, k=1, target=nxt)
    assert r["target"]["id"] == nxt and r["target"]["token"] == full.tokens[6]
    assert len(r["target"]["ranks"]) == len(r["target"]["probs"]) == 2
    np.testing.assert_allclose(r["target"]["probs"][-1], full.true_prob[5], atol=BOUND)
    top = full.topk_ids[5].tolist()  # the trace's top-10 at position 5
    rank = r["target"]["ranks"][-1]
    assert rank == top.index(nxt) + 1 if nxt in top else rank > len(top)
    bad = client.get(f"/api/traces/{tid}/logit_lens", params={"token": 5, "target": 10**6})
    assert bad.status_code == 422 and "target" in bad.json()["detail"]


def test_neurons(client, full, tid):
    post = full["blocks.1.mlp.hook_post"]
    r = get(client, tid, "neurons", layer=1, token=6, k=3)
    assert r["indices"][0] == int(np.abs(post[6]).argmax())
    r = get(client, tid, "neuron", layer=1, index=r["indices"][0])
    close(r["values"], post[:, int(np.abs(post[6]).argmax())])


def test_rope_parts(client, full, tid):
    url = f"/api/traces/{tid}/attention"
    whole = np.array(client.get(url, params={"layer": 1, "head": 2, "rope": "full"}).json()["data"])
    np.testing.assert_allclose(whole, full["blocks.1.attn.hook_pattern"][2], atol=BOUND)
    for part in ("applied", "not_applied"):
        p = np.array(client.get(url, params={"layer": 1, "head": 2, "rope": part}).json()["data"])
        np.testing.assert_allclose(p.sum(1), 1, atol=BOUND)
        assert (np.triu(p, 1) == 0).all()


def test_compare(client, full, tid):
    other = client.post("/api/trace", json={"text": "Completely different words here."}).json()["id"]
    r = client.get("/api/compare", params={"a": tid, "b": other, "component": "mlp_out"}).json()
    b = lmpeek.trace(client.app.state.holder.model, "Completely different words here.")
    want = full.norm_matrix("mlp_out").mean(1) - b.norm_matrix("mlp_out").mean(1)
    np.testing.assert_allclose(r["diff"], want, rtol=1e-4)


def test_samples(client):
    listing = client.get("/api/samples").json()
    assert len(listing) >= 8
    one = client.get(f"/api/samples/{listing[0]['id']}").json()
    assert one["text"] and one["title"] == listing[0]["title"]
    assert client.get("/api/samples/nope").status_code == 404
    # the demo corpus: found by search, opened as a sample
    found = client.get("/api/samples/search", params={"q": "context manager", "limit": 3}).json()
    assert found["documents"] > 1000 and found["total"] >= 3 and len(found["items"]) == 3
    doc = client.get(f"/api/samples/{found['items'][0]['id']}").json()
    assert doc["kind"] == "corpus" and len(doc["text"]) == found["items"][0]["chars"]
    assert client.get("/api/samples/corpus:nope").status_code == 404
    assert client.get("/api/samples/search", params={"q": "?!"}).status_code == 400
    assert client.get("/api/samples/search", params={"q": "x" * 201}).status_code == 422


@pytest.mark.parametrize(
    "what, params, status",
    [
        ("activations", {"hook": "blocks.0.hook_resid_post", "stat": "value"}, 422),
        ("activations", {"hook": "blocks.0.hook_resid_post", "stat": "bogus"}, 422),
        ("similarity", {"hook": "blocks.0.hook_resid_post", "kind": "previous"}, 422),
        ("similarity", {"hook": "blocks.1.hook_resid_post", "kind": "residual"}, 422),
        ("similarity", {"hook": "blocks.1.hook_resid_post", "token": 999}, 422),
        ("scatter", {"hook": "blocks.0.hook_resid_post"}, 422),
        ("scatter", {"hook": "blocks.0.hook_resid_post", "x": 0, "y": 999}, 422),
        ("logit_lens", {"token": 999}, 422),
        ("neuron", {"layer": 0, "index": 10_000}, 422),
        ("histogram", {"hook": "blocks.7.hook_resid_post"}, 400),
    ],
)
def test_bad_analysis_requests(client, tid, what, params, status):
    assert client.get(f"/api/traces/{tid}/{what}", params=params).status_code == status
