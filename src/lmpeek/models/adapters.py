"""One registry: architecture -> where its blocks, attention, MLP, norms and rotary live.

Everything outside this module uses the uniform hook names (TransformerLens style) and never a
model-specific attribute path. A new architecture is one `Adapter` entry plus one tiny config in
tests/models/tiny_configs.py; nothing else changes.

Hook points every model gets (shapes are for one sequence of T tokens). A name that TransformerLens 4
(TransformerBridge over the Hugging Face model, raw weights) also exposes means the same tensor there:
tests/capture/test_parity_tl.py checks every such name on each tiny architecture.

    hook_embed                        [T, D]      token embedding as it enters the residual stream
    hook_pos_embed                    [T, D]      learned position embedding (gpt2 only)
    blocks.{l}.hook_resid_pre         [T, D]
    blocks.{l}.ln1.hook_normalized    [T, D]      the attention's input norm before its gain: x / rms(x)
                                                  (RMSNorm) or (x - mean) / std (LayerNorm)
    blocks.{l}.ln1.hook_out           [T, D]      that norm's output (after the gain): what attention reads
    blocks.{l}.attn.hook_q / hook_k / hook_v
                                      [T, H, d]   the raw projections (k, v have the KV heads: H_kv <= H)
    blocks.{l}.attn.hook_q_normed / hook_k_normed
                                      [T, H, d]   after q_norm / k_norm, before RoPE (Gemma 3, Qwen 3; TL4
                                                  keeps these as [H, T, d])
    blocks.{l}.attn.hook_rot_q / hook_rot_k
                                      [T, H, d]   after RoPE (only where the model has RoPE)
    blocks.{l}.attn.hook_pattern      [H, T, T]   softmax attention (query, key)
    blocks.{l}.attn.hook_z            [T, H, d]   per-head attention output, the input of W_O
    blocks.{l}.hook_attn_out          [T, D]      what the attention sublayer adds to the residual
    blocks.{l}.hook_resid_mid         [T, D]      resid_pre + attn_out (see `parallel` below)
    blocks.{l}.ln2.hook_normalized    [T, D]      the MLP's input norm before its gain
    blocks.{l}.ln2.hook_out           [T, D]      that norm's output: what the MLP reads
    blocks.{l}.mlp.hook_pre           [T, M]      MLP pre-activation (the gate for gated MLPs)
    blocks.{l}.mlp.hook_post          [T, M]      MLP activation, the input of the down projection
    blocks.{l}.hook_mlp_out           [T, D]      what the MLP sublayer adds to the residual
    blocks.{l}.hook_resid_post        [T, D]      before the final norm, also for the last block
    ln_final.hook_normalized          [T, D]      the final norm before its gain
    ln_final.hook_out                 [T, D]      the final norm's output, the input of the unembedding

Conventions that differ between architectures and are made uniform here:
- Gemma 3 normalises each sublayer's output before adding it (post_attention_layernorm,
  post_feedforward_layernorm): hook_attn_out / hook_mlp_out are those norms' outputs, i.e. what is
  really added to the residual stream; its ln2 is pre_feedforward_layernorm. Gemma 3 and Qwen 3
  normalise q and k per head (q_norm / k_norm) before RoPE: hook_q / hook_k are the projections,
  hook_q_normed / hook_k_normed what RoPE rotates.
- gpt_neox with `use_parallel_residual` (Pythia) computes attention and MLP from the same
  resid_pre: resid_post = resid_pre + attn_out + mlp_out. There is no stream the MLP reads, so
  hook_resid_mid is defined as resid_pre + attn_out (the identities below still hold; the MLP's
  input is resid_pre, not resid_mid).
- Identities (checked by `lmpeek check`): resid_pre + attn_out == resid_mid and
  resid_mid + mlp_out == resid_post.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from lmpeek.errors import UnsupportedArchitecture

Config = Any  # a transformers PretrainedConfig; kept loose so adapters need no transformers import
Take = Callable[[torch.Tensor, Config], torch.Tensor]


# --- shape helpers (batch-first tensors in, [B, T, heads, d_head] out) -------------------------


def head_dim(config: Config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def n_kv_heads(config: Config) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _heads(x: torch.Tensor, config: Config) -> torch.Tensor:
    # [B, T, heads * d] -> [B, T, heads, d]
    return x.unflatten(-1, (-1, head_dim(config)))


def _bhtd_to_bthd(x: torch.Tensor, config: Config) -> torch.Tensor:
    # q_norm/k_norm run after the view+transpose to [B, heads, T, d]
    return x.transpose(1, 2)


def _neox_qkv(i: int) -> Take:
    # query_key_value's output is viewed as [B, T, H, 3*d] and chunked on the last dim: per-head
    # interleaving, not [q | k | v] blocks (modeling_gpt_neox.GPTNeoXAttention.forward).
    def take(x: torch.Tensor, config: Config) -> torch.Tensor:
        return x.unflatten(-1, (config.num_attention_heads, -1)).chunk(3, dim=-1)[i]

    return take


def _fused_qkv(i: int) -> Take:
    # [q (H*d) | k (H_kv*d) | v (H_kv*d)] along the last dim (phi3 qkv_proj)
    def take(x: torch.Tensor, config: Config) -> torch.Tensor:
        d = head_dim(config)
        sizes = [config.num_attention_heads * d, n_kv_heads(config) * d, n_kv_heads(config) * d]
        return _heads(x.split(sizes, dim=-1)[i], config)

    return take


def _gpt2_qkv(i: int) -> Take:
    def take(x: torch.Tensor, config: Config) -> torch.Tensor:
        return _heads(x.split(config.hidden_size, dim=-1)[i], config)

    return take


def _first_half(x: torch.Tensor, config: Config) -> torch.Tensor:
    # phi3's gate_up_proj output is [gate | up]; the gate is the pre-activation
    return x.chunk(2, dim=-1)[0]


def _rotary_dims(config: Config) -> int | None:
    rope = getattr(config, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "full_attention" in rope:  # gemma3: one set per layer type
        rope = rope["full_attention"]
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    return int(head_dim(config) * factor)


def _no_rotary(config: Config) -> int | None:
    return None


def _heads_if_flat(x: torch.Tensor, config: Config) -> torch.Tensor:
    # a q/k norm over the whole projection (olmo2) sees [B, T, H*d]; a per-head one [B, T, H, d]
    return _heads(x, config) if x.dim() == 3 else x


# --- norms: the pre-gain `hook_normalized` points ------------------------------------------------

_CENTERS: dict[type, bool] = {}


def norm_centers(module: nn.Module) -> bool:
    """True for a LayerNorm (subtracts the mean), False for an RMSNorm.

    Decided by type where the name says it (as TransformerLens does); otherwise by probing once per
    class: a LayerNorm's output does not change when a constant is added to every feature."""
    cls = type(module)
    if cls not in _CENTERS:
        if isinstance(module, nn.LayerNorm):
            _CENTERS[cls] = True
        elif "RMSNorm" in cls.__name__:
            _CENTERS[cls] = False
        else:
            p = next(module.parameters(), None)
            d = p.shape[-1] if p is not None else module.normalized_shape[-1]
            x = torch.randn(4, d, generator=torch.Generator().manual_seed(0))
            dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, "cpu")
            with torch.no_grad():
                # .forward, not __call__: this may run inside one of lmpeek's own hooks on the module
                a, b = (module.forward(v.to(device, dtype)).float().cpu() for v in (x, x + 3.0))
            _CENTERS[cls] = bool(torch.allclose(a, b, rtol=2e-2, atol=2e-2 * float(a.abs().max())))
    return _CENTERS[cls]


