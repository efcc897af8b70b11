"""Attention entropy and RoPE-split attention against explicit loops, a real rotation, and torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmpeek.analysis.attention import rope_parts_pattern
from lmpeek.capture.attention_kernel import attention_entropy

RNG = np.random.default_rng(3)


# --- attention entropy --------------------------------------------------------------------------------


def test_attention_entropy_against_a_loop():
    T = 5
    scores = RNG.normal(size=(2, T, T))
    p = np.where(np.tril(np.ones((T, T), bool)), np.exp(scores), 0.0)
    p /= p.sum(-1, keepdims=True)
    got = attention_entropy(torch.tensor(p))
    assert got.shape == (2, T) and got.dtype == torch.float32
    for h in range(2):
        for q in range(T):
            want = -sum(x * math.log(x) for x in p[h, q] if x > 0)
            assert got[h, q].item() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_attention_entropy_edge_cases():
    one_hot = torch.eye(4)
    assert attention_entropy(one_hot).tolist() == [0, 0, 0, 0]  # 0·log 0 counts as 0, no NaN
    uniform = torch.full((3, 3), 1 / 3)
    assert attention_entropy(uniform).tolist() == pytest.approx([math.log(3)] * 3)
    assert attention_entropy(uniform.half()).dtype == torch.float32


# --- RoPE parts ---------------------------------------------------------------------------------------


def _pattern_loop(q, k, scale):
    """q [T, d], k [T, d] for one head -> causal softmax pattern [T, T], with plain Python loops."""
    T = len(q)
    out = [[0.0] * T for _ in range(T)]
    for i in range(T):
        s = [sum(a * b for a, b in zip(q[i], k[j], strict=True)) * scale for j in range(i + 1)]
        m = max(s)
        e = [math.exp(x - m) for x in s]
        for j in range(i + 1):
            out[i][j] = e[j] / sum(e)
    return np.array(out)


def _rope(x, positions, rotary_dims, base=10000.0):
    """Rotate the first `rotary_dims` dims of x [T, H, d] by position, GPT-NeoX / Llama "rotate_half"
    style (pairs i and i + r/2); the other dims pass through."""
    x = x.copy()
    half = rotary_dims // 2
    inv = base ** (-np.arange(half) * 2 / rotary_dims)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv  # [T, half]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = x[..., :half].copy(), x[..., half:rotary_dims].copy()
    x[..., :half] = a * cos - b * sin
    x[..., half:rotary_dims] = b * cos + a * sin
    return x


def _qk(T, H, H_kv, d, rotary_dims, positions=None):
    q_pre, k_pre = RNG.normal(size=(T, H, d)), RNG.normal(size=(T, H_kv, d))
    positions = np.arange(T) if positions is None else positions
    return q_pre, k_pre, _rope(q_pre, positions, rotary_dims), _rope(k_pre, positions, rotary_dims)


@pytest.mark.parametrize("rotary_dims", [4, 8, 16])
@pytest.mark.parametrize("H_kv", [1, 2, 4])
def test_rope_parts_against_loops(rotary_dims, H_kv):
    T, H, d, scale = 6, 4, 16, 0.25
    q_pre, k_pre, q_rot, k_rot = _qk(T, H, H_kv, d, rotary_dims)
    for part in ("full", "applied", "not_applied"):
        got = rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, rotary_dims, part, scale, H)
        assert got.shape == (H, T, T) and got.dtype == np.float32
        for h in range(H):
            kh = h // (H // H_kv)  # grouped-query: consecutive query heads share a KV head
            if part == "full" or (part == "applied" and rotary_dims == d):
                q, k = q_rot[:, h], k_rot[:, kh]
            elif part == "applied":
                q, k = q_rot[:, h, :rotary_dims], k_rot[:, kh, :rotary_dims]
            elif rotary_dims == d:  # llama family: the un-rotated vectors
                q, k = q_pre[:, h], k_pre[:, kh]
            else:  # partial rotary: the dims RoPE leaves alone
                q, k = q_pre[:, h, rotary_dims:], k_pre[:, kh, rotary_dims:]
            np.testing.assert_allclose(got[h], _pattern_loop(q, k, scale), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("H_kv", [1, 2, 4])
def test_full_equals_a_torch_causal_attention(H_kv):
    """ "full" is the model's own pattern: same as an eager torch implementation (HF's repeat_kv layout)."""
    T, H, d = 7, 4, 8
    q_pre, k_pre, q_rot, k_rot = _qk(T, H, H_kv, d, d)
    got = rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, d, "full", d**-0.5, H)
    q = torch.tensor(q_rot).transpose(0, 1)  # [H, T, d]
    k = torch.tensor(k_rot).transpose(0, 1).repeat_interleave(H // H_kv, dim=0)
    scores = q @ k.transpose(-1, -2) * d**-0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    np.testing.assert_allclose(got, torch.softmax(scores, -1).numpy(), rtol=1e-5, atol=1e-7)


def test_rope_parts_with_a_real_rotation():
    T, H, d = 8, 2, 8
    # the same content at every position: only RoPE can tell the tokens apart
    q_pre = np.broadcast_to(RNG.normal(size=(1, H, d)), (T, H, d)).copy()
    k_pre = np.broadcast_to(RNG.normal(size=(1, H, d)), (T, H, d)).copy()
    pos = np.arange(T)
    q_rot, k_rot = _rope(q_pre, pos, d), _rope(k_pre, pos, d)
    not_applied = rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, d, "not_applied", 1.0, H)
    want = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # no position: uniform over the prefix
    np.testing.assert_allclose(not_applied, np.broadcast_to(want, not_applied.shape), rtol=1e-6)
    applied = rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, d, "applied", 1.0, H)
    assert np.abs(applied - not_applied).max() > 1e-3  # position changes the pattern
    np.testing.assert_array_equal(applied, rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, d, "full", 1.0, H))
    # RoPE is relative: shifting every position by the same offset leaves the rotated scores alone
    q_s, k_s = _rope(q_pre, pos + 37, d), _rope(k_pre, pos + 37, d)
    np.testing.assert_allclose(
        rope_parts_pattern(q_pre, k_pre, q_s, k_s, d, "applied", 1.0, H), applied, rtol=1e-4, atol=1e-6
    )


def test_partial_rotary_parts_split_the_scores():
    """For partial rotary the full scores are the sum of the two parts' scores (before the softmax)."""
    T, H, d, r = 5, 2, 12, 4
    q_pre, k_pre, q_rot, k_rot = _qk(T, H, H, d, r)
    np.testing.assert_array_equal(q_pre[..., r:], q_rot[..., r:])
    parts = {
        p: rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, r, p, 1.0, H).astype(np.float64)
        for p in ("full", "applied", "not_applied")
    }
    # log-probabilities differ from scores by a per-row constant: compare softmax(s_applied + s_not)
    mask = np.tril(np.ones((T, T), bool))
    combined = np.where(mask, np.log(np.where(mask, parts["applied"] * parts["not_applied"], 1.0)), -np.inf)
    combined = np.exp(combined - combined.max(-1, keepdims=True))
    np.testing.assert_allclose(
        combined / combined.sum(-1, keepdims=True), parts["full"], rtol=1e-4, atol=1e-6
    )


