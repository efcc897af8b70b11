"""Some query rows of attention patterns, scored as the model scores (scale, softcap, sliding window):
rows start..end-1 need only keys 0..end-1, so a window of a long text never builds [T, T]."""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def pattern_rows(model, layer: int, q_rows: np.ndarray, k_prefix: np.ndarray) -> np.ndarray:
    """q_rows [..., w, d]: queries at positions end-w..end-1 (after RoPE where the model has it);
    k_prefix [..., end, d]: the keys at positions 0..end-1 they read (leading dims, e.g. heads, match).
    Returns the pattern rows [..., w, end] (float32): rows end-w..end-1 of the layer's pattern, as
    `capture.slices.head_pattern` and the model's eager attention compute them (float32 softmax);
    only the score matrix is built, no attention output."""
    params = model.bound.attention_params(layer)
    q = torch.as_tensor(np.asarray(q_rows), dtype=torch.float32)
    k = torch.as_tensor(np.asarray(k_prefix), dtype=torch.float32)
    w, end = q.shape[-2], k.shape[-2]
    if w > end:
        raise ValueError(f"{w} query rows need at least as many keys, got {end}")
    scores = torch.matmul(q, k.transpose(-1, -2)) * params.scale
    if params.softcap is not None:
        scores = torch.tanh(scores / params.softcap) * params.softcap
    i = torch.arange(end - w, end)[:, None]  # absolute query positions
    j = torch.arange(end)[None, :]
    allowed = j <= i
    if params.window:
        allowed &= i - j < params.window
    return torch.softmax(scores.masked_fill_(~allowed, float("-inf")), dim=-1).numpy()
