"""Per-layer summaries computed inside the hooks, so the big tensors can be dropped at once."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from lmpeek.capture.hooks import Handler
from lmpeek.models.adapters import Bound

# residual-stream components whose per-token norm every Trace and generation step carries
COMPONENTS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


def norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each vector (float32): x [..., D] -> [...].

    As sqrt(x·x): torch.linalg.vector_norm over the last dim of [512, 576] takes 3.4 ms on this CPU,
    the dot product 0.06 ms, and a trace takes 5 norms per layer (vector_norm was 6% of a 512-token
    trace of the default model). Same float32 sums, so the same overflow to inf past ~1.8e19."""
    x = x.float().contiguous()  # the dot product's fast path wants rows in contiguous memory
    return torch.linalg.vecdot(x, x).sqrt_()


def norm_name(layer: int, component: str) -> str:
    return f"blocks.{layer}.hook_{component}"


class Summaries:
    """Collects norms[hook] -> [T] and attention entropy [L, H, T] for the positions of one forward.

    `last_only` keeps just the last position (generation steps, where earlier positions are cached).
    """

    def __init__(self, bound: Bound, last_only: bool = False):
        self.bound = bound
        self.last_only = last_only
        self.norms: dict[str, torch.Tensor] = {}
        self.attn_entropy: list[torch.Tensor | None] = [None] * bound.n_layers

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        return x[0, -1:] if self.last_only else x[0]

    def handlers(self) -> dict[str, Handler]:
        out: dict[str, Handler] = {}
        for layer in range(self.bound.n_layers):
            for comp in COMPONENTS:
                name = norm_name(layer, comp)
                out[name] = lambda x, name=name: self.norms.__setitem__(name, norms(self._rows(x)))
            out[f"blocks.{layer}.attn.entropy"] = lambda e, layer=layer: self._entropy(layer, e)
        return out

    def _entropy(self, layer: int, entropy: torch.Tensor) -> None:
        # [B, H, Tq] -> [H, Tq]
        self.attn_entropy[layer] = entropy[0, :, -1:] if self.last_only else entropy[0]

    def nonfinite(self) -> list[tuple[str, int]]:
        """(hook name, first token) of every residual component whose norm is inf or NaN, in forward
        order. A norm is non-finite exactly when its vector holds an inf or a NaN (or values near
        float32's limit, whose squares overflow), so this costs one check over [5 L, T] norms after the
        forward, not a pass over the activations."""
        names = [norm_name(layer, c) for layer in range(self.bound.n_layers) for c in COMPONENTS]
        names = [n for n in names if n in self.norms]
        if not names:
            return []
        bad = ~torch.isfinite(torch.stack([self.norms[n] for n in names]))  # [N, T]
        if not bool(bad.any()):  # the one host sync of the check
            return []
        rows = bad.any(1).cpu().tolist()
        first = bad.float().argmax(1).cpu().tolist()  # argmax of a 0/1 row: its first True
        return [(n, int(t)) for n, hit, t in zip(names, rows, first, strict=True) if hit]

    def stacked_entropy(self) -> torch.Tensor:
        """[L, H, T]"""
        missing = [i for i, e in enumerate(self.attn_entropy) if e is None]
        if missing:
            raise RuntimeError(f"no attention pattern was seen for layers {missing}")
        return torch.stack(self.attn_entropy)  # type: ignore[arg-type]


def merge(*handler_maps: dict[str, Handler]) -> dict[str, Handler]:
    """Combine handler maps; several handlers on one hook point all run, in order."""
    merged: dict[str, list[Handler]] = {}
    for m in handler_maps:
        for name, fn in m.items():
            merged.setdefault(name, []).append(fn)

    def chain(fns: list[Handler]) -> Handler:
        if len(fns) == 1:
            return fns[0]

        def run(x: torch.Tensor) -> None:
            for f in fns:
                f(x)

        return run

    return {name: chain(fns) for name, fns in merged.items()}


