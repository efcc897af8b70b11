"""Steering: strength 0 is the plain generation exactly; add / project / cap move the residual by
what their formulas say at the chosen positions only (read back through lmpeek.capture); KV-cached
generation steers the same absolute positions as a full forward; the directions equal the weights."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.intervene import Steer, intervene, mean_norm
from lmpeek.attribution.steering import SWEEP, mean_difference, neuron_direction, steer_generate
from lmpeek.errors import InvalidInput

os.environ.setdefault("OMP_NUM_THREADS", "1")

ARCHS = ["llama", "gpt2", "gpt_neox"]
PROMPT = "The capital of France is"
HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load(f"tiny:{request.param}")


def _u(model, seed=0):
    return np.random.default_rng(seed).standard_normal(model.d_model).astype(np.float32)


def _resid(model, text, hook=HOOK):
    return lmpeek.trace(model, text, keep=[hook]).tensors[hook].astype(np.float64)


def test_strength_zero_is_the_plain_generation_exactly(model):
    r = steer_generate(model, PROMPT, Steer(HOOK, _u(model), 0.0), seed=7, max_new_tokens=10)
    assert np.array_equal(r.steered_ids, r.plain_ids) and r.steered_text == r.plain_text
    assert not r.delta_logp.any() and not r.kl.any()
    plain = [s.token_id for s in lmpeek.generate(model, PROMPT, 10, temperature=1.0, seed=7)]
    assert r.plain_ids.tolist() == plain  # the plain side is lmpeek's own sampler with that seed


def test_add_moves_the_residual_by_strength_norm_unit_at_chosen_positions_only(model):
    u = _u(model)
    unit = u / np.linalg.norm(u)
    clean = _resid(model, PROMPT)
    norm = np.linalg.norm(clean, axis=-1).mean()
    assert mean_norm(model, PROMPT, HOOK) == pytest.approx(norm, rel=1e-5)
    with intervene(model, steer=[Steer(HOOK, u, 0.5, positions=(1, 3))], text=PROMPT):
        got = _resid(model, PROMPT)
        last = _resid(model, PROMPT, "blocks.1.hook_resid_post")
    want = clean.copy()
    want[[1, 3]] += 0.5 * norm * unit
    np.testing.assert_allclose(got, want, atol=1e-4)
    # causal: the last block's output before position 1 is untouched, after it changed
    plain_last = _resid(model, PROMPT, "blocks.1.hook_resid_post")
    np.testing.assert_allclose(last[0], plain_last[0], atol=1e-5)
    assert np.abs(last[1:] - plain_last[1:]).max() > 1e-3


def test_project_and_cap_set_and_bound_the_component(model):
    u = _u(model, 1)
    unit = u / np.linalg.norm(u)
    clean = _resid(model, PROMPT)
    comp = clean @ unit
    c = float(np.median(comp))  # some positions above it, some below
    with intervene(model, steer=[Steer(HOOK, u, 1.0, "project", norm=c)]):
        proj = _resid(model, PROMPT)
    np.testing.assert_allclose(proj, clean - np.outer(comp - c, unit), atol=1e-4)
    with intervene(model, steer=[Steer(HOOK, u, 1.0, "cap", norm=c)]):
        cap = _resid(model, PROMPT)
    np.testing.assert_allclose(cap @ unit, np.minimum(comp, c), atol=1e-4)
    np.testing.assert_allclose(cap - np.outer(cap @ unit, unit), clean - np.outer(comp, unit), atol=1e-4)


def test_cached_generation_steers_the_same_positions_as_a_full_forward(model):
    n0 = lmpeek.trace(model, PROMPT).token_ids.size
    steer = Steer(HOOK, _u(model, 2), 2.0, positions=(n0 - 1, n0 + 2))  # one prompt, one generated
    r = steer_generate(model, PROMPT, steer, seed=0, max_new_tokens=6, temperature=0.0)
    ids = list(lmpeek.trace(model, PROMPT).token_ids)
    with intervene(model, steer=[steer], text=PROMPT), torch.no_grad():
        for _ in range(6):  # greedy without a cache: every forward sees the whole sequence
            ids.append(
                int(model.hf(input_ids=torch.as_tensor(ids)[None], use_cache=False).logits[0, -1].argmax())
            )
    assert r.steered_ids.tolist() == ids[n0:]


def test_delta_logp_and_kl_against_lmpeek_trace(model):
    steer = Steer(HOOK, _u(model, 3), 1.0)
    r = steer_generate(model, PROMPT, steer, seed=1, max_new_tokens=6)
    ids = np.concatenate([lmpeek.trace(model, PROMPT).token_ids, r.steered_ids])
    n0 = ids.size - r.steered_ids.size
    plain = lmpeek.trace(model, ids.tolist())
    with intervene(model, steer=[steer], text=PROMPT):
        steered = lmpeek.trace(model, ids.tolist())
    # Trace.loss[t] = -log p(token t+1) at position t
    want = plain.loss[n0 - 1 : -1] - steered.loss[n0 - 1 : -1]
    np.testing.assert_allclose(r.delta_logp, want, atol=1e-4)
    assert (r.kl >= 0).all() and r.kl.max() > 0
    assert r.fluency == pytest.approx(np.exp(plain.loss[n0 - 1 : -1].mean()), rel=1e-4)


def test_sweep_runs_five_strengths_against_one_plain_generation(model):
    rs = steer_generate(
        model, PROMPT, Steer(HOOK, _u(model), 1.0), seed=2, max_new_tokens=4, strengths="sweep"
    )
    assert [r.strength for r in rs] == list(SWEEP) and len(rs) == 5
    assert all(np.array_equal(r.plain_ids, rs[0].plain_ids) for r in rs)
    assert len({r.norms[0] for r in rs}) == 1


def test_neuron_direction_is_the_down_projection_column(model):
    v = neuron_direction(model, 1, 5)
    down = model.bound.block_module(1, model.bound.adapter.mlp_post.path)
    w = down.weight.detach().numpy()
    want = w[5] if type(down).__name__ == "Conv1D" else w[:, 5]
    np.testing.assert_allclose(v, want, atol=1e-6)


def test_mean_difference_of_two_prompt_sets(model):
    pos, neg = ["The capital of France is", "Le chat est sur"], ["1 + 1 = 2", "def add(a, b):"]
    d = mean_difference(model, pos, neg, HOOK)
    acts = lmpeek.capture.activations(model, pos + neg, [HOOK])
    last = np.stack([a[HOOK][-1] for a in acts])
    np.testing.assert_allclose(d, last[:2].mean(0) - last[2:].mean(0), atol=1e-4)
    mean = mean_difference(model, pos, neg, HOOK, position="mean")
    avg = np.stack([a[HOOK].mean(0) for a in acts])
    np.testing.assert_allclose(mean, avg[:2].mean(0) - avg[2:].mean(0), atol=1e-4)


def test_bad_steering_is_refused(model):
    with pytest.raises(InvalidInput, match="size"):
        steer_generate(model, PROMPT, Steer(HOOK, np.ones(3), 1.0))
    with pytest.raises(InvalidInput, match="non-zero"):
        steer_generate(model, PROMPT, Steer(HOOK, np.zeros(model.d_model), 1.0))
    with pytest.raises(InvalidInput, match="mode"):
        steer_generate(model, PROMPT, Steer(HOOK, _u(model), 1.0, "multiply"))
    with pytest.raises(InvalidInput, match="norm"):
        with intervene(model, steer=[Steer(HOOK, _u(model), 1.0)]):
            pass
