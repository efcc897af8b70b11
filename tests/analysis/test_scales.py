"""Colour scales (analysis.scales) against the rules written out by hand here, edge cases included."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from lmpeek.analysis import scales
from lmpeek.analysis.scales import ColourScale, Limits, apply_limits, colour_scale, colour_scales

RNG = np.random.default_rng(0)


def _percentile(a, q):
    """numpy's default ("linear") percentile, by hand."""
    s = sorted(a)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _position(v, lo, mid, hi):
    """The colour position of one value: min -> 0, divider -> 0.5, max -> 1, clipped."""
    if v == mid:
        return 0.5
    if v < mid:
        return 0.0 if mid == lo else min(max(0.5 * (v - lo) / (mid - lo), 0.0), 0.5)
    return 1.0 if hi == mid else min(max(0.5 + 0.5 * (v - mid) / (hi - mid), 0.5), 1.0)


def reference(values, quantity, mode, skip_first=False):
    """The rules of the module docstring, as plain Python: (min, divider, max)."""
    counted = [v for i, v in enumerate(values) if math.isfinite(v) and not (skip_first and i == 0)]
    natural = {"cosine": (-1.0, 1.0), "probability": (0.0, 1.0)}.get(quantity)
    diverging = quantity in ("signed", "cosine")
    if mode == "raw" and natural:
        lo, hi = natural
    elif not counted:
        lo, hi = natural or (0.0, 0.0)
    else:
        if mode == "outliers":
            q1, q3 = _percentile(counted, 25), _percentile(counted, 75)
            inside = [v for v in counted if q1 - 1.5 * (q3 - q1) <= v <= q3 + 1.5 * (q3 - q1)]
            if len(inside) > 1 and min(inside) < max(inside):
                counted = inside
        if diverging:
            lo, hi = -max(abs(v) for v in counted), max(abs(v) for v in counted)
        elif mode == "raw":
            lo, hi = 0.0, max(0.0, max(counted))
        else:
            lo, hi = min(counted), max(counted)
    return lo, 0.0 if diverging else (lo + hi) / 2, hi


def sample(quantity):
    v = RNG.normal(size=40) * 3
    if quantity == "cosine":
        return np.tanh(v / 4) * 0.8 + 0.1  # mostly positive, inside -1..1
    if quantity == "probability":
        return 1 / (1 + np.exp(-v)) * 0.6
    if quantity == "magnitude":
        return np.abs(v) + 150.0
    return v + 1.0  # signed, skewed positive


@pytest.mark.parametrize("quantity", scales.QUANTITIES)
@pytest.mark.parametrize("mode", scales.MODES)
@pytest.mark.parametrize("skip_first", [False, True])
def test_each_quantity_and_mode_against_the_rules(quantity, mode, skip_first):
    v = sample(quantity)
    v[0] = {"signed": 90.0, "cosine": -0.99, "magnitude": 22_000.0, "probability": 0.999}[quantity]
    s = colour_scale(v, quantity, mode, skip_first=skip_first)
    lo, mid, hi = reference(v.tolist(), quantity, mode, skip_first)
    assert (s.min, s.divider, s.max) == pytest.approx((lo, mid, hi))
    assert s.kind == ("diverging" if quantity in ("signed", "cosine") else "sequential")
    natural = mode == "raw" and quantity in ("cosine", "probability")
    assert s.mode == mode and s.left_out == ([0] if skip_first and not natural else [])
    assert s.clipped == [i for i, x in enumerate(v) if x < lo or x > hi]
    if s.kind == "diverging":
        assert s.divider == 0.0 and s.min == -s.max  # white exactly at 0, symmetric
    else:
        assert s.min >= 0  # one-signed data: no "negative" side
        assert apply_limits(v, s).min() >= 0  # and the map is linear from min
        inside = v[(v >= s.min) & (v <= s.max)]
        np.testing.assert_allclose(apply_limits(inside, s), (inside - s.min) / (s.max - s.min))


def test_modes_differ_where_the_quantity_allows():
    norms = np.array([22_000.0, 180, 150, 250, 210, 170, 200, 160, 240, 190])
    raw, mm, out = (colour_scale(norms, "magnitude", m) for m in scales.MODES)
    assert (raw.min, raw.max) == (0.0, 22_000.0)
    assert (mm.min, mm.max) == (150.0, 22_000.0)
    assert (out.min, out.max) == (150.0, 250.0) and out.clipped == [0]
    cos = np.array([0.69, 0.5, 0.9, 0.6, 0.7])
    assert (colour_scale(cos, "cosine", "raw").min, colour_scale(cos, "cosine", "raw").max) == (-1.0, 1.0)
    assert colour_scale(cos, "cosine", "minmax").max == 0.9  # centred at 0, never at the data's middle
    p = np.array([0.1, 0.2, 0.05])
    assert (
        colour_scale(p, "probability", "raw").max == 1.0
        and colour_scale(p, "probability", "minmax").max == 0.2
    )


