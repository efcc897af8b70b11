"""Trace fields against an independent computation: a plain transformers forward on the same weights."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model

TEXT = "The capital of France is Paris. def add(a, b):\n    return a + b"


def _model(arch="llama"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.wrap(*tiny_hf_model(arch), name=arch)


def _plain(arch, ids):
    """Same weights, fresh model object, transformers' eager forward with every output."""
    hf, _ = tiny_hf_model(arch)
    with torch.no_grad():
        return hf(torch.as_tensor(ids)[None], output_hidden_states=True, output_attentions=True)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_summaries_match_plain_forward(arch):
    m = _model(arch)
    t = lmpeek.trace(m, TEXT, top_k=5, keep=["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern"])
    ref = _plain(arch, t.token_ids)
    logp = torch.log_softmax(ref.logits[0].double(), -1)
    p = logp.exp()
    T, L = len(t), m.n_layers
    # predictions
    top = logp.topk(5, -1)
    np.testing.assert_allclose(t.topk_probs, top.values.exp().numpy(), atol=1e-5)
    assert (t.topk_ids[:, 0] == top.indices[:, 0].numpy()).all()
    np.testing.assert_allclose(t.entropy, -(p * logp).sum(-1).numpy(), atol=1e-5)
    want_loss = -logp[torch.arange(T - 1), torch.as_tensor(t.token_ids[1:])].numpy()
    np.testing.assert_allclose(t.loss[:-1], want_loss, atol=1e-5)
    assert math.isnan(t.loss[-1]) and math.isnan(t.true_prob[-1])
    np.testing.assert_allclose(t.true_prob[:-1], np.exp(-want_loss), atol=1e-5)
    # per-layer summaries
    for layer in range(L):
        hs = ref.hidden_states[layer][0]
        np.testing.assert_allclose(
            t.norms[f"blocks.{layer}.hook_resid_pre"], hs.norm(dim=-1).numpy(), rtol=1e-5
        )
        pat = ref.attentions[layer][0].double()
        want = -torch.where(pat > 0, pat * pat.log(), 0.0).sum(-1)
        np.testing.assert_allclose(t.attn_entropy[layer], want.numpy(), atol=1e-5)
        np.testing.assert_allclose(t[f"blocks.{layer}.attn.hook_pattern"], pat.numpy(), atol=1e-5)
        if layer < L - 1:
            np.testing.assert_allclose(
                t[f"blocks.{layer}.hook_resid_post"], ref.hidden_states[layer + 1][0], rtol=1e-5, atol=1e-5
            )
    assert t.attn_entropy.shape == (L, m.n_heads, T)
    assert t.topk_probs.shape == (T, 5) and t.token_ids.shape == (T,) and t.offsets.shape == (T, 2)


def test_norm_fields_cover_every_component():
    m = _model()
    t = lmpeek.trace(m, "Hello world")
    for layer in range(m.n_layers):
        for comp in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            assert t.norms[f"blocks.{layer}.hook_{comp}"].shape == (len(t),)
    assert t.norm_matrix("mlp_out").shape == (m.n_layers, len(t))


def test_keep_globs_and_shapes():
    m = _model("llama")
    t = lmpeek.trace(m, "Hello world", keep=["blocks.1.attn.hook_*", "hook_embed"])
    T = len(t)
    assert set(t.kept) == {
        f"blocks.1.attn.hook_{n}" for n in ("q", "k", "v", "rot_q", "rot_k", "pattern", "z")
    } | {"hook_embed"}
    assert t["blocks.1.attn.hook_q"].shape == (T, 4, 16)
    assert t["blocks.1.attn.hook_k"].shape == (T, 2, 16)  # GQA: 2 KV heads
    assert t["blocks.1.attn.hook_pattern"].shape == (4, T, T)
    assert t["hook_embed"].dtype == np.float32
    with pytest.raises(KeyError, match="keep="):
        t["blocks.0.hook_resid_post"]


def test_keep_pattern_matching_nothing_is_an_error():
    with pytest.raises(InvalidInput, match="matches no hook point"):
        lmpeek.trace(_model(), "Hello", keep=["blocks.9.hook_resid_post"])


