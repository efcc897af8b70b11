"""`neurons:L`: the MLP neurons of layer L as features (no files needed; works on any model).

A neuron's activation is the MLP's activation `blocks.L.mlp.hook_post` (the input of the down
projection: act(gate) * up for gated MLPs), so encode is the identity and F = d_mlp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput
from lmpeek.features.sources import as_array, take


@dataclass(frozen=True)
class NeuronSource:
    layer: int
    n_features: int
    kind: str = "neurons"

    @property
    def name(self) -> str:
        return f"neurons:{self.layer}"

    @property
    def hooks(self) -> tuple[str, ...]:
        return (f"blocks.{self.layer}.mlp.hook_post",)

    def encode(self, acts: Mapping[str, Any]) -> np.ndarray:
        x = as_array(take(acts, self.hooks[0], self.name))
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InvalidInput(
                f"{self.name} reads [T, {self.n_features}] activations, got shape {list(x.shape)}"
            )
        return x


def load(spec: str, model: Any = None, **options: Any) -> NeuronSource:
    if options:
        raise InvalidInput(f"neurons sources take no options, got {', '.join(sorted(options))}")
    text = spec.strip()[len("neurons:") :].strip()
    try:
        layer = int(text)
    except ValueError:
        raise InvalidInput(f"'neurons:L' needs a layer number L, got {spec!r}") from None
    if model is None:
        raise InvalidInput(f"{spec!r} needs the model: lmpeek.features.load({spec!r}, model)")
    n_layers = model.bound.n_layers
    if not -n_layers <= layer < n_layers:
        raise InvalidInput(f"{spec!r}: the model has layers 0 to {n_layers - 1}")
    return NeuronSource(layer=layer % n_layers, n_features=int(model.bound.d_mlp))
