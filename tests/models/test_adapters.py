"""Adapter registry: every registered architecture binds, exposes every hook point, and fails loudly."""

from __future__ import annotations

import warnings

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
    assert names[0] == "hook_embed" and names[-2:] == ["ln_final.hook_normalized", "ln_final.hook_out"]
    assert ("blocks.0.attn.hook_rot_q" in names) == (arch != "gpt2")
    assert "blocks.0.ln1.hook_normalized" in names and "blocks.0.ln2.hook_out" in names
    # q/k after q_norm/k_norm have names of their own (TransformerLens 4's): hook_q is the projection
    assert ("blocks.0.attn.hook_q_normed" in names) == (arch in ("qwen3", "gemma3"))
    assert len(set(names)) == len(names)


def test_rotary_dims_follow_partial_rotary():
    assert bind(tiny_hf_model("gpt_neox")[0]).rotary_dims == 4  # 16 * 0.25
    assert bind(tiny_hf_model("phi3")[0]).rotary_dims == 8  # 16 * 0.5
    assert bind(tiny_hf_model("llama")[0]).rotary_dims == 16
    assert bind(tiny_hf_model("gpt2")[0]).rotary_dims is None


def test_norm_kinds_and_pre_gain_normalized():
    """hook_normalized is x / rms (RMSNorm) or (x - mean) / std (LayerNorm) with the norm's eps: the
    norm's own output is that times its gain (plus bias)."""
    from lmpeek.models.adapters import norm_centers, normalized

    x = torch.randn(5, 64) * 3 + 1
    for arch, path, centers in (("llama", "model.norm", False), ("gpt2", "transformer.ln_f", True),
                                ("gemma3", "model.norm", False), ("olmo", "model.norm", True)):  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            norm = bind(tiny_hf_model(arch)[0]).module(path)
        assert norm_centers(norm) == centers, arch
        n = normalized(norm, x)
        assert n.pow(2).mean(-1).sub(1).abs().max() < 1e-4, arch
        with torch.no_grad():
            gain, bias = torch.tensor(1.0), getattr(norm, "bias", None)
            if arch != "olmo":  # olmo's LayerNorm has no parameters
                torch.nn.init.normal_(norm.weight, 1.0, 0.5)
                gain = (1 + norm.weight) if arch == "gemma3" else norm.weight
            want = n * gain + (0 if bias is None else bias)
            torch.testing.assert_close(norm(x), want, rtol=1e-5, atol=1e-5)


def test_pre_rope_points():
    assert bind(tiny_hf_model("gemma3")[0]).pre_rope_points() == ("attn.hook_q_normed", "attn.hook_k_normed")
    assert bind(tiny_hf_model("llama")[0]).pre_rope_points() == ("attn.hook_q", "attn.hook_k")


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
