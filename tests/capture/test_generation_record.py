"""A generation's stored trace comes from the generation's own forwards (the prompt once, each token
once on the KV cache), not from a second forward over the whole text; it equals that second forward
(`trace_with_resid` over the same ids) up to the cache's float rounding, on every tiny architecture."""

from __future__ import annotations

import numpy as np
import pytest

import lmpeek
from lmpeek.capture.generate import generate
from lmpeek.capture.trace import trace_with_resid
from lmpeek.models.tiny import tiny_hf_model

PROMPT = "The capital of France is"
ARCHS = ["llama", "gpt2", "gemma3", "gpt_neox", "phi3", "qwen2"]


def _model(arch):
    return lmpeek.wrap(*tiny_hf_model(arch), name=arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_the_recorded_trace_equals_a_second_forward(arch, temperature):
    m = _model(arch)
    gen = generate(m, PROMPT, max_new_tokens=7, temperature=temperature, seed=3, stop_at_eos=False,
                   record=True)  # fmt: skip
    steps = list(gen)
    got, resid = gen.record.result()
    ids = list(m.tokenizer(PROMPT)["input_ids"]) + [s.token_id for s in steps]
    want, want_resid = trace_with_resid(m, ids)

    assert got.token_ids.tolist() == ids and got.tokens == want.tokens and got.text == want.text
    assert got.offsets.tolist() == want.offsets.tolist()
    np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
    np.testing.assert_allclose(got.topk_probs, want.topk_probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.entropy, want.entropy, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-4, atol=1e-5)  # NaN at the end in both
    np.testing.assert_allclose(got.true_prob, want.true_prob, rtol=1e-4, atol=1e-6)
    assert got.norms.keys() == want.norms.keys()
    for name in want.norms:
        np.testing.assert_allclose(got.norms[name], want.norms[name], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(got.attn_entropy, want.attn_entropy, rtol=1e-4, atol=1e-5)
    assert resid.shape == want_resid.shape and resid.dtype == np.float32
    scale = np.abs(want_resid).max()
    np.testing.assert_allclose(resid, want_resid, atol=1e-5 * scale)
    assert got.topk_tokens == want.topk_tokens and got.nonfinite == want.nonfinite == []


def test_a_generation_stored_by_the_session_runs_no_second_forward():
    from lmpeek.session import Session

    m = _model("llama")
    calls = []

    def count(_module, _args, kwargs):
        calls.append(kwargs["input_ids"].shape[1])

    hook = m.hf.register_forward_pre_hook(count, with_kwargs=True)
    with Session(m) as session:
        run = session.start_generation(PROMPT, max_new_tokens=5, temperature=0.0, stop_at_eos=False)
        steps = [s for s, _ in run]
        trace_id = run.store()
        hook.remove()
        n_prompt = len(run.prompt.token_ids)
        assert calls == [n_prompt] + [1] * 5  # the prompt once, each token once; nothing after
        stored = session.get(trace_id)
        assert stored.token_ids.tolist() == list(run.prompt.token_ids) + [s.token_id for s in steps]
        # the stored stream recomputes the model's hook points like a trace's does
        ref, _ = trace_with_resid(m, stored.token_ids.tolist())
        np.testing.assert_allclose(stored.loss, ref.loss, rtol=1e-4, atol=1e-5)
        comp = session.component(trace_id, "blocks.1.hook_resid_post")
        assert comp.shape[0] == len(stored)
