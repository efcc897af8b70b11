"""A generation step's summaries: `StepSummaries` (one set of handlers reused by every step, rows
copied into a buffer and read once after the forward) gives `Summaries(last_only=True)`'s numbers bit
for bit, and an `Attachment` registers its hooks only inside each `attached()` block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.capture.hooks import Attachment, attach
from lmpeek.capture.summaries import StepSummaries, Summaries, merge
from lmpeek.models import hf_compat
from lmpeek.models.tiny import tiny_hf_model

ARCHS = ["llama", "gpt2", "gemma3", "gpt_neox"]


def _forwards(m, step: StepSummaries, n_steps: int):
    """The prompt, then `n_steps` one-token forwards on the KV cache, each with `Summaries(last_only)`
    and `step`'s handlers attached together; yields (Summaries, what step.read() gave)."""
    cache = hf_compat.new_kv_cache(m.hf.config)
    kw = hf_compat.cache_kwargs(m.hf, cache)
    ids = torch.tensor([m.tokenizer("The capital of France is")["input_ids"]])
    for _ in range(n_steps + 1):
        ref = Summaries(m.bound, last_only=True)
        with torch.inference_mode(), attach(m.bound, merge(ref.handlers(), step.handlers())):
            logits = m.hf(input_ids=ids, **kw).logits
        yield ref, step.read(list(range(len(step.names))))
        ids = logits[:, -1:].argmax(-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_step_summaries_equal_summaries_of_the_last_position(arch):
    m = lmpeek.wrap(*tiny_hf_model(arch), name=arch)
    step = StepSummaries(m.bound)
    for ref, (norms, entropy, rows) in _forwards(m, step, n_steps=3):  # the prompt's last row, then steps
        want = torch.stack([ref.norms[n] for n in step.names])[:, 0].numpy()
        assert norms.dtype == np.float32 and np.array_equal(norms, want)
        assert entropy.dtype == np.float32
        assert np.array_equal(entropy, ref.stacked_entropy()[:, :, 0].numpy())
        # the rows are the residual stream itself: their norms, computed apart, are the norms
        np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float64), axis=1), norms, rtol=1e-5)
        assert step.nonfinite(norms) == ref.nonfinite() == []


def test_a_nonfinite_norm_is_named_like_summaries_names_it():
    m = lmpeek.wrap(*tiny_hf_model("llama"), name="llama")
    step = StepSummaries(m.bound)
    norms = np.ones(len(step.names), np.float32)
    norms[[3, 8]] = [np.inf, np.nan]
    ref = Summaries(m.bound, last_only=True)
    ref.norms = {n: torch.tensor([v]) for n, v in zip(step.names, norms, strict=True)}
    assert step.nonfinite(norms) == ref.nonfinite() == [(step.names[3], 0), (step.names[8], 0)]


def test_a_hook_that_did_not_run_is_an_error_not_a_stale_value():
    m = lmpeek.wrap(*tiny_hf_model("llama"), name="llama")
    step = StepSummaries(m.bound)
    handlers = step.handlers()
    del handlers["blocks.1.attn.entropy"]
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode(), attach(m.bound, handlers):
        m.hf(input_ids=ids)
    with pytest.raises(RuntimeError, match=r"layers \[1\]"):
        step.read()


def test_an_attachment_hooks_the_model_only_inside_each_block():
    m = lmpeek.wrap(*tiny_hf_model("llama"), name="llama")
    seen: list[int] = []
    before = hf_compat.attention_implementation(m.hf)
    attachment = Attachment(m.bound, {"blocks.0.hook_resid_post": lambda x: seen.append(x.shape[1])})

    def untouched():
        return hf_compat.attention_implementation(m.hf) == before and all(
            not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.hf.modules()
        )

    assert untouched()
    for T in (3, 5):
        with torch.inference_mode(), attachment.attached():
            assert hf_compat.attention_implementation(m.hf) != before
            m.hf(input_ids=torch.arange(1, T + 1)[None])
        assert untouched()
        m.hf(input_ids=torch.tensor([[1, 2]]))  # the caller's own forward between two blocks: not seen
    assert seen == [3, 5]