def test_ten_tokens_one_huge_value_spreads_the_others():
    """The first token's norm (~22,000 against 150-250) must not wash out the rest, on a short text."""
    v = np.array([22_000.0, 150, 175, 200, 225, 250, 160, 190, 210, 240])
    for s in (
        colour_scale(v, "magnitude", "outliers"),
        colour_scale(v, "magnitude", "minmax", skip_first=True),
    ):
        pos = apply_limits(v[1:], s)
        assert pos.min() == 0.0 and pos.max() == 1.0  # the others use the whole colour range
        assert len({round(float(p), 2) for p in pos}) == 9
        assert s.clipped == [0] and apply_limits(v[:1], s)[0] == 1.0  # the outlier: at the end, marked
    # the old rule, the 1st..99th percentile, would keep the range near 150..21,000 here
    assert _percentile(v.tolist(), 99) > 20_000


def test_signed_outlier_clipped_on_both_sides():
    v = np.array([-500.0, 1, -2, 3, -1, 2, 0.5, -0.5, 2.5, 400])
    s = colour_scale(v, "signed", "outliers")
    assert (s.min, s.divider, s.max) == (-3.0, 0.0, 3.0) and s.clipped == [0, 9]


def test_a_natural_range_leaves_nothing_out():
    """Raw probability/cosine limits read no value, so no token is 'left out' of them."""
    s = colour_scale(np.array([0.9, 0.1, 0.2]), "probability", "raw", skip_first=True)
    assert (s.min, s.max, s.left_out, s.clipped) == (0.0, 1.0, [], [])
    s = colour_scale(np.array([0.2, 1.0]), "cosine", "raw", leave_out=[1])
    assert (s.min, s.max, s.left_out) == (-1.0, 1.0, [])
    assert colour_scale(np.array([0.9, 0.1, 0.2]), "probability", "minmax", skip_first=True).left_out == [0]


def test_leave_out_any_token():
    v = np.array([0.2, 0.1, 1.0, -0.3])  # token 2 compared with itself: 1 by definition
    s = colour_scale(v, "cosine", "minmax", leave_out=[2])
    assert (s.min, s.max, s.left_out, s.clipped) == (-0.3, 0.3, [2], [2])


def test_constant_all_nan_empty_and_nonfinite():
    c = colour_scale(np.full(4, 3.0), "magnitude", "minmax")
    assert (c.min, c.divider, c.max) == (3.0, 3.0, 3.0)
    assert apply_limits(np.full(4, 3.0), c).tolist() == [0.5] * 4
    assert colour_scale(np.full(4, 3.0), "magnitude", "outliers").max == 3.0
    z = colour_scale(np.zeros(3), "signed", "raw")
    assert (z.min, z.divider, z.max, z.clipped) == (0.0, 0.0, 0.0, [])
    nan = np.full(5, np.nan)
    for q in scales.QUANTITIES:
        for m in scales.MODES:
            s = colour_scale(nan, q, m, skip_first=True)
            assert s.clipped == [] and all(math.isfinite(x) for x in (s.min, s.divider, s.max))
            assert np.isnan(apply_limits(nan, s)).all()  # NaN stays uncoloured
    assert colour_scale(nan, "cosine", "minmax").max == 1.0  # no data: the natural range
    assert colour_scale(np.array([]), "magnitude", "raw") == ColourScale("sequential", 0.0, 0.0, 0.0, "raw")
    v = np.array([1.0, np.nan, 3.0, np.inf, -np.inf])
    s = colour_scale(v, "magnitude", "minmax")
    assert (s.min, s.max) == (1.0, 3.0) and s.clipped == []  # ±inf: not finite, sent as null
    assert np.isnan(apply_limits(v, s)[1])


def test_joint_limits_over_two_texts():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([100.0, 5.0, 4.0, 6.0])
    sa, sb = colour_scales([a, b], "magnitude", "minmax", skip_first=True)
    assert (sa.min, sa.max) == (sb.min, sb.max) == (2.0, 6.0)
    assert sa.left_out == sb.left_out == [0]
    assert sa.clipped == [0] and sb.clipped == [0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown colour scale mode 'zscore'"):
        colour_scale(np.ones(2), "magnitude", "zscore")
    with pytest.raises(ValueError, match="unknown quantity"):
        colour_scale(np.ones(2), "norm", "raw")


def test_json_shape():
    s = colour_scale(np.array([1.0, 2.0]), "signed", "raw", skip_first=True)
    assert s.to_json() == {"kind": "diverging", "min": -2.0, "divider": 0.0, "max": 2.0, "mode": "raw",
                           "left_out": [0], "clipped": []}  # fmt: skip


def test_apply_limits_user_edited():
    v = np.array([-2.0, 0.0, 1.0, 6.0])
    assert apply_limits(v, Limits(0.0, 1.0, 2.0)).tolist() == [0.0, 0.0, 0.5, 1.0]
    r = RNG.normal(size=100) * 4
    for lo, mid, hi in [
        (-1.0, 0.0, 5.0),
        (-3.0, 2.5, 3.0),
        (0.0, 0.0, 2.0),
        (-2.0, 1.0, 1.0),
        (1.0, 1.0, 1.0),
    ]:
        got = apply_limits(r, Limits(lo, mid, hi))
        assert got.tolist() == pytest.approx([_position(x, lo, mid, hi) for x in r])
    # a side without span: past the divider goes straight to the end of the scale, as in the front end
    assert apply_limits(np.array([-1.0, 0.0, 1.0]), Limits(0.0, 0.0, 0.0)).tolist() == [0, 0.5, 1]


def test_no_torch_import():
    code = "import sys, lmpeek.analysis.scales; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
