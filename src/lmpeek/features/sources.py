"""The feature-source seam: what a source is, and one registry of the kinds `features.load` knows.

A source reads hook points and encodes them into features:

    source.name        "neurons:3", "res-l3-16k" (an SAE's folder name), ...
    source.kind        the registered kind that made it: "neurons", "saelens", "function"
    source.hooks       the lmpeek hook names `encode` reads, e.g. ("blocks.3.hook_resid_post",)
    source.n_features  F
    source.encode({hook: [T, ...]}) -> [T, F] float32 (numpy in or torch in; numpy out)

`encode` takes a mapping, so sources that read several points (crosscoders: two models' streams;
transcoders read one point and reconstruct another) fit the same call. A source that can reconstruct
what it read also has `reconstruct(acts) -> (target, reconstruction)` (both [T, D] float32): the
hook-parity guard (`features.check_reconstruction`) measures how much of the target's variance it
misses. A user function source reads text, not hooks (`hooks == ()`): see `function.FunctionSource`.

The registry mirrors models/adapters.py: a new kind of source is one `Kind` entry (a predicate on
the spec and the dotted path of its loader, imported only when used) plus its tests; nothing else
changes. This module imports neither torch nor the loaders, so listing kinds is cheap.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lmpeek.errors import InvalidInput, SourceNotFound


class FeatureSourceWarning(UserWarning):
    """A feature source that loaded but whose features are likely wrong for this model (hook parity)."""


@runtime_checkable
class FeatureSource(Protocol):
    name: str
    kind: str
    hooks: tuple[str, ...]
    n_features: int

    def encode(self, acts: Mapping[str, Any]) -> np.ndarray: ...


def as_array(x: Any) -> np.ndarray:
    """A hook tensor as a float32 numpy array: numpy arrays as they are (cast), torch tensors copied off
    their device without importing torch here."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x, dtype=np.float32)


def take(acts: Mapping[str, Any], hook: str, source_name: str) -> Any:
    """acts[hook], or an InvalidInput naming what was given instead."""
    if not isinstance(acts, Mapping):
        raise InvalidInput(
            f"{source_name}: encode takes a mapping {{hook name: [T, ...] array}}, got {type(acts).__name__}"
        )
    if hook not in acts:
        given = ", ".join(sorted(acts)) or "nothing"
        raise InvalidInput(
            f"{source_name} reads {hook}, which the activations given do not hold (given: {given})"
        )
    return acts[hook]


# --- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of feature source: which specs it takes and where its loader lives.

    `loader` is "module:function"; the function is called as `fn(spec, model, **options)` and returns
    a FeatureSource. `example` is shown in the error for a spec no kind takes. `pair`: its sources read
    two models, and `model` may be the pair (base, chat) (crosscoders)."""

    name: str
    matches: Callable[[Any], bool]
    loader: str
    example: str
    pair: bool = False

    def load(self, spec: Any, model: Any = None, **options: Any) -> FeatureSource:
        module, fn = self.loader.split(":")
        return getattr(importlib.import_module(module), fn)(spec, model, **options)


def _is_neurons(spec: Any) -> bool:
    return isinstance(spec, str) and spec.strip().startswith("neurons:")


def _is_saelens(spec: Any) -> bool:
    # a folder holding a SAELens cfg.json (any other folder is refused with the reason in `kind_for`),
    # or its sae_weights.safetensors named as a file (saelens.load reads the folder around it)
    if not isinstance(spec, (str, os.PathLike)):
        return False
    path = Path(spec).expanduser()
    if path.name == "sae_weights.safetensors" and path.is_file():
        path = path.parent
    return (path / "cfg.json").is_file()


def _is_crosscoder(spec: Any) -> bool:
    # a folder holding crosscoder weights (file names in crosscoder.py, which imports no torch), or such
    # a file; tried before SAELens, as a Kissane-layout folder has a cfg.json too
    from lmpeek.features.crosscoder import weights_file

    return weights_file(spec) is not None


def _is_function(spec: Any) -> bool:
    return callable(spec) and not isinstance(spec, (str, os.PathLike, FeatureSource))


def _is_shipped(spec: Any) -> bool:
    return isinstance(spec, str) and spec.strip() == "default"


_HERE = "lmpeek.features"
KINDS: list[Kind] = [
    Kind(
        "default", _is_shipped, f"{_HERE}.shipped:load", "'default' (the SAE shipped for the default model)"
    ),
    Kind("neurons", _is_neurons, f"{_HERE}.neurons:load", "'neurons:3' (layer 3's MLP neurons)"),
    Kind(
        "crosscoder",
        _is_crosscoder,
        f"{_HERE}.crosscoder:load",
        "a crosscoder folder (dictionary_learning model.safetensors / model_final.pt, or Kissane cfg.json + "
        "cc_weights.pt)",
        pair=True,
    ),
    Kind(
        "saelens",
        _is_saelens,
        f"{_HERE}.saelens:load",
        "a SAELens folder (cfg.json + sae_weights.safetensors)",
    ),
    Kind(
        "function", _is_function, f"{_HERE}.function:load", "a function fn(text, feature_indices) -> [T, n]"
    ),
]


def register(kind: Kind) -> None:
    """Add (or replace, by name) a kind of source; later kinds are tried after earlier ones."""
    KINDS[:] = [k for k in KINDS if k.name != kind.name] + [kind]


def kind_for(spec: Any) -> Kind:
    """The registered kind that takes `spec`, or a one-line error saying what specs look like."""
    for kind in KINDS:
        if kind.matches(spec):
            return kind
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.is_dir():
            raise SourceNotFound(
                f"feature source folder {str(spec)!r} has no cfg.json: lmpeek reads SAELens folders "
                f"(cfg.json + sae_weights.safetensors) and crosscoder folders (model.safetensors, "
                f"model_final.pt, cc_weights.pt)"
            )
        if path.exists() or os.sep in str(spec) or "/" in str(spec):
            raise SourceNotFound(
                f"feature source {str(spec)!r} is not a folder lmpeek can read (or does not exist)"
            )
    accepted = "; ".join(k.example for k in KINDS)
    raise InvalidInput(f"unknown feature source {spec!r}; give one of: {accepted}")
