"""Wrapping a model and running lmpeek on it leaves the model as it was (DESIGN: Rules).

Afterwards `hf.generate()` gives the same tokens and `backward()` the same gradients as an untouched
copy; lmpeek's own attention is switched on only inside its forwards. Inside them, autograd works too
(attribution runs backward through captured forwards).
"""

from __future__ import annotations

import pytest
import torch

import lmpeek
from lmpeek.capture.hooks import ATTENTION_IMPL, attach, capturing
from lmpeek.capture.slices import attention_pattern, run_block
from lmpeek.models import hf_compat
from lmpeek.models.tiny import tiny_hf_model

PROMPT = "The capital of France is"
IDS = torch.tensor([[5, 17, 9, 30, 5, 12, 40, 41, 3]])


def _pair(arch: str, impl: str):
    """Two identical tiny models (same seed) using attention implementation `impl`, and a tokenizer."""
    a, tok = tiny_hf_model(arch)
    b, _ = tiny_hf_model(arch)
    for m in (a, b):
        hf_compat.set_attention_implementation(m, impl)
    return a, b, tok


def _use_everything(m: lmpeek.LoadedModel) -> None:
    t = lmpeek.trace(m, PROMPT, keep=["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_pre"])
    list(lmpeek.generate(m, PROMPT, max_new_tokens=3, stop_at_eos=False))
    list(lmpeek.generate(m, PROMPT, max_new_tokens=2, temperature=0.8, seed=1))
    assert all(c.ok for c in lmpeek.check(m))
    attention_pattern(m, t.token_ids, 0)
    run_block(m, 1, t.tensors["blocks.1.hook_resid_pre"], ["attn.hook_pattern"])


def _grads(hf) -> dict[str, torch.Tensor]:
    hf.zero_grad(set_to_none=True)
    hf(IDS).logits.sum().backward()
    return {n: p.grad.clone() for n, p in hf.named_parameters() if p.grad is not None}


def _same_behaviour(used, untouched) -> None:
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert used.generate(IDS, **kw).tolist() == untouched.generate(IDS, **kw).tolist()
    got, want = _grads(used), _grads(untouched)
    assert got.keys() == want.keys() and got
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_wrap_and_every_capture_leave_the_model_as_it_was(arch, impl):
    used, untouched, tok = _pair(arch, impl)
    m = lmpeek.wrap(used, tok, name=arch)
    assert hf_compat.attention_implementation(used) == impl
    _use_everything(m)
    assert hf_compat.attention_implementation(used) == impl
    _same_behaviour(used, untouched)


def test_loaded_model_is_left_as_loaded():
    m = lmpeek.load("tiny:llama")
    before = hf_compat.attention_implementation(m.hf)
    untouched, _ = tiny_hf_model("llama")
    _use_everything(m)
    assert hf_compat.attention_implementation(m.hf) == before != ATTENTION_IMPL
    _same_behaviour(m.hf, untouched)


def test_a_failing_capture_switches_back_too():
    m = lmpeek.wrap(*tiny_hf_model("llama"))
    before = hf_compat.attention_implementation(m.hf)

    def boom(x):
        raise RuntimeError("handler failed")

    with (
        pytest.raises(RuntimeError, match="handler failed"),
        attach(m.bound, {"blocks.0.hook_resid_post": boom}),
    ):
        assert hf_compat.attention_implementation(m.hf) == ATTENTION_IMPL
        m.hf(IDS)
    assert hf_compat.attention_implementation(m.hf) == before


def test_an_abandoned_generation_leaves_the_model_alone():
    m = lmpeek.wrap(*tiny_hf_model("llama"))
    before = hf_compat.attention_implementation(m.hf)
    steps = lmpeek.generate(m, PROMPT, max_new_tokens=10, stop_at_eos=False)
    next(steps)
    # between two steps (a stream waiting for its reader) the model is the user's again
    assert hf_compat.attention_implementation(m.hf) == before
    del steps
    assert hf_compat.attention_implementation(m.hf) == before


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_backward_through_a_captured_forward(arch):
    # lmpeek's kernel inside capture (hooks attached) gives eager attention's gradients
    hf, tok = tiny_hf_model(arch)
    m = lmpeek.wrap(hf, tok)
    want = _grads(hf)  # eager attention, nothing attached
    entropies = []
    hf.zero_grad(set_to_none=True)
    with attach(m.bound, {"blocks.0.attn.entropy": entropies.append}):
        hf(IDS).logits.sum().backward()
    got = {n: p.grad for n, p in hf.named_parameters() if p.grad is not None}
    assert entropies and entropies[0].requires_grad  # the kernel ran, under autograd
    assert got.keys() == want.keys()
    for name in want:  # float32 rounding, relative to each gradient's scale
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6 * scale, msg=name)


def test_switching_back_and_forth_replays_after_the_first_time(monkeypatch):
    # every captured forward (every generated token) switches there and back: after the first time
    # that replays a few attribute writes instead of transformers' walk over every module
    hf, _ = tiny_hf_model("llama")
    for _ in range(2):
        with capturing(hf):
            pass
    calls = []
    original = type(hf).set_attn_implementation
    monkeypatch.setattr(
        type(hf), "set_attn_implementation", lambda self, *a, **k: calls.append(a) or original(self, *a, **k)
    )
    for _ in range(20):
        with capturing(hf):
            assert hf_compat.attention_implementation(hf) == ATTENTION_IMPL
        assert hf_compat.attention_implementation(hf) != ATTENTION_IMPL
    assert calls == []


def test_a_users_own_switch_is_respected():
    m = lmpeek.wrap(*tiny_hf_model("gpt2"))
    untouched, _ = tiny_hf_model("gpt2")
    for impl in ("sdpa", "eager", "sdpa"):
        m.hf.set_attn_implementation(impl)  # the user's choice, between lmpeek calls
        untouched.set_attn_implementation(impl)
        lmpeek.trace(m, PROMPT)
        assert hf_compat.attention_implementation(m.hf) == impl
        assert all(layer.attn.config._attn_implementation == impl for layer in m.hf.transformer.h)
        _same_behaviour(m.hf, untouched)


def test_train_mode_is_left_alone_and_captures_run_without_dropout():
    """wrap() does not switch a training model to eval; lmpeek's forwards run with dropout off (the
    numbers equal the eval-mode model's) and give back every module's own flag."""
    hf, tok = tiny_hf_model("gpt2")  # gpt2 has dropout modules
    for mod in hf.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.5
    ref = lmpeek.trace(lmpeek.wrap(hf, tok), PROMPT)
    hf.train()
    hf.transformer.h[0].eval()  # a mixed state the caller chose
    flags = {name: mod.training for name, mod in hf.named_modules()}
    m = lmpeek.wrap(hf, tok)
    assert {name: mod.training for name, mod in hf.named_modules()} == flags
    t = lmpeek.trace(m, PROMPT)
    list(lmpeek.generate(m, PROMPT, max_new_tokens=2, stop_at_eos=False))
    assert {name: mod.training for name, mod in hf.named_modules()} == flags
    torch.testing.assert_close(torch.as_tensor(t.topk_probs), torch.as_tensor(ref.topk_probs))
    torch.testing.assert_close(torch.as_tensor(t.loss), torch.as_tensor(ref.loss), equal_nan=True)