def norm_eps(module: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 1e-5  # what norms that hard-code it use (olmo), and TransformerLens's default


def normalized(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What norm `module` computes from `x` before its gain (and bias), in float32 as TransformerLens 4
    does: x / rms(x) for an RMSNorm, (x - mean) / std for a LayerNorm (each with the module's eps)."""
    x = x.float()
    if norm_centers(module):
        x = x - x.mean(-1, keepdim=True)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm_eps(module))


# --- adapter description ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tap:
    """Where one hook point is read inside a block: a submodule's input or output, reshaped by `take`."""

    path: str
    side: Literal["input", "output"] = "output"
    take: Take | None = None


@dataclass(frozen=True)
class Adapter:
    """Where an architecture keeps its parts. Paths are `get_submodule` paths.

    `blocks`, `embed`, `pos_embed`, `final_norm`, `unembed` are relative to the CausalLM; the `Tap`s
    and `attn` are relative to one block.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    embed: str
    final_norm: str
    unembed: str
    attn: str
    o_proj: str
    attn_out: Tap
    mlp_out: Tap
    resid_mid: Tap | None  # None: parallel block, resid_mid := resid_pre + attn_out
    mlp_pre: Tap
    mlp_post: Tap
    q: Tap
    k: Tap
    v: Tap
    ln1: str | None = None  # the norm attention reads through (relative to the block)
    ln2: str | None = None  # the norm the MLP reads through
    q_normed: Tap | None = None  # q after q_norm, before RoPE (models with q/k norms)
    k_normed: Tap | None = None
    pos_embed: str | None = None
    rotary_dims: Callable[[Config], int | None] = _rotary_dims
    refuse: Callable[[Config], str | None] = lambda config: None
    note: str = ""

    def parallel(self, config: Config) -> bool:
        return self.resid_mid is None or bool(getattr(config, "use_parallel_residual", False))


def _llama_like(name: str, model_types: tuple[str, ...], **over: Any) -> Adapter:
    fields: dict[str, Any] = dict(
        name=name,
        model_types=model_types,
        blocks="model.layers",
        embed="model.embed_tokens",
        final_norm="model.norm",
        unembed="lm_head",
        attn="self_attn",
        o_proj="self_attn.o_proj",
        attn_out=Tap("self_attn"),
        mlp_out=Tap("mlp"),
        resid_mid=Tap("post_attention_layernorm", "input"),
        mlp_pre=Tap("mlp.gate_proj"),
        mlp_post=Tap("mlp.down_proj", "input"),
        q=Tap("self_attn.q_proj", take=_heads),
        k=Tap("self_attn.k_proj", take=_heads),
        v=Tap("self_attn.v_proj", take=_heads),
        ln1="input_layernorm",
        ln2="post_attention_layernorm",
    )
    fields.update(over)
    return Adapter(**fields)


def _refuse_gpt2(config: Config) -> str | None:
    if getattr(config, "reorder_and_upcast_attn", False):
        return "reorder_and_upcast_attn=True bypasses the attention interface lmpeek hooks into"
    if getattr(config, "add_cross_attention", False):
        return "cross-attention (encoder-decoder GPT-2) is not a causal LM layout"
    return None


REGISTRY: tuple[Adapter, ...] = (
    _llama_like("llama", ("llama", "mistral")),
    _llama_like("qwen2", ("qwen2",)),
    _llama_like(
        "qwen3",
        ("qwen3",),
        # q_norm/k_norm run on [B, T, H, d] before the transpose; RoPE is applied to their output
        q_normed=Tap("self_attn.q_norm"),
        k_normed=Tap("self_attn.k_norm"),
    ),
    _llama_like(
        "gemma3",
        ("gemma3_text",),
        attn_out=Tap("post_attention_layernorm"),
        mlp_out=Tap("post_feedforward_layernorm"),
        resid_mid=Tap("pre_feedforward_layernorm", "input"),
        ln2="pre_feedforward_layernorm",
        q_normed=Tap("self_attn.q_norm", take=_bhtd_to_bthd),
        k_normed=Tap("self_attn.k_norm", take=_bhtd_to_bthd),
        note="attn_out/mlp_out are the post-sublayer norms' outputs",
    ),
    _llama_like(
        "phi3",
        ("phi3",),
        mlp_pre=Tap("mlp.gate_up_proj", take=_first_half),
        q=Tap("self_attn.qkv_proj", take=_fused_qkv(0)),
        k=Tap("self_attn.qkv_proj", take=_fused_qkv(1)),
        v=Tap("self_attn.qkv_proj", take=_fused_qkv(2)),
    ),
    Adapter(
        name="gpt2",
        model_types=("gpt2",),
        blocks="transformer.h",
        embed="transformer.wte",
        pos_embed="transformer.wpe",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn="attn",
        o_proj="attn.c_proj",
        attn_out=Tap("attn"),
        mlp_out=Tap("mlp"),
        resid_mid=Tap("ln_2", "input"),
        mlp_pre=Tap("mlp.c_fc"),
        mlp_post=Tap("mlp.c_proj", "input"),
        q=Tap("attn.c_attn", take=_gpt2_qkv(0)),
        k=Tap("attn.c_attn", take=_gpt2_qkv(1)),
        v=Tap("attn.c_attn", take=_gpt2_qkv(2)),
        ln1="ln_1",
        ln2="ln_2",
        rotary_dims=_no_rotary,
        refuse=_refuse_gpt2,
    ),
    Adapter(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        attn="attention",
        o_proj="attention.dense",
        attn_out=Tap("attention"),
        mlp_out=Tap("mlp"),
        # sequential gpt_neox reads resid_mid in post_attention_layernorm; parallel has none
        resid_mid=Tap("post_attention_layernorm", "input"),
        mlp_pre=Tap("mlp.dense_h_to_4h"),
        mlp_post=Tap("mlp.dense_4h_to_h", "input"),
        q=Tap("attention.query_key_value", take=_neox_qkv(0)),
        k=Tap("attention.query_key_value", take=_neox_qkv(1)),
        v=Tap("attention.query_key_value", take=_neox_qkv(2)),
        ln1="input_layernorm",
        ln2="post_attention_layernorm",  # with use_parallel_residual it reads resid_pre
        note="with use_parallel_residual, resid_mid := resid_pre + attn_out (the MLP reads resid_pre)",
    ),
)

_BY_TYPE: dict[str, Adapter] = {t: a for a in REGISTRY for t in a.model_types}


def supported_architectures() -> list[str]:
    """Hugging Face `model_type`s with an adapter (others may still work through the generic one)."""
    return sorted(_BY_TYPE)


# --- binding an adapter to one model ----------------------------------------------------------


# every block's hook points in forward order (the rot_ ones exist only for models with RoPE)
BLOCK_POINTS = (
    "hook_resid_pre", "ln1.hook_normalized", "ln1.hook_out", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_q_normed", "attn.hook_k_normed", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_pattern",
    "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "ln2.hook_out", "mlp.hook_pre",
    "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
)  # fmt: skip
# points outside the blocks, in forward order (hook_pos_embed only where the model has one)
FINAL_POINTS = ("ln_final.hook_normalized", "ln_final.hook_out")


@dataclass(frozen=True)
class AttentionParams:
    scale: float  # multiplies q·k
    window: int | None  # sliding window (keys within `window` positions), None for full attention
    softcap: float | None  # tanh soft-capping of the scores (gemma2-style), None if off


@dataclass
class Bound:
    """An adapter resolved against one model instance: real modules and sizes."""

    adapter: Adapter
    model: nn.Module
    config: Config
    blocks: list[nn.Module]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    rotary_dims: int | None
    parallel: bool
    generic: bool = False
    attn_modules: list[nn.Module] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return self.config.model_type

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    def block_module(self, layer: int, path: str) -> nn.Module:
        return self.blocks[layer].get_submodule(path)

    def attention_params(self, layer: int) -> AttentionParams:
        """How layer `layer` scores keys, read from its attention module (transformers keeps them there)."""
        attn = self.attn_modules[layer]
        config = getattr(attn, "config", self.config)
        return AttentionParams(
            scale=getattr(attn, "scaling", None) or self.d_head**-0.5,
            window=getattr(attn, "sliding_window", None) or None,
            softcap=getattr(config, "attn_logit_softcapping", None),
        )

    def has_point(self, point: str) -> bool:
        """Whether this model has block hook point `point` (e.g. "attn.hook_rot_q" needs RoPE)."""
        a = self.adapter
        if point not in BLOCK_POINTS:
            return False
        if "rot_" in point:
            return bool(self.rotary_dims)
        if point.endswith("_normed"):
            return a.q_normed is not None
        if point.startswith(("ln1.", "ln2.")):
            return getattr(a, point[:3]) is not None
        return True

    def block_points(self) -> list[str]:
        """The hook points of one block (relative to it), in forward order."""
        return [p for p in BLOCK_POINTS if self.has_point(p)]

    def pre_rope_points(self) -> tuple[str, str]:
        """The block points holding the q and k that RoPE rotates (after q_norm/k_norm where they exist)."""
        if self.adapter.q_normed is not None:
            return "attn.hook_q_normed", "attn.hook_k_normed"
        return "attn.hook_q", "attn.hook_k"

    def hook_names(self) -> list[str]:
        """Every hook point this model has, in forward order."""
        names = ["hook_embed"] + (["hook_pos_embed"] if self.adapter.pos_embed else [])
        per_block = self.block_points()
        for layer in range(self.n_layers):
            names += [f"blocks.{layer}.{n}" for n in per_block]
        return names + list(FINAL_POINTS)


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _generic_adapter(model: nn.Module, model_type: str) -> Adapter | None:
    """A llama-like layout found by looking: a ModuleList of blocks with self_attn.{q,k,v,o}_proj and mlp."""
    for path, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        block = mod[0]
        if not all(_has(block, f"self_attn.{p}_proj") for p in "qkvo") or not _has(block, "mlp.down_proj"):
            continue
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        prefix = f"{parent}." if parent else ""
        norm = next(
            (f"{prefix}{n}" for n in ("norm", "final_layernorm", "ln_f") if _has(model, prefix + n)), None
        )
        embed = next((n for n, m in model.named_modules() if m is model.get_input_embeddings()), None)
        unembed = next((n for n, m in model.named_modules() if m is model.get_output_embeddings()), None)
        if norm is None or embed is None or unembed is None:
            return None
        gated = _has(block, "mlp.gate_proj")
        qk_norm = _has(block, "self_attn.q_norm") and _has(block, "self_attn.k_norm")
        return _llama_like(
            f"generic ({model_type})",
            (model_type,),
            blocks=path,
            embed=embed,
            final_norm=norm,
            unembed=unembed,
            resid_mid=Tap("post_attention_layernorm", "input")
            if _has(block, "post_attention_layernorm")
            else None,
            mlp_pre=Tap("mlp.gate_proj") if gated else Tap("mlp.up_proj"),
            ln1="input_layernorm" if _has(block, "input_layernorm") else None,
            ln2="post_attention_layernorm" if _has(block, "post_attention_layernorm") else None,
            q_normed=Tap("self_attn.q_norm", take=_heads_if_flat) if qk_norm else None,
            k_normed=Tap("self_attn.k_norm", take=_heads_if_flat) if qk_norm else None,
            note="found by the generic llama-like adapter; run `lmpeek check` to verify the hook points",
        )
    return None


def bind(model: nn.Module) -> Bound:
    """Resolve the adapter for `model` (a transformers CausalLM) or raise `UnsupportedArchitecture`."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    adapter = _BY_TYPE.get(model_type)
    generic = adapter is None
    if adapter is None:
        adapter = _generic_adapter(model, model_type)
        if adapter is None:
            raise UnsupportedArchitecture(
                f"architecture '{model_type}' is not supported: it has no adapter and no llama-like layout "
                f"(decoder layers with self_attn.q_proj/k_proj/v_proj/o_proj and mlp.down_proj). "
                f"Supported: {', '.join(supported_architectures())}."
            )
        msg = (
            f"'{model_type}' has no lmpeek adapter; using the generic llama-like one "
            f"(blocks at '{adapter.blocks}'). Run `lmpeek check` to verify every hook point."
        )
        warnings.warn(msg, stacklevel=2)
    reason = adapter.refuse(config)
    if reason:
        raise UnsupportedArchitecture(f"{model_type}: {reason}")
    try:
        blocks = list(model.get_submodule(adapter.blocks))
        for path in (adapter.embed, adapter.final_norm, adapter.unembed, *filter(None, [adapter.pos_embed])):
            model.get_submodule(path)
        for tap in (adapter.attn_out, adapter.mlp_out, adapter.mlp_pre, adapter.mlp_post, adapter.q,
                    *filter(None, [adapter.q_normed, adapter.k_normed])):  # fmt: skip
            blocks[0].get_submodule(tap.path)
        for path in filter(None, [adapter.ln1, adapter.ln2]):
            blocks[0].get_submodule(path)
    except AttributeError as err:
        raise UnsupportedArchitecture(
            f"'{model_type}' does not have the layout the '{adapter.name}' adapter expects: {err}"
        ) from err
    mlp_post = blocks[0].get_submodule(adapter.mlp_post.path)
    d_mlp = getattr(mlp_post, "in_features", None) or getattr(mlp_post, "nx", None)  # Conv1D keeps nx
    parallel = adapter.parallel(config)
    return Bound(
        adapter=adapter,
        model=model,
        config=config,
        blocks=blocks,
        n_layers=len(blocks),
        n_heads=config.num_attention_heads,
        n_kv_heads=n_kv_heads(config),
        d_head=head_dim(config),
        d_model=config.hidden_size,
        d_mlp=int(d_mlp),
        rotary_dims=adapter.rotary_dims(config),
        parallel=parallel,
        generic=generic,
        attn_modules=[b.get_submodule(adapter.attn) for b in blocks],
    )
