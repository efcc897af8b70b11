"""Colour scales: the one place that decides which values get which colour (numpy only, no torch).

Every coloured metric is one of four quantities, and the quantity decides the colour map:
  "signed"      a dimension's value, a neuron's activation: diverging around 0 (negative / positive);
  "cosine"      a cosine similarity: diverging around 0, naturally within -1..1;
  "magnitude"   norms, Σ|x|, loss, entropy: sequential from 0 (they are never negative);
  "probability" probabilities and attention weights: sequential, naturally within 0..1.
A diverging scale is symmetric, min = -max, with its divider (the middle, white colour) exactly at 0, so
the side of white always says the sign. A sequential scale has no "negative" side: its lightest colour
is at `min` and the divider is the midpoint (the map is linear from min to max).

Modes (how the limits are found; only finite values count, NaN and ±inf stay uncoloured):
  "raw"       the quantity's natural range where it has one (probability 0..1, cosine -1..1), else from
              0: 0..max for magnitudes, ±max|v| for signed values;
  "minmax"    the data: min..max (sequential), ±max|v| (diverging). For "signed" values this equals
              "raw" (they have no natural range to differ from);
  "outliers"  as "minmax" over the values inside Tukey's fences [Q1 - 1.5·IQR, Q3 + 1.5·IQR]
              (quartiles: numpy.percentile, linear) of the values that count; values outside are drawn
              at the end of the scale and listed in `clipped`. Unlike the 1st..99th percentile, the
              fences drop one huge value among 10 tokens. When the fences would keep only one value
              (e.g. most values equal), the limits fall back to "minmax".
Tokens can be left out of the limits (`leave_out`; `skip_first` leaves out token 0, where most LMs park
massive activations and attention, e.g. a residual norm of 22,000 against 150–250 elsewhere): they are
listed in `left_out`, still coloured, and listed in `clipped` when they fall outside the limits. Where
the limits come from no data at all ("raw" with a natural range), nothing is left out: `left_out` is [].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Quantity = Literal["signed", "cosine", "magnitude", "probability"]
Mode = Literal["raw", "minmax", "outliers"]
QUANTITIES: tuple[str, ...] = ("signed", "cosine", "magnitude", "probability")
MODES: tuple[str, ...] = ("raw", "minmax", "outliers")
TUKEY_FACTOR = 1.5

_NATURAL: dict[str, tuple[float, float] | None] = {
    "signed": None,
    "cosine": (-1.0, 1.0),
    "magnitude": None,
    "probability": (0.0, 1.0),
}


@dataclass(frozen=True)
class Limits:
    min: float  # mapped to 0 (the colour scale's start)
    divider: float  # mapped to 0.5 (the colour scale's middle)
    max: float  # mapped to 1 (the colour scale's end)


@dataclass(frozen=True)
class ColourScale:
    kind: Literal["sequential", "diverging"]
    min: float
    divider: float
    max: float
    mode: str
    left_out: list[int] = field(default_factory=list)  # token indices the limits were computed without
    clipped: list[int] = field(default_factory=list)  # token indices whose finite value is outside [min, max]

    @property
    def limits(self) -> Limits:
        return Limits(self.min, self.divider, self.max)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "min": self.min, "divider": self.divider, "max": self.max}
        return {**out, "mode": self.mode, "left_out": list(self.left_out), "clipped": list(self.clipped)}


def apply_limits(v: np.ndarray, limits: Limits | ColourScale) -> np.ndarray:
    """Scale values [T] into [0, 1] by (possibly user-edited) limits: min -> 0, divider -> 0.5, max -> 1,
    linearly on each side of the divider; values beyond min or max clip to 0 or 1. A side with no span
    (divider == min, or divider == max) sends values past the divider straight to 0 or 1. NaN stays NaN.
    Same rule as the front end's `position` in web/src/lib/scale.ts."""
    v = np.asarray(v, dtype=np.float64)
    lo, mid, hi = float(limits.min), float(limits.divider), float(limits.max)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = (v - lo) / (mid - lo) * 0.5 if mid > lo else np.zeros_like(v)
        above = 0.5 + (v - mid) / (hi - mid) * 0.5 if hi > mid else np.ones_like(v)
    out = np.where(v < mid, below, np.where(v > mid, above, 0.5))
    out = np.where(np.isnan(v), np.nan, out)
    return np.clip(out, 0.0, 1.0)


