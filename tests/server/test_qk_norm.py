"""A model with q/k norms (Gemma 3) over HTTP: hook_q is the raw projection, hook_q_normed what RoPE
rotates, and the RoPE split of a pattern uses the latter."""

from __future__ import annotations

import numpy as np

MODEL = "tiny:gemma3"  # the server fixture (tests/server/conftest.py) serves it

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. def f(x): return x * 2"


def _causal_softmax(scores):
    scores = np.where(np.tril(np.ones(scores.shape, bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def test_components_offer_q_and_k_after_their_norms(client):
    points = [c.get("point") for c in client.get("/api/components").json()]
    assert {"attn.hook_q", "attn.hook_q_normed", "attn.hook_k_normed", "attn.hook_rot_q"} <= set(points)
    assert points.index("attn.hook_q") < points.index("attn.hook_q_normed") < points.index("attn.hook_rot_q")


def test_rope_not_applied_is_from_q_and_k_after_their_norms(client, full, tid):
    model = client.app.state.holder.model
    layer, head = 1, 2  # layer 1 is gemma3's full-attention layer here (layer 0 slides over 8 tokens)
    kv = head // (model.n_heads // model.bound.n_kv_heads)
    scale = model.bound.attention_params(layer).scale
    r = client.get(
        f"/api/traces/{tid}/attention", params={"layer": layer, "head": head, "rope": "not_applied"}
    )
    got = np.array(r.json()["data"])

    def pattern(q_point, k_point):
        q = full[f"blocks.{layer}.attn.{q_point}"][:, head].astype(np.float64)
        k = full[f"blocks.{layer}.attn.{k_point}"][:, kv].astype(np.float64)
        return _causal_softmax(q @ k.T * scale)

    np.testing.assert_allclose(got, pattern("hook_q_normed", "hook_k_normed"), atol=2e-2)
    assert np.abs(got - pattern("hook_q", "hook_k")).max() > 0.1  # the raw projections give another one


def test_vectors_of_q_and_q_normed_differ(client, full, tid):
    for hook in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_q_normed", "blocks.0.attn.hook_k_normed"):
        got = client.get(f"/api/traces/{tid}/vector", params={"hook": hook, "token": 4, "head": 1}).json()
        want = full[hook][4, 1 if "hook_q" in hook else 0]
        np.testing.assert_allclose(got["data"], want, rtol=2e-2, atol=2e-2 * max(1.0, np.abs(want).max()))
    assert np.abs(full["blocks.0.attn.hook_q"] - full["blocks.0.attn.hook_q_normed"]).max() > 0.1
