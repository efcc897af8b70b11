"""Activation statistics against the most obvious loops, edge cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmpeek.analysis import activations as act

RNG = np.random.default_rng(0)
X = RNG.normal(size=(7, 12)) * np.array([1] * 11 + [30])  # one outlier dimension


def _cos(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def _percentile(a, q):
    """numpy's default ("linear") percentile, by hand."""
    s = sorted(a)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --- norms, sums, values ---------------------------------------------------------------


def test_abs_sum():
    assert act.abs_sum(X) == pytest.approx([sum(abs(v) for v in row) for row in X])
    assert act.abs_sum(np.zeros((3, 4))).tolist() == [0, 0, 0]
    assert act.abs_sum(-np.ones((2, 5))).tolist() == [5, 5]
    assert act.abs_sum(torch.tensor(X, dtype=torch.float32)) == pytest.approx(act.abs_sum(X), rel=1e-6)
    with pytest.raises(ValueError, match=r"\[T, D\]"):
        act.abs_sum(np.ones(4))


def test_values():
    for d in range(X.shape[1]):
        assert act.values(X, d).tolist() == [row[d] for row in X]
    for bad in (12, -1):
        with pytest.raises(ValueError, match="out of range 0..11"):
            act.values(X, bad)
    out = act.values(X, 0)
    out[0] = 123.0
    assert X[0, 0] != 123.0  # a copy, not a view


# --- cosines ------------------------------------------------------------------------------------------


def test_cosine_to_tokens():
    for t in range(X.shape[0]):
        assert act.cosine_to_tokens(X, t) == pytest.approx([_cos(X[t], r) for r in X])
    with pytest.raises(ValueError, match="token 7 is out of range"):
        act.cosine_to_tokens(X, 7)
    with pytest.raises(ValueError, match="out of range"):
        act.cosine_to_tokens(X, -1)


def test_cosine_edge_cases():
    z = np.zeros((3, 4))
    assert act.cosine_to_tokens(z, 0).tolist() == [0, 0, 0]  # zero vectors: 0, not NaN
    x = np.array([[1.0, 2.0], [0.0, 0.0], [-3.0, -6.0], [2e8, 4e8]], dtype=np.float32)
    got = act.cosine_to_tokens(x, 0)
    assert got.tolist() == pytest.approx([1.0, 0.0, -1.0, 1.0])
    assert np.all(np.abs(got) <= 1.0)  # rounding never leaves [-1, 1]
    assert act.cosine_to_tokens(x, 1).tolist() == [0, 0, 0, 0]


def test_cosine_rows():
    Y = X[::-1].copy()
    Y[1] = 0
    assert act.cosine_rows(X, Y) == pytest.approx([_cos(a, b) for a, b in zip(X, Y, strict=True)])
    assert act.cosine_rows(X, X) == pytest.approx(np.ones(len(X)))
    assert act.cosine_rows(X, -X) == pytest.approx(-np.ones(len(X)))
    assert act.cosine_rows(np.zeros((2, 3)), np.zeros((2, 3))).tolist() == [0, 0]
    with pytest.raises(ValueError, match="shapes differ"):
        act.cosine_rows(X, X[:, :3])


# --- histograms ---------------------------------------------------------------------------------------


def _hist_loop(row, edges):
    """Counts per bin; values beyond the edges go to the first / last bin, the last edge to the last bin."""
    bins = len(edges) - 1
    counts = [0] * bins
    for v in row:
        if v < edges[0]:
            counts[0] += 1
        elif v >= edges[-1]:
            counts[-1] += 1
        else:
            for i in range(bins):
                if edges[i] <= v < edges[i + 1]:
                    counts[i] += 1
                    break
    return counts


def _median(a):
    s = sorted(a)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _hist_range(x, t):
    """1st..99th percentile of every value, widened to token t's values that are not IQR outliers."""
    flat = [v for row in x for v in row]
    _, _, dims, _ = _outliers_loop(list(x[t]))
    own = [v for i, v in enumerate(x[t]) if i not in dims]
    return min(_percentile(flat, 1), min(own)), max(_percentile(flat, 99), max(own))


@pytest.mark.parametrize("bins", [1, 5, 10, 64])
def test_histogram_against_loops(bins):
    for t in (0, 4, 6):
        lo, hi = _hist_range(X, t)
        h = act.histogram(X, t, bins=bins)
        assert h.edges == pytest.approx([lo + (hi - lo) * i / bins for i in range(bins + 1)])
        per_token = [_hist_loop(row, h.edges) for row in X]
        assert h.token.tolist() == per_token[t] and sum(per_token[t]) == X.shape[1]
        assert h.median.tolist() == pytest.approx([_median(c) for c in zip(*per_token, strict=True)])


def test_histogram_even_token_count_and_numpy():
    x = RNG.normal(size=(6, 40))  # even T: the median of two middle counts can be x.5
    h = act.histogram(x, 2, bins=9)
    inner = np.clip(x, h.edges[0], h.edges[-1])  # values beyond the range land in the edge bins
    per_token = np.array([np.histogram(r, bins=h.edges)[0] for r in inner])
    assert h.token.tolist() == per_token[2].tolist()
    assert h.median.tolist() == np.median(per_token, axis=0).tolist()


