"""Generation: greedy equals model.generate, the KV cache is used, each step's numbers are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import tiny_hf_model

PROMPT = "The capital of France is"


def _model(arch="llama"):
    return lmpeek.wrap(*tiny_hf_model(arch), name=arch)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "gpt_neox", "phi3", "qwen2"])
def test_greedy_equals_model_generate(arch):
    m = _model(arch)
    steps = list(lmpeek.generate(m, PROMPT, max_new_tokens=16, stop_at_eos=False))
    hf, tok = tiny_hf_model(arch)  # plain model, default attention implementation
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    ref = hf.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    assert [s.token_id for s in steps] == ref[0, ids.shape[1] :].tolist()
    assert steps[-1].finished and not steps[0].finished


def test_steps_match_a_trace_of_the_whole_sequence():
    m = _model()
    steps = list(lmpeek.generate(m, PROMPT, max_new_tokens=6, stop_at_eos=False))
    prompt_ids = m.tokenizer(PROMPT)["input_ids"]
    full = prompt_ids + [s.token_id for s in steps]
    t = lmpeek.trace(m, full)
    assert t.token_ids.tolist() == full
    for s in steps:
        pos = s.position
        # the distribution the token was drawn from is the prediction at the previous position
        assert s.prob == pytest.approx(float(np.exp(-t.loss[pos - 1])), abs=1e-5)
        np.testing.assert_allclose(s.topk_probs[:5], t.topk_probs[pos - 1, :5], atol=1e-5)
        assert s.entropy == pytest.approx(float(t.entropy[pos - 1]), abs=1e-5)
        # internals at the new token's own position, computed with the KV cache
        np.testing.assert_allclose(s.norms["resid_post"], t.norm_matrix("resid_post")[:, pos], rtol=1e-4)
        np.testing.assert_allclose(s.attn_entropy, t.attn_entropy[:, :, pos], atol=1e-4)


def test_uses_the_kv_cache():
    m = _model()
    seen = []
    handle = m.hf.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        list(lmpeek.generate(m, PROMPT, max_new_tokens=5, stop_at_eos=False))
    finally:
        handle.remove()
    n_prompt = len(m.tokenizer(PROMPT)["input_ids"])
    assert seen == [n_prompt] + [1] * 5


def test_sampling_is_reproducible_with_a_seed():
    m = _model()
    kw = dict(max_new_tokens=8, temperature=1.5, top_p=0.95, top_k=50, seed=7, stop_at_eos=False)
    a = [s.token_id for s in lmpeek.generate(m, PROMPT, **kw)]
    b = [s.token_id for s in lmpeek.generate(m, PROMPT, **kw)]
    c = [s.token_id for s in lmpeek.generate(m, PROMPT, **{**kw, "seed": 8})]
    assert a == b and a != c


def test_top_k_one_is_greedy():
    m = _model()
    greedy = [s.token_id for s in lmpeek.generate(m, PROMPT, max_new_tokens=6, stop_at_eos=False)]
    sampled = [
        s.token_id
        for s in lmpeek.generate(
            m, PROMPT, max_new_tokens=6, temperature=1.0, top_k=1, seed=3, stop_at_eos=False
        )
    ]
    assert greedy == sampled


def test_stops_at_eos():
    m = _model()
    eos = m.tokenizer.eos_token_id

    def favour_eos(_mod, _args, logits):
        logits[..., eos] += 100.0
        return logits

    handle = m.hf.lm_head.register_forward_hook(favour_eos)
    try:
        steps = list(lmpeek.generate(m, PROMPT, max_new_tokens=10))
    finally:
        handle.remove()
    assert len(steps) == 1 and steps[0].token_id == eos and steps[0].finished


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"max_new_tokens": 10_000}, "context length"),
    ],
)
def test_bad_parameters_are_refused_at_call_time(kw, message):
    with pytest.raises(InvalidInput, match=message):
        lmpeek.generate(_model(), PROMPT, **kw)


def _tokens(m, **kw):
    return [s.token_id for s in lmpeek.generate(m, PROMPT, max_new_tokens=6, stop_at_eos=False, **kw)]


@pytest.mark.parametrize("temperature", [1e-300, 1e-38, 1e-45, 5e-324, 1e-10])
def test_tiny_temperatures_give_the_greedy_tokens(temperature):
    # in float32, logits / 1e-300 overflow (and the best one is 0 / 0 = NaN): torch.multinomial crashed
    m = _model()
    assert _tokens(m, temperature=temperature, seed=0) == _tokens(m)


def test_logits_whose_scaled_values_overflow_float32():
    m = _model()
    greedy = _tokens(m)

    def huge(_mod, _args, logits):
        return logits * 1e37  # finite in float32, but / 0.01 is not

    handle = m.hf.lm_head.register_forward_hook(huge)
    try:
        assert _tokens(m, temperature=0.01, top_p=0.9, top_k=20, seed=1) == greedy
    finally:
        handle.remove()


def test_non_finite_logits_are_a_clear_error():
    m = _model()

    def broken(_mod, _args, logits):
        return logits.masked_fill(torch.ones_like(logits, dtype=torch.bool), float("nan"))

    handle = m.hf.lm_head.register_forward_hook(broken)
    try:
        with pytest.raises(InvalidInput, match="not finite"):
            _tokens(m, temperature=0.7, seed=1)
    finally:
        handle.remove()


@pytest.mark.parametrize("seed", [0, 2**64 - 1, -(2**63), np.int64(5), np.uint64(2**63)])
def test_every_seed_torch_accepts_is_accepted(seed):
    m = _model()
    assert _tokens(m, temperature=1.0, seed=seed) == _tokens(m, temperature=1.0, seed=seed)


@pytest.mark.parametrize(
    "kw",
    [{"seed": 2**64}, {"seed": -(2**63) - 1}, {"seed": True}, {"seed": 1.0}, {"top_k": True},
     {"max_new_tokens": True}, {"max_new_tokens": 3.0}, {"show_k": False}, {"temperature": float("nan")}],
)  # fmt: skip
def test_out_of_range_or_non_integer_settings_are_refused(kw):
    with pytest.raises(InvalidInput):
        lmpeek.generate(_model(), PROMPT, **kw)


def test_sampling_does_not_depend_on_the_model_device_generator():
    # sampling runs on the CPU with its own generator: the global RNG state does not change it
    m = _model()
    torch.manual_seed(1)
    a = _tokens(m, temperature=1.2, seed=42)
    torch.manual_seed(2)
    assert _tokens(m, temperature=1.2, seed=42) == a


# --- the distribution each token was drawn from ---------------------------------------------------


def _warped_by_hand(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """softmax((logits - max) / T), then top-k, then top-p, each renormalised: written out here,
    independently of transformers' warpers that generate() uses."""
    z = logits.astype(np.float64)
    if temperature == 0:
        p = np.zeros_like(z)
        p[z.argmax()] = 1.0
        return p
    with np.errstate(over="ignore"):
        scaled = (z - z.max()) / temperature
    p = np.exp(scaled)  # the best is exp(0) = 1: never 0 / 0
    p /= p.sum()
    if top_k > 0:
        kth = np.sort(z)[::-1][top_k - 1]
        p = np.where(z >= kth, p, 0.0)  # ties with the k-th are kept, as in transformers
        p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]  # probability of the tokens ranked above
        keep = np.zeros_like(p, dtype=bool)
        keep[order[before < top_p]] = True  # the smallest head that reaches top_p
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.9), (0.8, 20, 0.6), (100.0, 0, 1.0),
     (100.0, 0, 0.5), (100.0, 7, 1.0), (1e-3, 0, 1.0), (1e-300, 0, 0.9)],
)  # fmt: skip
def test_sampled_distribution_equals_an_independent_computation(temperature, top_k, top_p):
    m = _model()
    seen = []  # the logits generate() sees: the prompt's last position, then each new token's
    handle = m.hf.register_forward_hook(lambda _m, _a, out: seen.append(out.logits[0, -1].float().numpy()))
    try:
        kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=11, show_k=10)
        steps = list(lmpeek.generate(m, PROMPT, max_new_tokens=5, stop_at_eos=False, **kw))
    finally:
        handle.remove()
    for step, logits in zip(steps, seen, strict=False):
        want = _warped_by_hand(logits, temperature, top_k, top_p)
        support = int((want > 0).sum())
        assert len(step.sampled_topk_ids) == len(step.sampled_topk_probs) == min(10, support)
        np.testing.assert_allclose(step.sampled_topk_probs, want[step.sampled_topk_ids], rtol=1e-5, atol=1e-9)
        top = np.sort(want)[::-1][: min(10, support)]
        np.testing.assert_allclose(step.sampled_topk_probs, top, rtol=1e-5)
        assert want[step.token_id] > 0 and step.sampled_prob == pytest.approx(want[step.token_id], rel=1e-5)
        # the raw prediction stays the temperature-1 softmax, unfiltered
        raw = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert step.prob == pytest.approx(raw[step.token_id], rel=1e-4)
        np.testing.assert_allclose(step.topk_probs, np.sort(raw)[::-1][:10], rtol=1e-4)
    if temperature == 100.0 and top_k == 0 and top_p == 1.0:  # near-uniform over the whole vocabulary
        V = seen[0].size
        assert np.all(np.abs(steps[0].sampled_topk_probs * V - 1) < 0.2) and steps[0].topk_probs[0] * V > 2


def test_greedy_draws_from_the_one_hot_on_the_argmax():
    for step in lmpeek.generate(_model(), PROMPT, max_new_tokens=3, stop_at_eos=False):
        assert step.sampled_topk_ids.tolist() == [step.token_id] == [int(step.topk_ids[0])]
        assert step.sampled_topk_probs.tolist() == [1.0] and step.sampled_prob == 1.0


def test_the_seed_is_reported_and_repeats_the_run():
    m = _model()
    kw = dict(max_new_tokens=8, temperature=1.5, top_k=50, stop_at_eos=False)
    run = lmpeek.generate(m, PROMPT, **kw)  # no seed: a random one is drawn, and reported
    assert isinstance(run.seed, int)
    first = [s.token_id for s in run]
    again = lmpeek.generate(m, PROMPT, seed=run.seed, **kw)
    assert again.seed == run.seed and [s.token_id for s in again] == first
    others = [[s.token_id for s in lmpeek.generate(m, PROMPT, seed=run.seed + d, **kw)] for d in (1, 2)]
    assert any(o != first for o in others)  # the seed is what was used, not decoration
    assert lmpeek.generate(m, PROMPT, seed=2**64 - 1, **kw).seed == 2**64 - 1
