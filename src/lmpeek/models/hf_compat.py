"""Every touch point with transformers internals that changes between versions, in one place.

lmpeek supports the transformers range in pyproject (installs for development and CI come from
requirements.lock). Anything below that reaches past transformers' stable public API (a keyword that
was renamed, a registry, a module-level function looked up by name, a config field a forward slices
with) goes through this module, so an upstream change is one edit here plus a test in
tests/models/test_hf_compat.py, which runs against the locked version and the lowest allowed one
(`make compat-lowest`).

Importing this module does not import torch or transformers; each function imports what it needs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

# The lowest transformers lmpeek is tested with; keep equal to pyproject's lower bound.
MIN_TRANSFORMERS = "5.23"

# Config fields a decoder forward uses to slice or index its block list (see `only_layer`).
_PER_LAYER_FIELDS = ("num_hidden_layers", "layer_types")


# --- the KV cache ---------------------------------------------------------------------------------


@functools.cache
def _cache_keyword(forward_cls: type) -> str:
    # transformers 5.24 renamed forward's `past_key_values=` to `cache=` (the old name warns with a
    # FutureWarning and goes away in 5.40); older releases only know `past_key_values`.
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments passing `cache` (a KV cache) to `model`'s forward under its current name."""
    return {_cache_keyword(type(model)): cache, "use_cache": True}


def new_kv_cache(config: Any) -> Any:
    """An empty dynamic KV cache for a model with this config (sliding-window layers included)."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


# RoPE variants whose frequencies depend on the length of the forward that runs them (dynamic NTK; Phi-3's
# longrope past its original length): a prefix run alone would be rotated as a shorter text.
_LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})


def prefix_cache_exact(config: Any, length: int) -> bool:
    """Whether running a text's first p tokens into a KV cache and then the rest on it computes what one
    forward over all `length` tokens computes (up to float rounding): every layer attends to every earlier
    token (no recurrent or linear-attention layers, no sliding window shorter than the text), and RoPE does
    not depend on the forward's length."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = tuple(getattr(cfg, "layer_types", None) or ())
    if any(t not in ("full_attention", "sliding_attention") for t in types):
        return False
    window = getattr(cfg, "sliding_window", None)
    if window is not None and window < length and (not types or "sliding_attention" in types):
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    per_type = [v for v in rope.values() if isinstance(v, dict)] if isinstance(rope, dict) else []
    kinds = {r.get("rope_type", r.get("type")) for r in (per_type or [rope]) if isinstance(r, dict)}
    return not kinds & _LENGTH_DEPENDENT_ROPE


# --- attention implementations --------------------------------------------------------------------


def register_attention(name: str, fn: Callable[..., Any]) -> None:
    """Register `fn` as attention implementation `name` (idempotent). It gets eager attention's mask
    (an additive float mask [B, 1, Tq, Tk]), since it computes what eager computes."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if AttentionInterface._global_mapping.get(name) is not fn:
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, eager_mask)


def attention_implementation(model: Any) -> str | None:
    """The name of the attention implementation `model` uses now ("eager", "sdpa", ...)."""
    return getattr(model.config, "_attn_implementation", None)


# model -> {implementation name: [(config, the value set_attn_implementation left on it)]}
_switch_plans: weakref.WeakKeyDictionary[Any, dict[str, list[tuple[Any, Any]]]] = weakref.WeakKeyDictionary()


def _attention_configs(model: Any) -> list[Any]:
    """Every config set_attn_implementation may write to: its modules' configs and their sub-configs."""
    found: dict[int, Any] = {}
    stack = [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "sub_configs")]
    while stack:
        config = stack.pop()
        if id(config) not in found:
            found[id(config)] = config
            subs = (getattr(config, key, None) for key in config.sub_configs)
            stack += [c for c in subs if hasattr(c, "sub_configs")]
    return list(found.values())


