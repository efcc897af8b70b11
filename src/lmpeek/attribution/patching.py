"""Activation patching from prompt B (`source`) into prompt A (`text`), as batched forwards.

A metric M reads A's next-token logits at the last position: by default log p(t) with t the token B
predicts there (how far a patch moves A towards B's answer); a token (string or id) gives its log-prob,
a pair (x, y) the contrast log p(x) - log p(y), a callable f(logits [n, V]) -> [n] anything else.

    patch_grid(model, A, B, hook="resid_pre", by="position")   cell (l, p): M(A with blocks.l.<hook>
                                                                 at position p taken from B) - M(A)
    patch_grid(model, A, B, by="head")                         cell (l, h): M(A with head h's hook_z
                                                                 taken from B, at every position) - M(A)

Each cell is one row of a batch (`batch_size` rows a forward): every row is A, and row r's hooks
write B's activation at its cell only, so the grid costs ceil(cells / batch_size) forwards instead of
TransformerLens's one forward per cell; tests/attribution/test_patching.py checks it equals
one-at-a-time patching (intervene + Patch) to 1e-5 on llama, gpt2 and qwen3.

Attribution patching (Nanda; nnsight's pattern) estimates the whole grid from one forward of A with
gradients and one forward of B:
    M(A with a_B at a cell) - M(A) ≈ (a_B - a_A) · dM/da |_A      summed over the cell's dims
The gradient is taken with torch.autograd.grad on a zero offset added at each hook (no parameter's
.grad is touched); checked against central finite differences in float64. Its top `verify` cells
(by |estimate|) are then patched for real and the Spearman rank correlation of the two is returned
(AtP is known to be poor for the embeddings, MLP0 and big residual moves).

Both take `progress(done, total)`, called between forwards (never inside one, nor while hooks are
attached) with the sequences run so far: a long job's ticker pauses there, and a cancel raised there
leaves the model clean. The values do not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmpeek import validate
from lmpeek.attribution.intervene import Edit, Patch, Run, capture_points, edited, intervene, token_ids
from lmpeek.errors import InvalidInput

# short names for the points a grid patches, per layer
HOOKS = {
    "resid_pre": "hook_resid_pre",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "z": "attn.hook_z",
}

Metric = Callable[[torch.Tensor], torch.Tensor]  # last-position logits [n, V] -> [n]
Progress = Callable[[int, int], None] | None  # (sequences run, of total)


def _report(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two equal-length vectors (ties get their average rank); NaN
    when either is constant or shorter than 2."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size != b.size:
        raise InvalidInput(f"spearman needs equal lengths, got {a.size} and {b.size}")
    ra, rb = _ranks(a), _ranks(b)
    if a.size < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    for value in np.unique(x):  # ties: the mean of the ranks they span
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _token(model: Any, t: Any) -> int:
    if isinstance(t, (int, np.integer)):
        return int(t)
    if isinstance(t, str):
        ids = model.tokenizer(t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InvalidInput(f"target {t!r} has no tokens")
        return int(ids[0])
    raise InvalidInput(f"a target token is a string or a token id, got {t!r}")


def metric_for(model: Any, target: Any, source_ids: np.ndarray) -> tuple[Metric, str]:
    """(metric, its description) for `target` (see the module docstring)."""
    if callable(target):
        return target, getattr(target, "__name__", "custom metric")
    if target is None:
        logits = _last_logits(model, torch.as_tensor(source_ids, device=model.device)[None])
        target = int(logits[0].argmax())
    if isinstance(target, (tuple, list)) and len(target) == 2:
        x, y = _token(model, target[0]), _token(model, target[1])
        return (lambda lg: (lp := lg.float().log_softmax(-1))[:, x] - lp[:, y]), f"log p({x}) - log p({y})"
    t = _token(model, target)
    return (lambda lg: lg.float().log_softmax(-1)[:, t]), f"log p({t})"


def _last_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    # only the last position's logits: n rows × V, not n × T × V (the head over every position dominates)
    import inspect

    kw: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.hf.forward).parameters:
        kw["logits_to_keep"] = 1
    return model.hf(input_ids=ids, **kw).logits[:, -1]


def _pair(model: Any, text: Any, source: Any, by: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = token_ids(model, text), token_ids(model, source)
    if by == "position" and a.size != b.size:
        raise InvalidInput(
            f"patching by position needs prompts of equal length: A has {a.size} tokens, B {b.size}"
        )
    if by == "head" and a.size != b.size:
        raise InvalidInput(f"patching heads at every position needs equal lengths ({a.size} vs {b.size})")
    return a, b


def _hooks(model: Any, hook: str, by: str) -> list[str]:
    if by not in ("position", "head"):
        raise InvalidInput(f"by must be 'position' or 'head', got {by!r}")
    if by == "head":
        hook = "z"
    if hook not in HOOKS:
        raise InvalidInput(f"hook must be one of {', '.join(HOOKS)}, got {hook!r}")
    return [f"blocks.{layer}.{HOOKS[hook]}" for layer in range(model.n_layers)]


@dataclass(frozen=True)
class PatchGrid:
    """values[l, j] = M(A patched at cell (l, j)) - M(A); j a position (by="position") or a head."""

    values: np.ndarray  # [L, T] or [L, H] float64
    hooks: list[str]  # the hook patched per layer
    by: str
    base: float  # M(A)
    source: float  # M(B), what B's own run gives (a patch that carried everything would reach it)
    metric: str
    forwards: int  # batched forwards run


@dataclass(frozen=True)
class AttributionPatching:
    """The attribution-patching estimate of a PatchGrid and its check by real patching."""

    values: np.ndarray  # [L, N] the estimate
    hooks: list[str]
    by: str
    base: float
    source: float
    metric: str
    verified: list[tuple[int, int]]  # the cells patched for real (top |estimate| first)
    patched: np.ndarray  # their real values, M(patched) - M(A)
    spearman: float  # rank correlation of values[verified] and patched
    forwards: int = 0  # batched forwards of the real patching (as PatchGrid.forwards)


def _cells(model: Any, by: str, T: int) -> list[tuple[int, int]]:
    width = T if by == "position" else model.n_heads
    return [(layer, j) for layer in range(model.n_layers) for j in range(width)]


def _grid_edit(rows: list[int], cols: list[int], src: torch.Tensor, by: str) -> Edit:
    """Row r of the batch gets B's value at its column (position or head) only."""

    def edit(x: torch.Tensor, run: Run) -> torch.Tensor:
        out = x.clone()
        r = torch.tensor(rows, device=x.device)
        c = torch.tensor(cols, device=x.device)
        s = src.to(x.device, x.dtype)
        if by == "position":  # x [n, T, D]; src [T, D]
            out[r, c - run.offset] = s[c]
        else:  # x [n, T, H, d]; src [T, H, d]: head c at every position
            out[r, :, c] = s[run.offset : run.offset + x.shape[1], c].transpose(0, 1)
        return out

    return edit


