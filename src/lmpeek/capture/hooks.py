"""Attach handlers to named hook points for the duration of a `with` block (always detached after).

Two mechanisms, both using the model's own code (no copied forward passes):
- torch forward hooks / pre-hooks on the modules an `Adapter` names;
- an attention function registered with transformers' `AttentionInterface` under the name "lmpeek".
  It calls the model's own `eager_attention_forward` (so the pattern is exactly transformers' eager
  pattern) and hands (q after RoPE, k after RoPE, v, pattern) to whoever listens for that module.
  This is the one place where RoPE'd Q/K exist as tensors, and eager is the only implementation that
  materialises the pattern; sdpa would silently return none. Plain causal attention takes lmpeek's
  kernels instead of eager (same numbers, see attention_kernel): torch's fused kernel where neither a
  pattern nor the entropy is wanted (or the entropy too, with FUSED_ENTROPY); the blocked kernel
  otherwise, and where softcap, a sliding window or autograd rule the fused one out; eager for
  anything else.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmpeek.capture.attention_kernel import (
    attention_entropy,
    causal_attention,
    fused_applies,
    fused_causal_attention,
)
from lmpeek.errors import UnsupportedArchitecture
from lmpeek.models import hf_compat
from lmpeek.models.adapters import Bound, Tap, normalized

ATTENTION_IMPL = "lmpeek"

Handler = Callable[[torch.Tensor], None]

# Arguments transformers passes to attention functions that plain causal attention may ignore
# (the mask already encodes sliding windows and cache positions).
_IGNORABLE = {"dropout", "scaling", "softcap", "sliding_window", "position_ids", "output_attentions",
              "use_cache", "cache_position", "is_causal"}  # fmt: skip


@dataclass
class _AttentionListener:
    """What `attach` wants from one attention module's call; tensors are batch-first."""

    pattern: Handler | None = None  # [B, H, Tq, Tk]
    entropy: Handler | None = None  # [B, H, Tq]
    rot_q: Handler | None = None  # [B, Tq, H, d]
    rot_k: Handler | None = None  # [B, Tk, H_kv, d]


_NOBODY = _AttentionListener()

# Attention entropy from torch's fused kernel (`fused_causal_attention`: one flash call with Q, K padded
# and values [V | K]) instead of the blocked kernel. Both are exact to 1e-5; measured on this 2-core CPU
# (default model, benchmarks/trace_overhead.py, interleaved medians) the blocked kernel is faster: whole
# trace 1.09x vs 1.16x a plain sdpa forward at 512 tokens, 1.17x vs 1.28x at 2,048; per layer 5.4 vs
# 8.6 ms and 65 vs 78 ms. So off here. Without an entropy listener (recomputed slices, runs that keep
# no summaries) the fused kernel runs anyway: one flash call, 4.5 vs 5.4 ms, 40 vs 65 ms.
FUSED_ENTROPY = False

# id(attention module) -> listener; filled only inside `attach`
_listeners: dict[int, _AttentionListener] = {}


def _eager_for(module: nn.Module) -> Callable[..., Any]:
    fn = hf_compat.eager_attention_for(module)
    if fn is None:
        cls = type(module)
        raise UnsupportedArchitecture(
            f"{cls.__name__} ({cls.__module__}) has no eager_attention_forward to compute patterns with"
        )
    return fn


def _plain_causal(module: nn.Module, query, key, mask, kwargs) -> bool:
    """True when `causal_attention` computes exactly what the model's eager function would."""
    return (
        not module.training
        and getattr(module, "is_causal", True)
        and set(kwargs) <= _IGNORABLE
        and not kwargs.get("dropout")
        and query.shape[1] % key.shape[1] == 0
        and (mask is None or (mask.dim() == 4 and mask.shape[-2:] == (query.shape[-2], key.shape[-2])))
    )


