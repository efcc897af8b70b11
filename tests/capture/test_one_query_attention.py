"""A generation step's attention (one query after its cached keys) takes a short path through
`causal_attention`; it must give the blocked loop's numbers bit for bit (the loop still runs when the
pattern is wanted, which changes nothing else), and eager attention's up to float rounding."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import eager_mask
from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

from lmpeek.capture import attention_kernel
from lmpeek.capture.attention_kernel import causal_attention


def _step(B, H, Hkv, Tk, d, dtype, scale, seed):
    g = torch.Generator().manual_seed(seed)
    # the query as models hand it over: [B, T, H, d] transposed
    q = (torch.randn(B, 1, H, d, generator=g) * scale).transpose(1, 2).to(dtype)
    k = (torch.randn(B, Hkv, Tk, d, generator=g) * scale).to(dtype)
    v = torch.randn(B, Hkv, Tk, d, generator=g).to(dtype)
    return q, k, v


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.float().nan_to_num(nan=7.0)  # NaN == NaN for the comparison; no finite value is 7 here


CASES = [
    # B, H, Hkv, Tk, d, dtype, scaling, softcap, scale of q and k
    (1, 9, 3, 150, 64, torch.float32, 0.125, None, 1.0),  # the default model's shape
    (1, 4, 4, 1, 16, torch.float32, 0.25, None, 1.0),  # the first token: one key
    (2, 6, 2, 77, 32, torch.float32, 32**-0.5, None, 3.0),  # a scale that is not a power of two
    (1, 8, 1, 300, 80, torch.bfloat16, 80**-0.5, None, 1.0),
    (1, 4, 2, 40, 64, torch.float16, 0.125, 50.0, 10.0),  # softcap, large scores
    (1, 4, 2, 40, 64, torch.float16, 1.0, None, 300.0),  # float16 overflow: inf and NaN
]


@pytest.mark.parametrize("B, H, Hkv, Tk, d, dtype, scaling, softcap, scale", CASES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_one_query_gives_the_loops_numbers_bit_for_bit(
    B, H, Hkv, Tk, d, dtype, scaling, softcap, scale, with_mask
):
    q, k, v = _step(B, H, Hkv, Tk, d, dtype, scale, seed=Tk)
    mask = eager_mask(B, 1, Tk, q_offset=Tk - 1, dtype=torch.float32) if with_mask else None
    calls = []
    original = attention_kernel._one_query
    fast_out, fast_ent, none = _spy(original, calls, q, k, v, mask, scaling, softcap)
    assert calls and none is None  # the short path ran
    loop_out, loop_ent, pattern = causal_attention(q, k, v, mask, scaling, softcap=softcap, want_pattern=True)
    assert pattern is not None  # the loop ran
    assert fast_out.shape == loop_out.shape == (B, 1, H, d) and fast_out.dtype == loop_out.dtype
    assert fast_out.stride() == loop_out.stride() and fast_ent.shape == loop_ent.shape == (B, H, 1)
    assert torch.equal(_bits(fast_out), _bits(loop_out))
    assert torch.equal(_bits(fast_ent), _bits(loop_ent))


def _spy(original, calls, *args):
    def spy(*a):
        calls.append(1)
        return original(*a)

    attention_kernel._one_query, saved = spy, attention_kernel._one_query
    try:
        q, k, v, mask, scaling, softcap = args
        return causal_attention(q, k, v, mask, scaling, softcap=softcap)
    finally:
        attention_kernel._one_query = saved


class _Module(torch.nn.Module):
    def __init__(self, groups, d):
        super().__init__()
        self.num_key_value_groups = groups
        self.head_dim = d
        self.eval()


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_one_query_matches_eager_attention(softcap):
    q, k, v = _step(1, 6, 2, 90, 16, torch.float32, 1.0, seed=1)
    mask = eager_mask(1, 1, 90, q_offset=89, dtype=torch.float32)
    want, weights = eager_attention_forward(_Module(3, 16), q, k, v, mask, scaling=0.3, softcap=softcap)
    out, ent, _ = causal_attention(q, k, v, None, 0.3, softcap=softcap)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    want_ent = -torch.special.xlogy(weights, weights).sum(-1)
    torch.testing.assert_close(ent, want_ent, rtol=1e-5, atol=1e-6)


def test_a_mask_hiding_a_cached_key_takes_the_loop():
    # a padded batch's step: its mask hides key 0, so the short path (which masks nothing) must not run
    q, k, v = _step(1, 4, 2, 20, 16, torch.float32, 1.0, seed=2)
    mask = torch.zeros(1, 1, 1, 20)
    mask[..., 0] = torch.finfo(torch.float32).min
    calls = []
    out, ent, _ = _spy(attention_kernel._one_query, calls, q, k, v, mask, 0.25, None)
    assert not calls
    want, weights = eager_attention_forward(_Module(2, 16), q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert float(weights[..., 0].abs().max()) == 0.0