def _patched(
    model: Any, a: np.ndarray, src: dict[str, torch.Tensor], hooks: list[str], by: str,
    cells: Sequence[tuple[int, int]], metric: Metric, batch_size: int, progress: Progress = None,
    before: int = 0, total: int = 0,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """M of A patched at each cell, `batch_size` cells a forward; (values, forwards run). Reports
    progress `before` + cells done of `total` after each forward, once its hooks are gone."""
    values = np.empty(len(cells), np.float64)
    forwards = 0
    for start in range(0, len(cells), batch_size):
        chunk = cells[start : start + batch_size]
        edits = []
        for layer in sorted({c[0] for c in chunk}):
            rows = [i for i, c in enumerate(chunk) if c[0] == layer]
            cols = [chunk[i][1] for i in rows]
            edits.append((hooks[layer], _grid_edit(rows, cols, src[hooks[layer]], by)))
        ids = torch.as_tensor(a, device=model.device)[None].expand(len(chunk), -1)
        with torch.no_grad(), edited(model, edits):
            values[start : start + len(chunk)] = metric(_last_logits(model, ids)).double().cpu().numpy()
        forwards += 1
        _report(progress, before + start + len(chunk), total)
    return values, forwards


def patch_grid(
    model: Any, text: Any, source: Any, hook: str = "resid_pre", by: str = "position", target: Any = None,
    batch_size: int = 32, progress: Progress = None,
) -> PatchGrid:  # fmt: skip
    """The layer × position (or layer × head) patching grid of B into A, as batched forwards;
    `progress(done, total)` counts sequences: A's and B's own runs, B's capture, then each cell."""
    from lmpeek.capture.trace import require_model

    require_model(model)
    batch_size = validate.integer("batch_size", batch_size, 1, 4096)
    hooks = _hooks(model, hook, by)
    a, b = _pair(model, text, source, by)
    metric, label = metric_for(model, target, b)
    cells = _cells(model, by, a.size)
    total = 3 + len(cells)
    with torch.no_grad():
        base = float(metric(_last_logits(model, torch.as_tensor(a, device=model.device)[None]))[0])
        full = float(metric(_last_logits(model, torch.as_tensor(b, device=model.device)[None]))[0])
    _report(progress, 2, total)
    src = capture_points(model, b, hooks)
    _report(progress, 3, total)
    values, forwards = _patched(model, a, src, hooks, by, cells, metric, batch_size, progress, 3, total)
    grid = (values - base).reshape(model.n_layers, -1)
    return PatchGrid(grid, hooks, by, base, full, label, forwards)


def patch_one(model: Any, text: Any, source: Any, hook: str, positions: Any = None, head: int | None = None,
              target: Any = None) -> float:  # fmt: skip
    """M(A with `hook` from B at `positions` (and `head`)) - M(A): one patch, one forward (the
    reference the grids are tested against)."""
    a, b = token_ids(model, text), token_ids(model, source)
    metric, _ = metric_for(model, target, b)
    ids = torch.as_tensor(a, device=model.device)[None]
    with torch.no_grad():
        base = float(metric(_last_logits(model, ids))[0])
        pos = None if positions is None else tuple(np.atleast_1d(positions).tolist())
        with intervene(model, patch=[Patch(hook, b, pos, head)]):
            return float(metric(_last_logits(model, ids))[0]) - base


def attribution_patching(
    model: Any, text: Any, source: Any, hook: str = "resid_pre", by: str = "position", target: Any = None,
    verify: int = 10, batch_size: int = 32, progress: Progress = None,
) -> AttributionPatching:  # fmt: skip
    """The attribution-patching estimate of the grid (one forward + backward of A, one forward of B),
    with its `verify` largest cells patched for real and the Spearman correlation of the two.
    `progress(done, total)` counts sequences: B's capture, A's gradient run, A's and B's own runs,
    then each verified cell."""
    from lmpeek.capture.trace import require_model

    require_model(model)
    verify = validate.integer("verify", verify, 0, 1_000_000)
    hooks = _hooks(model, hook, by)
    a, b = _pair(model, text, source, by)
    metric, label = metric_for(model, target, b)
    n_cells = model.n_layers * (a.size if by == "position" else model.n_heads)
    total = 4 + min(verify, n_cells)
    src = capture_points(model, b, hooks)
    _report(progress, 1, total)
    held: dict[str, torch.Tensor] = {}
    offsets: dict[str, torch.Tensor] = {}

    def offset_edit(name: str) -> Edit:
        def edit(x: torch.Tensor, _run: Run) -> torch.Tensor:
            held[name] = x.detach()
            offsets[name] = torch.zeros_like(x, requires_grad=True)
            return x + offsets[name]

        return edit

    ids = torch.as_tensor(a, device=model.device)[None]
    with torch.enable_grad(), edited(model, [(h, offset_edit(h)) for h in hooks]):
        m = metric(_last_logits(model, ids))[0]
        grads = torch.autograd.grad(m, [offsets[h] for h in hooks], allow_unused=True)
    _report(progress, 2, total)
    with torch.no_grad():  # the unedited forward, as patch_grid's base
        base = float(metric(_last_logits(model, ids))[0])
    rows = []
    for h, g in zip(hooks, grads, strict=True):
        diff = (src[h].to(held[h].dtype) - held[h][0]).double()  # [T, D] or [T, H, d]
        g = torch.zeros_like(diff) if g is None else g[0].double()
        prod = diff * g
        rows.append(prod.sum(-1) if by == "position" else prod.sum((0, 2)))
    values = torch.stack(rows).cpu().numpy()
    with torch.no_grad():
        full = float(metric(_last_logits(model, torch.as_tensor(b, device=model.device)[None]))[0])
    _report(progress, 4, total)
    order = np.argsort(-np.abs(values).ravel(), kind="stable")[: min(verify, values.size)]
    width = values.shape[1]
    cells = [(int(i // width), int(i % width)) for i in order]
    real, forwards = (
        _patched(model, a, src, hooks, by, cells, metric, batch_size, progress, 4, total)
        if cells
        else (np.zeros(0), 0)
    )
    real = real - base
    rho = spearman(values.ravel()[order], real) if len(cells) >= 2 else float("nan")
    return AttributionPatching(values, hooks, by, base, full, label, cells, real, rho, forwards)