def _attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    # query [B, H, Tq, d] after RoPE; key/value [B, H_kv, Tk, d] (including any cached keys)
    listener = _listeners.get(id(module)) or _NOBODY
    if listener.rot_q is not None:
        listener.rot_q(query.transpose(1, 2))
    if listener.rot_k is not None:
        listener.rot_k(key.transpose(1, 2))
    want_pattern = listener.pattern is not None or bool(kwargs.get("output_attentions"))
    plain = _plain_causal(module, query, key, attention_mask, kwargs)
    scaling = kwargs.get("scaling")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    softcap = kwargs.get("softcap")
    if (
        plain
        and not want_pattern
        and (FUSED_ENTROPY or listener.entropy is None)
        and fused_applies(query, key, value, attention_mask, softcap, kwargs.get("sliding_window"))
    ):
        # torch's fused kernel: the plain sdpa forward's own (and its log-sum-exp for the entropy)
        out, entropy = fused_causal_attention(query, key, value, scaling, listener.entropy is not None)
        weights = None
    elif plain:
        # the blocked kernel: patterns, the entropy (see FUSED_ENTROPY), and what the fused kernel
        # cannot do (softcap, windows, autograd); eager would build [B, H, T, T] (4x slower at 4k tokens)
        out, entropy, weights = causal_attention(
            query, key, value, attention_mask, scaling=scaling, softcap=softcap, want_pattern=want_pattern
        )
    else:  # anything unusual: the model's own eager attention, entropy from its pattern
        out, weights = _eager_for(module)(module, query, key, value, attention_mask, **kwargs)
        entropy = attention_entropy(weights) if listener.entropy is not None else None
    if listener.entropy is not None:
        listener.entropy(entropy)
    if listener.pattern is not None:
        listener.pattern(weights)
    return out, weights


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock lmpeek's forwards on `model` hold (see `capturing`): one per model object."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextmanager
def capturing(model: nn.Module) -> Iterator[None]:
    """Compute attention through `_attention` inside the block only, then give the model back the
    implementation it had (sdpa, eager, ...) and its train/eval state: wrapping never changes what
    `model.generate()` or `backward()` do outside lmpeek's own forwards. Switching costs about
    0.02 ms each way on a 30-layer model (hf_compat replays the first switch), which a forward dwarfs.

    One thread at a time: the switch and the hooks belong to the model, so two threads capturing at
    once (a notebook cell's `lmpeek.trace` while the widget's Session generates) would mix their hooks'
    tensors and restore each other's implementation mid-forward. The lock is re-entrant, so the
    thread that holds it (a generation, between its steps) can still run its own slices."""
    with model_lock(model):
        yield from _capturing(model)


def _capturing(model: nn.Module, modules: list[nn.Module] | None = None) -> Iterator[None]:
    # `modules`: model.modules() listed once by the caller (a generation, for every token)
    hf_compat.register_attention(ATTENTION_IMPL, _attention)
    # lmpeek shows inference-time numbers: dropout off inside, the caller's train/eval flags back after
    # (set one by one: `train(True)` on a parent would also flip children the caller left in eval)
    training = [m for m in (model.modules() if modules is None else modules) if m.training]
    if training:  # eval() walks every module again (0.9 ms on the default model): only when it changes one
        model.eval()
    try:
        with hf_compat.attention_implementation_as(model, ATTENTION_IMPL):
            yield
    finally:
        for m in training:
            m.training = True


# attention-side points -> _AttentionListener field. "attn.entropy" is not a hook point: it is the
# per-query attention entropy [B, H, Tq], which the kernel computes without keeping the pattern.
_ATTENTION_POINTS = {
    "attn.hook_pattern": "pattern",
    "attn.entropy": "entropy",
    "attn.hook_rot_q": "rot_q",
    "attn.hook_rot_k": "rot_k",
}


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

    Tensors are batch-first as computed (no copy): resid/attn_out/mlp_out/embeds/ln* [B, T, D];
    q/k/v/q_normed/k_normed/rot_q/rot_k/z [B, T, heads, d]; pattern [B, H, Tq, Tk]; mlp pre/post
    [B, T, M]. The `hook_normalized` points are computed from their norm's input (float32).
    Handlers must not modify the tensor in place. Inside the block the model computes attention
    through lmpeek's function (see `capturing`); afterwards it is back to its own. Holds the model's
    lock (`model_lock`) from registering the hooks to removing them: another thread's forward must
    neither run through these hooks nor replace their attention listeners.
    """
    with model_lock(bound.model):
        yield from Attachment(bound, handlers)._attached()


class Attachment:
    """`attach` in two halves, for a generation that attaches the same handlers for every token: the
    hook names are resolved to (module, hook function) pairs once, here; each `with attached():`
    registers them for its block only (the model is the caller's again between two tokens) and holds
    the model's lock meanwhile, as `attach` does. Resolving, building the hook closures and listing the
    model's modules once saves ~0.3 ms a token on the default model."""

    def __init__(self, bound: Bound, handlers: Mapping[str, Handler]) -> None:
        self.model = bound.model
        self._hooks: list[tuple[nn.Module, bool, Callable[..., Any]]] = []  # (module, pre-hook?, hook)
        self._listeners: dict[int, _AttentionListener] = {}  # id(attention module) -> listener
        self._modules = list(self.model.modules())
        _resolve(bound, handlers, self._hooks, self._listeners)

    @contextmanager
    def attached(self) -> Iterator[None]:
        with model_lock(self.model):
            yield from self._attached()

    def _attached(self) -> Iterator[None]:
        handles: list[Any] = []
        listening: list[int] = []
        try:
            for module, pre, hook in self._hooks:
                if pre:
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(hook))
            for key, listener in self._listeners.items():
                _listeners[key] = listener
                listening.append(key)
            yield from _capturing(self.model, self._modules)
        finally:
            for h in handles:
                h.remove()
            for key in listening:
                _listeners.pop(key, None)


