"""The two cheap paths of a summaries trace against the definitions they replace:
- attention entropy from torch's fused kernel's log-sum-exp (`fused_causal_attention`) against the blocked
  kernel and the softmax definition, on every tiny architecture; softcap, sliding windows, kept patterns
  and autograd take the blocked kernel;
- prediction statistics from the head applied chunk by chunk against a plain transformers forward."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.capture import attention_kernel, hooks, predictions
from lmpeek.capture import trace as trace_mod
from lmpeek.capture.attention_kernel import causal_attention, fused_applies, fused_causal_attention
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model, tiny_tokenizer

# 9 repeats: ~200 tokens, more than one 64-query block of the blocked kernel and past gemma3's window of 8
TEXT = "The capital of France is Paris. def add(a, b):\n    return a + b\n" * 9


def _wrap(hf, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.wrap(hf, tiny_tokenizer(), name=name)


def _model(arch):
    return _wrap(tiny_hf_model(arch)[0], arch)


def _gemma(version: int, **extra):
    """A tiny Gemma 2 or 3 with extra config (softcaps), float32, fixed weights. Gemma 2 (through the
    generic adapter) passes its attention softcap to the attention function; Gemma 3 has none."""
    import transformers as tf

    config = tf.Gemma2Config if version == 2 else tf.Gemma3TextConfig
    cfg = config(
        vocab_size=len(tiny_tokenizer()), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, head_dim=16, max_position_embeddings=4096,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"], **extra,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def _definition(hf, ids) -> np.ndarray:
    """[L, H, T] entropy (float64) of transformers' eager patterns on the same weights: the definition."""
    from tests.reference import eager_attentions

    return np.stack([_entropy(p) for p in eager_attentions(hf, ids)])


def _entropy(pattern) -> np.ndarray:
    return torch.special.entr(torch.as_tensor(pattern).double()).sum(-1).numpy()


@pytest.fixture
def fused_calls(monkeypatch):
    """(query, key, scaling, entropy) of every attention call that went through the fused kernel, with
    the entropy taken from it too (hooks.FUSED_ENTROPY on)."""
    monkeypatch.setattr(hooks, "FUSED_ENTROPY", True)
    seen: list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]] = []
    real = hooks.fused_causal_attention

    def spy(query, key, value, scaling, want_entropy=True):
        out, ent = real(query, key, value, scaling, want_entropy)
        seen.append((query, key, scaling, ent))
        return out, ent

    monkeypatch.setattr(hooks, "fused_causal_attention", spy)
    return seen


def _blocked_only(monkeypatch):
    monkeypatch.setattr(hooks, "fused_applies", lambda *a, **k: False)


def test_by_default_entropy_comes_from_the_blocked_kernel_and_the_rest_fused(monkeypatch):
    # FUSED_ENTROPY is off (the blocked kernel measured faster here); a forward without an entropy
    # listener still takes the fused kernel for the output, and changes nothing but rounding
    from lmpeek.capture.slices import run_block

    assert hooks.FUSED_ENTROPY is False
    seen = []
    real = hooks.fused_causal_attention
    monkeypatch.setattr(hooks, "fused_causal_attention", lambda *a: seen.append(a[4]) or real(*a))
    m = _model("llama")
    t = lmpeek.trace(m, TEXT, keep=["blocks.0.hook_resid_pre"])
    assert seen == []  # the trace wants every layer's entropy
    got = run_block(m, 0, t["blocks.0.hook_resid_pre"], ["hook_attn_out", "hook_resid_post"])
    assert seen == [False]  # one fused call, no entropy asked
    _blocked_only(monkeypatch)
    want = run_block(m, 0, t["blocks.0.hook_resid_pre"], ["hook_attn_out", "hook_resid_post"])
    for name in want:
        scale = max(1.0, np.abs(want[name]).max())
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5 * scale)


