"""Activation statistics: per-token summaries, similarities, histograms, IQR outliers, normalisation.

x [T, D] is one component's vector per token (a per-head component already sliced to one head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each vector: x [..., D] -> [...]."""
    return torch.linalg.vector_norm(x.float(), dim=-1)


def abs_sum(x: np.ndarray) -> np.ndarray:
    """Sum of absolute values per token (DeepPeek's "Sum"): [T, D] -> [T]."""
    return np.abs(np.asarray(x, dtype=np.float64)).sum(axis=1)


def values(x: np.ndarray, dim: int) -> np.ndarray:
    """One dimension across tokens: [T, D] -> [T]."""
    x = np.asarray(x)
    if not 0 <= dim < x.shape[1]:
        raise ValueError(f"dimension {dim} is out of range 0..{x.shape[1] - 1}")
    return x[:, dim].astype(np.float64)


def signed_scale(v: np.ndarray) -> np.ndarray:
    """[T] -> [-1, 1]: positives divided by the largest positive, negatives by the largest |negative|,
    separately (activations are skewed; one shared scale would wash out the smaller side)."""
    v = np.asarray(v, dtype=np.float64)
    out = np.zeros_like(v)
    pos, neg = v > 0, v < 0
    if pos.any():
        out[pos] = v[pos] / v[pos].max()
    if neg.any():
        out[neg] = v[neg] / -v[neg].min()
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def cosine_to_tokens(x: np.ndarray, t: int) -> np.ndarray:
    """Cosine of token t's vector with every token's: [T, D] -> [T] (0 where a vector is zero)."""
    u = _unit(x)
    return u @ u[t]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine between two [T, D] arrays -> [T] (0 where a vector is zero)."""
    return (_unit(a) * _unit(b)).sum(axis=1)


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray  # [bins + 1], shared by every token: the whole array's range
    token: np.ndarray  # [bins] counts of the token's values over its dimensions
    median: np.ndarray  # [bins] per-bin median of all tokens' counts


def histogram(x: np.ndarray, t: int, bins: int = 64) -> Histogram:
    """Token t's histogram over its D dimensions against the median histogram of all tokens."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    # bin index of every value; the last edge belongs to the last bin, as in np.histogram
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)  # [T, D]
    counts = np.zeros((x.shape[0], bins), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(x.shape[0]), x.shape[1]), idx.ravel()), 1)
    return Histogram(edges=edges, token=counts[t], median=np.median(counts, axis=0))


@dataclass(frozen=True)
class Outliers:
    low: float | None  # fence below which negative values are outliers (None: no negatives)
    high: float | None  # fence above which positive values are outliers (None: no positives)
    dims: list[int]  # outlying dimensions, largest |value| first
    range_: tuple[float, float]  # min and max of the values that are not outliers


def _upper_fence(a: np.ndarray, factor: float) -> float:
    # numpy.percentile with its default linear interpolation
    q1, q3 = np.percentile(a, [25, 75])
    return float(q3 + factor * (q3 - q1))


def iqr_outliers(v: np.ndarray, factor: float = 3.0) -> Outliers:
    """Outlying dimensions of one vector v [D] by the IQR rule, for positive and negative values
    separately (DeepPeek: activation distributions are skewed): positives above Q3 + factor·IQR of
    the positives, negatives below -(Q3 + factor·IQR) of the negatives' absolute values."""
    v = np.asarray(v, dtype=np.float64)
    pos, neg = v[v > 0], -v[v < 0]
    high = _upper_fence(pos, factor) if pos.size else None
    low = -_upper_fence(neg, factor) if neg.size else None
    out = np.zeros(v.shape, dtype=bool)
    if high is not None:
        out |= v > high
    if low is not None:
        out |= v < low
    dims = sorted(np.flatnonzero(out).tolist(), key=lambda d: (-abs(v[d]), d))
    kept = v[~out]
    return Outliers(low, high, dims, (float(kept.min()), float(kept.max())) if kept.size else (0.0, 0.0))


@dataclass(frozen=True)
class Limits:
    min: float
    divider: float  # the value at the colour scale's middle
    max: float


def apply_limits(v: np.ndarray, limits: Limits) -> np.ndarray:
    """Scale values into [0, 1] by (possibly user-edited) limits: min -> 0, divider -> 0.5, max -> 1,
    linearly on each side of the divider; values outside are clipped."""
    v = np.asarray(v, dtype=np.float64)
    lo, mid, hi = limits.min, limits.divider, limits.max
    below = np.where(mid > lo, (v - lo) / (mid - lo) * 0.5, 0.5)
    above = np.where(hi > mid, 0.5 + (v - mid) / (hi - mid) * 0.5, 0.5)
    return np.clip(np.where(v <= mid, below, above), 0.0, 1.0)


def normalise(v: np.ndarray, mode: str = "raw") -> tuple[np.ndarray, Limits]:
    """Values [T] -> (scaled [T] in [0, 1], the limits used). Modes: "raw" and "minmax" both map the
    data's min..max onto 0..1 with the divider at the midpoint ("raw" keeps the divider at 0 when
    the data has both signs, so the sign stays visible); "minmax_clip" uses the 1st..99th
    percentiles instead and clips the rest (outliers no longer flatten everything else)."""
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return v, Limits(0.0, 0.0, 0.0)
    if mode == "minmax_clip":
        lo, hi = (float(p) for p in np.percentile(v, [1, 99]))
    elif mode in ("raw", "minmax"):
        lo, hi = float(v.min()), float(v.max())
    else:
        raise ValueError(f"unknown normalisation '{mode}': use raw, minmax or minmax_clip")
    mid = 0.0 if mode == "raw" and lo < 0 < hi else (lo + hi) / 2
    limits = Limits(lo, mid, hi)
    return apply_limits(v, limits), limits
