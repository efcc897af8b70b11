"""Per-layer summaries computed inside the hooks, so the big tensors can be dropped at once."""

from __future__ import annotations

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
