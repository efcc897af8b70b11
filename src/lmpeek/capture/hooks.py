"""Attach handlers to named hook points for the duration of a `with` block (always detached after).

Two mechanisms, both using the model's own code (no copied forward passes):
- torch forward hooks / pre-hooks on the modules an `Adapter` names;
- an attention function registered with transformers' `AttentionInterface` under the name "lmpeek".
  It calls the model's own `eager_attention_forward` (so the pattern is exactly transformers' eager
  pattern) and hands (q after RoPE, k after RoPE, v, pattern) to whoever listens for that module.
  This is the one place where RoPE'd Q/K exist as tensors, and eager is the only implementation that
  materialises the pattern; sdpa would silently return none.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lmpeek.errors import UnsupportedArchitecture
from lmpeek.models.adapters import Bound, Tap

ATTENTION_IMPL = "lmpeek"

Handler = Callable[[torch.Tensor], None]
AttentionListener = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]

# id(attention module) -> listener; filled only inside `attach`
_listeners: dict[int, AttentionListener] = {}
_eager_by_class: dict[type, Callable[..., Any]] = {}


def _eager_for(module: nn.Module) -> Callable[..., Any]:
    cls = type(module)
    fn = _eager_by_class.get(cls)
    if fn is None:
        fn = getattr(sys.modules[cls.__module__], "eager_attention_forward", None)
        if fn is None:
            raise UnsupportedArchitecture(
                f"{cls.__name__} ({cls.__module__}) has no eager_attention_forward to compute patterns with"
            )
        _eager_by_class[cls] = fn
    return fn


def _attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    # query [B, H, Tq, d] after RoPE; key/value [B, H_kv, Tk, d] (including any cached keys)
    out, weights = _eager_for(module)(module, query, key, value, attention_mask, **kwargs)
    listener = _listeners.get(id(module))
    if listener is not None:
        listener(query, key, value, weights)
    return out, weights


def install_attention(model: nn.Module) -> None:
    """Make `model` compute attention through `_attention` (idempotent, no reload)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if ATTENTION_IMPL not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_IMPL, _attention)
        # our function wraps eager attention, so it needs eager's additive float mask
        AttentionMaskInterface.register(ATTENTION_IMPL, eager_mask)
    if getattr(model.config, "_attn_implementation", None) != ATTENTION_IMPL:
        model.set_attn_implementation(ATTENTION_IMPL)


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _parse(name: str) -> tuple[int | None, str]:
    if name.startswith("blocks."):
        _, layer, point = name.split(".", 2)
        return int(layer), point
    return None, name


@contextmanager
def attach(bound: Bound, handlers: Mapping[str, Handler]) -> Iterator[None]:
    """Call `handlers[name](tensor)` whenever hook point `name` is computed.

    Tensors are batch-first as computed (no copy): resid/attn_out/mlp_out/embeds [B, T, D];
    q/k/v/rot_q/rot_k/z [B, T, heads, d]; pattern [B, H, Tq, Tk]; mlp pre/post [B, T, M].
    Handlers must not modify the tensor in place.
    """
    config = bound.config
    handles: list[Any] = []
    listening: list[int] = []
    per_layer_attn: dict[int, dict[str, Handler]] = {}

    def on(module: nn.Module, side: str, fn: Callable[[torch.Tensor], None]) -> None:
        if side == "input":

            def pre(_mod, args, kwargs):
                fn(args[0] if args else kwargs["hidden_states"])

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda _m, _a, out: fn(_first(out))))

    def tap(layer: int, t: Tap, fn: Handler) -> None:
        take = t.take
        on(bound.block_module(layer, t.path), t.side, (lambda x: fn(take(x, config))) if take else fn)

    try:
        for name, fn in handlers.items():
            layer, point = _parse(name)
            a = bound.adapter
            if layer is None:
                if point == "hook_embed":
                    on(bound.module(a.embed), "output", fn)
                elif point == "hook_pos_embed" and a.pos_embed:
                    on(bound.module(a.pos_embed), "output", fn)
                elif point == "ln_final.hook_normalized":
                    on(bound.module(a.final_norm), "output", fn)
                else:
                    raise KeyError(name)
                continue
            if not 0 <= layer < bound.n_layers:
                raise KeyError(name)
            block = bound.blocks[layer]
            if point == "hook_resid_pre":
                on(block, "input", fn)
            elif point == "hook_resid_post":
                on(block, "output", fn)
            elif point == "hook_attn_out":
                tap(layer, a.attn_out, fn)
            elif point == "hook_mlp_out":
                tap(layer, a.mlp_out, fn)
            elif point == "mlp.hook_pre":
                tap(layer, a.mlp_pre, fn)
            elif point == "mlp.hook_post":
                tap(layer, a.mlp_post, fn)
            elif point in ("attn.hook_q", "attn.hook_k", "attn.hook_v"):
                tap(layer, getattr(a, point[-1]), fn)
            elif point == "attn.hook_z":
                tap(layer, Tap(a.o_proj, "input", lambda x, c: x.unflatten(-1, (bound.n_heads, -1))), fn)
            elif point == "hook_resid_mid":
                if bound.parallel:
                    _resid_mid_from_sum(bound, layer, fn, on, tap)
                else:
                    tap(layer, a.resid_mid, fn)  # type: ignore[arg-type]
            elif point in ("attn.hook_pattern", "attn.hook_rot_q", "attn.hook_rot_k"):
                if point != "attn.hook_pattern" and not bound.rotary_dims:
                    raise KeyError(name)
                per_layer_attn.setdefault(layer, {})[point] = fn
            else:
                raise KeyError(name)

        for layer, fns in per_layer_attn.items():
            module = bound.attn_modules[layer]
            _listeners[id(module)] = _attention_listener(fns)
            listening.append(id(module))
        yield
    finally:
        for h in handles:
            h.remove()
        for key in listening:
            _listeners.pop(key, None)


def _attention_listener(fns: dict[str, Handler]) -> AttentionListener:
    pattern = fns.get("attn.hook_pattern")
    rot_q = fns.get("attn.hook_rot_q")
    rot_k = fns.get("attn.hook_rot_k")

    def listener(q, k, v, weights):
        if rot_q is not None:
            rot_q(q.transpose(1, 2))
        if rot_k is not None:
            rot_k(k.transpose(1, 2))
        if pattern is not None:
            pattern(weights)

    return listener


def _resid_mid_from_sum(bound: Bound, layer: int, fn: Handler, on, tap) -> None:
    # Parallel blocks have no stream between attention and MLP: define resid_mid = resid_pre + attn_out.
    held: dict[str, torch.Tensor] = {}
    on(bound.blocks[layer], "input", lambda x: held.__setitem__("pre", x))
    tap(layer, bound.adapter.attn_out, lambda x: fn(held.pop("pre") + x))
