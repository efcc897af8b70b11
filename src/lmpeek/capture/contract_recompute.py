"""The contract of the recompute path: what the app shows for a stored trace, against one full forward.

A stored trace keeps only the residual stream (float32, `trace_with_resid`); every layer's internals
are then recomputed by running that one block on its stored input (`slices.run_block`, via
`capture.recompute`), and attention patterns by scoring the recomputed Q and K (`slices.head_pattern`
for the attention endpoint, `attention_rows.pattern_rows` for the overview grid). These rows check
each of those against the hook points of one full lmpeek forward and against transformers' own eager
attentions, so a wrong recompute path cannot pass unnoticed. One `run_block` per layer, all points at
once; the modules are looked up at call time so that tests can substitute a broken one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from lmpeek.capture import attention_rows, recompute, slices
from lmpeek.capture.trace import trace_with_resid
from lmpeek.models.loaded import LoadedModel
from lmpeek.store.traces import TraceStore

if TYPE_CHECKING:
    from lmpeek.capture.contract import _Rows

SUFFIX = " (recomputed)"
FULL = "full lmpeek forward"
EAGER_ATTN = "eager output_attentions"


def qk_points(model: LoadedModel) -> tuple[str, str]:
    """The q and k points the attention endpoint scores (session.Session.attention's choice)."""
    return (
        ("attn.hook_rot_q", "attn.hook_rot_k") if model.bound.rotary_dims else ("attn.hook_q", "attn.hook_k")
    )


def recompute_rows(
    model: LoadedModel,
    token_ids: Sequence[int],
    full: dict[str, torch.Tensor],
    eager_attentions: Sequence[torch.Tensor],
    rows: _Rows,
) -> None:
    """Add rows for every block point recomputed from the stored stream (against `full`, the full
    forward's hook points, batch dim dropped), for `attn.hook_result` (its heads sum to the output
    projection of the full forward's z) and for the per-head patterns scored from the recomputed
    Q/K (against `eager_attentions`, transformers' [1, H, T, T] per layer)."""
    b = model.bound
    with tempfile.TemporaryDirectory(prefix="lmpeek-check-") as folder:
        # exactly what the app recomputes from: a trace of the same ids with its residual stream, put in
        # a store on disk and read back one layer at a time (Session.trace, recompute.compute)
        store = TraceStore(folder, max_disk_bytes=2**62, min_free_bytes=0)
        trace_id = store.put(*trace_with_resid(model, token_ids))
        for layer in range(b.n_layers):
            _layer_rows(model, layer, store.resid(trace_id, layer), full, eager_attentions[layer][0], rows)


def _layer_rows(
    model: LoadedModel,
    layer: int,
    resid_pre: np.ndarray,
    full: dict[str, torch.Tensor],
    eager: torch.Tensor,
    rows: _Rows,
) -> None:
    p, add = f"blocks.{layer}.", rows.add
    points = model.bound.block_points()
    got = slices.run_block(model, layer, resid_pre, points)  # one run for every point
    for point in points:
        add(
            f"blocks.*.{point}{SUFFIX}",
            FULL,
            p + point,
            torch.from_numpy(got[point]),
            full[p + point].float().cpu(),
        )
    _result_row(model, layer, got["attn.hook_z"], full[p + "attn.hook_z"], add)

    eager = eager.float().cpu()  # [H, T, T]
    q_point, k_point = qk_points(model)
    heads = range(model.n_heads)
    qs = [recompute.select_head(model, p + q_point, got[q_point], h) for h in heads]
    ks = [recompute.select_head(model, p + k_point, got[k_point], h) for h in heads]
    # the attention endpoint (Session.attention): one head's [T, T] at a time
    per_head = np.stack([slices.head_pattern(model, layer, q, k) for q, k in zip(qs, ks, strict=True)])
    add(f"blocks.*.attn.hook_pattern{SUFFIX}", f"{EAGER_ATTN}: head_pattern(q, k)", p + "attn.hook_pattern",
        torch.from_numpy(per_head), eager)  # fmt: skip
    # the overview grid (session_attention.attention_grid): every head's rows at once, here all T of them
    grid = attention_rows.pattern_rows(model, layer, np.stack(qs), np.stack(ks))
    add(f"blocks.*.attn.hook_pattern{SUFFIX}", f"{EAGER_ATTN}: pattern_rows(q, k)", p + "attn.hook_pattern",
        torch.from_numpy(grid), eager)  # fmt: skip


def _result_row(
    model: LoadedModel, layer: int, z: np.ndarray, full_z: torch.Tensor, add: Callable[..., None]
) -> None:
    """attn.hook_result (each head's write, from the recomputed z) summed over heads, plus the output
    projection's bias, is the projection applied to the full forward's z."""
    o_proj = model.bound.block_module(layer, model.bound.adapter.o_proj)
    result = slices.head_results(model, layer, z)  # [T, H, D]
    zt = full_z.reshape(full_z.shape[0], -1)
    with torch.inference_mode():
        bias = o_proj(torch.zeros_like(zt[:1]))[0].float().cpu()
        want = o_proj(zt).float().cpu()
    add(f"blocks.*.attn.hook_result{SUFFIX}", "sum over heads + bias == o_proj(full z)",
        f"blocks.{layer}.attn.hook_result", torch.from_numpy(result).sum(1) + bias, want)  # fmt: skip