def _resolve(
    bound: Bound,
    handlers: Mapping[str, Handler],
    hooks: list[tuple[nn.Module, bool, Callable[..., Any]]],
    listeners: dict[int, _AttentionListener],
) -> None:
    """Append to `hooks` the (module, pre-hook?, hook function) pairs that call `handlers`, in their
    order, and to `listeners` the attention listeners by id(attention module)."""
    config = bound.config
    per_layer_attn: dict[int, _AttentionListener] = {}

    def on(module: nn.Module, side: str, fn: Callable[[torch.Tensor], None]) -> None:
        if side == "input":

            def pre(_mod, args, kwargs):
                fn(args[0] if args else kwargs["hidden_states"])

            hooks.append((module, True, pre))
        else:
            hooks.append((module, False, lambda _m, _a, out: fn(_first(out))))

    def tap(layer: int, t: Tap, fn: Handler) -> None:
        take = t.take
        on(bound.block_module(layer, t.path), t.side, (lambda x: fn(take(x, config))) if take else fn)

    def norm(module: nn.Module, which: str, fn: Handler) -> None:
        # hook_normalized: the norm before its gain, from its input; hook_out: the norm's own output
        if which == "hook_out":
            on(module, "output", fn)
        else:
            on(module, "input", lambda x: fn(normalized(module, x)))

    for name, fn in handlers.items():
        layer, point = _parse(name)
        a = bound.adapter
        if layer is None:
            if point == "hook_embed":
                on(bound.module(a.embed), "output", fn)
            elif point == "hook_pos_embed" and a.pos_embed:
                on(bound.module(a.pos_embed), "output", fn)
            elif point in ("ln_final.hook_normalized", "ln_final.hook_out"):
                norm(bound.module(a.final_norm), point.split(".")[1], fn)
            else:
                raise KeyError(name)
            continue
        if not 0 <= layer < bound.n_layers or not (bound.has_point(point) or point == "attn.entropy"):
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
        elif point in ("attn.hook_q_normed", "attn.hook_k_normed"):
            tap(layer, getattr(a, point[len("attn.hook_") :]), fn)
        elif point.startswith(("ln1.", "ln2.")):
            norm(bound.block_module(layer, getattr(a, point[:3])), point[4:], fn)
        elif point == "attn.hook_z":
            tap(layer, Tap(a.o_proj, "input", lambda x, c: x.unflatten(-1, (bound.n_heads, -1))), fn)
        elif point == "hook_resid_mid":
            if bound.parallel:
                _resid_mid_from_sum(bound, layer, fn, on, tap)
            else:
                tap(layer, a.resid_mid, fn)  # type: ignore[arg-type]
        elif point in _ATTENTION_POINTS:
            listener = per_layer_attn.setdefault(layer, _AttentionListener())
            setattr(listener, _ATTENTION_POINTS[point], fn)
        else:
            raise KeyError(name)
    for layer, listener in per_layer_attn.items():
        listeners[id(bound.attn_modules[layer])] = listener


def _resid_mid_from_sum(bound: Bound, layer: int, fn: Handler, on, tap) -> None:
    # Parallel blocks have no stream between attention and MLP: define resid_mid = resid_pre + attn_out.
    held: dict[str, torch.Tensor] = {}
    on(bound.blocks[layer], "input", lambda x: held.__setitem__("pre", x))
    tap(layer, bound.adapter.attn_out, lambda x: fn(held.pop("pre") + x))
