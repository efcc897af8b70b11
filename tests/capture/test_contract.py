"""The hook-point contract on a tiny random model of every registered architecture.

`check` compares every hook point with transformers' own eager forward (output_hidden_states,
output_attentions) and with identities that must hold; a wrong adapter must make it fail.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest

import lmpeek
from lmpeek.capture.contract import check
from lmpeek.models.adapters import Tap
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model


def _model(arch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the generic adapter's notice
        return lmpeek.wrap(*tiny_hf_model(arch), name=arch)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_contract_holds(arch):
    rows = check(_model(arch))
    failed = [r for r in rows if not r.ok]
    assert not failed, failed
    kinds = {(r.hook, r.against) for r in rows}
    assert ("blocks.*.hook_resid_post", "hidden_states[l+1]") in kinds
    assert ("blocks.*.attn.hook_pattern", "eager output_attentions") in kinds
    assert ("logits", "plain forward, no hooks") in kinds
    if arch != "gpt2":
        assert ("blocks.*.attn.hook_rot_q", "RoPE is the identity at position 0") in kinds


def _break(model, **change):
    b = model.bound
    model.bound = dataclasses.replace(b, adapter=dataclasses.replace(b.adapter, **change))
    return model


@pytest.mark.parametrize(
    "arch, change, failing",
    [
        # gemma3 adds the *normed* attention output; the raw one breaks resid_pre + attn_out == resid_mid
        ("gemma3", {"attn_out": Tap("self_attn")}, "blocks.*.hook_resid_mid"),
        # q before q_norm is not what RoPE rotates
        (
            "qwen3",
            {"q": Tap("self_attn.q_proj", take=lambda x, c: x.unflatten(-1, (-1, 16)))},
            "blocks.*.attn.hook_rot_q",
        ),
        # the MLP's input is not its output
        ("llama", {"mlp_out": Tap("mlp", "input")}, "blocks.*.hook_resid_post"),
    ],
)
def test_a_wrong_adapter_fails_the_contract(arch, change, failing):
    rows = check(_break(_model(arch), **change))
    assert any(r.hook == failing and not r.ok for r in rows), [r for r in rows if not r.ok]
