"""The per-token metrics the Explore view colours tokens by: what kind of number each is, how the ones a
trace's summary holds are read, and their colour scales (analysis.scales). Numpy only: the Session
computes the values that need the model, an export of a Trace alone uses `summary_metric`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpeek.analysis.scales import ColourScale, colour_scales

# metric -> what kind of number it is (analysis.scales: decides the colour map and natural range)
QUANTITY: dict[str, str] = {
    "loss": "magnitude",
    "entropy": "magnitude",
    "prob": "probability",
    "norm": "magnitude",
    "act-norm": "magnitude",
    "act-abssum": "magnitude",
    "act-value": "signed",
    "cos-tokens": "cosine",
    "cos-previous": "cosine",
    "cos-residual": "cosine",
    "neuron": "signed",
    "attn-from": "probability",
    "attn-to": "probability",
}
SUMMARY = {"loss": "loss", "entropy": "entropy", "prob": "true_prob"}  # metric -> Trace field
ACTIVATION = {"act-norm": "norm", "act-abssum": "abs_sum", "act-value": "value"}  # metric -> stat
SIMILARITY = {"cos-tokens": "tokens", "cos-previous": "previous", "cos-residual": "residual"}


@dataclass(frozen=True)
class Metric:
    """One metric's values for a trace (and a second one compared with it) and their colour scales:
    joint limits, each array's own `left_out` and `clipped` indices."""

    name: str
    values: list[np.ndarray]  # [T_i] per trace
    scales: list[ColourScale]


def summary_metric(trace: Any, name: str) -> np.ndarray:
    """loss / entropy / prob per token, read from the trace's summary arrays (one place to change the
    per-token convention: which prediction position t shows).

    Each token shows the prediction that produced it (as in Generate): token t gets the values of the
    prediction made at position t-1 (the summary arrays are indexed by the position that predicts);
    the first token has none (NaN)."""
    by_position = np.asarray(getattr(trace, SUMMARY[name]), dtype=np.float64)
    out = np.full(by_position.shape, np.nan)
    out[1:] = by_position[:-1]
    return out


def metric(
    name: str, arrays: Sequence[np.ndarray], leaves: Sequence[Sequence[int]], mode: str, skip_first: bool
) -> Metric:
    """The metric's values with their colour scales (joint limits over every array). `leaves[i]`:
    indices of arrays[i] left out of the limits by definition (a token's cosine with itself)."""
    scales = colour_scales(list(arrays), QUANTITY[name], mode, skip_first=skip_first, leave_out=list(leaves))
    return Metric(name, list(arrays), scales)
