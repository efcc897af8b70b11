"""Logit lens: what the residual stream after each layer would predict if it were decoded right away."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lens:
    ids: np.ndarray  # [L, k] int64 token ids, most likely first (ties: lower id first)
    probs: np.ndarray  # [L, k] float64 probabilities of those ids
    # when a target token is given (the token that actually came next): its rank (1 = most likely, ties
    # ranked as in `ids`) and probability at every layer, wherever it falls, inside the top-k or not
    target_rank: np.ndarray | None = None  # [L] int64
    target_prob: np.ndarray | None = None  # [L] float64


def logit_lens(
    resid: np.ndarray,
    final_norm: Callable[[np.ndarray], np.ndarray],
    unembed: np.ndarray,
    bias: np.ndarray | None = None,
    k: int = 5,
    target: int | None = None,
) -> Lens:
    """Logit lens for ONE token: top-k of softmax(unembed @ final_norm(resid_l) + bias) for every layer l.

    resid [L, D]: the token's residual stream after each layer (resid_post of every block, in order).
    final_norm: the model's final norm as a callable, numpy [L, D] float32 in, numpy [L, D] out (the
    caller wraps the module, so this function stays pure). unembed [V, D]: the unembedding W_U;
    bias [V] or None. The norm and the matmul run in float32 (numpy), the softmax in float64,
    shifted by each row's max (stable). k is capped at V. Returns Lens(ids [L, k], probs [L, k]), and
    with `target` (a token id) that token's rank and probability per layer.
    The last row, resid_post of the last block, reproduces the model's own next-token prediction.
    """
    resid = np.asarray(resid, dtype=np.float32)
    unembed = np.asarray(unembed, dtype=np.float32)
    if resid.ndim != 2:
        raise ValueError(f"resid must be [L, D] (one token's stream after each layer), got {resid.shape}")
    if unembed.ndim != 2 or unembed.shape[1] != resid.shape[1]:
        raise ValueError(f"unembed must be [V, D] with D = {resid.shape[1]}, got {unembed.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    h = np.asarray(final_norm(resid), dtype=np.float32)
    if h.shape != resid.shape:
        raise ValueError(f"final_norm returned shape {h.shape}, expected {resid.shape}")
    logits = h @ unembed.T  # [L, V] float32
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32)
        if bias.shape != (unembed.shape[0],):
            raise ValueError(f"bias must be [V] = [{unembed.shape[0]}], got {bias.shape}")
        logits = logits + bias
    logits = logits.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(k, probs.shape[1])
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(probs, ids, axis=1)
    if target is None:
        return Lens(ids=ids.astype(np.int64), probs=top)
    if not 0 <= target < probs.shape[1]:
        raise ValueError(
            f"target must be a token id below the vocabulary size {probs.shape[1]}, got {target}"
        )
    p = probs[:, target]
    # the same order as `ids`: higher probability first, then lower id first
    rank = (probs > p[:, None]).sum(axis=1) + (probs[:, :target] == p[:, None]).sum(axis=1) + 1
    return Lens(ids=ids.astype(np.int64), probs=top, target_rank=rank.astype(np.int64), target_prob=p)
