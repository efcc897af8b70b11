"""The hook-point contract on a tiny random model of every registered architecture.

`check` compares every hook point with transformers' own eager forward (output_hidden_states,
output_attentions, plain PyTorch hooks on the Hugging Face modules), with formulas and identities that
must hold, and with TransformerLens 4 (installed from the lock); a wrong adapter must make it fail.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import lmpeek
from lmpeek.capture.contract import EAGER, check
from lmpeek.models import adapters
from lmpeek.models.adapters import Tap
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model


def _model(arch, gains=True):
    hf, tokenizer = tiny_hf_model(arch)
    if gains:  # tiny models keep norm gains at 1 and biases at 0, which hides gain/bias mix-ups
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in hf.parameters():
                if p.dim() == 1:
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the generic adapter's notice
        return lmpeek.wrap(hf, tokenizer, name=arch)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_contract_holds(arch):
    model = _model(arch)
    rows = check(model)
    failed = [r for r in rows if not r.ok]
    assert not failed, failed
    kinds = {(r.hook, r.against) for r in rows}
    assert ("blocks.*.hook_resid_post", "hidden_states[l+1]") in kinds
    assert ("blocks.*.attn.hook_pattern", "eager output_attentions") in kinds
    assert ("logits", "plain forward, no hooks") in kinds
    if arch != "gpt2":
        assert ("blocks.*.attn.hook_rot_q", "RoPE is the identity at position 0") in kinds
    # the points once checked only by shape or an identity have a reference from transformers' forward
    for point in ("hook_attn_out", "hook_mlp_out", "mlp.hook_pre", "mlp.hook_post", "attn.hook_q",
                  "attn.hook_k", "attn.hook_z", "ln1.hook_out", "ln2.hook_out"):  # fmt: skip
        assert (f"blocks.*.{point}", EAGER) in kinds, point
    assert ("blocks.*.ln2.hook_normalized", "norm output == gain * it + bias, per feature") in kinds
    # and every hook point is compared with something other than its expected shape
    compared = {r.hook for r in rows if r.against != "expected shape"}
    compared |= (
        {"blocks.*.attn.hook_q", "blocks.*.attn.hook_k"} if "blocks.*.attn.hook_q/k" in compared else set()
    )
    every = {adapters_kind(n) for n in model.bound.hook_names()}
    assert every - compared <= {"hook_pos_embed"}, every - compared  # (summed into hook_embed's row)
    # TransformerLens 4 is in the lock: every hook point it shares was compared with it too
    tl = {r.hook for r in rows if r.against.startswith("TransformerLens 4.")}
    assert {"logits", "ln_final.hook_normalized", "blocks.*.attn.hook_q", "blocks.*.mlp.hook_pre"} <= tl


def adapters_kind(name):
    return name if not name.startswith("blocks.") else "blocks.*." + name.split(".", 2)[2]


def _break(model, **change):
    b = model.bound
    model.bound = dataclasses.replace(b, adapter=dataclasses.replace(b.adapter, **change))
    return model


def _heads16(x, c):
    return x.unflatten(-1, (-1, 16))


@pytest.mark.parametrize(
    "arch, change, failing, transformer_lens",
    [
        # gemma3 adds the *normed* attention output; the raw one breaks resid_pre + attn_out == resid_mid
        ("gemma3", {"attn_out": Tap("self_attn")}, "blocks.*.hook_resid_mid", False),
        # q before q_norm is not what RoPE rotates
        ("qwen3", {"q_normed": Tap("self_attn.q_proj", take=_heads16)}, "blocks.*.attn.hook_rot_q", False),
        # hook_q after q_norm (lmpeek's meaning before TransformerLens 4 parity) is not the projection
        ("qwen3", {"q": Tap("self_attn.q_norm")}, "blocks.*.attn.hook_q_normed", False),
        ("qwen3", {"q": Tap("self_attn.q_norm")}, "blocks.*.attn.hook_q", True),
        # the MLP's input is not its output
        ("llama", {"mlp_out": Tap("mlp", "input")}, "blocks.*.hook_resid_post", False),
        # the up projection is not the gate (only an outside reference can tell which one is which)
        ("llama", {"mlp_pre": Tap("mlp.up_proj")}, "blocks.*.mlp.hook_pre", True),
        # the attention's norm is not the MLP's
        ("llama", {"ln2": "input_layernorm"}, "blocks.*.ln2.hook_out", True),
    ],
)
def test_a_wrong_adapter_fails_the_contract(arch, change, failing, transformer_lens):
    rows = check(_break(_model(arch), **change), transformer_lens=transformer_lens)
    bad = [r for r in rows if not r.ok]
    assert any(r.hook == failing for r in bad), bad
    if transformer_lens:
        assert any(r.hook == failing and r.against.startswith("TransformerLens") for r in bad), bad


def test_hook_normalized_before_the_gain_not_after(monkeypatch):
    """lmpeek's old ln_final.hook_normalized was the norm's output; the contract tells them apart."""
    from lmpeek.capture import hooks

    real = hooks.normalized
    monkeypatch.setattr(hooks, "normalized", lambda module, x: module.forward(x))  # post-gain
    rows = check(_model("llama"), transformer_lens=False)
    bad = {r.hook for r in rows if not r.ok}
    assert {"ln_final.hook_normalized", "blocks.*.ln1.hook_normalized", "blocks.*.ln2.hook_normalized"} <= bad
    monkeypatch.setattr(hooks, "normalized", real)


def test_a_layernorm_taken_for_an_rmsnorm_fails(monkeypatch):
    """If lmpeek centred an RMSNorm's input, the norm's output would not be an affine map of it."""
    model = _model("llama")
    norm_type = type(model.bound.module(model.bound.adapter.final_norm))
    monkeypatch.setitem(adapters._CENTERS, norm_type, True)
    rows = check(model, transformer_lens=False)
    bad = {(r.hook, r.against) for r in rows if not r.ok}
    assert ("ln_final.hook_normalized", "norm output == gain * it + bias, per feature") in bad, bad
