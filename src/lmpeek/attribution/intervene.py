"""Interventions on a model's forward: ablate, patch and steer, inside `with intervene(model, ...):`.

While the block runs, every forward of the model (`model.hf(...)`, `model.hf.generate`, lmpeek's own
trace and generate) applies the interventions; leaving the block removes every hook, so the model
computes exactly what it did before (tests/attribution/test_intervene.py: logits equal bit for bit).

Edits are torch forward hooks on the modules the adapter names (models/adapters.py), so they run
the model's own code, keep autograd working (attribution patching backpropagates through them) and
cost nothing outside the block. Writable hook points (as lmpeek names them, x is [B, T, ...]):

    hook_embed, blocks.{l}.hook_resid_pre, blocks.{l}.hook_resid_post, blocks.{l}.hook_attn_out,
    blocks.{l}.hook_mlp_out, blocks.{l}.mlp.hook_post (index: a neuron), blocks.{l}.mlp.hook_pre
    (where it is a module's whole output), blocks.{l}.attn.hook_z (index: a head; the input of
    o_proj viewed as [B, T, H, d_head], so GQA models are edited per query head)

Positions are absolute indices into the sequence: during KV-cached generation each forward sees
only its new tokens, so every forward's first position is read from its cache (`cache_position`
or the cache's length), and position p is edited whenever it is computed.

Formulas (x the activation at a selected position, u = v/|v| a unit direction):
    ablation, a whole vector or one head / neuron:    x <- r       r = 0 | mean over a text | the
                                                                  same position of a second prompt
    ablation of a direction:                         x <- x + (r·u - x·u) u   (r·u: 0 | mean | second)
    patch (from prompt B into the running prompt A): x <- x_B at the same position (and head)
    steering, c = strength · N, N = mean over a text of |x| at that hook:
        add      x <- x + c u
        project  x <- x - (x·u) u + c u      (the component along u set to c; c = 0 projects it out)
        cap      x <- x - max(0, x·u - c) u  (the component along u at most c)
    Neuronpedia's ORTHOGONAL_DECOMP scales the existing component instead ((I - P)x + s P x); `project`
    here keeps strength in units of the residual norm for all three, so s = 0 is the plain ablation.
    SAE feature ablation: x <- x - (decode(f) - decode(f with feature i set to 0)), f = encode(x),
    with the source's own encode/decode (lmpeek.features); SAEs read and write the same point.

Checked against lmpeek.capture reading the same points (steering moves resid by exactly c·u at the
chosen positions only; a zeroed head's hook_z is zero) and against hand-computed edits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from lmpeek.errors import InvalidInput

ABLATE_MODES = ("zero", "mean", "resample")
STEER_MODES = ("add", "project", "cap")

# ---------------------------------------------------------------------------------------------
# where a hook point can be written


@dataclass(frozen=True)
class Point:
    """A writable hook point: a module's input or output; `heads` views its last dim as [H, d]."""

    module: nn.Module
    side: str  # "input" | "output"
    heads: int | None = None


def _split(name: str) -> tuple[int | None, str]:
    if name.startswith("blocks."):
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[1].isdigit():
            return int(parts[1]), parts[2]
    return None, name


def writable(bound: Any, name: str) -> Point:
    """Where hook point `name` can be replaced on this model, or InvalidInput saying which can."""
    a = bound.adapter
    layer, point = _split(name)
    if layer is None:
        if point == "hook_embed":
            return Point(bound.module(a.embed), "output")
        if point == "hook_pos_embed" and a.pos_embed:
            return Point(bound.module(a.pos_embed), "output")
    elif 0 <= layer < bound.n_layers:
        block = bound.blocks[layer]
        taps = {"hook_attn_out": a.attn_out, "hook_mlp_out": a.mlp_out, "mlp.hook_post": a.mlp_post,
                "mlp.hook_pre": a.mlp_pre}  # fmt: skip
        if point == "hook_resid_pre":
            return Point(block, "input")
        if point == "hook_resid_post":
            return Point(block, "output")
        if point == "attn.hook_z":
            return Point(bound.block_module(layer, a.o_proj), "input", bound.n_heads)
        tap = taps.get(point)
        if tap is not None and tap.take is None:  # a reshaped view (fused projections) cannot be written back
            return Point(bound.block_module(layer, tap.path), tap.side)
    raise InvalidInput(
        f"cannot intervene at '{name}' on this model; writable points: hook_embed, blocks.L.hook_resid_pre, "
        f"blocks.L.hook_resid_post, blocks.L.hook_attn_out, blocks.L.hook_mlp_out, blocks.L.mlp.hook_post, "
        f"blocks.L.attn.hook_z (L < {bound.n_layers})"
    )


