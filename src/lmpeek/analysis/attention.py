"""Attention patterns recomputed from the rotary (RoPE) and non-rotary parts of Q/K (numpy; the
attention entropy computed inside hooks is a torch kernel in capture.attention_kernel)."""

from __future__ import annotations

import numpy as np

ROPE_PARTS = ("full", "applied", "not_applied")


def rope_parts_pattern(
    q_pre: np.ndarray,
    k_pre: np.ndarray,
    q_rot: np.ndarray,
    k_rot: np.ndarray,
    rotary_dims: int,
    part: str,
    scale: float,
    n_heads: int,
) -> np.ndarray:
    """Causal attention recomputed from part of Q/K, to show how much of a pattern comes from position.

    Shapes: q_pre, q_rot [T, H, d] (H == n_heads); k_pre, k_rot [T, H_kv, d], where H_kv divides H and
    query head h reads KV head h // (H / H_kv) (grouped-query attention; H_kv == H is plain multi-head).
    q_pre/k_pre are before RoPE (hook_q/hook_k), q_rot/k_rot after it (hook_rot_q/hook_rot_k). Returns
    the pattern [H, T, T] (query, key), float32.

    part "full": q_rot·k_rot over every dimension: the model's own pattern for plain causal attention
    (no logit softcap, no sliding window, no attention sinks).
    Partial rotary (rotary_dims < d; gpt_neox, phi3, where the first `rotary_dims` dimensions of each
    head are rotated): "applied" uses only those dimensions of q_rot/k_rot, "not_applied" only the
    remaining d - rotary_dims (unrotated; equal in q_pre and q_rot, taken from q_rot/k_rot).
    Full rotary (rotary_dims == d; the llama family): "applied" is the rotated scores (the same as
    "full"), and "not_applied" the scores of the pre-RoPE vectors, q_pre·k_pre: attention without
    position information.

    Scores are multiplied by `scale` (usually d ** -0.5, before any slicing: the model's own scale),
    keys after the query are masked, and the softmax is taken in float64. Memory: a few [H, T, T]
    float64 arrays, so pass one head (H = H_kv = 1) for long texts.
    """
    if part not in ROPE_PARTS:
        raise ValueError(f"unknown part '{part}': use full, applied or not_applied")
    q_pre, k_pre, q_rot, k_rot = (np.asarray(a, dtype=np.float64) for a in (q_pre, k_pre, q_rot, k_rot))
    if q_pre.shape != q_rot.shape or k_pre.shape != k_rot.shape:
        raise ValueError(
            f"pre- and post-RoPE shapes differ: q {q_pre.shape} vs {q_rot.shape}, "
            f"k {k_pre.shape} vs {k_rot.shape}"
        )
    if q_rot.ndim != 3 or k_rot.ndim != 3:
        raise ValueError(f"q must be [T, H, d] and k [T, H_kv, d], got {q_rot.shape} and {k_rot.shape}")
    T, H, d = q_rot.shape
    T_k, H_kv, d_k = k_rot.shape
    if T_k != T or d_k != d:
        raise ValueError(f"q {q_rot.shape} and k {k_rot.shape} differ in tokens or head size")
    if H != n_heads or H_kv < 1 or n_heads % H_kv:
        raise ValueError(f"q has {H} heads and k {H_kv}: need n_heads ({n_heads}) == H, a multiple of H_kv")
    if not 0 < rotary_dims <= d:
        raise ValueError(f"rotary_dims must be in 1..{d} (the head size), got {rotary_dims}")
    if part == "full" or (part == "applied" and rotary_dims == d):
        q, k = q_rot, k_rot
    elif part == "applied":
        q, k = q_rot[..., :rotary_dims], k_rot[..., :rotary_dims]
    elif rotary_dims == d:  # not_applied, full rotary: the pre-RoPE vectors
        q, k = q_pre, k_pre
    else:  # not_applied, partial rotary: the dimensions RoPE leaves alone
        q, k = q_rot[..., rotary_dims:], k_rot[..., rotary_dims:]
    k = np.repeat(k, n_heads // H_kv, axis=1)  # [T, H, d']: query head h -> KV head h // group
    scores = np.einsum("qhd,khd->hqk", q, k) * scale
    scores[:, np.triu(np.ones((T, T), dtype=bool), 1)] = -np.inf
    scores -= scores.max(-1, keepdims=True)  # the diagonal is never masked: every row has a finite max
    p = np.exp(scores)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)
