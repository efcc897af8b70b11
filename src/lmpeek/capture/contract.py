"""The hook-point contract: every hook point measured against an independent computation.

Used by the test suite on a tiny model of every registered architecture, and by `lmpeek check MODEL`
on a user's own model, so anyone can see how far each hook point is from a plain transformers forward
before trusting the numbers. The references:

1. transformers' own eager forward with nothing of lmpeek in it: its hidden states and attentions, and
   plain PyTorch forward hooks registered directly on the Hugging Face modules (lmpeek's attention
   function is not installed, so q/k/v, z, the sublayer outputs and the MLP activations come from
   transformers' eager code, not from lmpeek's kernel);
2. formulas computed here in float64 (the pre-gain norms) and identities that must hold
   (resid_pre + attn_out == resid_mid, pattern @ v == z, softmax(q·k) == pattern, RoPE keeps norms,
   q_norm(hook_q) == hook_q_normed, a norm's output is a per-feature affine map of hook_normalized);
3. TransformerLens 4 where it is installed (`pip install lmpeek[parity]`): every hook name both
   expose, run on a copy of the model (skipped above 2 GiB of weights unless asked for).

and the recompute path the app uses for stored traces (`contract_recompute`): every block point recomputed
by `run_block` from the stored float32 residual stream against the full forward's, and the patterns the
attention views score from the recomputed Q/K against transformers' eager attentions (rows marked
"(recomputed)").
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmpeek.capture.contract_recompute import recompute_rows
from lmpeek.capture.hooks import attach
from lmpeek.capture.tokens import tokenize
from lmpeek.models import hf_compat
from lmpeek.models.adapters import Bound, Tap, norm_centers, norm_eps
from lmpeek.models.loaded import LoadedModel

DEFAULT_TEXT = (
    "The capital of France is Paris. The capital of Germany is Berlin, and the capital of Italy is Rome. "
    "def square(x):\n    return x * x\n"
)


@dataclass(frozen=True)
class Check:
    """One line of the contract: the worst deviation over all layers of one hook point."""

    hook: str  # hook point (with * for 'every layer')
    against: str  # what it was compared with
    max_dev: float  # largest absolute deviation
    scale: float  # largest absolute value of the reference (deviation is judged relative to it)
    tol: float
    worst: str = ""  # the hook (layer) with the largest deviation

    @property
    def ok(self) -> bool:
        return self.max_dev <= self.tol


def _dev(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    if a.shape != b.shape:
        return float("inf"), float(b.abs().max())
    return float((a.float() - b.float()).abs().max()), float(b.abs().max())


class _Rows:
    def __init__(self, rtol: float):
        self.rtol = rtol
        self.rows: dict[tuple[str, str], Check] = {}

    def add(self, hook: str, against: str, layer_hook: str, a: torch.Tensor, b: torch.Tensor) -> None:
        dev, scale = _dev(a, b)
        tol = self.rtol * max(1.0, scale)
        key = (hook, against)
        old = self.rows.get(key)
        # keep the layer whose deviation is largest relative to its tolerance
        if old is None or dev / tol > old.max_dev / old.tol:
            self.rows[key] = Check(hook, against, dev, scale, tol, layer_hook)


def _repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    # [T, H_kv, d] -> [T, H, d] (grouped-query attention shares each KV head among H/H_kv queries)
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)


def _recomputed_pattern(q: torch.Tensor, k: torch.Tensor, scale: float, window: int | None) -> torch.Tensor:
    # q [T, H, d], k [T, H, d] -> [H, T, T], causal (and sliding-window) softmax
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    T = q.shape[0]
    i = torch.arange(T)
    allowed = i[None, :] <= i[:, None]
    if window:
        allowed &= i[:, None] - i[None, :] < window
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


EAGER = "transformers eager forward (plain hooks)"
# TransformerLens 4 keeps q/k after q_norm/k_norm as [H, T, d]; lmpeek keeps every per-head point [T, H, d]
_TL_LAYOUT = {"attn.hook_q_normed": (1, 0, 2), "attn.hook_k_normed": (1, 0, 2)}
TL_AUTO_MAX_BYTES = 2 * 2**30  # above this, copying the model for TransformerLens needs asking for


def _kind(name: str) -> str:
    """blocks.3.attn.hook_q -> blocks.*.attn.hook_q: one contract row per hook kind."""
    return re.sub(r"^blocks\.\d+\.", "blocks.*.", name)


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _plain_forward(b: Bound, ids: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
    """transformers' eager forward with plain PyTorch hooks on the Hugging Face modules (not lmpeek's
    `attach`, not lmpeek's attention function): the hook points that are a module's input or output,
    under lmpeek's names, plus each norm's input as '<norm>.input'."""
    config, a = b.config, b.adapter
    kept: dict[str, torch.Tensor] = {}
    handles: list[Any] = []

    def keep(name: str, take: Callable | None) -> Callable[[torch.Tensor], None]:
        def f(x: torch.Tensor) -> None:
            kept[name] = (take(x, config) if take else x)[0].detach().clone()

        return f

    def on(module: nn.Module, side: str, name: str, take: Callable | None = None) -> None:
        fn = keep(name, take)
        if side == "input":

            def pre(_m, args, kwargs):
                fn(args[0] if args else kwargs["hidden_states"])

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda _m, _a, out: fn(_first(out))))

    def tap(layer: int, t: Tap, name: str) -> None:
        on(b.block_module(layer, t.path), t.side, name, t.take)

    heads = b.n_heads
    z_take = Tap(a.o_proj, "input", lambda x, c: x.unflatten(-1, (heads, -1)))
    for layer in range(b.n_layers):
        p = f"blocks.{layer}."
        for which in ("q", "k", "v", "q_normed", "k_normed"):
            t = getattr(a, which)
            if t is not None:
                tap(layer, t, f"{p}attn.hook_{which}")
        tap(layer, z_take, p + "attn.hook_z")
        tap(layer, a.attn_out, p + "hook_attn_out")
        tap(layer, a.mlp_pre, p + "mlp.hook_pre")
        tap(layer, a.mlp_post, p + "mlp.hook_post")
        tap(layer, a.mlp_out, p + "hook_mlp_out")
        if not b.parallel:
            tap(layer, a.resid_mid, p + "hook_resid_mid")  # type: ignore[arg-type]
        for ln in ("ln1", "ln2"):
            path = getattr(a, ln)
            if path:
                on(b.block_module(layer, path), "input", f"{p}{ln}.input")
                on(b.block_module(layer, path), "output", f"{p}{ln}.hook_out")
    on(b.module(a.final_norm), "input", "ln_final.input")
    on(b.module(a.final_norm), "output", "ln_final.hook_out")
    try:
        with hf_compat.attention_implementation_as(b.model, "eager"):
            ref = b.model(input_ids=ids, output_hidden_states=True, output_attentions=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ref, kept


def _normalized64(x: torch.Tensor, centers: bool, eps: float) -> torch.Tensor:
    x = x.double()
    if centers:
        x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def _affine_fit(n: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[:, j] fitted as a_j * n[:, j] + c_j over the tokens (least squares, per feature): equal to
    `out` when `n` is the norm's output before an elementwise gain and bias, whatever their form."""
    n, out = n.double(), out.double()
    nc, oc = n - n.mean(0), out - out.mean(0)
    denom = nc.pow(2).sum(0)
    a = torch.where(denom > 0, (nc * oc).sum(0) / denom.clamp_min(1e-300), torch.zeros_like(denom))
    return a * nc + out.mean(0)


