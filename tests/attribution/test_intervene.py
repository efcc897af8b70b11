"""intervene(): ablations and patches apply inside the block only, and do what their formulas say.

Independent checks: zero-ablating a head or a neuron equals zeroing its slice of the output projection
in a copy of the plain transformers model; the other edits are read back through lmpeek.capture
(lmpeek.trace's keep), a different hook path from the one that writes them.
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.intervene import (
    Ablation,
    Patch,
    direction,
    feature,
    head,
    intervene,
    neuron,
)
from lmpeek.errors import InvalidInput

os.environ.setdefault("OMP_NUM_THREADS", "1")

ARCHS = ["llama", "gpt2", "gpt_neox"]  # llama is GQA (2 KV heads for 4); gpt_neox is a parallel block
TEXT = "The capital of France is Paris. The quick brown fox"
OTHER = "Once upon a time there was a small model that wanted"


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load(f"tiny:{request.param}")


def _ids(model, text=TEXT):
    return torch.as_tensor(lmpeek.trace(model, text).token_ids)[None]


def _logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=ids, use_cache=False).logits


def _kept(model, text, hook):
    return lmpeek.trace(model, text, keep=[hook]).tensors[hook]


def _hooks_left(hf) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hf.modules())


def _o_proj_rows(model, layer):
    # (weight, dim of the input features): Linear keeps [out, in], GPT-2's Conv1D [in, out]
    mod = model.bound.block_module(layer, model.bound.adapter.o_proj)
    return mod.weight, (0 if type(mod).__name__ == "Conv1D" else 1)


def test_leaving_restores_the_model_exactly(model):
    ids = _ids(model)
    before = _logits(model.hf, ids)
    hooks = _hooks_left(model.hf)
    with intervene(
        model, ablate=[head(0, 1), neuron(1, 5)], patch=[Patch("blocks.1.hook_resid_pre", OTHER, (2,))]
    ):
        inside = _logits(model.hf, ids)
    assert not torch.equal(inside, before)
    assert torch.equal(_logits(model.hf, ids), before)
    assert _hooks_left(model.hf) == hooks
    with pytest.raises(RuntimeError), intervene(model, ablate=[head(0, 1)]):
        raise RuntimeError("boom")
    assert _hooks_left(model.hf) == hooks and torch.equal(_logits(model.hf, ids), before)


@pytest.mark.parametrize("layer,h", [(0, 1), (1, 3)])
def test_zero_head_equals_zeroing_its_output_projection_slice(model, layer, h):
    ids = _ids(model)
    with intervene(model, ablate=[head(layer, h)]):
        got = _logits(model.hf, ids)
    surgery = copy.deepcopy(model.hf)
    wrapped = lmpeek.wrap(surgery, model.tokenizer)
    weight, dim = _o_proj_rows(wrapped, layer)
    d = model.bound.d_head
    with torch.no_grad():
        weight.narrow(dim, h * d, d).zero_()
    assert torch.allclose(got, _logits(surgery, ids), atol=1e-5)


def test_zero_neuron_equals_zeroing_its_down_projection_column(model):
    ids = _ids(model)
    layer, i = 1, 7
    with intervene(model, ablate=[neuron(layer, i)]):
        got = _logits(model.hf, ids)
    surgery = copy.deepcopy(model.hf)
    down = lmpeek.wrap(surgery, model.tokenizer).bound.block_module(layer, model.bound.adapter.mlp_post.path)
    with torch.no_grad():
        if type(down).__name__ == "Conv1D":
            down.weight[i].zero_()
        else:
            down.weight[:, i].zero_()
    assert torch.allclose(got, _logits(surgery, ids), atol=1e-5)


def test_mean_and_resample_head_ablation_read_back_through_capture(model):
    hook, h = "blocks.1.attn.hook_z", 2
    clean = _kept(model, TEXT, hook)  # [T, H, d]
    other = _kept(model, OTHER, hook)
    with intervene(model, ablate=[head(1, h, mode="mean")], text=TEXT):
        z = _kept(model, TEXT, hook)
    np.testing.assert_allclose(z[:, h], np.broadcast_to(clean[:, h].mean(0), z[:, h].shape), atol=1e-5)
    keep = [j for j in range(model.n_heads) if j != h]
    np.testing.assert_allclose(z[:, keep], clean[:, keep], atol=1e-5)  # the layer's other heads untouched
    with intervene(model, ablate=[head(1, h, mode="resample", source=OTHER, positions=[1, 3])]):
        z = _kept(model, TEXT, hook)
    np.testing.assert_allclose(z[[1, 3], h], other[[1, 3], h], atol=1e-5)
    rest = [p for p in range(z.shape[0]) if p not in (1, 3)]
    np.testing.assert_allclose(z[rest], clean[rest], atol=1e-5)


def test_direction_ablation_projects_out_at_chosen_positions_only(model):
    hook = "blocks.1.hook_resid_pre"
    u = np.random.default_rng(0).standard_normal(model.d_model).astype(np.float32)
    unit = u / np.linalg.norm(u)
    clean = _kept(model, TEXT, hook)
    with intervene(model, ablate=[direction(hook, u, positions=[0, 4])]):
        x = _kept(model, TEXT, hook)
    want = clean.copy()
    want[[0, 4]] -= np.outer(clean[[0, 4]] @ unit, unit)
    np.testing.assert_allclose(x, want, atol=1e-4)
    assert np.abs(x[[0, 4]] @ unit).max() < 1e-4
    with intervene(model, ablate=[direction(hook, u, mode="mean")], text=OTHER):
        x = _kept(model, TEXT, hook)
    target = (_kept(model, OTHER, hook) @ unit).mean()
    np.testing.assert_allclose(x @ unit, np.full(x.shape[0], target), atol=1e-4)


def test_patch_puts_the_second_prompts_activation_in(model):
    hook = "blocks.0.hook_attn_out"
    other = _kept(model, OTHER, hook)
    clean = _kept(model, TEXT, hook)
    with intervene(model, patch=[Patch(hook, OTHER, (2, 5))]):
        x = _kept(model, TEXT, hook)
    np.testing.assert_allclose(x[[2, 5]], other[[2, 5]], atol=1e-5)
    np.testing.assert_allclose(np.delete(x, [2, 5], 0), np.delete(clean, [2, 5], 0), atol=1e-5)


def test_bad_interventions_are_refused(model):
    with pytest.raises(InvalidInput, match="cannot intervene"):
        with intervene(model, ablate=[Ablation("blocks.9.hook_resid_pre")]):
            pass
    with pytest.raises(InvalidInput, match="out of range"):
        with intervene(model, ablate=[head(0, model.n_heads)]):
            pass
    with pytest.raises(InvalidInput, match="needs a text"):
        with intervene(model, ablate=[neuron(0, 1, mode="mean")]):
            pass
    with pytest.raises(InvalidInput, match="absolute"):
        head(0, 0, positions=[-1])
    with pytest.raises(InvalidInput, match="beyond"):
        with intervene(model, patch=[Patch("blocks.0.hook_resid_pre", "The")]):
            _logits(model.hf, _ids(model))
    assert _hooks_left(model.hf) == 0


def _write_sae(folder, hook, rng):
    from safetensors.numpy import save_file

    d, f = 64, 16
    cfg = {"d_in": d, "d_sae": f, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "architecture": "standard",
           "metadata": {"model_name": "tiny", "hook_name": hook, "hook_head_index": None,
                        "sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0"}}  # fmt: skip
    w = {
        "W_enc": (rng.standard_normal((d, f)) * d**-0.5).astype(np.float32),
        "b_enc": (rng.standard_normal(f) * 0.3).astype(np.float32),
        "W_dec": (rng.standard_normal((f, d)) * d**-0.5).astype(np.float32),
        "b_dec": (rng.standard_normal(d) * 0.3).astype(np.float32),
    }
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(w, str(folder / "sae_weights.safetensors"))
    return w


def test_sae_feature_ablation_subtracts_its_decoder_contribution(tmp_path):
    from lmpeek import features

    model = lmpeek.load("tiny:llama")
    hook = "blocks.1.hook_resid_pre"
    w = _write_sae(tmp_path / "sae", hook, np.random.default_rng(1))
    src = features.load(str(tmp_path / "sae"))
    clean = _kept(model, TEXT, hook).astype(np.float64)
    acts = np.maximum((clean - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)  # the standard SAE, by hand
    i = int(np.argmax((acts > 0).sum(0)))  # a feature that fires
    with intervene(model, ablate=[feature(src, i, positions=[1, 2, 3])]):
        x = _kept(model, TEXT, hook)
    want = clean.copy()
    want[[1, 2, 3]] -= np.outer(acts[[1, 2, 3], i], w["W_dec"][i])
    assert acts[[1, 2, 3], i].max() > 0
    np.testing.assert_allclose(x, want, atol=1e-4)
