"""The recompute path's rows of `lmpeek check`, on a tiny model of every architecture (olmo: the generic
adapter): every block point that `run_block` recomputes from a stored trace's residual stream equals the
full forward's, and the patterns the attention views score from the recomputed Q/K equal transformers'
eager attentions; a recompute path broken in one layer, or a stream stored too coarsely, fails them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.capture import attention_rows, contract_recompute, slices
from lmpeek.capture.contract import check
from lmpeek.capture.contract_recompute import EAGER_ATTN, FULL, SUFFIX
from lmpeek.capture.trace import trace_with_resid
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model

HEAD_PATTERN = f"{EAGER_ATTN}: head_pattern(q, k)"
PATTERN_ROWS = f"{EAGER_ATTN}: pattern_rows(q, k)"


def _model(arch):
    hf, tokenizer = tiny_hf_model(arch)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # tiny models keep norm gains at 1 and biases at 0: move them
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the generic adapter's notice (olmo)
        return lmpeek.wrap(hf, tokenizer, name=arch)


def _recomputed(rows):
    return {(r.hook, r.against): r for r in rows if SUFFIX in r.hook}


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_recomputed_rows_hold(arch):
    model = _model(arch)
    assert model.bound.generic == (arch == "olmo")
    rec = _recomputed(check(model, transformer_lens=False))
    bad = [r for r in rec.values() if not r.ok]
    assert not bad, bad
    # one row per block point the model has, against the full forward, plus the pattern and head rows
    want = {(f"blocks.*.{p}{SUFFIX}", FULL) for p in model.bound.block_points()}
    want |= {(f"blocks.*.attn.hook_pattern{SUFFIX}", a) for a in (HEAD_PATTERN, PATTERN_ROWS)}
    assert want <= set(rec), want - set(rec)
    assert any(h == f"blocks.*.attn.hook_result{SUFFIX}" for h, _ in rec)
    # the patterns really were compared (a [H, T, T] of probabilities, not an empty array)
    assert rec[(f"blocks.*.attn.hook_pattern{SUFFIX}", HEAD_PATTERN)].scale == pytest.approx(1.0)


def test_the_rows_read_the_stream_a_trace_stores():
    """Independently: the stream trace_with_resid stores, fed to run_block, gives the block's output
    as the next layer's stored input (so the rows start from what the app starts from)."""
    model = _model("llama")
    _, stream = trace_with_resid(model, "The capital of France is Paris.")
    assert stream.dtype == np.float32
    for layer in range(model.n_layers):
        out = slices.run_block(model, layer, stream[layer], ["hook_resid_post"])["hook_resid_post"]
        np.testing.assert_allclose(out, stream[layer + 1], rtol=0, atol=1e-5 * np.abs(stream).max())


def _perturb_run_block(monkeypatch, layer, point):
    real = slices.run_block

    def broken(model, at, resid_pre, hooks):
        got = real(model, at, resid_pre, hooks)
        if at == layer and point in got:
            # noise at ~10× the contract's tolerance (not a constant: keys shifted by one constant
            # vector leave every softmax row as it was)
            x = got[point]
            noise = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
            got[point] = x + 1e-3 * max(1.0, float(np.abs(x).max())) * noise
        return got

    monkeypatch.setattr(slices, "run_block", broken)


@pytest.mark.parametrize(
    "arch, point, also",
    [
        ("olmo", "hook_mlp_out", ()),  # the generic adapter
        ("olmo", "attn.hook_rot_k", (HEAD_PATTERN, PATTERN_ROWS)),  # the patterns read the recomputed k
        ("gemma3", "attn.hook_rot_q", (HEAD_PATTERN, PATTERN_ROWS)),  # sliding window in layer 0
        ("gpt2", "attn.hook_q", (HEAD_PATTERN, PATTERN_ROWS)),  # no RoPE: the patterns read hook_q
        ("llama", "attn.hook_z", ("sum over heads + bias == o_proj(full z)",)),
    ],
)
def test_a_wrong_run_block_fails_its_rows(monkeypatch, arch, point, also):
    layer = 0 if arch == "gemma3" else 1
    _perturb_run_block(monkeypatch, layer, point)
    rows = check(_model(arch), transformer_lens=False)
    bad = {(r.hook, r.against): r for r in rows if not r.ok}
    row = bad.get((f"blocks.*.{point}{SUFFIX}", FULL))
    assert row is not None and row.worst == f"blocks.{layer}.{point}", bad
    for against in also:
        hook = f"blocks.*.attn.hook_{'result' if 'o_proj' in against else 'pattern'}{SUFFIX}"
        assert bad[(hook, against)].worst.startswith(f"blocks.{layer}."), bad
    # nothing outside the recompute path moved
    assert all(SUFFIX in h for h, _ in bad), bad


@pytest.mark.parametrize("fn, against", [("head_pattern", HEAD_PATTERN), ("pattern_rows", PATTERN_ROWS)])
def test_a_wrong_pattern_function_fails_its_row(monkeypatch, fn, against):
    """A pattern scored without the sliding window (gemma3's layer 0 has one of 8 tokens)."""
    module = slices if fn == "head_pattern" else attention_rows
    real = getattr(module, fn)
    model = _model("gemma3")
    params = model.bound.attention_params
    assert params(0).window == 8 and params(1).window is None

    def no_window(layer):
        p = params(layer)
        return type(p)(p.scale, None, p.softcap)

    def broken(m, layer, *args):
        m.bound.attention_params = no_window
        try:
            return real(m, layer, *args)
        finally:
            del m.bound.attention_params

    monkeypatch.setattr(module, fn, broken)
    bad = {(r.hook, r.against): r for r in check(model, transformer_lens=False) if not r.ok}
    assert set(bad) == {(f"blocks.*.attn.hook_pattern{SUFFIX}", against)}, bad
    assert bad[(f"blocks.*.attn.hook_pattern{SUFFIX}", against)].worst == "blocks.0.attn.hook_pattern"


def test_a_stream_stored_as_float16_fails(monkeypatch):
    """float16 storage leaves recomputed points off by more than the contract allows (DESIGN: keep
    recomputed slices within 1e-3 of the float32 forward), and the rows say so."""
    real = contract_recompute.trace_with_resid

    def coarse(model, ids):
        t, resid = real(model, ids)
        return t, resid.astype(np.float16).astype(np.float32)

    monkeypatch.setattr(contract_recompute, "trace_with_resid", coarse)
    bad = {r.hook for r in check(_model("llama"), transformer_lens=False) if not r.ok}
    assert f"blocks.*.hook_resid_pre{SUFFIX}" in bad and f"blocks.*.hook_resid_post{SUFFIX}" in bad, bad
    assert all(SUFFIX in h for h in bad), bad
