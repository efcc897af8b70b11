"""Adapter registry: every registered architecture binds, exposes every hook point, and fails loudly."""

from __future__ import annotations

import pytest
import torch

from lmpeek.errors import UnsupportedArchitecture
from lmpeek.models.adapters import REGISTRY, bind, supported_architectures
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model

REGISTERED = [a for a in TINY_ARCHITECTURES if a != "olmo"]


def test_every_registered_adapter_has_a_tiny_model():
    covered = {t for arch in REGISTERED for t in [tiny_hf_model(arch)[0].config.model_type]}
    registered = {t for a in REGISTRY for t in a.model_types}
    assert registered <= covered, f"add a tiny config for {registered - covered} in lmpeek/models/tiny.py"


def test_supported_architectures_lists_the_issue_set():
    assert {"llama", "mistral", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "phi3"} <= set(
        supported_architectures()
    )


@pytest.mark.parametrize("arch", REGISTERED)
def test_bind_sizes(arch):
    hf, _ = tiny_hf_model(arch)
    b = bind(hf)
    c = hf.config
    assert b.n_layers == c.num_hidden_layers == len(b.blocks)
    assert b.n_heads == c.num_attention_heads
    assert b.d_model == c.hidden_size
    assert b.d_mlp == 128
    names = b.hook_names()
    assert names[0] == "hook_embed" and names[-1] == "ln_final.hook_normalized"
    assert ("blocks.0.attn.hook_rot_q" in names) == (arch != "gpt2")
    assert len(set(names)) == len(names)


def test_rotary_dims_follow_partial_rotary():
    assert bind(tiny_hf_model("gpt_neox")[0]).rotary_dims == 4  # 16 * 0.25
    assert bind(tiny_hf_model("phi3")[0]).rotary_dims == 8  # 16 * 0.5
    assert bind(tiny_hf_model("llama")[0]).rotary_dims == 16
    assert bind(tiny_hf_model("gpt2")[0]).rotary_dims is None


def test_parallel_flag():
    assert bind(tiny_hf_model("gpt_neox")[0]).parallel
    assert not bind(tiny_hf_model("gpt_neox_sequential")[0]).parallel
    assert not bind(tiny_hf_model("llama")[0]).parallel


def test_generic_adapter_says_it_was_used():
    hf, _ = tiny_hf_model("olmo")
    with pytest.warns(UserWarning, match="generic llama-like"):
        b = bind(hf)
    assert b.generic and b.adapter.blocks == "model.layers"


def test_unsupported_architecture_lists_supported_ones():
    from transformers import BertConfig, BertLMHeadModel

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        is_decoder=True,
    )
    with pytest.raises(UnsupportedArchitecture) as info:
        bind(BertLMHeadModel(cfg))
    assert "bert" in str(info.value) and "llama" in str(info.value) and "gpt_neox" in str(info.value)


def test_gpt2_config_it_does_not_understand_is_refused():
    hf, _ = tiny_hf_model("gpt2")
    hf.config.reorder_and_upcast_attn = True
    with pytest.raises(UnsupportedArchitecture, match="reorder_and_upcast_attn"):
        bind(hf)


def test_tiny_models_are_deterministic():
    a, _ = tiny_hf_model("llama", seed=3)
    b, _ = tiny_hf_model("llama", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=False))
