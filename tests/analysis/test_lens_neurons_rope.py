"""Logit lens, neurons and RoPE-split attention against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

from lmpeek.analysis.attention import rope_parts_pattern
from lmpeek.analysis.lens import logit_lens
from lmpeek.analysis.neurons import neuron_over_text, top_neurons

RNG = np.random.default_rng(1)


def test_logit_lens_matches_a_loop_and_the_final_prediction():
    L, D, V = 4, 8, 20
    resid = RNG.normal(size=(L, D)).astype(np.float32)
    w = RNG.normal(size=D).astype(np.float32)
    W_U = RNG.normal(size=(V, D)).astype(np.float32)

    def rms(x):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w

    lens = logit_lens(resid, rms, W_U, k=3)
    for layer in range(L):
        logits = W_U @ rms(resid[layer])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        order = np.argsort(-p)[:3]
        assert lens.ids[layer].tolist() == order.tolist()
        assert lens.probs[layer] == pytest.approx(p[order], rel=1e-5)
    final = W_U @ rms(resid[-1])
    assert lens.ids[-1, 0] == final.argmax()


def test_neurons():
    acts = np.array([[0.1, -3.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]])
    idx, vals = top_neurons(acts, 0, k=3)
    assert idx.tolist() == [1, 3, 2] and vals.tolist() == [-3.0, 3.0, 2.0]  # tie: lower index first
    assert neuron_over_text(acts, 2).tolist() == [2.0, 0.0]
    with pytest.raises(ValueError):
        neuron_over_text(acts, 4)


def _softmax_causal(scores):
    T = scores.shape[-1]
    s = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("rotary_dims", [4, 16])
def test_rope_parts(rotary_dims):
    T, H, Hkv, d = 6, 4, 2, 16
    q_pre, k_pre = RNG.normal(size=(T, H, d)), RNG.normal(size=(T, Hkv, d))
    q_rot, k_rot = q_pre.copy(), k_pre.copy()
    q_rot[..., :rotary_dims] = RNG.normal(size=(T, H, rotary_dims))  # stand-in for the rotation
    k_rot[..., :rotary_dims] = RNG.normal(size=(T, Hkv, rotary_dims))
    scale = 0.25
    for part in ("full", "applied", "not_applied"):
        got = rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, rotary_dims, part, scale, H)
        for h in range(H):
            kh = h // (H // Hkv)
            if part == "full" or (part == "applied" and rotary_dims == d):
                q, k = q_rot[:, h], k_rot[:, kh]
            elif part == "applied":
                q, k = q_rot[:, h, :rotary_dims], k_rot[:, kh, :rotary_dims]
            elif rotary_dims == d:
                q, k = q_pre[:, h], k_pre[:, kh]
            else:
                q, k = q_rot[:, h, rotary_dims:], k_rot[:, kh, rotary_dims:]
            np.testing.assert_allclose(got[h], _softmax_causal(q @ k.T * scale), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, rotary_dims, "half", scale, H)
