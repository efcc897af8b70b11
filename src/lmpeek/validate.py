"""Checks of user-given values, shared by the Python API, the CLI and the server.

Each raises `InvalidInput` with a message naming the parameter, what it must be and what it got.
bool is never an integer or a number here (True would otherwise pass as 1). Imports nothing heavy.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from lmpeek.errors import InvalidInput

# torch.Generator.manual_seed accepts exactly this range
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi] (hi None: no upper bound); numpy integers are fine, floats are not."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise InvalidInput(f"{name} must be an integer {bound}, got {_shown(value)}")
    return int(value)


def number(name: str, value: Any, lo: float, hi: float | None = None, *, above: bool = False) -> float:
    """`value` as a finite float in [lo, hi] ((lo, hi] when `above`)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (value > lo if above else value >= lo) and (hi is None or value <= hi)
    if not ok:
        low = f"> {lo}" if above else f">= {lo}"
        bound = f"{low} and <= {hi}" if hi is not None else low
        raise InvalidInput(f"{name} must be a finite number {bound}, got {_shown(value)}")
    return value


def seed(value: Any) -> int | None:
    """None (a random seed) or an integer torch.Generator accepts: [-2**63, 2**64)."""
    if value is None:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or not SEED_MIN <= value <= SEED_MAX:
        raise InvalidInput(f"seed must be an integer from -2**63 to 2**64 - 1, got {_shown(value)}")
    return int(value)


def text(value: Any, name: str = "text") -> str:
    """A non-empty str that is valid Unicode (no lone surrogates, which no tokenizer can encode)."""
    if isinstance(value, (bytes, bytearray)):
        raise InvalidInput(f"{name} must be a str, got bytes: decode it first (e.g. data.decode('utf-8'))")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a str, got {type(value).__name__}")
    if value.strip() == "":
        raise InvalidInput(f"{name} is empty: give some text to run the model on")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        char = value[err.start]
        raise InvalidInput(
            f"{name} is not valid Unicode: a lone surrogate U+{ord(char):04X} at character {err.start} "
            "(text decoded from bytes that were not UTF-8?). Remove it or decode the bytes as UTF-8."
        ) from None
    return value
