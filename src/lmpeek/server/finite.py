"""JSON never carries NaN or ±inf: they become null, which a client reads as 'no value'.

Where a model really produced inf or NaN, the trace's `nonfinite` list says where; the values
themselves go out as null instead of failing the response (Python's json writes NaN, which is not
JSON, or refuses it with HTTP 500).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def floats(a: Any) -> list:
    """An array (any shape) as nested lists of Python floats, non-finite values as None. One pass to
    check; only an array holding non-finite values pays for the replacement."""
    a = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(a)
    if ok.all():
        return a.tolist()
    return np.where(ok, a, None).tolist()  # an object array: None where not finite


def number(x: Any) -> float | None:
    """One value as a float, or None when it is NaN, ±inf or None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def clean(data: Any) -> Any:
    """`data` with every non-finite float (Python or numpy, at any depth) replaced by None and numpy
    arrays and scalars made plain."""
    if isinstance(data, float | np.floating):
        return number(data)
    if isinstance(data, np.ndarray):
        return floats(data) if data.dtype.kind == "f" else data.tolist()
    if isinstance(data, np.generic):
        return data.item()
    if isinstance(data, dict):
        return {k: clean(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [clean(v) for v in data]
    return data


def nonfinite_points(norms: dict[str, Any]) -> list[str]:
    """For one generation step's norms (component -> [L]): the hook points whose norm is not finite, in
    forward order (layer, then component)."""
    from lmpeek.capture.summaries import COMPONENTS

    bad = {c: np.flatnonzero(~np.isfinite(np.asarray(v, dtype=np.float64))) for c, v in norms.items()}
    layers = sorted({int(i) for v in bad.values() for i in v})
    return [
        f"blocks.{layer}.hook_{c}" for layer in layers for c in COMPONENTS if c in bad and layer in bad[c]
    ]
