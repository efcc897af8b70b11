"""Activation statistics against the most obvious loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmpeek.analysis import activations as act

RNG = np.random.default_rng(0)
X = RNG.normal(size=(7, 12)) * np.array([1] * 11 + [30])  # one outlier dimension


def test_abs_sum_values_signed_scale():
    assert act.abs_sum(X) == pytest.approx([sum(abs(v) for v in row) for row in X])
    assert act.values(X, 3) == pytest.approx([row[3] for row in X])
    with pytest.raises(ValueError, match="out of range"):
        act.values(X, 12)
    v = np.array([-4.0, -1.0, 0.0, 2.0, 8.0])
    assert act.signed_scale(v).tolist() == [-1.0, -0.25, 0.0, 0.25, 1.0]
    assert act.signed_scale(np.array([1.0, 3.0])).tolist() == [1 / 3, 1.0]
    assert act.signed_scale(np.zeros(3)).tolist() == [0, 0, 0]


def test_cosines():
    def cos(a, b):
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)

    assert act.cosine_to_tokens(X, 2) == pytest.approx([cos(X[2], r) for r in X])
    Y = X[::-1].copy()
    Y[1] = 0
    assert act.cosine_rows(X, Y) == pytest.approx([cos(a, b) for a, b in zip(X, Y, strict=True)])
    assert np.isfinite(act.cosine_to_tokens(np.zeros((3, 4)), 0)).all()


def test_histogram_against_numpy():
    h = act.histogram(X, 4, bins=10)
    p1, p99 = np.percentile(X, [1, 99])
    own = act.iqr_outliers(X[4]).range_
    want_edges = np.linspace(min(p1, own[0]), max(p99, own[1]), 11)
    assert h.edges == pytest.approx(want_edges)

    def counts(row):  # a loop: values beyond the edges go to the first / last bin
        c = [0] * 10
        for v in row:
            i = (
                0
                if v < want_edges[0]
                else 9
                if v >= want_edges[-1]
                else int(np.searchsorted(want_edges, v, "right") - 1)
            )
            c[i] += 1
        return c

    assert h.token.tolist() == counts(X[4])
    assert h.median == pytest.approx(np.median([counts(r) for r in X], axis=0))
    assert h.token.sum() == X.shape[1]
    assert act.histogram(np.ones((2, 3)), 0, bins=4).token.sum() == 3  # constant input


def test_histogram_is_not_flattened_by_a_massive_activation():
    x = RNG.normal(size=(20, 64))
    x[0, 5] = 1e4  # one token, one dimension
    h = act.histogram(x, 3, bins=32)
    assert h.edges[-1] < 100 and (h.token > 0).sum() > 5


def test_iqr_outliers_split_by_sign():
    v = np.array([1.0, 1.1, 0.9, 1.2, 1.0, 50.0, -1.0, -1.2, -0.8, -1.1, -40.0, 0.0])

    def fence(a):
        q1, q3 = np.percentile(a, [25, 75])
        return q3 + 3 * (q3 - q1)

    out = act.iqr_outliers(v)
    assert out.high == pytest.approx(fence(v[v > 0])) and out.low == pytest.approx(-fence(-v[v < 0]))
    assert out.dims == [5, 10]  # largest |value| first
    assert out.range_ == (-1.2, 1.2)
    only_pos = act.iqr_outliers(np.array([1.0, 2.0, 3.0]))
    assert only_pos.low is None and only_pos.dims == []


def test_normalise_modes_and_limits():
    v = np.array([-2.0, 0.0, 1.0, 6.0])
    s, lim = act.normalise(v, "raw")
    assert (lim.min, lim.divider, lim.max) == (-2.0, 0.0, 6.0)
    assert s.tolist() == [0.0, 0.5, 0.5 + 1 / 12, 1.0]
    s, lim = act.normalise(v, "minmax")
    assert lim.divider == 2.0 and s.min() == 0 and s.max() == 1
    w = np.arange(101.0)
    w[-1] = 1e6
    s, lim = act.normalise(w, "minmax_clip")
    assert (
        lim.max == pytest.approx(np.percentile(w, 99))
        and s[-1] == 1.0
        and s[50] == pytest.approx((50 - lim.min) / (lim.max - lim.min), abs=1e-9)
    )
    edited = act.apply_limits(v, act.Limits(0.0, 1.0, 2.0))
    assert edited.tolist() == [0.0, 0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="unknown normalisation"):
        act.normalise(v, "zscore")
