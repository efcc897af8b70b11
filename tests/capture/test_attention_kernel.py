"""The blocked attention kernel against transformers' eager attention (the definition it must match)."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import eager_mask, sliding_window_causal_mask_function
from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

from lmpeek.analysis.attention import attention_entropy
from lmpeek.capture.attention_kernel import causal_attention


class _Module(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.head_dim = 16
        self.eval()


def _qkv(H, Hkv, Tq, Tk, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, Tq, H, 16, generator=g).transpose(1, 2)  # non-contiguous, as models produce it
    k = torch.randn(1, Hkv, Tk, 16, generator=g) * 2
    v = torch.randn(1, Hkv, Tk, 16, generator=g)
    return q, k, v


@pytest.mark.parametrize("H, Hkv", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("T, block", [(1, None), (37, None), (100, 16), (300, 64)])
@pytest.mark.parametrize("softcap", [None, 20.0])
def test_matches_eager(H, Hkv, T, block, softcap):
    q, k, v = _qkv(H, Hkv, T, T)
    mask = eager_mask(1, T, T, dtype=torch.float32)
    want_out, want_p = eager_attention_forward(_Module(H // Hkv), q, k, v, mask, scaling=0.3, softcap=softcap)
    out, ent, p = causal_attention(q, k, v, mask, 0.3, softcap=softcap, want_pattern=True, block=block)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p, want_p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ent, attention_entropy(want_p.double()).float(), rtol=1e-5, atol=1e-5)
    assert (p.triu(1) == 0).all()  # masked weights are exactly zero
    # no mask given means plain causal
    out2, ent2, _ = causal_attention(q, k, v, None, 0.3, softcap=softcap, block=block)
    torch.testing.assert_close(out2, out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ent2, ent, rtol=1e-6, atol=1e-6)


def test_cached_keys_and_sliding_window():
    # 5 new queries after 20 cached keys, with a window of 8
    Tq, Tk = 5, 25
    q, k, v = _qkv(4, 2, Tq, Tk)
    mask = eager_mask(1, Tq, Tk, q_offset=Tk - Tq, mask_function=sliding_window_causal_mask_function(8))
    want_out, want_p = eager_attention_forward(_Module(2), q, k, v, mask, scaling=0.25)
    out, ent, p = causal_attention(q, k, v, mask, 0.25, want_pattern=True, block=2)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p, want_p, rtol=1e-5, atol=1e-7)
    assert (p[..., :12] == 0).all() and (ent <= torch.log(torch.tensor(8.0)) + 1e-5).all()


def test_entropy_of_uniform_attention_is_log_n():
    T = 50
    q = torch.zeros(1, 2, T, 16)
    k = torch.randn(1, 2, T, 16)
    _, ent, _ = causal_attention(q, k, torch.randn(1, 2, T, 16), None, 1.0)
    torch.testing.assert_close(ent[0, 0], torch.log(torch.arange(1, T + 1).float()), rtol=1e-6, atol=1e-6)
