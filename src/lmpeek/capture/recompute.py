"""Hook-point arrays of a stored trace, recomputed from its residual stream one block at a time."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from lmpeek.errors import InvalidInput
from lmpeek.models.adapters import BLOCK_POINTS as ADAPTER_POINTS
from lmpeek.models.adapters import FINAL_POINTS, normalized

# what a view can select: the adapter's block hook points (a [T, T] pattern is served by the attention
# endpoint instead) plus attn.hook_result, each head's write into the residual stream (z_h · W_O[h])
BLOCK_POINTS = tuple(
    q
    for p in ADAPTER_POINTS
    if p != "attn.hook_pattern"
    for q in ((p, "attn.hook_result") if p == "attn.hook_z" else (p,))
)
PER_HEAD = {"attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_q_normed", "attn.hook_k_normed",
            "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_z", "attn.hook_result"}  # fmt: skip
KV_HEADS = {"attn.hook_k", "attn.hook_v", "attn.hook_k_normed", "attn.hook_rot_k"}
TOP_LEVEL = ("hook_embed", *FINAL_POINTS)
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _has(model, point: str) -> bool:
    return point == "attn.hook_result" or model.bound.has_point(point)


def components(model) -> list[dict[str, Any]]:
    """What the component selector offers for this model."""
    out = [{"hook": "hook_embed", "per_head": False, "per_layer": False}]
    for point in BLOCK_POINTS:
        if _has(model, point):
            out.append({"hook": f"blocks.{{l}}.{point}", "point": point, "per_head": point in PER_HEAD,
                        "per_layer": True})  # fmt: skip
    out += [{"hook": hook, "per_head": False, "per_layer": False} for hook in FINAL_POINTS]
    return out


def parse(model, hook: str) -> tuple[int | None, str]:
    m = _HOOK.match(hook)
    if m:
        layer, point = int(m.group(1)), m.group(2)
        if point not in BLOCK_POINTS or not _has(model, point):
            offered = [p for p in BLOCK_POINTS if _has(model, p)]
            raise InvalidInput(f"unknown hook point '{point}'; choose one of {', '.join(offered)}")
        if layer >= model.n_layers:
            raise InvalidInput(f"layer must be < {model.n_layers}, got {layer}")
        return layer, point
    if hook in TOP_LEVEL:
        return None, hook
    raise InvalidInput(f"unknown hook '{hook}': use e.g. 'blocks.3.hook_resid_post', 'hook_embed'")


# computed together from one run of the block (the attention inputs come early in it)
_TOGETHER = ("attn.hook_q", "attn.hook_k", "attn.hook_q_normed", "attn.hook_k_normed", "attn.hook_rot_q",
             "attn.hook_rot_k")  # fmt: skip


def together(model, hook: str) -> list[str]:
    """The hooks worth computing in the same block run as `hook` (itself first)."""
    layer, point = parse(model, hook)
    if layer is None or point not in _TOGETHER:
        return [hook]
    points = [p for p in _TOGETHER if model.bound.has_point(p)]
    return [hook] + [f"blocks.{layer}.{p}" for p in points if p != point]


def compute_many(model, traces, trace_id: str, hooks: list[str]) -> dict[str, np.ndarray]:
    """Several hook points of one block from a single run (see `together`)."""
    from lmpeek.capture.slices import run_block

    layer, _ = parse(model, hooks[0])
    if len(hooks) == 1 or layer is None:
        return {hooks[0]: compute(model, traces, trace_id, hooks[0])}
    points = [parse(model, h)[1] for h in hooks]
    got = run_block(model, layer, traces.resid(trace_id, layer), points)
    return {h: got[p] for h, p in zip(hooks, points, strict=True)}


def compute(model, traces, trace_id: str, hook: str) -> np.ndarray:
    """The hook point's array for the whole trace, float32: [T, D], [T, M] or [T, heads, d | D]."""
    from lmpeek.capture.slices import head_results, run_block

    layer, point = parse(model, hook)
    b = model.bound
    if point == "hook_embed":
        ids = torch.as_tensor(traces.get(trace_id).token_ids, device=model.device)
        with torch.inference_mode():
            return b.module(b.adapter.embed)(ids).float().cpu().numpy()
    if point in FINAL_POINTS:  # the final norm of the stored last residual stream (before / after its gain)
        norm = b.module(b.adapter.final_norm)
        x = torch.as_tensor(traces.resid(trace_id, model.n_layers), dtype=torch.float32, device=model.device)
        with torch.inference_mode():
            y = normalized(norm, x) if point == "ln_final.hook_normalized" else norm(x)
            return y.float().cpu().numpy()
    assert layer is not None
    resid = traces.resid(trace_id, layer)
    if point == "attn.hook_result":
        z = run_block(model, layer, resid, ["attn.hook_z"])["attn.hook_z"]
        return head_results(model, layer, z)
    return run_block(model, layer, resid, [point])[point]


def select_head(model, hook: str, array: np.ndarray, head: int | None) -> np.ndarray:
    """[T, heads, d] -> [T, d] for `head` (a query head; K/V use the KV head it reads); others as is."""
    _, point = parse(model, hook)
    if point not in PER_HEAD:
        return array
    if head is None:
        raise InvalidInput(f"'{hook}' is per head: give head=0..{model.n_heads - 1}")
    if not 0 <= head < model.n_heads:
        raise InvalidInput(f"head must be < {model.n_heads}, got {head}")
    if point in KV_HEADS:
        head = head // (model.n_heads // model.bound.n_kv_heads)
    return array[:, head]
