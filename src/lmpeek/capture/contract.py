"""The hook-point contract: every hook point measured against an independent computation.

Used by the test suite on a tiny model of every registered architecture, and by `lmpeek check MODEL`
on a user's own model, so anyone can see how far each hook point is from a plain transformers forward
before trusting the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmpeek.capture.hooks import attach
from lmpeek.capture.tokens import tokenize
from lmpeek.models import hf_compat
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


@torch.inference_mode()
def check(model: LoadedModel, text: str = DEFAULT_TEXT, rtol: float = 1e-4) -> list[Check]:
    """Compare every hook point with a plain transformers forward (eager attention, no hooks) and with
    identities that must hold. Returns one `Check` per hook kind; `all(c.ok for c in ...)` means pass."""
    hf, b = model.hf, model.bound
    tok = tokenize(model.tokenizer, text, model.context_length)
    ids = torch.as_tensor(tok.token_ids, device=model.device)[None]

    # Reference: transformers' own eager forward, no hooks attached.
    with hf_compat.attention_implementation_as(hf, "eager"):
        ref = hf(input_ids=ids, output_hidden_states=True, output_attentions=True, use_cache=False)

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
            "hook_attn_out": (T, D),
            "hook_resid_mid": (T, D),
            "hook_mlp_out": (T, D),
            "hook_resid_post": (T, D),
            "attn.hook_q": (T, H, dh),
            "attn.hook_k": (T, Hkv, dh),
            "attn.hook_v": (T, Hkv, dh),
            "attn.hook_pattern": (H, T, T),
            "attn.hook_z": (T, H, dh),
            "mlp.hook_pre": (T, b.d_mlp),
            "mlp.hook_post": (T, b.d_mlp),
        }
        if b.rotary_dims:
            shapes |= {"attn.hook_rot_q": (T, H, dh), "attn.hook_rot_k": (T, Hkv, dh)}
        for point, shape in shapes.items():
            shape_ok(p + point, shape)
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
        # the model's own forward: attention mass above the diagonal means it is not a causal LM
        future = torch.triu(ref.attentions[layer][0].double(), diagonal=1).sum(-1)
        rows.add(
            "attention to future tokens",
            "none in the model's own forward (else: not a causal LM)",
            p + "attn.hook_pattern",
            future,
            torch.zeros_like(future),
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
        q, k = (
            (g["attn.hook_rot_q"], g["attn.hook_rot_k"])
            if b.rotary_dims
            else (g["attn.hook_q"], g["attn.hook_k"])
        )
        params = b.attention_params(layer)
        if params.softcap is None:
            rows.add(
                "blocks.*.attn.hook_q/k",
                "softmax(q·k * scale) == pattern",
                p + "attn.hook_q",
                _recomputed_pattern(q, _repeat_kv(k, H), params.scale, params.window),
                g["attn.hook_pattern"].double(),
            )
        z = torch.einsum("hqk,khd->qhd", g["attn.hook_pattern"], _repeat_kv(g["attn.hook_v"], H))
        rows.add("blocks.*.attn.hook_v/z", "pattern @ v == z", p + "attn.hook_z", z, g["attn.hook_z"])
        if b.rotary_dims:
            rd = b.rotary_dims
            for which in ("q", "k"):
                pre, rot = g[f"attn.hook_{which}"], g[f"attn.hook_rot_{which}"]
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
            "ln_final.hook_normalized",
            "hidden_states[L]",
            "ln_final.hook_normalized",
            got["ln_final.hook_normalized"],
            ref.hidden_states[L][0],
        )
        embed = got["hook_embed"] + (got["hook_pos_embed"] if "hook_pos_embed" in got else 0)
        rows.add("hook_embed", "blocks.0.hook_resid_pre", "hook_embed", embed, got["blocks.0.hook_resid_pre"])
    return list(rows.rows.values())
