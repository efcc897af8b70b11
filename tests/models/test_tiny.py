"""Tiny random models are the same whoever builds them, and building one leaves torch's RNG alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from lmpeek.models.tiny import tiny_hf_model


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_concurrent_builds_give_the_same_weights():
    want = _weights(tiny_hf_model("llama")[0])
    with ThreadPoolExecutor(4) as pool:
        built = list(pool.map(lambda _: tiny_hf_model("llama")[0], range(4)))
    for model in built:
        torch.testing.assert_close(_weights(model), want, rtol=0, atol=0)


def test_building_leaves_the_callers_random_state():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    tiny_hf_model("gpt2")
    torch.testing.assert_close(torch.rand(3), expected)
