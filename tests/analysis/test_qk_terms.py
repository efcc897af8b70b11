"""qk_terms (the Attention tab's neuron view) against torch's softmax, also where a score is lost
(NaN or ±inf, as in a model that overflowed): never an exception, weights NaN where torch's are."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmpeek.analysis.attention_overview import qk_terms

RNG = np.random.default_rng(5)
D = 8


def torch_weights(scores: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=-1).numpy()


def test_finite_scores_are_a_softmax():
    q = RNG.normal(size=D)
    keys = RNG.normal(size=(6, D))
    t = qk_terms(q, keys, key=2, scale=0.5)
    np.testing.assert_allclose(t.scores, keys @ q * 0.5, rtol=1e-12)
    np.testing.assert_allclose(t.weights, torch_weights(keys @ q * 0.5), rtol=1e-12)
    assert t.score == pytest.approx(float(q @ keys[2]) * 0.5) and t.dot == pytest.approx(float(q @ keys[2]))


def test_sliding_window_masks_early_keys():
    q = RNG.normal(size=D)
    keys = RNG.normal(size=(6, D))
    t = qk_terms(q, keys, key=5, scale=1.0, window=2)
    assert np.isneginf(t.scores[:4]).all()
    np.testing.assert_array_equal(t.weights[:4], 0.0)
    np.testing.assert_allclose(t.weights, torch_weights(t.scores), rtol=1e-12)


@pytest.mark.parametrize(
    "lost",
    [
        "query",  # every score NaN: the case that raised (no finite score to take the max of)
        "one key",  # one key's score NaN among finite ones
        "inf key",  # one key's score +inf
    ],
)
def test_lost_scores_give_nan_weights_as_torch_does(lost):
    q = RNG.normal(size=D)
    keys = RNG.normal(size=(5, D))
    if lost == "query":
        q[0] = np.nan
    elif lost == "one key":
        keys[1, 3] = np.nan
    else:
        keys[1] = q * 1e308  # q·k overflows to +inf
    with np.errstate(over="ignore", invalid="ignore"):
        t = qk_terms(q, keys, key=1, scale=0.25)
        want = torch_weights(t.scores)
    assert not np.isfinite(t.scores[1]) and not np.isfinite(t.score)
    assert np.isnan(want).all()  # torch's softmax loses the whole row
    assert t.weights.shape == (5,) and np.isnan(t.weights).all()
    if lost == "one key":  # the other keys' scores are still there to read
        np.testing.assert_allclose(np.delete(t.scores, 1), np.delete(keys, 1, axis=0) @ q * 0.25)
