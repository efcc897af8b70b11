"""Logit lens: what the residual stream after each layer would predict if decoded right away."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lens:
    ids: np.ndarray  # [L, k] token ids, most likely first
    probs: np.ndarray  # [L, k]


def logit_lens(
    resid: np.ndarray,
    final_norm: Callable[[np.ndarray], np.ndarray],
    unembed: np.ndarray,
    bias: np.ndarray | None = None,
    k: int = 5,
) -> Lens:
    """resid [L, D]: one token's residual stream after each layer (resid_post of every block).
    Each row goes through the model's final norm (`final_norm`, numpy in and out) and the
    unembedding W_U [V, D] (+ bias [V]); returns the top-k of the softmax per layer. The last row
    reproduces the model's own prediction."""
    h = np.asarray(final_norm(np.asarray(resid, dtype=np.float32)), dtype=np.float32)  # [L, D]
    logits = h @ np.asarray(unembed, dtype=np.float32).T  # [L, V]
    if bias is not None:
        logits = logits + bias
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(k, probs.shape[1])
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return Lens(ids=ids, probs=np.take_along_axis(probs, ids, axis=1))