@contextmanager
def _hub_offline() -> Iterator[None]:
    import huggingface_hub.constants as hub

    was = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = was


def transformer_lens_run(model: LoadedModel, ids: torch.Tensor) -> tuple[str, torch.Tensor, dict] | None:
    """(version, logits, cache) from TransformerLens 4's TransformerBridge on a copy of the model (raw
    weights, the same token ids), or None where TransformerLens 4 is not installed or does not take
    this architecture. The copy keeps the model itself untouched (the bridge rewires what it wraps)."""
    from importlib import metadata

    try:
        version = metadata.version("transformer-lens")
        if not version.startswith("4."):
            return None
        from transformer_lens.model_bridge import TransformerBridge
    except Exception:  # not installed, or installed but unimportable here
        return None
    hf = copy.deepcopy(model.hf)
    if not getattr(hf.config, "architectures", None):  # models built from a config name no class
        hf.config.architectures = [type(hf).__name__]
    tokenizer = copy.deepcopy(model.tokenizer)  # the bridge adjusts its tokenizer; token ids are given
    tokenizer.init_kwargs.setdefault("name_or_path", getattr(tokenizer, "name_or_path", "") or model.name)
    tokenizer.init_kwargs["add_bos_token"] = True  # else TransformerLens reloads it by name
    try:
        with warnings.catch_warnings(), _hub_offline():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(
                model.name, hf_model=hf, tokenizer=tokenizer, device=str(model.device),
                dtype=next(model.hf.parameters()).dtype,
            )  # fmt: skip
            logits, cache = bridge.run_with_cache(ids)
    except Exception:  # an architecture TransformerLens does not support
        return None
    return version, logits, {k: v for k, v in cache.items()}