def _counted(v: np.ndarray, leave: set[int]) -> np.ndarray:
    keep = np.isfinite(v)
    for i in leave:
        if 0 <= i < v.size:
            keep[i] = False
    return v[keep]


def _inliers(x: np.ndarray) -> np.ndarray:
    q1, q3 = np.percentile(x, [25, 75])
    spread = TUKEY_FACTOR * (q3 - q1)
    inside = x[(x >= q1 - spread) & (x <= q3 + spread)]
    return inside if inside.size > 1 and inside.min() < inside.max() else x


def _limits(x: np.ndarray, quantity: str, mode: str) -> Limits:
    """Limits from the values that count, x (finite, 1-D, possibly empty)."""
    natural = _NATURAL[quantity]
    diverging = quantity in ("signed", "cosine")
    if mode == "raw" and natural is not None:
        lo, hi = natural
    elif x.size == 0:
        lo, hi = natural if natural is not None else (0.0, 0.0)
    else:
        if mode == "outliers":
            x = _inliers(x)
        if diverging:
            m = float(np.abs(x).max())
            lo, hi = -m, m
        elif mode == "raw":  # a magnitude: from its floor, 0
            lo, hi = 0.0, max(0.0, float(x.max()))
        else:
            lo, hi = float(x.min()), float(x.max())
    return Limits(lo, 0.0 if diverging else (lo + hi) / 2, hi)


def colour_scales(
    arrays: Sequence[np.ndarray],
    quantity: Quantity | str,
    mode: Mode | str = "raw",
    *,
    skip_first: bool = False,
    leave_out: Sequence[Iterable[int]] | None = None,
) -> list[ColourScale]:
    """One set of limits shared by several arrays (two texts compared side by side), described for
    each: the same kind and limits, each array's own `left_out` and `clipped` indices.

    arrays: values [T_i] each. `leave_out[i]`: indices of arrays[i] the limits are computed without
    (besides token 0 when `skip_first`)."""
    if quantity not in _NATURAL:
        raise ValueError(f"unknown quantity '{quantity}': use {', '.join(QUANTITIES)}")
    if mode not in MODES:
        raise ValueError(f"unknown colour scale mode '{mode}': use {', '.join(MODES)}")
    vs = [np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
    leaves: list[set[int]] = []
    for i, v in enumerate(vs):
        leave = {int(j) for j in (leave_out[i] if leave_out is not None and i < len(leave_out) else ())}
        if skip_first and v.size:
            leave.add(0)
        leaves.append({j for j in leave if 0 <= j < v.size})
    if mode == "raw" and _NATURAL[quantity] is not None:  # the limits read no value: none is left out
        leaves = [set() for _ in vs]
    counted = np.concatenate(
        [_counted(v, leave) for v, leave in zip(vs, leaves, strict=True)] or [np.zeros(0)]
    )
    lim = _limits(counted, quantity, mode)
    kind: Literal["sequential", "diverging"] = (
        "diverging" if quantity in ("signed", "cosine") else "sequential"
    )
    out = []
    for v, leave in zip(vs, leaves, strict=True):
        with np.errstate(invalid="ignore"):
            outside = np.isfinite(v) & ((v < lim.min) | (v > lim.max))
        out.append(ColourScale(kind, lim.min, lim.divider, lim.max, mode, sorted(leave),
                               np.flatnonzero(outside).tolist()))  # fmt: skip
    return out


def colour_scale(
    values: np.ndarray,
    quantity: Quantity | str,
    mode: Mode | str = "raw",
    *,
    skip_first: bool = False,
    leave_out: Iterable[int] = (),
) -> ColourScale:
    """The colour scale for one metric's values [T] (see the module's docstring for the rules)."""
    return colour_scales([values], quantity, mode, skip_first=skip_first, leave_out=[leave_out])[0]
