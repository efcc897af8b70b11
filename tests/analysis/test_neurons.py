"""MLP neuron helpers against a sort written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmpeek.analysis.neurons import neuron_over_text, top_neurons

RNG = np.random.default_rng(2)


def _top_loop(row, k):
    order = sorted(range(len(row)), key=lambda i: (-abs(row[i]), i))[:k]
    return order, [row[i] for i in order]


def test_top_neurons_small_case_with_a_tie():
    acts = np.array([[0.1, -3.0, 2.0, 3.0], [1.0, 0.0, 0.0, 0.0]])
    idx, vals = top_neurons(acts, 0, k=3)
    assert idx.tolist() == [1, 3, 2] and vals.tolist() == [-3.0, 3.0, 2.0]  # tie: lower index first
    assert idx.dtype == np.int64


@pytest.mark.parametrize("k", [1, 10, 64])
def test_top_neurons_against_a_loop(k):
    acts = np.round(RNG.normal(size=(9, 64)), 1)  # rounding makes ties in |value|
    for t in range(acts.shape[0]):
        idx, vals = top_neurons(acts, t, k=k)
        want_idx, want_vals = _top_loop(list(acts[t]), k)
        assert idx.tolist() == want_idx and vals.tolist() == want_vals


def test_top_neurons_edge_cases():
    acts = np.zeros((2, 5))
    idx, vals = top_neurons(acts, 1, k=3)  # all zero: index order
    assert idx.tolist() == [0, 1, 2] and vals.tolist() == [0, 0, 0]
    neg = -np.arange(1.0, 6.0)[None]
    assert top_neurons(neg, 0, k=2)[0].tolist() == [4, 3]  # all negative: by |value|
    idx, vals = top_neurons(np.arange(4.0)[None], 0, k=99)  # k is capped at M
    assert idx.tolist() == [3, 2, 1, 0]
    assert top_neurons(neg, 0, k=0)[0].size == 0
    half = torch.tensor([[0.5, -2.0, 1.0]], dtype=torch.float16)
    idx, vals = top_neurons(half, 0, k=2)
    assert idx.tolist() == [1, 2] and vals.tolist() == [-2.0, 1.0] and vals.dtype == np.float16
    with pytest.raises(ValueError, match="token 2 is out of range"):
        top_neurons(acts, 2)
    with pytest.raises(ValueError, match="out of range"):
        top_neurons(acts, -1)
    with pytest.raises(ValueError, match="k must be"):
        top_neurons(acts, 0, k=-1)
    with pytest.raises(ValueError, match=r"\[T, M\]"):
        top_neurons(np.ones(3), 0)


def test_neuron_over_text():
    acts = RNG.normal(size=(6, 7))
    for i in range(7):
        assert neuron_over_text(acts, i).tolist() == [row[i] for row in acts]
    out = neuron_over_text(acts, 2)
    out[0] = 99.0
    assert acts[0, 2] != 99.0  # a copy: callers may scale it in place
    for bad in (7, -1):
        with pytest.raises(ValueError, match="neuron .* is out of range 0..6"):
            neuron_over_text(acts, bad)
