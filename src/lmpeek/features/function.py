"""A user function as a feature source: `fn(text, feature_indices) -> [T, len(feature_indices)]`.

This is tiny-activation-dashboard's seam (its online dashboards call `get_feature_activation(text,
feature_indices)`): anything that can score tokens — a dictionary lmpeek cannot read, a probe, a
remote service — shows up in lmpeek's dashboards. Such a source reads text, not hook points, so its
`hooks` are empty and `features.activations(model, source, text)` calls it instead of the model; T must
be the number of tokens lmpeek's tokenizer gives for the text (checked there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput
from lmpeek.features.sources import as_array


@dataclass(frozen=True)
class FunctionSource:
    fn: Callable[[str, list[int]], Any]
    n_features: int
    name: str
    kind: str = "function"
    hooks: tuple[str, ...] = ()

    def encode(self, acts: Mapping[str, Any]) -> np.ndarray:
        raise InvalidInput(
            f"{self.name} reads text, not hook points: use lmpeek.features.activations(model, source, text)"
        )

    def encode_text(
        self, text: str, indices: Sequence[int] | None = None, n_tokens: int | None = None
    ) -> np.ndarray:
        """fn(text, indices) as a [T, len(indices)] float32 array (all features when indices is None),
        checked for shape (and for T == n_tokens when given)."""
        idx = list(range(self.n_features)) if indices is None else [int(i) for i in indices]
        try:
            out = as_array(self.fn(text, idx))
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"{self.name} did not return an array of numbers: {err}") from None
        if out.ndim != 2 or out.shape[1] != len(idx):
            raise InvalidInput(
                f"{self.name} must return [T, {len(idx)}] (tokens × features asked), got {list(out.shape)}"
            )
        if n_tokens is not None and out.shape[0] != n_tokens:
            raise InvalidInput(
                f"{self.name} returned {out.shape[0]} rows, but the model's tokenizer gives {n_tokens} "
                f"tokens for this text: the function must score the same tokens"
            )
        return out


def load(
    spec: Callable, model: Any = None, *, n_features: int | None = None, name: str | None = None
) -> FunctionSource:
    if n_features is None:
        raise InvalidInput(
            "a function source needs n_features: lmpeek.features.load(fn, n_features=N) (features 0 to N-1)"
        )
    n = validate.integer("n_features", n_features, 1)
    label = name if name is not None else getattr(spec, "__name__", type(spec).__name__)
    return FunctionSource(fn=spec, n_features=n, name=str(label))