def test_rope_parts_outputs_are_probabilities_even_for_huge_scores():
    T, H, d = 6, 2, 8
    q_pre, k_pre, q_rot, k_rot = _qk(T, H, H, d, 4)
    got = rope_parts_pattern(q_pre * 1e3, k_pre * 1e3, q_rot * 1e3, k_rot * 1e3, 4, "full", 10.0, H)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    assert (got[:, np.triu(np.ones((T, T), bool), 1)] == 0).all()  # causal
    one = rope_parts_pattern(q_pre[:1], k_pre[:1], q_rot[:1], k_rot[:1], 4, "applied", 1.0, H)
    assert one.tolist() == [[[1.0]], [[1.0]]]  # a single token attends to itself


def test_rope_parts_errors():
    T, H, d = 4, 4, 8
    q_pre, k_pre, q_rot, k_rot = _qk(T, H, 2, d, 4)
    with pytest.raises(ValueError, match="unknown part 'half'"):
        rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, 4, "half", 1.0, H)
    for bad in (0, 9):
        with pytest.raises(ValueError, match="rotary_dims must be in 1..8"):
            rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, bad, "full", 1.0, H)
    with pytest.raises(ValueError, match="n_heads"):
        rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, 4, "full", 1.0, 2)
    with pytest.raises(ValueError, match="n_heads"):  # 4 query heads cannot share 3 KV heads
        k3 = RNG.normal(size=(T, 3, d))
        rope_parts_pattern(q_pre, k3, q_rot, k3, 4, "full", 1.0, H)
    with pytest.raises(ValueError, match="differ"):
        rope_parts_pattern(q_pre, k_pre[:3], q_rot, k_rot[:3], 4, "full", 1.0, H)
    with pytest.raises(ValueError, match="pre- and post-RoPE"):
        rope_parts_pattern(q_pre[..., :4], k_pre, q_rot, k_rot, 4, "full", 1.0, H)
    with pytest.raises(ValueError, match=r"\[T, H, d\]"):
        rope_parts_pattern(q_pre[0], k_pre[0], q_rot[0], k_rot[0], 4, "full", 1.0, H)
