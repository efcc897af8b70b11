"""Batched patching grids equal one-at-a-time patching; attribution patching equals its gradient
formula (checked by central finite differences in float64) and its check by real patching."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.intervene import Run, Steer, capture_points, edited, intervene
from lmpeek.attribution.patching import (
    attribution_patching,
    patch_grid,
    patch_one,
    spearman,
)
from lmpeek.errors import InvalidInput

os.environ.setdefault("OMP_NUM_THREADS", "1")

ARCHS = ["llama", "gpt2", "qwen3"]  # llama and qwen3 are GQA


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load(f"tiny:{request.param}")


def _pair(model):
    a = lmpeek.trace(model, "The capital of France is Paris").token_ids
    b = a.copy()
    b[2] = (b[2] + 57) % 300  # two tokens differ; the others are shared
    b[4] = (b[4] + 11) % 300
    return a, b


@pytest.mark.parametrize("hook", ["resid_pre", "attn_out", "mlp_out"])
def test_position_grid_equals_one_at_a_time_patching(model, hook):
    a, b = _pair(model)
    grid = patch_grid(model, a, b, hook=hook, batch_size=5)  # 5 does not divide the 2 × 8 cells
    point = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}[hook]
    ref = np.array(
        [[patch_one(model, a, b, f"blocks.{layer}.{point}", p) for p in range(a.size)] for layer in range(2)]
    )
    assert grid.values.shape == (model.n_layers, a.size)
    np.testing.assert_allclose(grid.values, ref, atol=1e-5)
    assert grid.forwards == math.ceil(model.n_layers * a.size / 5)
    assert np.abs(grid.values).max() > 1e-2  # patches matter: the comparison is not of zeros


def test_head_grid_equals_one_at_a_time_patching(model):
    a, b = _pair(model)
    grid = patch_grid(model, a, b, by="head", batch_size=3)
    ref = [[patch_one(model, a, b, f"blocks.{layer}.attn.hook_z", None, h) for h in range(model.n_heads)]
           for layer in range(model.n_layers)]  # fmt: skip
    assert grid.values.shape == (model.n_layers, model.n_heads)
    np.testing.assert_allclose(grid.values, np.array(ref), atol=1e-5)


def test_grid_ends_are_what_patching_must_give(model):
    a, b = _pair(model)
    grid = patch_grid(model, a, b)
    # layer 0's input at a position where A and B share the token (and everything before it) changes nothing
    # (up to float32 noise: the grid's batched forwards block their matmuls unlike the single base forward;
    # 1.4e-6 seen on gpt2 with one thread)
    np.testing.assert_allclose(grid.values[0, [0, 1, 3, 5, 6, 7]], 0, atol=1e-5)
    # the whole of B's embedding stream patched in is B's run: its metric exactly
    whole = patch_one(model, a, b, "blocks.0.hook_resid_pre", list(range(a.size)))
    assert whole + grid.base == pytest.approx(grid.source, abs=1e-5)
    # the default metric is log p of B's predicted token, read independently from lmpeek.trace
    tb, ta = lmpeek.trace(model, b), lmpeek.trace(model, a)
    top = int(tb.topk_ids[-1, 0])
    with torch.no_grad():
        la = model.hf(input_ids=torch.as_tensor(a)[None]).logits[0, -1].double().log_softmax(-1)
    assert grid.base == pytest.approx(float(la[top]), abs=1e-5)
    assert grid.source == pytest.approx(math.log(float(tb.topk_probs[-1, 0])), abs=1e-4)
    assert ta.token_ids.size == a.size


def test_contrast_and_callable_targets(model):
    a, b = _pair(model)
    x, y = 5, 9
    grid = patch_grid(model, a, b, target=(x, y))
    grid_x = patch_grid(model, a, b, target=x)
    grid_y = patch_grid(model, a, b, target=y)
    np.testing.assert_allclose(grid.values, grid_x.values - grid_y.values, atol=1e-5)
    logit = patch_grid(model, a, b, target=lambda lg: lg[:, x])
    assert logit.values.shape == grid.values.shape


def _float64(arch):
    from lmpeek.models.tiny import tiny_hf_model

    hf, tok = tiny_hf_model(arch)
    return lmpeek.wrap(hf.double(), tok)


# gpt2 computes in float64 throughout when its weights are float64, so central differences match the
# gradient to ~1e-8; llama's eager softmax and RMSNorm upcast to float32, which limits them to ~1e-5
@pytest.mark.parametrize("arch,eps,tol", [("gpt2", 1e-5, 1e-6), ("llama", 1e-3, 5e-4)])
def test_attribution_patching_equals_its_gradient_formula(arch, eps, tol):
    model = _float64(arch)
    a, b = _pair(model)
    atp = attribution_patching(model, a, b, verify=0)
    top = int(lmpeek.trace(model, b).topk_ids[-1, 0])

    def metric(lg):
        return lg.log_softmax(-1)[:, top]

    ids = torch.as_tensor(a)[None]
    hooks = atp.hooks
    clean, other = capture_points(model, a, hooks), capture_points(model, b, hooks)
    for layer, p in [(0, 2), (0, 4), (1, 2), (1, 7)]:
        h = hooks[layer]
        diff = (other[h] - clean[h])[p]
        n = float(diff.norm())
        vals = []
        for s in (eps, -eps):  # add s · diff at (layer, p): a Steer of norm |diff| and strength s
            with torch.no_grad(), intervene(model, steer=[Steer(h, diff, s, norm=n, positions=(p,))]):
                vals.append(float(metric(model.hf(input_ids=ids).logits[:, -1])[0]))
        assert atp.values[layer, p] == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=tol, abs=tol)
    np.testing.assert_allclose(atp.values[0, [0, 1, 3]], 0, atol=1e-12)  # B equals A there
    # layer 0's input is the embedding: the plain transformers model's own gradient, no lmpeek hooks
    emb = model.hf.get_input_embeddings()
    with torch.no_grad():
        ea, eb = emb(torch.as_tensor(a)[None]), emb(torch.as_tensor(b)[None])
    if model.bound.adapter.pos_embed is None:  # gpt2's resid_pre also holds the position embedding
        x = ea.clone().requires_grad_()
        m = metric(model.hf(inputs_embeds=x).logits[:, -1])[0]
        (g,) = torch.autograd.grad(m, x)
        np.testing.assert_allclose(atp.values[0], ((eb - ea) * g).sum(-1)[0].numpy(), rtol=1e-6, atol=1e-9)


def test_head_attribution_patching_equals_finite_differences():
    model = _float64("llama")
    a, b = _pair(model)
    atp = attribution_patching(model, a, b, by="head", verify=0)
    assert atp.values.shape == (model.n_layers, model.n_heads)
    ids = torch.as_tensor(a)[None]
    hooks = atp.hooks
    clean, other = capture_points(model, a, hooks), capture_points(model, b, hooks)
    top = int(lmpeek.trace(model, b).topk_ids[-1, 0])
    eps = 1e-3  # llama's float32 softmax: see above
    for layer, h in [(0, 1), (1, 3)]:
        diff = other[hooks[layer]][:, h] - clean[hooks[layer]][:, h]  # [T, d]
        vals = []
        for s in (eps, -eps):

            def nudge(x, run: Run, s=s, h=h, diff=diff):
                out = x.clone()
                out[0, :, h] += s * diff
                return out

            with torch.no_grad(), edited(model, [(hooks[layer], nudge)]):
                vals.append(float(model.hf(input_ids=ids).logits[0, -1].log_softmax(-1)[top]))
        assert atp.values[layer, h] == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=5e-4, abs=5e-4)


def test_attribution_patching_is_verified_by_real_patching(model):
    a, b = _pair(model)
    grads_before = [p.grad for p in model.hf.parameters()]
    atp = attribution_patching(model, a, b, verify=6, batch_size=4)
    assert all(p.grad is None for p in model.hf.parameters()) and all(g is None for g in grads_before)
    assert len(atp.verified) == 6
    flat = np.abs(atp.values).ravel()
    assert sorted(flat, reverse=True)[:6] == pytest.approx([abs(atp.values[c]) for c in atp.verified])
    real = [patch_one(model, a, b, atp.hooks[layer], p) for layer, p in atp.verified]
    np.testing.assert_allclose(atp.patched, real, atol=1e-5)
    assert atp.spearman == pytest.approx(spearman([atp.values[c] for c in atp.verified], real))
    assert -1 <= atp.spearman <= 1


def test_spearman_against_hand_computed_cases():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))  # 1 - 6Σd²/n(n²-1)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1)
    # ties take the mean rank: a -> [1.5, 1.5, 3], b -> [1, 2, 3]; Pearson of those ranks
    ra, rb = np.array([1.5, 1.5, 3]), np.array([1.0, 2, 3])
    want = ((ra - ra.mean()) * (rb - rb.mean())).sum() / np.sqrt(((ra - ra.mean()) ** 2).sum() * 2)
    assert spearman([7, 7, 9], [1, 2, 3]) == pytest.approx(want)
    assert math.isnan(spearman([1, 1], [1, 2]))


def test_bad_patching_requests_are_refused(model):
    a, b = _pair(model)
    with pytest.raises(InvalidInput, match="equal length"):
        patch_grid(model, a, b[:-1])
    with pytest.raises(InvalidInput, match="hook must be"):
        patch_grid(model, a, b, hook="pattern")
    with pytest.raises(InvalidInput, match="by must be"):
        attribution_patching(model, a, b, by="neuron")
