"""Some query rows of one head's attention pattern, with the model's own kernel (scale, softcap, sliding
window): rows start..end-1 need only keys 0..end-1, so a window of a long text never builds [T, T]."""

from __future__ import annotations

import numpy as np
import torch

from lmpeek.capture.attention_kernel import causal_attention


def pattern_rows(model, layer: int, q_rows: np.ndarray, k_prefix: np.ndarray) -> np.ndarray:
    """q_rows [w, d]: the queries at positions end-w..end-1 (after RoPE where the model has it);
    k_prefix [end, d]: the keys at positions 0..end-1 of the KV head they read. Returns the pattern
    rows [w, end] (float32), equal to rows end-w..end-1 of `capture.slices.head_pattern`."""
    params = model.bound.attention_params(layer)
    qt = torch.as_tensor(np.asarray(q_rows), dtype=torch.float32)[None, None]  # [1, 1, w, d]
    kt = torch.as_tensor(np.asarray(k_prefix), dtype=torch.float32)[None, None]  # [1, 1, end, d]
    w, end = qt.shape[2], kt.shape[2]
    if w > end:
        raise ValueError(f"{w} query rows need at least as many keys, got {end}")
    mask = None
    if params.window:
        i = torch.arange(end - w, end)[:, None]  # absolute query positions
        j = torch.arange(end)[None, :]
        allowed = (j <= i) & (i - j < params.window)
        mask = torch.zeros(1, 1, w, end).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        _, _, pattern = causal_attention(
            qt, kt, kt, mask, params.scale, softcap=params.softcap, want_pattern=True
        )
    return pattern[0, 0].numpy()
