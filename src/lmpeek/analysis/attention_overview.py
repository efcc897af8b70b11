"""Numbers behind the attention overview (model, head and neuron views): pure numpy, no torch.

- `pool_window`: a thumbnail of one head's pattern over a token window, block-pooled when the window
  is wider than the thumbnail.
- `qk_terms`: the elementwise products q_i·k_i that make up one pre-softmax score, and the whole
  row of scores whose softmax is the pattern row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pool_factor(width: int, size: int) -> int:
    """How many tokens one thumbnail cell covers along each axis: 1 when the window fits."""
    if width < 1 or size < 1:
        raise ValueError(f"width and size must be >= 1, got {width} and {size}")
    return -(-width // size)


def pool_window(pattern: np.ndarray, factor: int) -> np.ndarray:
    """Pool a window of attention [..., w, w] (query rows, key columns) into cells of factor×factor
    tokens: a cell is the MEAN over its query rows of the SUM of their weights on its keys, i.e. the
    average attention those queries give that block of keys (a pooled row still sums to what its
    queries give the window, at most 1). The last cells may cover fewer tokens; nothing is padded in."""
    p = np.asarray(pattern, dtype=np.float32)
    if factor == 1:
        return p
    w = p.shape[-1]
    n = -(-w // factor)
    pad = n * factor - w
    padded = np.pad(p, [(0, 0)] * (p.ndim - 2) + [(0, pad), (0, pad)])
    sums = padded.reshape(*p.shape[:-2], n, factor, n, factor).sum(axis=(-3, -1))
    rows = np.minimum(factor, w - np.arange(n) * factor).astype(np.float32)  # real query rows per cell
    return sums / rows[:, None]


@dataclass(frozen=True)
class QkTerms:
    """One query/key pair of one head, from q and k as the model scores them."""

    products: np.ndarray  # [d] q_i * k_i; their sum is the dot product
    dot: float
    score: float  # what the softmax sees for this key: dot × scale (then softcapped, if the model caps)
    scores: np.ndarray  # [query + 1] the scores of every key the query can see; -inf where masked
    weights: np.ndarray  # [query + 1] softmax(scores): the pattern row; all NaN if a score is NaN/+inf


def qk_terms(
    q: np.ndarray,
    keys: np.ndarray,
    key: int,
    scale: float,
    softcap: float | None = None,
    window: int | None = None,
) -> QkTerms:
    """q [d]: the query token's vector; keys [query + 1, d]: every key up to and including the query's
    own position (the last row); `key` indexes into them. Scores are dot × scale, then
    tanh(s / softcap) × softcap where the model caps logits; keys outside a sliding `window` get -inf.
    Where a score is NaN or +inf (a model that overflowed), every weight is NaN, as the model's softmax
    makes them; the scores are returned as they are. Computed in float64 (the model's own kernel uses
    float32: they agree to rounding)."""
    q64 = np.asarray(q, dtype=np.float64)
    k64 = np.asarray(keys, dtype=np.float64)
    if k64.ndim != 2 or k64.shape[1] != q64.shape[0]:
        raise ValueError(f"keys must be [n, {q64.shape[0]}], got {k64.shape}")
    n = k64.shape[0]
    if not 0 <= key < n:
        raise ValueError(f"key must be < {n} (a query sees keys 0..{n - 1})")
    scores = (k64 @ q64) * scale
    if softcap:
        scores = np.tanh(scores / softcap) * softcap
    if window:
        scores[: max(0, n - window)] = -np.inf  # the query is key n-1; it sees the last `window` keys
    top = scores.max()  # NaN if any score is NaN; +inf if one overflowed; -inf if none is left
    if np.isfinite(top):
        e = np.exp(scores - top)
        weights = e / e.sum()
    else:
        # a score the model lost (inf or NaN, e.g. from an inf in the residual stream) makes its softmax
        # row NaN as well, as in the model's own kernel: NaN weights (null in JSON), not a made-up row
        weights = np.full(n, np.nan)
    products = q64 * k64[key]
    return QkTerms(
        products=products,
        dot=float(products.sum()),
        score=float(scores[key]),
        scores=scores,
        weights=weights,
    )
