"""Heavy per-layer tensors recomputed on demand instead of being stored.

A Trace keeps summaries; a view that needs one layer's internals gets them here, either by running the
model up to that layer and stopping (`attention_pattern`, needs only token ids), or by running that one
block on its stored input (`run_block`, needs the block's resid_pre): any hook point of block l is a
function of resid_pre[l] alone, so storing the residual stream (~0.3 GB at 4k tokens) replaces storing
every tensor (patterns alone would be 4.5 GB).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from lmpeek.capture.hooks import attach
from lmpeek.errors import InvalidInput
from lmpeek.models import hf_compat
from lmpeek.models.loaded import LoadedModel


class _Stop(Exception):
    """Raised from a hook to end the forward pass once the wanted layer has run."""


@torch.inference_mode()
def attention_pattern(model: LoadedModel, token_ids, layer: int) -> np.ndarray:
    """Layer `layer`'s attention pattern [H, T, T] (float32) for the sequence `token_ids`."""
    if not 0 <= layer < model.n_layers:
        raise InvalidInput(f"layer must be in 0..{model.n_layers - 1}, got {layer}")
    got: dict[str, np.ndarray] = {}

    def keep(pattern: torch.Tensor) -> None:
        got["pattern"] = pattern[0].to("cpu", torch.float32).numpy().copy()
        raise _Stop

    ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long, device=model.device)[None]
    with attach(model.bound, {f"blocks.{layer}.attn.hook_pattern": keep}):
        try:
            model.hf(input_ids=ids, use_cache=False)
        except _Stop:
            pass
    return got["pattern"]


@contextmanager
def _only_block(model: LoadedModel, layer: int) -> Iterator[nn.Module]:
    """The base model (no LM head) temporarily holding just block `layer`.

    The base model's own forward then builds the rotary embeddings and the (sliding-window) mask for
    that block exactly as in a full pass; `num_hidden_layers` and `layer_types` are narrowed to match
    because forwards slice and index the block list with them.
    """
    b = model.bound
    parent_path, attr = b.adapter.blocks.rsplit(".", 1)
    base = b.module(parent_path)
    blocks = getattr(base, attr)
    setattr(base, attr, nn.ModuleList([blocks[layer]]))
    try:
        with hf_compat.only_layer(base.config, layer):
            yield base
    finally:
        setattr(base, attr, blocks)


@torch.inference_mode()
def run_block(
    model: LoadedModel, layer: int, resid_pre: np.ndarray, hooks: Iterable[str]
) -> dict[str, np.ndarray]:
    """Run block `layer` alone on its input resid_pre [T, D]; returns the named hook points of that block
    (names relative to the block, e.g. "attn.hook_pattern", "hook_mlp_out"), batch dim dropped, float32.
    Equal to a full forward's values (to float rounding) when resid_pre is the full forward's."""
    if not 0 <= layer < model.n_layers:
        raise InvalidInput(f"layer must be in 0..{model.n_layers - 1}, got {layer}")
    b = model.bound
    got: dict[str, np.ndarray] = {}

    names = list(hooks)

    def keeper(name: str):
        def keep(x: torch.Tensor) -> None:
            got[name] = x[0].to("cpu", torch.float32).numpy().copy()
            if len(got) == len(names):
                raise _Stop  # everything wanted is in: skip the rest of the block (e.g. after Q/K)

        return keep

    # the dtype the residual stream has in a full forward: the embedding's (a model's first parameter
    # may be a norm kept in float32 while the blocks run in bfloat16)
    dtype = model.hf.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:  # quantised embeddings: the blocks' parameters tell
        dtype = next(p.dtype for p in model.hf.parameters() if p.dtype.is_floating_point)
    x = torch.as_tensor(np.asarray(resid_pre), dtype=dtype, device=model.device)[None]
    if b.adapter.pos_embed:  # gpt2 adds learned positions to inputs_embeds: take them out first
        positions = torch.arange(x.shape[1], device=model.device)
        x = x - b.module(b.adapter.pos_embed)(positions)[None]
    with _only_block(model, layer) as base, attach(b, {f"blocks.{layer}.{n}": keeper(n) for n in names}):
        try:
            base(inputs_embeds=x, use_cache=False)
        except _Stop:
            pass
    return {n: got[n] for n in names}


@torch.inference_mode()
def head_results(model: LoadedModel, layer: int, z: np.ndarray) -> np.ndarray:
    """Each head's write into the residual stream, z_h · W_O[h]: z [T, H, d] -> [T, H, D] (float32).

    Computed with the model's own output projection applied to one head's slice of z at a time (the
    rest zeroed) minus its bias, so Linear and GPT-2's Conv1D layouts need no special case. The heads'
    writes sum to the projection's output less its bias; for Gemma 3 that output is then normalised
    (post_attention_layernorm) before it is added, so there the writes are pre-norm contributions.
    """
    o_proj = model.bound.block_module(layer, model.bound.adapter.o_proj)
    zt = torch.as_tensor(np.asarray(z), dtype=next(model.hf.parameters()).dtype, device=model.device)
    T, H, d = zt.shape
    bias = o_proj(torch.zeros(1, H * d, dtype=zt.dtype, device=zt.device))[0]  # the bias (or zeros)
    out = torch.empty(T, H, model.d_model, dtype=torch.float32)
    for h in range(H):
        only = torch.zeros_like(zt)
        only[:, h] = zt[:, h]
        out[:, h] = (o_proj(only.reshape(T, H * d)) - bias).float().cpu()
    return out.numpy()


def as_float16(array: np.ndarray) -> np.ndarray:
    """float32 -> float16, bit for bit what numpy gives (round to nearest even), through torch: numpy
    converts values below float16's normal range (most of a long pattern's weights) one by one on a
    slow path (1.1 s against 0.03 s for 16.7 M weights of 1e-6)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(torch.float16).numpy()


def head_pattern(model: LoadedModel, layer: int, q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """One head's attention pattern [T, T] from its query and key vectors q, k [T, d] (after RoPE),
    with the same kernel, scale, softcap and sliding window as a trace. A [T, T] for one head is
    H times smaller than the layer's pattern, which is what makes 4k-token samples browsable."""
    from lmpeek.capture.attention_kernel import causal_attention

    params = model.bound.attention_params(layer)
    qt = torch.as_tensor(np.asarray(q), dtype=torch.float32)[None, None]  # [1, 1, T, d]
    kt = torch.as_tensor(np.asarray(k), dtype=torch.float32)[None, None]
    T = qt.shape[2]
    mask = None
    window = params.window
    if window:
        i = torch.arange(T)
        allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
        mask = torch.zeros(1, 1, T, T).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        _, _, pattern = causal_attention(
            qt, kt, kt, mask, params.scale, softcap=params.softcap, want_pattern=True
        )
    return pattern[0, 0].numpy()