def test_hooks_do_not_change_logits_and_are_removed():
    m = _model("gpt2")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = m.hf(ids).logits
    lmpeek.trace(m, "Hello world", keep=["blocks.*"])
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.hf.modules())
    with torch.no_grad():
        assert torch.equal(m.hf(ids).logits, before)


def test_save_load_round_trip(tmp_path):
    m = _model()
    t = lmpeek.trace(m, TEXT, keep=["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"])
    t.save(tmp_path / "t")
    u = lmpeek.Trace.load(tmp_path / "t")
    for name in (
        "token_ids",
        "offsets",
        "topk_ids",
        "topk_probs",
        "entropy",
        "loss",
        "true_prob",
        "attn_entropy",
    ):
        a, b = getattr(t, name), getattr(u, name)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
    assert u.tokens == t.tokens and u.topk_tokens == t.topk_tokens and u.text == t.text and u.model == t.model
    assert all(np.array_equal(t.norms[k], u.norms[k]) for k in t.norms) and t.norms.keys() == u.norms.keys()
    for k in t.kept:  # heavy tensors are stored as float16
        assert u[k].dtype == np.float16 and np.array_equal(u[k], t[k].astype(np.float16))
    u.save(tmp_path / "u")  # and a second round trip is bit-identical
    v = lmpeek.Trace.load(tmp_path / "u")
    assert all(np.array_equal(v[k], u[k]) for k in u.kept)
    w = lmpeek.Trace.load(t.save(tmp_path / "w", heavy_dtype="float32"))
    assert all(np.array_equal(w[k], t[k]) for k in t.kept)


def test_load_rejects_a_folder_that_is_not_a_trace(tmp_path):
    with pytest.raises(InvalidInput, match="not a saved lmpeek trace"):
        lmpeek.Trace.load(tmp_path)


def test_summary_is_json_ready():
    import json

    t = lmpeek.trace(_model(), "Hello world")
    s = json.loads(json.dumps(t.summary(), allow_nan=False))
    assert s["loss"][-1] is None and len(s["tokens"]) == len(t)
    assert len(s["attn_entropy"]) == t.model["n_layers"]


def test_tokens_display_and_offsets():
    m = _model()
    t = lmpeek.trace(m, TEXT)
    assert "".join(t.tokens) == TEXT
    for (s, e), tok in zip(t.offsets, t.tokens, strict=False):
        assert TEXT[s:e] == tok.lstrip(" ") or TEXT[s:e] == tok


def test_chat_text_uses_the_chat_template():
    m = _model()
    t = lmpeek.trace(m, "What is the capital of France?<eot>Paris.<eot>Thanks")
    assert t.chat
    want = "<|user|>What is the capital of France?<|end|><|assistant|>Paris.<|end|><|user|>Thanks<|end|>"
    assert t.text == want + "<|assistant|>"
    assert "<|assistant|>" in t.tokens
    plain = lmpeek.trace(m, "no separators here")
    assert not plain.chat and plain.text == "no separators here"


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_is_refused(text):
    with pytest.raises(InvalidInput, match="empty"):
        lmpeek.trace(_model(), text)


def test_text_past_the_context_length_is_refused():
    with pytest.raises(InvalidInput, match="at most 4096"):
        lmpeek.trace(_model(), "hello " * 4200)


def test_bad_top_k_is_refused():
    with pytest.raises(InvalidInput, match="top_k"):
        lmpeek.trace(_model(), "hello", top_k=0)


def test_trace_from_token_ids():
    m = _model()
    ids = m.tokenizer("Hello world, hello")["input_ids"]
    by_ids = lmpeek.trace(m, ids)
    by_text = lmpeek.trace(m, "Hello world, hello")
    assert by_ids.token_ids.tolist() == ids and by_ids.text == "Hello world, hello"
    np.testing.assert_allclose(by_ids.entropy, by_text.entropy, atol=1e-6)
    with pytest.raises(InvalidInput, match="token ids"):
        lmpeek.trace(m, [1, 2, 10**6])
