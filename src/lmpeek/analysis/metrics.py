"""The per-token metrics the Explore view colours tokens by: what kind of number each is, how the ones a
trace's summary holds are read, and their colour scales (analysis.scales). Numpy only: the Session
computes the values that need the model, an export of a Trace alone uses `summary_metric_json`.
`metric_json` is the one formatter of GET …/metric's answer: the route and the exporter both use it."""

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


def _json_floats(a: np.ndarray) -> list:
    """An array as a list of Python floats, non-finite values as None (JSON has no NaN: the page reads
    null as 'no value'). Same as lmpeek.server.finite.floats, kept here so views need no server."""
    a = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(a)
    return a.tolist() if ok.all() else np.where(ok, a, None).tolist()


def metric_json(m: Metric) -> dict[str, Any]:
    """What GET …/metric answers for a Metric: the values of one trace (and of a second, `with`) and
    their colour scales."""
    out: dict[str, Any] = {
        "name": m.name,
        "values": _json_floats(m.values[0]),
        "scale": m.scales[0].to_json(),
    }
    if len(m.values) > 1:
        out["values_with"] = _json_floats(m.values[1])
        out["scale_with"] = m.scales[1].to_json()
    return out


def summary_metric_json(trace: Any, name: str, mode: str, skip_first: bool) -> dict[str, Any]:
    """The route's answer for loss / entropy / prob, which the trace alone answers (no model needed):
    what an export of a Trace alone records."""
    return metric_json(metric(name, [summary_metric(trace, name)], [[]], mode, skip_first))