def test_histogram_is_not_flattened_by_a_massive_activation():
    x = RNG.normal(size=(20, 64))
    x[0, 5] = 1e4  # one token, one dimension
    h = act.histogram(x, 3, bins=32)
    assert h.edges[-1] < 100 and (h.token > 0).sum() > 5
    h0 = act.histogram(x, 0, bins=32)  # the massive value itself is counted, in the last bin
    assert h0.token.sum() == 64 and h0.token[-1] >= 1 and h0.edges[-1] < 100


def test_histogram_edge_cases():
    h = act.histogram(np.ones((2, 3)), 0, bins=4)  # constant: a unit-wide range around the value
    assert h.edges.tolist() == [0.5, 0.75, 1.0, 1.25, 1.5] and h.token.tolist() == [0, 0, 3, 0]
    h = act.histogram(np.zeros((3, 5)), 1, bins=3)
    assert h.token.sum() == 5 and np.isfinite(h.median).all()
    h = act.histogram(np.array([[0.0, 1.0], [1.0, 1.0]]), 0, bins=2)  # the max lands in the last bin
    assert h.edges.tolist() == [0.0, 0.5, 1.0] and h.token.tolist() == [1, 1]
    assert h.median.tolist() == [0.5, 1.5]
    with pytest.raises(ValueError, match="bins"):
        act.histogram(X, 0, bins=0)
    with pytest.raises(ValueError, match="out of range"):
        act.histogram(X, 7)


# --- IQR outliers -------------------------------------------------------------------------------------


def _outliers_loop(v, factor=3.0):
    pos = [x for x in v if x > 0]
    neg = [-x for x in v if x < 0]
    high = low = None
    if pos:
        q1, q3 = _percentile(pos, 25), _percentile(pos, 75)
        high = q3 + factor * (q3 - q1)
    if neg:
        q1, q3 = _percentile(neg, 25), _percentile(neg, 75)
        low = -(q3 + factor * (q3 - q1))
    dims = [i for i, x in enumerate(v) if (high is not None and x > high) or (low is not None and x < low)]
    dims.sort(key=lambda i: (-abs(v[i]), i))
    kept = [x for i, x in enumerate(v) if i not in dims]
    return low, high, dims, (min(kept), max(kept))


def test_iqr_outliers_split_by_sign():
    v = np.array([1.0, 1.1, 0.9, 1.2, 1.0, 50.0, -1.0, -1.2, -0.8, -1.1, -40.0, 0.0])
    out = act.iqr_outliers(v)
    low, high, dims, range_ = _outliers_loop(list(v))
    assert out.high == pytest.approx(high) and out.low == pytest.approx(low)
    assert out.dims == dims == [5, 10]  # largest |value| first
    assert out.range_ == range_ == (-1.2, 1.2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("factor", [1.5, 3.0])
def test_iqr_outliers_random_skewed(seed, factor):
    r = np.random.default_rng(seed)
    v = np.concatenate([r.exponential(1.0, 60), -r.exponential(0.2, 30), [25.0, -9.0, 0.0]])
    r.shuffle(v)
    out = act.iqr_outliers(v, factor=factor)
    low, high, dims, range_ = _outliers_loop(list(v), factor)
    assert out.low == pytest.approx(low) and out.high == pytest.approx(high)
    assert out.dims == dims and out.range_ == pytest.approx(range_)


def test_iqr_outliers_edge_cases():
    only_pos = act.iqr_outliers(np.array([1.0, 2.0, 3.0]))
    assert only_pos.low is None and only_pos.dims == [] and only_pos.range_ == (1.0, 3.0)
    only_neg = act.iqr_outliers(np.array([-1.0, -1.0, -1.0, -1.0, -100.0]))
    assert only_neg.high is None and only_neg.low == -1.0 and only_neg.dims == [4]
    assert only_neg.range_ == (-1.0, -1.0)
    zeros = act.iqr_outliers(np.zeros(6))
    assert (zeros.low, zeros.high, zeros.dims, zeros.range_) == (None, None, [], (0.0, 0.0))
    single = act.iqr_outliers(np.array([5.0]))  # Q1 = Q3: the fence is the value itself
    assert single.high == 5.0 and single.dims == []
    ties = act.iqr_outliers(np.array([1.0] * 8 + [-1.0] * 8 + [-20.0, 20.0]))  # equal |value|: index order
    assert ties.dims == [16, 17]
    assert act.iqr_outliers(np.array([])).range_ == (0.0, 0.0)
    with pytest.raises(ValueError, match="one vector"):
        act.iqr_outliers(X)


def test_histogram_leaves_inf_and_nan_out_of_the_range_and_the_counts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 40)).astype(np.float32)
    y = x.copy()
    y[2, 3], y[1, 5] = np.nan, np.inf
    h = act.histogram(y, 2)
    assert h.token.sum() == 39 and np.isfinite(h.edges).all()
    # the other values fall where numpy puts them over the same edges
    want, _ = np.histogram(np.delete(y[2], 3).clip(h.edges[0], h.edges[-1]), bins=h.edges)
    np.testing.assert_array_equal(h.token, want)
    nothing = act.histogram(np.full((3, 4), np.nan), 0)
    assert nothing.token.sum() == 0 and np.isfinite(nothing.edges).all()