def _weight_bytes(model: LoadedModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.hf.parameters())


@torch.inference_mode()
def check(
    model: LoadedModel, text: str = DEFAULT_TEXT, rtol: float = 1e-4, transformer_lens: bool | None = None
) -> list[Check]:
    """Compare every hook point with independent computations (see the module docstring). Returns one
    `Check` per (hook kind, reference); `all(c.ok for c in ...)` means pass. `transformer_lens`: also
    compare with TransformerLens 4 (None: when installed and the weights are under 2 GiB)."""
    hf, b = model.hf, model.bound
    tok = tokenize(model.tokenizer, text, model.context_length)
    ids = torch.as_tensor(tok.token_ids, device=model.device)[None]

    # Reference: transformers' own eager forward, with plain PyTorch hooks and nothing of lmpeek.
    ref, plain = _plain_forward(b, ids)

    names = b.hook_names()
    got: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable[[torch.Tensor], None]:
        return lambda x: got.__setitem__(name, x[0].detach().clone())

    with attach(b, {n: keeper(n) for n in names}):
        logits = hf(input_ids=ids, use_cache=False).logits

    rows = _Rows(rtol)
    rows.add("logits", "plain forward, no hooks", "logits", logits[0], ref.logits[0])
    missing = [n for n in names if n not in got]
    T, L = ids.shape[1], b.n_layers
    final_norm = b.module(b.adapter.final_norm)

    def shape_ok(name: str, shape: tuple[int, ...]) -> None:
        t = got.get(name)
        bad = t is None or tuple(t.shape) != shape
        rows.add("every hook point", "expected shape", name, torch.tensor([float(bad)]), torch.tensor([0.0]))

    if missing:
        rows.add("every hook point", "was computed", missing[0], torch.tensor([1.0]), torch.tensor([0.0]))

    D, H, Hkv, dh = b.d_model, b.n_heads, b.n_kv_heads, b.d_head
    for layer in range(L):
        p = f"blocks.{layer}."
        shapes = {
            "hook_resid_pre": (T, D),
            "ln1.hook_normalized": (T, D),
            "ln1.hook_out": (T, D),
            "attn.hook_q": (T, H, dh),
            "attn.hook_k": (T, Hkv, dh),
            "attn.hook_v": (T, Hkv, dh),
            "attn.hook_q_normed": (T, H, dh),
            "attn.hook_k_normed": (T, Hkv, dh),
            "attn.hook_rot_q": (T, H, dh),
            "attn.hook_rot_k": (T, Hkv, dh),
            "attn.hook_pattern": (H, T, T),
            "attn.hook_z": (T, H, dh),
            "hook_attn_out": (T, D),
            "hook_resid_mid": (T, D),
            "ln2.hook_normalized": (T, D),
            "ln2.hook_out": (T, D),
            "mlp.hook_pre": (T, b.d_mlp),
            "mlp.hook_post": (T, b.d_mlp),
            "hook_mlp_out": (T, D),
            "hook_resid_post": (T, D),
        }
        for point in b.block_points():
            shape_ok(p + point, shapes[point])
        if missing:
            continue
        g = {k[len(p) :]: v for k, v in got.items() if k.startswith(p)}
        rows.add(
            "blocks.*.hook_resid_pre",
            "hidden_states[l]",
            p + "hook_resid_pre",
            g["hook_resid_pre"],
            ref.hidden_states[layer][0],
        )
        if layer < L - 1:
            rows.add(
                "blocks.*.hook_resid_post",
                "hidden_states[l+1]",
                p + "hook_resid_post",
                g["hook_resid_post"],
                ref.hidden_states[layer + 1][0],
            )
        else:  # transformers applies the final norm to its last hidden state
            rows.add(
                "blocks.*.hook_resid_post",
                "hidden_states[L] before the final norm",
                p + "hook_resid_post",
                final_norm(g["hook_resid_post"]),
                ref.hidden_states[L][0],
            )
        rows.add(
            "blocks.*.attn.hook_pattern",
            "eager output_attentions",
            p + "attn.hook_pattern",
            g["attn.hook_pattern"],
            ref.attentions[layer][0],
        )
        rows.add(
            "blocks.*.attn.hook_pattern",
            "rows sum to 1",
            p + "attn.hook_pattern",
            g["attn.hook_pattern"].sum(-1),
            torch.ones(H, T),
        )
        rows.add(
            "blocks.*.attn.hook_pattern",
            "no attention to future tokens (a causal model)",
            p + "attn.hook_pattern",
            torch.triu(ref.attentions[layer][0].float(), 1).abs().amax(-1),
            torch.zeros(H, T),
        )
        mid_against = "resid_pre + attn_out" + (" (by definition: parallel block)" if b.parallel else "")
        rows.add(
            "blocks.*.hook_resid_mid",
            mid_against,
            p + "hook_resid_mid",
            g["hook_resid_pre"] + g["hook_attn_out"],
            g["hook_resid_mid"],
        )
        rows.add(
            "blocks.*.hook_resid_post",
            "resid_mid + mlp_out",
            p + "hook_resid_post",
            g["hook_resid_mid"] + g["hook_mlp_out"],
            g["hook_resid_post"],
        )
        q_pre, k_pre = (g[n] for n in b.pre_rope_points())
        q, k = (g["attn.hook_rot_q"], g["attn.hook_rot_k"]) if b.rotary_dims else (q_pre, k_pre)
        params = b.attention_params(layer)
        if params.softcap is None:
            rows.add(
                "blocks.*.attn.hook_rot_q/k" if b.rotary_dims else "blocks.*.attn.hook_q/k",
                "softmax(q·k * scale) == pattern",
                p + "attn.hook_pattern",
                _recomputed_pattern(q, _repeat_kv(k, H), params.scale, params.window),
                g["attn.hook_pattern"].double(),
            )
        z = torch.einsum("hqk,khd->qhd", g["attn.hook_pattern"], _repeat_kv(g["attn.hook_v"], H))
        rows.add("blocks.*.attn.hook_v/z", "pattern @ v == z", p + "attn.hook_z", z, g["attn.hook_z"])
        if b.adapter.q_normed is not None:
            for which in ("q", "k"):
                qk_norm = b.block_module(layer, getattr(b.adapter, f"{which}_normed").path)
                raw = g[f"attn.hook_{which}"]
                if getattr(qk_norm, "weight", None) is None or qk_norm.weight.shape[-1] == raw.shape[-1]:
                    rows.add(
                        f"blocks.*.attn.hook_{which}_normed",
                        f"{which}_norm(hook_{which})",
                        p + f"attn.hook_{which}_normed",
                        qk_norm(raw),
                        g[f"attn.hook_{which}_normed"],
                    )
        if b.rotary_dims:
            rd = b.rotary_dims
            for which, pre in (("q", q_pre), ("k", k_pre)):
                rot = g[f"attn.hook_rot_{which}"]
                rows.add(
                    f"blocks.*.attn.hook_rot_{which}",
                    "RoPE is the identity at position 0",
                    p + f"attn.hook_rot_{which}",
                    rot[0],
                    pre[0],
                )
                rows.add(
                    f"blocks.*.attn.hook_rot_{which}",
                    "RoPE keeps each head's norm",
                    p + f"attn.hook_rot_{which}",
                    rot[..., :rd].norm(dim=-1),
                    pre[..., :rd].norm(dim=-1),
                )
                if rd < dh:
                    rows.add(
                        f"blocks.*.attn.hook_rot_{which}",
                        "dims past rotary_dims untouched",
                        p + f"attn.hook_rot_{which}",
                        rot[..., rd:],
                        pre[..., rd:],
                    )
    if not missing:
        rows.add(
            "ln_final.hook_out",
            "hidden_states[L]",
            "ln_final.hook_out",
            got["ln_final.hook_out"],
            ref.hidden_states[L][0],
        )
        embed = got["hook_embed"] + (got["hook_pos_embed"] if "hook_pos_embed" in got else 0)
        rows.add("hook_embed", "blocks.0.hook_resid_pre", "hook_embed", embed, got["blocks.0.hook_resid_pre"])
        _norm_rows(b, got, plain, rows)
        for name, want in plain.items():  # every module input/output point against the eager forward
            if not name.endswith(".input"):
                rows.add(_kind(name), EAGER, name, got[name], want)
        recompute_rows(model, tok.token_ids, got, ref.attentions, rows)
        if transformer_lens or (transformer_lens is None and _weight_bytes(model) <= TL_AUTO_MAX_BYTES):
            _transformer_lens_rows(model, ids, got, logits[0], rows)
    return list(rows.rows.values())