def set_attention_implementation(model: Any, name: str) -> None:
    """Switch `model` (and its submodules' configs) to attention implementation `name`, no reload.

    The first switch to `name` goes through `set_attn_implementation` (which checks the name and walks
    every module: ~0.7 ms on a 30-layer model, and lmpeek switches there and back around every captured
    forward, i.e. every generated token); what it set is remembered, and later switches replay it
    (a few attribute writes, ~10 µs)."""
    if attention_implementation(model) == name:
        return
    plans = _switch_plans.setdefault(model, {})
    for config, value in plans.get(name, ()):
        config._attn_implementation_internal = value
    if attention_implementation(model) == name:  # replayed (and the model still has those configs)
        return
    model.set_attn_implementation(name)
    plans[name] = [(c, c._attn_implementation_internal) for c in _attention_configs(model)]


@contextlib.contextmanager
def attention_implementation_as(model: Any, name: str) -> Iterator[None]:
    """Use attention implementation `name` inside the block, then switch back to what was set."""
    before = attention_implementation(model)
    set_attention_implementation(model, name)
    try:
        yield
    finally:
        if before is not None:
            set_attention_implementation(model, before)


_eager_by_class: dict[type, Callable[..., Any] | None] = {}


def eager_attention_for(module: Any) -> Callable[..., Any] | None:
    """The `eager_attention_forward` function of the modeling file that defines `module`'s class
    (each architecture has its own: Gemma's adds softcapping), or None if there is none."""
    cls = type(module)
    if cls not in _eager_by_class:
        _eager_by_class[cls] = getattr(sys.modules[cls.__module__], "eager_attention_forward", None)
    return _eager_by_class[cls]


# --- running one block alone ----------------------------------------------------------------------


@contextlib.contextmanager
def only_layer(config: Any, layer: int) -> Iterator[None]:
    """Narrow the per-layer config fields to layer `layer` alone for the duration (a base model whose
    block list holds only that block slices `layers[: num_hidden_layers]` and reads `layer_types[i]`)."""
    saved = {k: getattr(config, k) for k in _PER_LAYER_FIELDS if hasattr(config, k)}
    config.num_hidden_layers = 1
    if saved.get("layer_types") is not None:
        config.layer_types = [saved["layer_types"][layer]]
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(config, k, v)


# --- loading --------------------------------------------------------------------------------------


def strip_gguf_quantization(model: Any) -> None:
    """Let `save_pretrained` write a model loaded from GGUF: its weights are already dequantised to
    float32, but the GGUF quantizer marks make transformers refuse to save it."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def causal_lm_model_types() -> tuple[frozenset[str], frozenset[str]]:
    """(model types with a causal-LM head class, model types with a masked-LM head class)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), frozenset(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Show or hide transformers' own tqdm bars for the duration, then restore the previous setting."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


# --- sampling -------------------------------------------------------------------------------------


def sampling_warpers(temperature: float, top_p: float, top_k: int) -> Any:
    """transformers' own logits warpers (the semantics of `model.generate`), as one callable
    `(input_ids [B, T], scores [B, V]) -> scores`; filtered-out tokens get -inf."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return procs


def _weights_map(module: Any) -> Any:
    """accelerate's map of the module's offloaded weights (its AlignDevicesHook's), or None."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *(getattr(hook, "hooks", ()) or ())]:  # a SequentialHook holds several
        if getattr(h, "weights_map", None) is not None:
            return h.weights_map
    return None


def parameter_value(module: Any, name: str = "weight") -> Any:
    """The module's parameter with its values: an offloaded one (on "meta" in the model) read
    through accelerate's weights map, as its module would when it runs. For code that reads weights
    without calling the module (the logit lens' unembedding)."""
    p = getattr(module, name, None)
    if p is None or p.device.type != "meta":
        return p
    weights = _weights_map(module)
    return weights[name] if weights is not None else p


def offloaded_parameters(model: Any) -> dict[str, Any]:
    """name -> value of every parameter accelerate offloaded (kept on "meta" in the model, read from
    the CPU or an offload folder when its module runs). Values from disk are memory-mapped: reading
    a sample of one costs little."""
    out: dict[str, Any] = {}
    for prefix, module in model.named_modules():
        weights = _weights_map(module)
        if weights is None:
            continue
        for name, p in module.named_parameters(recurse=False):
            if p.device.type == "meta":
                try:
                    out[f"{prefix}.{name}" if prefix else name] = weights[name]
                except KeyError:  # not in the map: stays identified by name and shape only
                    continue
    return out