# ---------------------------------------------------------------------------------------------
# hooks that replace a point's tensor


class Run:
    """The absolute position of the current forward's first token (set by a pre-hook on the model)."""

    def __init__(self) -> None:
        self.offset = 0


Edit = Callable[[torch.Tensor, Run], torch.Tensor]  # x [B, T, ...] -> the x the model continues with


def _offset(kwargs: dict[str, Any]) -> int:
    pos = kwargs.get("cache_position")
    if isinstance(pos, torch.Tensor) and pos.numel():
        return int(pos.reshape(-1)[0])
    for value in kwargs.values():  # the KV cache, under whichever name this transformers uses
        if hasattr(value, "get_seq_length"):
            return int(value.get_seq_length())
    return 0


def _register(point: Point, edit: Edit, run: Run) -> Any:
    def apply(x: torch.Tensor) -> torch.Tensor:
        if point.heads is None:
            return edit(x, run)
        return edit(x.unflatten(-1, (point.heads, -1)), run).flatten(-2)

    if point.side == "input":

        def pre(_mod, args, kwargs):
            if args:
                return (apply(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": apply(kwargs["hidden_states"])}

        return point.module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_mod, _args, out):
        return (apply(out[0]), *out[1:]) if isinstance(out, tuple) else apply(out)

    return point.module.register_forward_hook(post)


@contextmanager
def edited(model: Any, edits: Sequence[tuple[str, Edit]]) -> Iterator[Run]:
    """Apply `edits` [(hook name, edit)] to every forward of `model` inside the block (in this order
    where several hit one point); all hooks are removed on leaving, even after an error."""
    from lmpeek.capture.hooks import model_lock

    run = Run()
    points = [(writable(model.bound, name), edit) for name, edit in edits]  # refuse before hooking anything

    def top(_mod, _args, kwargs):
        run.offset = _offset(kwargs)

    with model_lock(model.hf):  # lmpeek's own forwards on another thread wait: they must not see these
        handles = [model.hf.register_forward_pre_hook(top, with_kwargs=True)]
        try:
            handles += [_register(p, e, run) for p, e in points]
            yield run
        finally:
            for h in handles:
                h.remove()


def selected(positions: Sequence[int] | None, run: Run, n: int, device: Any) -> torch.Tensor | None:
    """Local indices (into this forward's n positions) of the absolute `positions`; None for all."""
    if positions is None:
        return None
    local = [p - run.offset for p in positions if run.offset <= p < run.offset + n]
    return torch.tensor(local, dtype=torch.long, device=device)


def capture_points(model: Any, ids: Any, hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """{hook: [T, ...]} float tensors of one forward on `ids` (a text or token ids), read through the
    same hooks the edits use (hook_z as [T, H, d]); no grad."""
    ids = token_ids(model, ids)
    got: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Edit:
        def keep(x: torch.Tensor, _run: Run) -> torch.Tensor:
            got[name] = x[0].detach().clone()
            return x

        return keep

    with torch.no_grad(), edited(model, [(h, keeper(h)) for h in dict.fromkeys(hooks)]):
        model.hf(input_ids=torch.as_tensor(ids, device=model.device)[None], use_cache=False)
    return got


def token_ids(model: Any, text: Any) -> np.ndarray:
    """Token ids of a text (lmpeek's tokenisation, chat formatting included) or of given ids."""
    from lmpeek.capture.tokens import from_ids, tokenize
    from lmpeek.capture.trace import vocab_size

    if isinstance(text, str):
        return tokenize(model.tokenizer, text, model.context_length).token_ids
    return from_ids(model.tokenizer, text, model.context_length, vocab_size(model)).token_ids


# ---------------------------------------------------------------------------------------------
# what to do: ablations, patches, steering


def _positions(positions: Any) -> tuple[int, ...] | None:
    if positions is None:
        return None
    if isinstance(positions, (int, np.integer)):
        positions = [positions]
    out = tuple(int(p) for p in positions)
    if any(p < 0 for p in out):
        raise InvalidInput(f"positions are absolute token indices (>= 0), got {list(out)}")
    return out


@dataclass(frozen=True)
class Ablation:
    """Replace a hook point's value, one head / neuron of it (`index`), or its component along
    `direction`, at `positions` (None: all) by 0, its mean over a text, or a second prompt's value."""

    hook: str
    mode: str = "zero"
    index: int | None = None
    positions: tuple[int, ...] | None = None
    source: Any = (
        None  # resample: the second prompt; mean: the text to average over (default: intervene's text)
    )
    direction: Any = None


@dataclass(frozen=True)
class Patch:
    """Put prompt B's (`source`) value of `hook` (one head of hook_z with `head`) into the running
    prompt at `positions` (None: every position B has)."""

    hook: str
    source: Any
    positions: tuple[int, ...] | None = None
    head: int | None = None


@dataclass(frozen=True)
class Steer:
    """Add / project / cap `direction` at `hook` and `positions` (None: all, generated ones too), with
    c = strength · norm; norm None: the mean |x| at `hook` over intervene's (or steer_generate's) text."""

    hook: str
    direction: Any
    strength: float
    mode: str = "add"
    positions: tuple[int, ...] | None = None
    norm: float | None = None


@dataclass(frozen=True)
class FeatureAblation:
    """Remove SAE feature `index`'s decoded contribution at the point the SAE reads and writes."""

    source: Any  # an lmpeek.features SAE source (encode / decode)
    index: int
    positions: tuple[int, ...] | None = None


def head(layer: int, h: int, mode: str = "zero", positions: Any = None, source: Any = None) -> Ablation:
    """Ablate attention head `h` of layer `layer` (its slice of hook_z, the input of o_proj)."""
    return Ablation(f"blocks.{layer}.attn.hook_z", mode, h, _positions(positions), source)


def neuron(layer: int, i: int, mode: str = "zero", positions: Any = None, source: Any = None) -> Ablation:
    """Ablate MLP neuron `i` of layer `layer` (its activation, the input of the down projection)."""
    return Ablation(f"blocks.{layer}.mlp.hook_post", mode, i, _positions(positions), source)


def direction(
    hook: str, vector: Any, mode: str = "zero", positions: Any = None, source: Any = None
) -> Ablation:
    """Ablate the component of `hook` along `vector` (mode "zero": project it out)."""
    return Ablation(hook, mode, None, _positions(positions), source, vector)


def feature(source: Any, index: int, positions: Any = None) -> FeatureAblation:
    """Ablate SAE feature `index` of `source` (lmpeek.features.load(...))."""
    return FeatureAblation(source, int(index), _positions(positions))


def unit(vector: Any, d: int, what: str = "direction") -> torch.Tensor:
    """`vector` as a float64 unit tensor of size d (refusing a zero or mis-sized one); edits cast it
    to the model's dtype, so a float64 model is steered in float64."""
    if hasattr(vector, "detach"):
        vector = vector.detach().double().cpu()
    v = torch.as_tensor(np.asarray(vector, np.float64))
    if v.ndim != 1 or v.numel() != d:
        raise InvalidInput(f"{what} must be a vector of size {d}, got shape {list(v.shape)}")
    n = float(v.norm())
    if not np.isfinite(n) or n == 0:
        raise InvalidInput(f"{what} must be finite and non-zero")
    return v / n


def mean_norm(model: Any, text: Any, hook: str) -> float:
    """The mean over the text's positions of |x| at `hook` (the scale of a steering strength)."""
    x = capture_points(model, text, [hook])[hook].float()
    return float(x.flatten(1).norm(dim=-1).mean())


# --- compiling specs into edits ------------------------------------------------------------------


def _replace_edit(
    positions, index, replacement: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Edit:
    """x[:, pos(, index)] <- replacement(x part, absolute positions) ."""

    def edit(x: torch.Tensor, run: Run) -> torch.Tensor:
        T = x.shape[1]
        idx = selected(positions, run, T, x.device)
        if idx is None:
            idx = torch.arange(T, device=x.device)
        if idx.numel() == 0:
            return x
        absolute = idx + run.offset
        part = x[:, idx] if index is None else x[:, idx, index]
        new = replacement(part, absolute).to(x.dtype)
        out = x.clone()
        if index is None:
            out[:, idx] = new
        else:
            out[:, idx, index] = new
        return out

    return edit


def _source_rows(src: torch.Tensor, absolute: torch.Tensor, what: str) -> torch.Tensor:
    if int(absolute.max()) >= src.shape[0]:
        raise InvalidInput(
            f"{what} has {src.shape[0]} tokens; position {int(absolute.max())} is beyond it (pass positions=)"
        )
    return src[absolute]


def _width(bound: Any, hook: str, point: Point) -> int:
    """How many heads (hook_z), neurons (mlp points) or features (d_model) an index can pick."""
    if point.heads is not None:
        return point.heads
    return bound.d_mlp if hook.endswith(("mlp.hook_post", "mlp.hook_pre")) else bound.d_model


def _ablation_edit(model: Any, a: Ablation, text: Any) -> Edit:
    if a.mode not in ABLATE_MODES:
        raise InvalidInput(f"ablation mode must be one of {', '.join(ABLATE_MODES)}, got {a.mode!r}")
    point = writable(model.bound, a.hook)
    ref = None
    if a.mode != "zero":
        ref_text = a.source if a.source is not None else text
        if ref_text is None:
            raise InvalidInput(
                f"{a.mode} ablation of {a.hook} needs a text: Ablation(source=...) or "
                f"intervene(..., text=...)"
            )
        ref = capture_points(model, ref_text, [a.hook])[a.hook]  # [T, ...]
    if a.index is not None:
        size = _width(model.bound, a.hook, point)
        if not 0 <= a.index < size:
            raise InvalidInput(f"index {a.index} is out of range for {a.hook} (0..{size - 1})")
        ref = None if ref is None else ref[:, a.index]
    if a.direction is not None:
        if point.heads is not None or a.index is not None:
            raise InvalidInput("a direction ablation takes a whole [T, D] point (no head or index)")
        u = unit(a.direction, _width(model.bound, a.hook, point))
        comp_ref = None if ref is None else ref.double() @ u.to(ref.device)  # [T]

        def along(part: torch.Tensor, absolute: torch.Tensor) -> torch.Tensor:
            uu = u.to(part.device, part.dtype)
            comp = part @ uu  # [B, P]
            if a.mode == "zero":
                target = torch.zeros_like(comp)
            elif a.mode == "mean":
                target = comp_ref.mean().to(part.dtype).expand_as(comp)
            else:
                target = (
                    _source_rows(comp_ref, absolute, "the resample prompt").to(part.dtype).expand_as(comp)
                )
            return part + (target - comp)[..., None] * uu

        return _replace_edit(a.positions, None, along)

    def value(part: torch.Tensor, absolute: torch.Tensor) -> torch.Tensor:
        if a.mode == "zero":
            return torch.zeros_like(part)
        if a.mode == "mean":
            return ref.mean(0).to(part.device).expand_as(part)
        return _source_rows(ref, absolute, "the resample prompt").to(part.device).expand_as(part)

    return _replace_edit(a.positions, a.index, value)


def _patch_edit(model: Any, p: Patch) -> Edit:
    if p.head is not None and not p.hook.endswith("attn.hook_z"):
        raise InvalidInput("head= patches one head of blocks.L.attn.hook_z")
    return _ablation_edit(model, Ablation(p.hook, "resample", p.head, p.positions, p.source), None)


def steer_edit(u: torch.Tensor, c: float, mode: str, positions: tuple[int, ...] | None) -> Edit:
    """The steering edit for unit direction u and magnitude c (see the module docstring)."""
    if mode not in STEER_MODES:
        raise InvalidInput(f"steering mode must be one of {', '.join(STEER_MODES)}, got {mode!r}")

    def steer(part: torch.Tensor, _absolute: torch.Tensor) -> torch.Tensor:
        uu = u.to(part.device, part.dtype)
        if mode == "add":
            return part + c * uu
        comp = (part @ uu)[..., None]
        if mode == "project":
            return part - comp * uu + c * uu
        return part - torch.relu(comp - c) * uu

    return _replace_edit(positions, None, steer)


def resolve_steer(model: Any, s: Steer, text: Any) -> Steer:
    """`s` with its norm measured on `text` where it has none."""
    if s.norm is not None:
        return s
    if text is None:
        raise InvalidInput(
            "steering strength is a fraction of a residual norm: give Steer(norm=...) or a text"
        )
    return replace(s, norm=mean_norm(model, text, s.hook))


def _steer_edit(model: Any, s: Steer, text: Any) -> Edit:
    point = writable(model.bound, s.hook)
    if point.heads is not None:
        raise InvalidInput("steering takes a [T, D] point (resid, attn_out, mlp_out), not hook_z")
    s = resolve_steer(model, s, text)
    return steer_edit(
        unit(s.direction, _width(model.bound, s.hook, point)),
        float(s.strength) * float(s.norm),
        s.mode,
        s.positions,
    )


def _feature_edit(model: Any, f: FeatureAblation) -> tuple[str, Edit]:
    src = f.source
    hooks = tuple(getattr(src, "hooks", ()))
    if len(hooks) != 1 or not hasattr(src, "decode") or getattr(src, "transcoder", False):
        raise InvalidInput(
            "feature ablation takes an SAE source that reads and writes one point (not yet transcoders)"
        )
    if not 0 <= f.index < src.n_features:
        raise InvalidInput(f"feature {f.index} is out of range ({src.n_features} features)")
    hook = hooks[0]
    heads = writable(model.bound, hook).heads

    def remove(part: torch.Tensor, _absolute: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in part:  # sources encode [T, ...]
            acts = {hook: row.detach()}
            feats = src.encode(acts)
            without = feats.copy()
            without[:, f.index] = 0
            delta = src.decode(feats, acts) - src.decode(without, acts)  # the feature's contribution
            delta_t = torch.from_numpy(delta).to(part.device, part.dtype)
            rows.append(row - (delta_t.unflatten(-1, (heads, -1)) if heads else delta_t))
        return torch.stack(rows)

    return hook, _replace_edit(f.positions, None, remove)


def plan(model: Any, ablate=(), patch=(), steer=(), text: Any = None) -> list[tuple[str, Edit]]:
    """[(hook, edit)] for the specs, running the reference forwards (means, second prompts, norms) now."""
    edits: list[tuple[str, Edit]] = []
    for a in _listed(ablate, "ablate"):
        if isinstance(a, FeatureAblation):
            edits.append(_feature_edit(model, a))
        elif isinstance(a, Ablation):
            edits.append((a.hook, _ablation_edit(model, a, text)))
        else:
            raise InvalidInput(
                f"ablate takes Ablation / FeatureAblation (lmpeek head(), neuron(), ...), got {a!r}"
            )
    for p in _listed(patch, "patch"):
        if not isinstance(p, Patch):
            raise InvalidInput(f"patch takes Patch(hook, source, positions, head), got {p!r}")
        edits.append((p.hook, _patch_edit(model, p)))
    for s in _listed(steer, "steer"):
        if not isinstance(s, Steer):
            raise InvalidInput(f"steer takes Steer(hook, direction, strength, mode, positions), got {s!r}")
        edits.append((s.hook, _steer_edit(model, s, text)))
    return edits


def _listed(items: Any, what: str) -> list[Any]:
    if items is None:
        return []
    if isinstance(items, (Ablation, Patch, Steer, FeatureAblation)):
        return [items]
    try:
        return list(items)
    except TypeError:
        raise InvalidInput(f"{what} must be a list of interventions, got {items!r}") from None


@contextmanager
def intervene(
    model: Any, ablate: Any = (), patch: Any = (), steer: Any = (), text: Any = None
) -> Iterator[Run]:
    """Inside the block every forward of `model` applies the ablations, patches and steering; leaving
    restores the model exactly. `text`: what "mean" ablations average over and what steering
    strengths are measured on, unless a spec names its own. Holds the model's lock meanwhile."""
    from lmpeek.capture.trace import require_model

    require_model(model)
    edits = plan(model, ablate, patch, steer, text)
    with edited(model, edits) as run:
        yield run


__all__ = [
    "Ablation", "FeatureAblation", "Patch", "Steer", "direction", "feature", "head", "intervene", "neuron",
    "mean_norm", "writable",
]  # fmt: skip