class StepSummaries:
    """The summaries of one position per forward (a generation step's new token): the same numbers as
    `Summaries(bound, last_only=True)`, collected by one set of handlers that every step reuses.

    A handler only copies its row into a buffer [5 L, D] (and its entropy into [L, H]); after the
    forward `read()` takes all 5 L norms in one product and hands the host one array of each, instead
    of 5 L norms computed and read one by one (~1 ms a token on the default model). The norm of a row
    is the same float32 sum either way (a per-row reduction).
    """

    def __init__(self, bound: Bound):
        self.n_layers = bound.n_layers
        # hook names in forward order; row i of the buffer is names[i]
        self.names = [norm_name(layer, c) for layer in range(self.n_layers) for c in COMPONENTS]
        self._rows: torch.Tensor | None = None  # [5 L, D] float32, on the model's device
        self._entropy: torch.Tensor | None = None  # [L, H] float32
        # row i / layer l of the buffers viewed as [1, 1, D] / [1, H, 1]: a step's own shape, copied
        # whole (indexing the last row out of each tensor first costs as much as the copy)
        self._row_views: list[torch.Tensor] = []
        self._entropy_views: list[torch.Tensor] = []
        self._seen = [False] * (len(self.names) + self.n_layers)

    def handlers(self) -> dict[str, Handler]:
        out: dict[str, Handler] = {}
        for i, name in enumerate(self.names):
            out[name] = partial(self._row, i)
            if i % len(COMPONENTS) == len(COMPONENTS) - 1:
                layer = i // len(COMPONENTS)
                out[f"blocks.{layer}.attn.entropy"] = partial(self._layer_entropy, layer)
        return out

    def _row(self, i: int, x: torch.Tensor) -> None:
        if self._rows is None:
            self._rows = torch.empty(len(self.names), x.shape[-1], dtype=torch.float32, device=x.device)
            self._row_views = [r.view(1, 1, -1) for r in self._rows]
        dst = self._row_views[i]
        # a copy (a later in-place op of the model must not reach it), as float32
        if x.shape == dst.shape:
            dst.copy_(x)
        else:
            dst[0, 0].copy_(x[0, -1])
        self._seen[i] = True

    def _layer_entropy(self, layer: int, entropy: torch.Tensor) -> None:
        # [B, H, Tq] -> [H]
        if self._entropy is None:
            self._entropy = torch.empty(
                self.n_layers, entropy.shape[1], dtype=torch.float32, device=entropy.device
            )
            self._entropy_views = [e.view(1, -1, 1) for e in self._entropy]
        dst = self._entropy_views[layer]
        if entropy.shape == dst.shape:
            dst.copy_(entropy)
        else:
            dst[0, :, 0].copy_(entropy[0, :, -1])
        self._seen[len(self.names) + layer] = True

    def read(self, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """After a forward: norms [5 L] float32 (in `names` order), attention entropy [L, H] float32, and
        the buffer rows `rows` [len(rows), D] float32 (the residual stream at those points), as numpy
        arrays of their own; then ready for the next forward."""
        if not all(self._seen) or self._rows is None or self._entropy is None:
            missing = [i for i in range(self.n_layers) if not self._seen[len(self.names) + i]]
            if missing:
                raise RuntimeError(f"no attention pattern was seen for layers {missing}")
            raise RuntimeError(f"hook point {self.names[self._seen.index(False)]} did not run")
        self._seen = [False] * len(self._seen)
        norms_ = torch.linalg.vecdot(self._rows, self._rows).sqrt_().cpu().numpy()
        entropy = self._entropy.cpu().numpy().copy()
        kept = None if rows is None else self._rows[rows].cpu().numpy()
        return norms_, entropy, kept

    def nonfinite(self, norms_: np.ndarray) -> list[tuple[str, int]]:
        """`Summaries.nonfinite` of the norms `read()` returned: (hook name, 0) for each non-finite one."""
        bad = ~np.isfinite(norms_)
        return [(self.names[i], 0) for i in np.flatnonzero(bad)] if bad.any() else []
