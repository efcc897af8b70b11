"""Hook names as dictionaries give them -> lmpeek's, and the per-token shape of each lmpeek point.

SAELens (and SAEDashboard, Neuronpedia) name hook points the TransformerLens way; lmpeek uses the same
names for the same tensors (models/adapters.py), so most names pass through unchanged. TransformerLens
also has a few aliases lmpeek does not expose as points of their own; they are mapped here to the
lmpeek point holding the same tensor:

    blocks.{l}.hook_mlp_in   what the MLP's norm reads: resid_mid (resid_pre in a parallel block,
                             where attention and MLP both read the block's input)
    blocks.{l}.hook_attn_in  what attention's norm reads: resid_pre

Torch-free: works on a `Bound` (models/adapters.py) without touching its modules.
"""

from __future__ import annotations

from typing import Any

from lmpeek.errors import InvalidInput

# lmpeek points holding the residual stream or a write to it: the points TransformerLens's
# center_writing_weights changes (each writer's output loses its mean over d_model)
RESIDUAL_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
_RESIDUAL_TOP = ("hook_embed", "hook_pos_embed")

_WIDE = {"mlp.hook_pre", "mlp.hook_post"}
_QUERY_HEADS = {"attn.hook_q", "attn.hook_q_normed", "attn.hook_rot_q", "attn.hook_z"}
_KV_HEADS = {"attn.hook_k", "attn.hook_v", "attn.hook_k_normed", "attn.hook_rot_k"}


def split(name: str) -> tuple[int | None, str]:
    """ "blocks.3.hook_resid_post" -> (3, "hook_resid_post"); "hook_embed" -> (None, "hook_embed")."""
    if name.startswith("blocks."):
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[1].isdigit():
            return int(parts[1]), parts[2]
    return None, name


def from_transformer_lens(name: str, bound: Any = None) -> str:
    """The lmpeek hook name for a TransformerLens-style `name`; with `bound`, checked against the model's
    points (a name it lacks is an InvalidInput listing what it has)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"hook name must be a non-empty string, got {name!r}")
    layer, point = split(name)
    if layer is not None and point == "hook_mlp_in":
        parallel = bool(getattr(bound, "parallel", False))
        name = f"blocks.{layer}.{'hook_resid_pre' if parallel else 'hook_resid_mid'}"
    elif layer is not None and point == "hook_attn_in":
        name = f"blocks.{layer}.hook_resid_pre"
    if bound is not None and name not in bound.hook_names():
        examples = ", ".join(
            f"blocks.0.{p}" for p in ("hook_resid_post", "ln2.hook_normalized", "attn.hook_z")
        )
        hint = (
            f"it has {bound.n_layers} layers"
            if layer is not None and layer >= bound.n_layers
            else (f"lmpeek points look like {examples}")
        )
        raise InvalidInput(f"hook point {name!r} does not exist in this model ({hint})")
    return name


def shape(bound: Any, name: str) -> tuple[int, ...]:
    """What hook point `name` holds per token, e.g. (d_model,), (d_mlp,), (n_heads, d_head)."""
    layer, point = split(name)
    if point in _WIDE:
        return (bound.d_mlp,)
    if point in _QUERY_HEADS:
        return (bound.n_heads, bound.d_head)
    if point in _KV_HEADS:
        return (bound.n_kv_heads, bound.d_head)
    if point == "attn.hook_pattern":
        raise InvalidInput(
            f"{name} is [heads, T, T], not one vector per token: no feature source can read it"
        )
    return (bound.d_model,)


def is_residual(name: str) -> bool:
    """Whether `name` holds the residual stream or one of its writes (see RESIDUAL_POINTS)."""
    layer, point = split(name)
    return point in RESIDUAL_POINTS if layer is not None else point in _RESIDUAL_TOP