def _softmax_entropy(q, k, scaling) -> torch.Tensor:
    """[B, H, Tq] entropy in float64 from the softmax definition; causal, grouped KV heads repeated."""
    q, k = q.double(), k.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    Tq, Tk = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * scaling
    future = torch.arange(Tk)[None, :] > torch.arange(Tq)[:, None] + (Tk - Tq)
    return torch.special.entr(scores.masked_fill(future, float("-inf")).softmax(-1)).sum(-1)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_fused_entropy_equals_blocked_kernel_and_definition(arch, monkeypatch, fused_calls):
    m = _model(arch)
    fast = lmpeek.trace(m, TEXT, top_k=5)
    T, L = len(fast), m.n_layers
    # gemma3's layer 0 slides a window of 8 over ~200 tokens: the blocked kernel; every other layer fused
    assert len(fused_calls) == (L - 1 if arch == "gemma3" else L)
    # on the very Q/K each fused call saw: the softmax definition and the blocked kernel, to 1e-5
    for q, k, scaling, ent in fused_calls:
        assert q.shape[-2] == T and ent.min() >= 0.0  # one-hot rows (the first query) are 0, never below
        torch.testing.assert_close(ent.double(), _softmax_entropy(q, k, scaling), rtol=0, atol=1e-5)
        _, blocked, _ = causal_attention(q, k, k, None, scaling)
        torch.testing.assert_close(ent, blocked, rtol=0, atol=1e-5)
    # the whole trace against one through the blocked kernel only: the layers after the first read
    # inputs that differ by the two kernels' rounding, so 1e-4 here (1e-5 above on equal inputs)
    _blocked_only(monkeypatch)
    slow = lmpeek.trace(m, TEXT, top_k=5)
    np.testing.assert_allclose(fast.attn_entropy, slow.attn_entropy, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fast.attn_entropy[0], slow.attn_entropy[0], atol=1e-5, rtol=0)
    for name in slow.norms:
        np.testing.assert_allclose(fast.norms[name], slow.norms[name], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.entropy, slow.entropy, atol=1e-5)
    np.testing.assert_allclose(fast.topk_probs, slow.topk_probs, atol=1e-5)
    np.testing.assert_allclose(
        slow.attn_entropy, _definition(tiny_hf_model(arch)[0], fast.token_ids), atol=1e-5
    )


def test_softcapped_attention_takes_the_blocked_kernel(fused_calls):
    hf = _gemma(2, attn_logit_softcapping=2.0)  # small cap: it changes the pattern a lot
    t = lmpeek.trace(_wrap(hf, "gemma2-softcap"), TEXT)
    assert fused_calls == []
    want = _definition(_gemma(2, attn_logit_softcapping=2.0), t.token_ids)
    np.testing.assert_allclose(t.attn_entropy, want, atol=1e-5, rtol=0)


def test_short_text_inside_the_window_is_fused(fused_calls):
    # 5 tokens < gemma3's window of 8: the sliding layer's mask is plain causal, so fused is exact there too
    m = _model("gemma3")
    t = lmpeek.trace(m, "Paris is")
    assert len(t) <= 8 and len(fused_calls) == 2
    for q, k, scaling, ent in fused_calls:
        torch.testing.assert_close(ent.double(), _softmax_entropy(q, k, scaling), rtol=0, atol=1e-5)
    want = _definition(tiny_hf_model("gemma3")[0], t.token_ids)
    np.testing.assert_allclose(t.attn_entropy, want, atol=1e-4, rtol=0)


def test_kept_patterns_take_the_blocked_kernel_for_their_layer_only(fused_calls):
    m = _model("llama")
    t = lmpeek.trace(m, TEXT, keep=["blocks.1.attn.hook_pattern"])
    assert len(fused_calls) == 1  # layer 0 fused, layer 1 blocked (it keeps the pattern)
    np.testing.assert_allclose(t.attn_entropy[1], _entropy(t["blocks.1.attn.hook_pattern"]), atol=1e-5)