def _norm_rows(b: Bound, got: dict[str, torch.Tensor], plain: dict[str, torch.Tensor], rows: _Rows) -> None:
    """hook_normalized: the norm's formula in float64 on the eager forward's norm input, and the norm's
    output as a per-feature affine map of it (so it really is the tensor before the gain)."""
    norms = {"ln_final": b.module(b.adapter.final_norm)}
    for layer in range(b.n_layers):
        for ln in ("ln1", "ln2"):
            path = getattr(b.adapter, ln)
            if path:
                norms[f"blocks.{layer}.{ln}"] = b.block_module(layer, path)
    for prefix, module in norms.items():
        name = prefix + ".hook_normalized"
        centers = norm_centers(module)
        formula = "(x - mean) / std" if centers else "x / rms"
        x = plain[prefix + ".input"]
        rows.add(_kind(name), f"{formula} of the norm's input (float64)", name, got[name],
                 _normalized64(x, centers, norm_eps(module)))  # fmt: skip
        out = plain[prefix + ".hook_out"]
        rows.add(_kind(name), "norm output == gain * it + bias, per feature", name,
                 _affine_fit(got[name], out), out.double())  # fmt: skip


def _transformer_lens_rows(
    model: LoadedModel, ids: torch.Tensor, got: dict[str, torch.Tensor], logits: torch.Tensor, rows: _Rows
) -> None:
    run = transformer_lens_run(model, ids)
    if run is None:
        return
    version, tl_logits, cache = run
    against = f"TransformerLens {version}"
    rows.add("logits", against, "logits", logits, tl_logits[0])
    for name, ours in got.items():
        theirs = cache.get(name)
        if theirs is None:
            continue
        theirs = theirs[0]
        layout = _TL_LAYOUT.get(name.split(".", 2)[-1])
        rows.add(_kind(name), against, name, ours, theirs.permute(*layout) if layout else theirs)
