"""The blocked attention kernel against transformers' eager attention (the definition it must match)."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import eager_mask, sliding_window_causal_mask_function
from transformers.models.gemma3.modeling_gemma3 import eager_attention_forward

from lmpeek.capture.attention_kernel import attention_entropy, causal_attention


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


def _reference(q, k, v, scaling, mask_fn):
    # plain float64 softmax attention: [B, Tq, H, d] output and [B, H, Tq] entropy
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    scores = (q @ k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(mask_fn(scores.shape[-2], scores.shape[-1]), float("-inf"))
    p = scores.softmax(-1)
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
    return (p @ v).transpose(1, 2), entropy


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("H, Hkv, Tq, Tk", [(4, 4, 37, 37), (6, 2, 70, 70), (4, 2, 5, 25)])
def test_gradients_match_a_plain_softmax(with_mask, H, Hkv, Tq, Tk):
    # attribution runs backward through captured forwards: the kernel must be differentiable and right
    q, k, v = (t.requires_grad_() for t in _qkv(H, Hkv, Tq, Tk))
    offset = Tk - Tq

    def future(tq, tk):
        return torch.arange(tk)[None, :] > torch.arange(tq)[:, None] + offset

    mask = eager_mask(1, Tq, Tk, q_offset=offset, dtype=torch.float32) if with_mask else None
    if mask is not None:
        mask = mask.clone()
        mask[..., 1] = torch.finfo(torch.float32).min  # also a non-causal hole: the general mask path
    holes = (lambda tq, tk: future(tq, tk) | (torch.arange(tk)[None, :] == 1)) if with_mask else future
    out, ent, _ = causal_attention(q, k, v, mask, 0.3, block=16)
    (out.square().sum() + ent.sum()).backward()
    # reference in float64 (the kernel, like eager attention, takes its softmax in float32)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_out, ref_ent = _reference(q64, k64, v64, 0.3, holes)
    (ref_out.square().sum() + ref_ent.sum()).backward()
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    for got, want in zip((q, k, v), (q64, k64, v64), strict=True):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-5)


def test_without_grad_the_kernel_keeps_its_in_place_path():
    # same numbers either way; no autograd graph when nothing requires grad
    q, k, v = _qkv(4, 2, 40, 40)
    out, ent, p = causal_attention(q, k, v, None, 0.3, want_pattern=True, block=16)
    assert out.grad_fn is None and ent.grad_fn is None
    q2 = q.clone().requires_grad_()
    out2, ent2, p2 = causal_attention(q2, k, v, None, 0.3, want_pattern=True, block=16)
    assert out2.grad_fn is not None
    torch.testing.assert_close(out2.detach(), out, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ent2.detach(), ent, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p2.detach(), p, rtol=1e-6, atol=1e-7)
