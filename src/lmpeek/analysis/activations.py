"""Activation statistics: per-token summaries, similarities, histograms, IQR outliers.

Colour limits for any of these live in analysis.scales (one implementation, used by the server).

x [T, D] is one component's vector per token (a per-head component already sliced to one head by the
caller). Everything here is numpy and computed in float64 unless it says otherwise; a torch tensor on
the CPU is accepted wherever an array is (it goes through np.asarray). Outputs are NaN-free for finite
inputs: zero vectors give cosine 0, constant arrays give a histogram that still works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _matrix(x, name: str = "x") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [T, D] (one vector per token), got shape {a.shape}")
    return a


def _token(t: int, n: int) -> int:
    if not 0 <= t < n:
        raise ValueError(f"token {t} is out of range 0..{n - 1}")
    return int(t)


def abs_sum(x: np.ndarray) -> np.ndarray:
    """Sum of absolute values per token (DeepPeek's "Sum"): [T, D] -> [T]."""
    return np.abs(_matrix(x)).sum(axis=1)


def values(x: np.ndarray, dim: int) -> np.ndarray:
    """One dimension across tokens: [T, D] -> [T]. ValueError if dim is not in 0..D-1."""
    x = _matrix(x)
    if not 0 <= dim < x.shape[1]:
        raise ValueError(f"dimension {dim} is out of range 0..{x.shape[1] - 1}")
    return x[:, dim].copy()


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def cosine_to_tokens(x: np.ndarray, t: int) -> np.ndarray:
    """Cosine of token t's vector with every token's vector (same layer, same head): [T, D] -> [T] in
    [-1, 1]; 0 where either vector is zero (never NaN). ValueError if t is not in 0..T-1."""
    x = _matrix(x)
    t = _token(t, x.shape[0])
    u = _unit(x)
    return np.clip(u @ u[t], -1.0, 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine between two [T, D] arrays -> [T] in [-1, 1]; 0 where a row is zero. Used for the
    same token one layer earlier, and for a component against the residual stream it was added to."""
    a, b = _matrix(a, "a"), _matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return np.clip((_unit(a) * _unit(b)).sum(axis=1), -1.0, 1.0)


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray  # [bins + 1] float64, shared by every token
    token: np.ndarray  # [bins] int64 counts of the token's values over its D dimensions
    median: np.ndarray  # [bins] float64: per-bin median of all T tokens' counts (DeepPeek's orange one)


def histogram(x: np.ndarray, t: int, bins: int = 64) -> Histogram:
    """Token t's histogram over its D dimensions against the median histogram of all tokens.

    x [T, D]. The `bins` equal-width bins, shared by every token, span the 1st..99th percentile of all
    values (numpy.percentile, linear), widened to token t's own values without its IQR outliers (see
    `iqr_outliers`): a few massive activations (some tokens' residual streams reach 10^4) would
    otherwise squeeze everything else into one bin. A constant range is widened by 0.5 on each side.
    Bins are half-open [a, b) except the last, which holds its right edge (as numpy.histogram); values
    outside the range are counted in the first or last bin, so every token's counts sum to its number
    of finite dimensions (inf and NaN are not counted anywhere); the outliers themselves are listed by
    `iqr_outliers`. `median` [bins] is, for each bin, the median over
    tokens of that bin's count (so it need not sum to D).
    """
    x = _matrix(x)
    t = _token(t, x.shape[0])
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    finite = np.isfinite(x)
    lo, hi = np.inf, -np.inf
    if finite.any():  # inf/NaN (a broken model's) neither set the range nor land in a bin
        p_lo, p_hi = np.percentile(x[finite], [1, 99])
        lo, hi = float(p_lo), float(p_hi)
    own = x[t][finite[t]]
    if own.size:
        own_lo, own_hi = iqr_outliers(own).range_
        lo, hi = min(lo, own_lo), max(hi, own_hi)
    if not np.isfinite(lo):
        lo, hi = 0.0, 0.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    T = x.shape[0]
    # bin of every value, clipped into the edge bins; the last edge belongs to the last bin
    idx = np.clip(np.searchsorted(edges, np.where(finite, x, lo), side="right") - 1, 0, bins - 1)  # [T, D]
    idx += np.arange(T)[:, None] * bins  # one block of bins per token
    counts = np.bincount(idx.ravel(), weights=finite.ravel(), minlength=T * bins).reshape(T, bins)
    counts = counts.astype(np.int64)
    return Histogram(edges=edges, token=counts[t], median=np.median(counts, axis=0))


@dataclass(frozen=True)
class Outliers:
    low: float | None  # fence below which negative values are outliers (None: no negatives)
    high: float | None  # fence above which positive values are outliers (None: no positives)
    dims: list[int]  # outlying dimensions, largest |value| first (ties: lower index first)
    range_: tuple[float, float]  # min and max of the values that are not outliers ((0, 0) if none)


def _upper_fence(a: np.ndarray, factor: float) -> float:
    # numpy.percentile with its default ("linear") method
    q1, q3 = np.percentile(a, [25, 75])
    return float(q3 + factor * (q3 - q1))


def iqr_outliers(v: np.ndarray, factor: float = 3.0) -> Outliers:
    """Outlying dimensions of one vector v [D] by the IQR rule, applied to the positive and the negative
    values separately (DeepPeek: activation distributions are skewed, often on one side only).

    Positives: Q1, Q3 of the positive values; `high` = Q3 + factor·IQR, and a positive value above it
    is an outlier. Negatives: the same on their absolute values, so `low` = -(Q3 + factor·IQR) and a
    value below it is an outlier. Quartiles are numpy.percentile's default linear interpolation. Zeros
    belong to neither side and are never outliers. A side with no values has fence None."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"v must be one vector [D], got shape {v.shape}")
    pos, neg = v[v > 0], -v[v < 0]
    high = _upper_fence(pos, factor) if pos.size else None
    low = -_upper_fence(neg, factor) if neg.size else None
    out = np.zeros(v.shape, dtype=bool)
    if high is not None:
        out |= v > high
    if low is not None:
        out |= v < low
    found = np.flatnonzero(out)
    dims = found[np.lexsort((found, -np.abs(v[found])))].tolist()
    kept = v[~out]
    return Outliers(low, high, dims, (float(kept.min()), float(kept.max())) if kept.size else (0.0, 0.0))