def _qkv(H, Hkv, Tq, Tk, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, Tq, H, 16, generator=g).transpose(1, 2)  # non-contiguous, as models produce it
    k = torch.randn(1, Hkv, Tk, 16, generator=g) * 3  # peaked attention: large LSE, small entropy
    v = torch.randn(1, Hkv, Tk, 16, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("H, Hkv", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("Tq, Tk", [(1, 1), (300, 300), (1, 57)])
def test_fused_kernel_equals_blocked_kernel(H, Hkv, Tq, Tk):
    # (1, 57): one generation step after 56 cached keys
    q, k, v = _qkv(H, Hkv, Tq, Tk)
    assert fused_applies(q, k, v, None, None)
    out, ent = fused_causal_attention(q, k, v, 0.3)
    want_out, want_ent, _ = causal_attention(q, k, v, None, 0.3)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, want_ent, rtol=0, atol=1e-5)
    assert fused_causal_attention(q, k, v, 0.3, want_entropy=False)[1] is None


def test_fused_entropy_in_bfloat16_is_float32_math():
    q, k, v = _qkv(4, 2, 100, 100, dtype=torch.bfloat16)
    _, ent = fused_causal_attention(q, k, v, 0.25)
    _, want, _ = causal_attention(q.float(), k.float(), v.float(), None, 0.25)
    assert ent.dtype == torch.float32
    torch.testing.assert_close(ent, want, rtol=0, atol=1e-5)


def test_fused_applies_only_where_it_is_exact():
    from transformers.masking_utils import eager_mask, sliding_window_causal_mask_function

    q, k, v = _qkv(4, 2, 20, 20)
    causal = eager_mask(1, 20, 20, dtype=torch.float32)
    window = eager_mask(1, 20, 20, mask_function=sliding_window_causal_mask_function(8))
    assert fused_applies(q, k, v, causal, None)
    assert not fused_applies(q, k, v, window, None)  # the mask hides past keys
    assert not fused_applies(q, k, v, None, None, sliding_window=8)  # the window hides some of 20 keys
    assert fused_applies(q, k, v, None, None, sliding_window=32)
    assert not fused_applies(q, k, v, causal, 30.0)  # softcap
    q5, k25, v25 = _qkv(4, 2, 5, 25)
    assert not fused_applies(q5, k25, v25, None, None)  # several queries after cached keys
    qg = q.clone().requires_grad_()
    assert not fused_applies(qg, k, v, None, None)  # attribution's backward: the blocked kernel
    with torch.no_grad():
        assert fused_applies(qg, k, v, None, None)
    assert not fused_applies(q.double(), k.double(), v.double(), None, None)


# ---------------------------------------------------------------- predictions, chunk by chunk


def test_chunked_stats_equal_unchunked():
    torch.manual_seed(0)
    logits = torch.randn(70, 500) * 5
    logits[3, 7:] = float("-inf")  # a masked vocabulary row
    ids = torch.randint(0, 500, (70,)).numpy()
    whole = predictions.next_token_stats(logits, ids, k=4, chunk=1000)
    for chunk in (1, 7, 69, 70):
        got = predictions.chunked_next_token_stats(lambda a, b: logits[a:b], 70, ids, k=4, chunk=chunk)
        assert np.array_equal(got.topk_ids, whole.topk_ids)
        for f in ("topk_probs", "entropy", "loss", "true_prob"):
            np.testing.assert_allclose(getattr(got, f), getattr(whole, f), rtol=1e-6, atol=1e-7, err_msg=f)
    before = logits.clone()
    predictions.next_token_stats(logits, ids, k=4, chunk=16)
    assert torch.equal(logits, before)  # the caller's logits are left alone


def _head_rows(m):
    """Rows of every logits tensor the unembedding produces during a trace."""
    rows: list[int] = []
    head = m.bound.module(m.bound.adapter.unembed)
    return rows, head.register_forward_hook(lambda _m, _a, out: rows.append(out.shape[-2]))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_trace_never_holds_all_logits_and_matches_a_plain_forward(arch, monkeypatch):
    m = _model(arch)
    text = TEXT * 6  # ~1,350 tokens: three chunks of the head
    rows, handle = _head_rows(m)
    try:
        t = lmpeek.trace(m, text, top_k=5, keep=["ln_final.hook_out"])
    finally:
        handle.remove()
    T = len(t)
    assert T > 2 * predictions.CHUNK
    assert max(rows) <= predictions.CHUNK and sum(rows) == T + 2  # the forward's 1 row, the check's 1 row
    assert m.hf not in trace_mod._FULL_LOGITS
    # the same forward's hidden states through transformers' own head at once: the chunking alone
    with torch.no_grad():
        logits = m.hf.lm_head(torch.as_tensor(t["ln_final.hook_out"]))
    want = predictions.next_token_stats(logits, t.token_ids, k=5, chunk=T)
    assert np.array_equal(t.topk_ids, want.topk_ids)
    for f in ("topk_probs", "entropy", "loss", "true_prob"):
        np.testing.assert_allclose(getattr(t, f), getattr(want, f), rtol=1e-6, atol=1e-6, err_msg=f)
    # and a plain transformers forward (sdpa; over 600 tokens its attention rounds a little differently)
    with torch.no_grad():
        logp = torch.log_softmax(
            tiny_hf_model(arch)[0](torch.as_tensor(t.token_ids)[None]).logits[0].double(), -1
        )
    top = logp.topk(5, -1)
    np.testing.assert_allclose(t.topk_probs, top.values.exp().numpy(), atol=1e-5)
    assert (t.topk_ids[:, 0] == top.indices[:, 0].numpy()).all()
    np.testing.assert_allclose(t.entropy, torch.special.entr(logp.exp()).sum(-1).numpy(), atol=3e-5)
    want_loss = -logp[torch.arange(T - 1), torch.as_tensor(t.token_ids[1:])].numpy()
    np.testing.assert_allclose(t.loss[:-1], want_loss, atol=3e-5)


def test_final_logit_softcap_is_applied_chunk_by_chunk():
    m = _wrap(_gemma(3, final_logit_softcapping=3.0), "gemma3-final-cap")
    t = lmpeek.trace(m, TEXT)
    assert m.hf not in trace_mod._FULL_LOGITS
    with torch.no_grad():
        logits = _gemma(3, final_logit_softcapping=3.0)(torch.as_tensor(t.token_ids)[None]).logits[0]
    assert logits.abs().max() <= 3.0  # the cap did act
    want = predictions.next_token_stats(logits, t.token_ids, k=10)
    np.testing.assert_allclose(t.entropy, want.entropy, atol=1e-5)
    np.testing.assert_allclose(t.topk_probs, want.topk_probs, atol=1e-5)


def test_a_head_lmpeek_does_not_know_falls_back_to_the_full_logits():
    # a Llama that claims a final softcap its forward never applies: lmpeek's head would be wrong, the
    # last-row check sees it, and the trace takes the model's own logits (now and from then on)
    hf = tiny_hf_model("llama")[0]
    hf.config.final_logit_softcapping = 0.5
    m = _wrap(hf, "llama-odd-head")
    t = lmpeek.trace(m, TEXT)
    assert m.hf in trace_mod._FULL_LOGITS
    with torch.no_grad():
        logits = tiny_hf_model("llama")[0](torch.as_tensor(t.token_ids)[None]).logits[0]
    want = predictions.next_token_stats(logits, t.token_ids, k=10)
    np.testing.assert_allclose(t.entropy, want.entropy, atol=1e-5)
    np.testing.assert_allclose(t.loss, want.loss, atol=1e-5)
    rows, handle = _head_rows(m)
    try:
        lmpeek.trace(m, TEXT)
    finally:
        handle.remove()
    assert rows == [len(t)]  # straight to the full forward the second time


def test_blocked_kernel_is_what_the_fallback_calls(monkeypatch):
    # the fallback really is the blocked kernel (and not eager): entropy comes from causal_attention
    seen = []
    real = attention_kernel.causal_attention
    monkeypatch.setattr(hooks, "causal_attention", lambda *a, **k: seen.append(1) or real(*a, **k))
    _blocked_only(monkeypatch)
    lmpeek.trace(_model("llama"), "Hello world")
    assert len(seen) == 2
