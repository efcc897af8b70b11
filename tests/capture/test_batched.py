"""Batched capture equals the unbatched trace: each text's hook points from a padded batch (right or
left padding, mixed lengths) equal `lmpeek.trace(model, text, keep=hooks)` to 1e-5, on every tiny
architecture."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.capture.batched import activations
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model

TEXTS = [
    "The capital of France is Paris.",
    "Hi",
    "A much longer text, so that the batch has to pad the others by quite a few tokens at the end.",
    "Short one here",
    "Numbers: 1, 2, 3, 4.",
]
HOOKS = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out",
         "blocks.1.attn.hook_pattern"]  # fmt: skip


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_unbatched(arch, side):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # architectures run through the generic adapter
        m = lmpeek.wrap(*tiny_hf_model(arch), name=arch)
    hooks = [h for h in HOOKS if h in m.bound.hook_names()]
    got = activations(m, TEXTS, hooks, batch_size=3, padding_side=side)
    assert len(got) == len(TEXTS)
    for text, acts in zip(TEXTS, got, strict=True):
        want = lmpeek.trace(m, text, keep=hooks).tensors
        assert acts.keys() == want.keys()
        for h in hooks:
            assert acts[h].shape == want[h].shape, (h, acts[h].shape, want[h].shape)
            scale = max(1.0, float(np.abs(want[h]).max()))
            np.testing.assert_allclose(
                acts[h], want[h], atol=1e-5 * scale, err_msg=f"{arch} {side} {h} {text!r}"
            )


def test_token_ids_and_bad_input():
    m = lmpeek.wrap(*tiny_hf_model("llama"), name="llama")
    ids = m.tokenizer(TEXTS[0])["input_ids"]
    [a] = activations(m, [ids], "blocks.0.hook_resid_post")
    assert a["blocks.0.hook_resid_post"].shape[0] == len(ids)
    with pytest.raises(InvalidInput):
        activations(m, TEXTS, ["blocks.99.nothing"])
    with pytest.raises(InvalidInput):
        activations(m, TEXTS, HOOKS[:1], padding_side="middle")


def test_the_public_name():
    import lmpeek.capture

    assert lmpeek.capture.activations is activations
