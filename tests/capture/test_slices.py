"""Per-layer internals recomputed from token ids or from a block's stored input equal a full pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.capture.slices import attention_pattern, run_block
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import TINY_ARCHITECTURES

TEXT = "The capital of France is Paris. def f(x): return x * 2, and a few more words"


def _model(arch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load(f"tiny:{arch}")


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_run_block_equals_the_full_forward(arch):
    m = _model(arch)
    t = lmpeek.trace(m, TEXT, keep=["blocks.*"])
    points = m.bound.block_points()  # every point this model has (rot_ only with RoPE, ...)
    for layer in range(m.n_layers):
        got = run_block(m, layer, t[f"blocks.{layer}.hook_resid_pre"], points)
        for p in points:
            want = t[f"blocks.{layer}.{p}"]
            np.testing.assert_allclose(got[p], want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))
    # the model is whole again afterwards
    assert len(m.bound.module(m.bound.adapter.blocks)) == m.n_layers == m.hf.config.num_hidden_layers
    # (same keep: without patterns attention takes the fused kernel, equal only to float rounding)
    np.testing.assert_allclose(lmpeek.trace(m, TEXT, keep=["blocks.*"]).entropy, t.entropy, rtol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_attention_pattern_stops_at_the_layer(arch):
    m = _model(arch)
    t = lmpeek.trace(m, TEXT, keep=["blocks.*.attn.hook_pattern"])
    for layer in range(m.n_layers):
        np.testing.assert_allclose(
            attention_pattern(m, t.token_ids, layer), t[f"blocks.{layer}.attn.hook_pattern"], atol=1e-5
        )


def test_bad_layer():
    m = _model("llama")
    with pytest.raises(InvalidInput, match="layer"):
        run_block(m, 5, np.zeros((3, 64), np.float32), ["hook_mlp_out"])
    with pytest.raises(InvalidInput, match="layer"):
        attention_pattern(m, [1, 2, 3], -1)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "phi3"])
def test_head_results_sum_to_the_attention_output(arch):
    from lmpeek.capture.slices import head_results

    m = _model(arch)
    t = lmpeek.trace(m, TEXT, keep=["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"])
    res = head_results(m, 1, t["blocks.1.attn.hook_z"])
    assert res.shape == (len(t), m.n_heads, m.d_model)
    o_proj = m.bound.block_module(1, m.bound.adapter.o_proj)
    bias = getattr(o_proj, "bias", None)
    bias = 0 if bias is None else bias.detach().numpy()
    np.testing.assert_allclose(res.sum(1) + bias, t["blocks.1.hook_attn_out"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "gpt_neox", "qwen3"])
def test_head_pattern_from_q_and_k(arch):
    from lmpeek.capture.slices import head_pattern

    m = _model(arch)
    rope = m.bound.rotary_dims is not None
    q, k = ("attn.hook_rot_q", "attn.hook_rot_k") if rope else ("attn.hook_q", "attn.hook_k")
    t = lmpeek.trace(m, TEXT, keep=[f"blocks.*.{q}", f"blocks.*.{k}", "blocks.*.attn.hook_pattern"])
    group = m.n_heads // m.bound.n_kv_heads
    for layer in range(m.n_layers):
        for h in range(m.n_heads):
            got = head_pattern(
                m, layer, t[f"blocks.{layer}.{q}"][:, h], t[f"blocks.{layer}.{k}"][:, h // group]
            )
            np.testing.assert_allclose(got, t[f"blocks.{layer}.attn.hook_pattern"][h], atol=1e-5)


def test_as_float16_is_numpys_conversion_bit_for_bit():
    from lmpeek.capture.slices import as_float16

    rng = np.random.default_rng(0)
    scaled = rng.standard_normal(10_000) * 10.0 ** rng.integers(-9, 6, 10_000)  # subnormal .. overflow
    edges = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65520.0, 1e-8, 6e-8, 5.96e-8, 2.98e-8]
    values = np.concatenate([scaled, edges]).astype(np.float32)
    with np.errstate(over="ignore"):  # values past 65,504 become inf, as they should
        want = values.astype(np.float16)
    got = as_float16(values)
    assert got.dtype == np.float16 and got.shape == values.shape
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    nan = as_float16(np.array([np.nan], dtype=np.float32))
    assert np.isnan(nan).all()
