"""Prediction statistics against a float64 log_softmax reference."""

from __future__ import annotations

import math

import numpy as np
import torch

from lmpeek.capture.attention_kernel import attention_entropy
from lmpeek.capture.predictions import next_token_stats
from lmpeek.capture.summaries import norms


def _reference(logits, ids):
    logp = torch.log_softmax(logits.double(), -1)
    p = logp.exp()
    ent = -torch.where(p > 0, p * logp, 0.0).sum(-1)
    loss = -logp[torch.arange(len(ids) - 1), ids[1:]]
    return logp, ent, loss


def test_matches_float64_reference_on_a_large_vocab():
    torch.manual_seed(0)
    logits = torch.randn(300, 49152) * 6  # more rows than one chunk
    ids = torch.randint(0, 49152, (300,))
    got = next_token_stats(logits, ids.numpy(), k=7, chunk=128)
    logp, ent, loss = _reference(logits, ids)
    top = logp.topk(7, -1)
    assert np.array_equal(got.topk_ids, top.indices.numpy())
    np.testing.assert_allclose(got.topk_probs, top.values.exp().numpy(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(got.entropy, ent.numpy(), atol=2e-6)
    np.testing.assert_allclose(got.loss[:-1], loss.numpy(), atol=2e-5)
    np.testing.assert_allclose(got.true_prob[:-1], loss.neg().exp().numpy(), rtol=1e-5)
    assert math.isnan(got.loss[-1]) and math.isnan(got.true_prob[-1])


def test_masked_logits_and_one_hot():
    logits = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")], [50.0, -50.0, -50.0, -50.0]])
    got = next_token_stats(logits, [0, 0], k=2)
    np.testing.assert_allclose(got.entropy, [math.log(2), 0.0], atol=1e-6)
    np.testing.assert_allclose(got.topk_probs[0], [0.5, 0.5], atol=1e-7)
    assert got.loss[0] == np.float32(math.log(2))


def test_single_token_and_k_larger_than_vocab():
    got = next_token_stats(torch.zeros(1, 3), [1], k=10)
    assert got.topk_ids.shape == (1, 3) and math.isnan(got.loss[0])
    np.testing.assert_allclose(got.entropy, [math.log(3)], atol=1e-6)


def test_attention_entropy():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(attention_entropy(p).numpy(), [0.0, math.log(2), math.log(3)], atol=1e-6)


def test_norms():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert norms(x).tolist() == [5.0, 0.0]
    assert norms(x.half()).dtype == torch.float32  # float16 activations are summed in float32
