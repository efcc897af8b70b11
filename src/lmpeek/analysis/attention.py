"""Attention patterns and their statistics."""

from __future__ import annotations

import torch


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention distribution: pattern [..., Tq, Tk] -> [..., Tq]."""
    p = pattern.float()
    return -torch.special.xlogy(p, p).sum(-1)


def rope_parts_pattern(q_pre, k_pre, q_rot, k_rot, rotary_dims: int, part: str, scale: float, n_heads: int):
    """Causal attention recomputed from part of Q/K, to show how much of a pattern comes from position.

    q_* [T, H, d], k_* [T, H_kv, d] (query head h reads KV head h // (H / H_kv)); returns [H, T, T].
    part "full": q_rot·k_rot over every dimension (the model's own scores, for plain causal attention).
    Partial rotary (rotary_dims < d; gpt_neox, phi3): "applied" uses only the first `rotary_dims`
    dimensions of each head (the rotated ones), "not_applied" only the others (unrotated: equal in
    q_pre and q_rot). Full rotary (llama family, rotary_dims == d): "applied" is the rotated scores
    (= full) and "not_applied" the scores of the pre-RoPE vectors, i.e. attention without positions.
    Scores are scaled by `scale`, softmax in float64, returned as float32.
    """
    import numpy as np

    q_pre, k_pre, q_rot, k_rot = (np.asarray(a, dtype=np.float64) for a in (q_pre, k_pre, q_rot, k_rot))
    d = q_rot.shape[-1]
    if part == "full" or (part == "applied" and rotary_dims >= d):
        q, k = q_rot, k_rot
    elif part == "applied":
        q, k = q_rot[..., :rotary_dims], k_rot[..., :rotary_dims]
    elif part == "not_applied":
        q, k = (q_pre, k_pre) if rotary_dims >= d else (q_rot[..., rotary_dims:], k_rot[..., rotary_dims:])
    else:
        raise ValueError(f"unknown part '{part}': use full, applied or not_applied")
    k = np.repeat(k, n_heads // k.shape[1], axis=1)  # [T, H, d']
    scores = np.einsum("qhd,khd->hqk", q, k) * scale
    T = scores.shape[-1]
    scores[:, np.triu(np.ones((T, T), dtype=bool), 1)] = -np.inf
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)
