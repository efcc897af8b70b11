"""Logit lens on a tiny random numpy "model", against a loop and the model's own final prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmpeek.analysis.lens import logit_lens

RNG = np.random.default_rng(1)
L, D, V = 4, 8, 20


def _tiny_model(seed=0, bias=True):
    """A residual stream that grows layer by layer, an RMSNorm with weights, an unembedding (+ bias)."""
    r = np.random.default_rng(seed)
    embed = r.normal(size=D)
    writes = r.normal(size=(L, D))  # what each block adds to the stream
    resid = np.cumsum(np.vstack([embed, writes]), axis=0)[1:].astype(np.float32)  # resid_post [L, D]
    w = r.normal(size=D).astype(np.float32)
    W_U = r.normal(size=(V, D)).astype(np.float32)
    b = r.normal(size=V).astype(np.float32) if bias else None
    return resid, w, W_U, b


def _rms(w, eps=1e-6):
    def norm(x):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    return norm


def _lens_loop(resid_row, w, W_U, b, k, eps=1e-6):
    """One layer, the obvious way: RMSNorm, then every logit as a dot product, softmax, sort."""
    rms = math.sqrt(sum(x * x for x in resid_row) / len(resid_row) + eps)
    h = [x / rms * wi for x, wi in zip(resid_row, w, strict=True)]
    logits = [
        sum(a * c for a, c in zip(row, h, strict=True)) + (0.0 if b is None else b[v])
        for v, row in enumerate(W_U)
    ]
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    p = [x / sum(e) for x in e]
    order = sorted(range(len(p)), key=lambda i: (-p[i], i))[:k]
    return order, [p[i] for i in order]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_logit_lens_matches_a_loop(bias, k):
    resid, w, W_U, b = _tiny_model(seed=k, bias=bias)
    lens = logit_lens(resid, _rms(w), W_U, b, k=k)
    assert lens.ids.shape == (L, k) and lens.probs.shape == (L, k) and lens.ids.dtype == np.int64
    for layer in range(L):
        ids, probs = _lens_loop(resid[layer], w, W_U, b, k)
        assert lens.ids[layer].tolist() == ids
        assert lens.probs[layer] == pytest.approx(probs, rel=1e-5)
    assert np.all(np.diff(lens.probs, axis=1) <= 0)  # most likely first


def test_last_layer_is_the_models_own_prediction():
    resid, w, W_U, b = _tiny_model(seed=7)
    final_logits = W_U.astype(np.float64) @ _rms(w)(resid[-1]).astype(np.float64) + b  # the "model's" forward
    p = np.exp(final_logits - final_logits.max())
    p /= p.sum()
    lens = logit_lens(resid, _rms(w), W_U, b, k=V)  # the whole distribution, sorted
    np.testing.assert_allclose(lens.probs[-1], np.sort(p)[::-1], rtol=1e-5)
    np.testing.assert_allclose(lens.probs[-1][np.argsort(lens.ids[-1])], p, rtol=1e-5)
    np.testing.assert_allclose(lens.probs.sum(axis=1), 1.0, rtol=1e-6)
    assert lens.ids[-1, 0] == final_logits.argmax()


def test_with_a_torch_norm_module_as_the_server_passes_it():
    resid, w, W_U, _ = _tiny_model(seed=3, bias=False)
    norm = torch.nn.RMSNorm(D, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(w))

    def final_norm(v):
        with torch.inference_mode():
            return norm(torch.as_tensor(v, dtype=torch.float32)).numpy()

    a = logit_lens(resid, final_norm, torch.from_numpy(W_U), None, k=5)
    b = logit_lens(resid, _rms(w), W_U, None, k=5)
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-5)


def test_layernorm_lens_and_float16_inputs():
    resid, _, W_U, b = _tiny_model(seed=4)

    def layer_norm(x):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)

    lens = logit_lens(resid.astype(np.float16), layer_norm, W_U.astype(np.float16), b, k=2)
    for layer in range(L):
        h = layer_norm(resid[layer].astype(np.float16).astype(np.float64))
        logits = W_U.astype(np.float16).astype(np.float64) @ h + b
        assert lens.ids[layer, 0] == logits.argmax()


def test_edge_cases():
    resid, w, W_U, b = _tiny_model(seed=5)
    lens = logit_lens(resid, _rms(w), W_U, b, k=V + 10)  # k is capped at V
    assert lens.ids.shape == (L, V) and sorted(lens.ids[0].tolist()) == list(range(V))
    # equal logits (duplicated unembedding rows): lower id first
    W_dup = np.vstack([W_U[:1], W_U[:1], W_U[1:3]])
    tie = logit_lens(resid, _rms(w), W_dup, None, k=4)
    for row in tie.ids:
        assert row.tolist().index(0) < row.tolist().index(1)
    # huge logits: the softmax stays finite and peaked
    big = logit_lens(resid * 1e4, lambda x: x, W_U * 1e4, None, k=3)
    assert np.isfinite(big.probs).all() and big.probs[:, 0] == pytest.approx(1.0)
    # a zero residual stream: a uniform distribution, not NaN
    flat = logit_lens(np.zeros((2, D), np.float32), _rms(w), W_U, None, k=3)
    assert flat.probs == pytest.approx(np.full((2, 3), 1 / V)) and flat.ids[0].tolist() == [0, 1, 2]


def test_errors():
    resid, w, W_U, b = _tiny_model()
    with pytest.raises(ValueError, match=r"resid must be \[L, D\]"):
        logit_lens(resid[0], _rms(w), W_U)
    with pytest.raises(ValueError, match=r"unembed must be \[V, D\]"):
        logit_lens(resid, _rms(w), W_U.T)
    with pytest.raises(ValueError, match="bias"):
        logit_lens(resid, _rms(w), W_U, b[:-1])
    with pytest.raises(ValueError, match="k must be"):
        logit_lens(resid, _rms(w), W_U, k=0)
    with pytest.raises(ValueError, match="final_norm returned"):
        logit_lens(resid, lambda x: x[:, :2], W_U)


@pytest.mark.parametrize("target", [0, 7, V - 1])
def test_target_rank_and_probability_at_every_layer(target):
    # the token that actually came next, followed through the layers wherever it ranks (k=1 here, so
    # mostly outside the top-k): its rank in the full sorted list, and its probability
    resid, w, W_U, b = _tiny_model(seed=target)
    lens = logit_lens(resid, _rms(w), W_U, b, k=1, target=target)
    for layer in range(L):
        order, probs = _lens_loop(resid[layer], w, W_U, b, V)
        assert lens.target_rank[layer] == order.index(target) + 1
        assert lens.target_prob[layer] == pytest.approx(probs[order.index(target)], rel=1e-5)
    assert logit_lens(resid, _rms(w), W_U, b, k=1).target_rank is None


def test_target_ties_rank_like_the_top_k():
    resid = np.zeros((1, D), dtype=np.float32)  # every logit equal: the order is by id
    lens = logit_lens(resid, lambda x: x, np.ones((V, D), np.float32), None, k=V, target=5)
    assert lens.ids[0].tolist() == list(range(V)) and lens.target_rank[0] == 6


def test_target_outside_the_vocabulary():
    resid, w, W_U, b = _tiny_model()
    with pytest.raises(ValueError, match="below the vocabulary size"):
        logit_lens(resid, _rms(w), W_U, b, target=V)
