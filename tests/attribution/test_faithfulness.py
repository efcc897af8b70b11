"""Faithfulness curves and AOPC: a hand-computed toy, the random band against its exact expectation,
and tiny models against one-at-a-time forwards of the plain transformers model."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.faithfulness import (
    TokenTarget,
    curve_masks,
    evaluate,
    faithfulness,
    fraction_counts,
)
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import tiny_hf_model

torch.set_num_threads(1)

TEXT = "The capital of France is Paris. The capital"
ARCHS = ["llama", "gpt2", "gpt_neox"]


@pytest.fixture(scope="module", params=ARCHS)
def pair(request):
    """(lmpeek model, a fresh plain transformers model with the same weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load(f"tiny:{request.param}")
    plain, _ = tiny_hf_model(request.param)
    return model, plain


# ------------------------------------------------------------------------------------- toy, by hand

C = np.array([3.0, -1.0, 2.0, 0.5])


def toy(masks: np.ndarray) -> np.ndarray:
    """F = Σ c_i m_i + 2·m_0·m_1: a known function of which segments are present."""
    m = masks.astype(float)
    return m @ C + 2 * m[:, 0] * m[:, 1]


def test_hand_computed_curves_and_aopc():
    calls = []

    def score(masks):
        calls.append(masks.copy())
        return toy(masks)

    f = evaluate(score, np.array([0.1, 0.4, 0.3, 0.2]), random=0)
    # order by score: 1, 2, 3, 0
    assert f.order.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(f.deletion, [6.5, 5.5, 3.5, 3.0, 0.0])
    np.testing.assert_allclose(f.insertion, [0.0, -1.0, 1.0, 1.5, 6.5])
    assert f.k == (1, 1, 1, 2)  # ceil(.05·4), ceil(.1·4), ceil(.2·4), ceil(.5·4)
    np.testing.assert_allclose(f.comprehensiveness, [1, 1, 1, 3])
    np.testing.assert_allclose(f.sufficiency, [7.5, 7.5, 7.5, 5.5])
    assert f.aopc_comprehensiveness == pytest.approx(1.5)
    assert f.aopc_sufficiency == pytest.approx(7.0)
    assert f.deletion_auc == pytest.approx(15.25 / 4)
    assert f.insertion_auc == pytest.approx(4.75 / 4)
    assert (f.full, f.empty) == (6.5, 0.0)
    # one call, each distinct input once: 10 curve points, full and empty shared
    assert len(calls) == 1 and len(calls[0]) == 8 == f.sequences
    assert len({m.tobytes() for m in calls[0]}) == 8


def test_fraction_counts():
    assert fraction_counts(10, (0.05, 0.1, 0.2, 0.5)) == (1, 1, 2, 5)
    assert fraction_counts(20, (0.05, 0.1, 0.2, 0.5)) == (1, 2, 4, 10)
    assert fraction_counts(3, (0.5, 1.0)) == (2, 3)


def test_curve_masks():
    d, i = curve_masks(np.array([2, 0, 1]))
    assert d.tolist() == [[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert (i == ~d).all()


def test_random_band_contains_expectation():
    """Additive F: over random orders E[D_k] = Σc − (k/n)Σc and E[I_k] = (k/n)Σc exactly; the band
    (mean ± std over 64 orders) contains it, and its mean is the brute-force mean of those orders."""
    c = np.array([2.0, -1.0, 0.5, 3.0, 1.0, -0.5])
    n = len(c)
    f = evaluate(lambda m: m.astype(float) @ c, c, random=64, seed=3)
    k = np.arange(n + 1)
    exp_del, exp_ins = c.sum() * (1 - k / n), c.sum() * k / n
    b = f.random_deletion
    assert ((b.lo - 1e-12 <= exp_del) & (exp_del <= b.hi + 1e-12)).all()
    b = f.random_insertion
    assert ((b.lo - 1e-12 <= exp_ins) & (exp_ins <= b.hi + 1e-12)).all()
    # brute force over the orders it reports
    dels = [[c[o[j:]].sum() for j in k] for o in f.random_orders]
    np.testing.assert_allclose(f.random_deletion.mean, np.mean(dels, 0))
    np.testing.assert_allclose(f.random_deletion.std, np.std(dels, 0))
    r_comp = f.random_aopc_comprehensiveness
    assert r_comp.lo <= r_comp.mean <= r_comp.hi
    # the attribution ordered by the true contributions beats random orders
    assert f.aopc_comprehensiveness > r_comp.hi
    assert f.aopc_sufficiency < f.random_aopc_sufficiency.lo
    # seeded: the same orders again, others with another seed
    again = evaluate(lambda m: m.astype(float) @ c, c, random=64, seed=3)
    assert (again.random_orders == f.random_orders).all()
    assert not (
        evaluate(lambda m: m.astype(float) @ c, c, random=64, seed=4).random_orders == f.random_orders
    ).all()


# ------------------------------------------------------------------------------------- tiny models


def _plain_value(plain, ids: list[int], row: int, token: int, kind: str = "logprob") -> float:
    with torch.no_grad():
        logits = plain(input_ids=torch.tensor([ids])).logits[0, row].double()
    if kind == "logit":
        return float(logits[token])
    lp = float(torch.log_softmax(logits, -1)[token])
    return lp if kind == "logprob" else float(np.exp(lp))


@pytest.mark.parametrize("baseline", ["pad", "remove"])
def test_curves_equal_plain_forwards_one_at_a_time(pair, baseline):
    model, plain = pair
    ids = model.tokenizer(TEXT)["input_ids"]
    T = len(ids)
    # segments: pairs of tokens, leaving the first and the last token outside (always kept)
    segments = [list(range(a, min(a + 2, T - 1))) for a in range(1, T - 1, 2)]
    n = len(segments)
    scores = np.random.default_rng(0).normal(size=n)
    target_id = 7
    f = faithfulness(model, ids, scores, segments, target=target_id, baseline=baseline, random=2, seed=1)
    pad = model.tokenizer.eos_token_id  # the tiny tokenizer has no pad token
    assert f.baseline_id == (None if baseline == "remove" else pad)

    def value(present: set[int]) -> float:
        absent = {i for s, seg in enumerate(segments) if s not in present for i in seg}
        if baseline == "remove":
            seq = [t for i, t in enumerate(ids) if i not in absent]
        else:
            seq = [pad if i in absent else t for i, t in enumerate(ids)]
        return _plain_value(plain, seq, len(seq) - 1, target_id)

    order = np.argsort(-scores, kind="stable").tolist()
    want_del = [value(set(order[k:])) for k in range(n + 1)]
    want_ins = [value(set(order[:k])) for k in range(n + 1)]
    np.testing.assert_allclose(f.deletion, want_del, atol=1e-5)
    np.testing.assert_allclose(f.insertion, want_ins, atol=1e-5)
    ro = f.random_orders[1].tolist()
    np.testing.assert_allclose(
        [f.random_deletion.mean[k] * 2 - value(set(f.random_orders[0][k:].tolist())) for k in range(n + 1)],
        [value(set(ro[k:])) for k in range(n + 1)],
        atol=1e-5,
    )
    # batched (one forward here) equals one input per forward
    one = faithfulness(model, ids, scores, segments, target=target_id, baseline=baseline, random=2, seed=1,
                       batch_size=1)  # fmt: skip
    np.testing.assert_allclose(one.deletion, f.deletion, atol=1e-5)
    np.testing.assert_allclose(one.insertion, f.insertion, atol=1e-5)
    np.testing.assert_allclose(one.random_insertion.mean, f.random_insertion.mean, atol=1e-5)
    assert f.forwards == 1 and one.forwards == one.sequences == f.sequences


def test_span_target_kinds_and_default(pair):
    model, plain = pair
    ids = model.tokenizer(TEXT)["input_ids"]
    T = len(ids)
    segments = [[i] for i in range(T - 3)]  # the last three tokens are the "answer"
    scores = np.arange(len(segments), dtype=float)
    for kind in ("logprob", "prob", "logit"):
        # the answer's tokens T-3..T-1, predicted by rows T-4..T-2, summed
        target = TokenTarget((T - 4, T - 3, T - 2), tuple(ids[T - 3 :]), kind)
        f = faithfulness(model, ids, scores, segments, target=target, random=0)
        order = np.argsort(-scores, kind="stable").tolist()
        for k in (0, 2, len(segments)):
            absent = set(order[:k])
            seq = [0 if i in absent else t for i, t in enumerate(ids)]
            want = sum(_plain_value(plain, seq, r, ids[r + 1], kind) for r in (T - 4, T - 3, T - 2))
            assert f.deletion[k] == pytest.approx(want, abs=1e-5)
    # default target: the model's own next token, as a log-prob; one extra forward to find it
    f = faithfulness(model, ids, scores, segments, random=0)
    with torch.no_grad():
        nxt = int(plain(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    assert f.full == pytest.approx(_plain_value(plain, ids, T - 1, nxt), abs=1e-5)
    assert f.forwards == 2
    # a callable target sees full logits [B, T, V]
    g = faithfulness(model, ids, scores, segments, target=lambda lg: lg[:, -1, nxt], random=0)
    assert g.full == pytest.approx(_plain_value(plain, ids, T - 1, nxt, "logit"), abs=1e-5)


def test_bad_input(pair):
    model, _ = pair
    ids = model.tokenizer(TEXT)["input_ids"]
    with pytest.raises(InvalidInput, match="scores for"):
        faithfulness(model, ids, [1.0, 2.0], [[0], [1], [2]])
    with pytest.raises(InvalidInput, match="overlap"):
        faithfulness(model, ids, [1.0, 2.0], [[0, 1], [1]])
    with pytest.raises(InvalidInput, match="baseline"):
        faithfulness(model, ids, [1.0], [[0]], baseline="mask")
    with pytest.raises(InvalidInput, match="no token before"):
        faithfulness(model, ids, [1.0], [list(range(len(ids)))], baseline="remove")
    with pytest.raises(InvalidInput, match="kind"):
        TokenTarget((1,), (2,), "entropy")


@dataclass(frozen=True)
class _AttrTarget:
    """The shape of attribution.targets.Target: score names, a contrast token, a continuation."""

    score: str
    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    contrast_id: int | None
    span_ids: tuple[int, ...] = ()


def test_attribution_target_contrast_and_span(pair):
    model, plain = pair
    prompt = model.tokenizer(TEXT)["input_ids"]
    n = len(prompt)
    segments = [[i] for i in range(n)]
    scores = -np.arange(n, dtype=float)  # order: 0, 1, 2, ...
    order = list(range(n))
    # contrast: log p(7) − log p(9) at the last prompt position
    f = faithfulness(
        model, prompt, scores, segments, target=_AttrTarget("log_prob", (n - 1,), (7,), 9), random=0
    )
    assert "vs" in f.target
    for k in (0, 3):
        seq = [0 if i in order[:k] else t for i, t in enumerate(prompt)]
        want = _plain_value(plain, seq, n - 1, 7) - _plain_value(plain, seq, n - 1, 9)
        assert f.deletion[k] == pytest.approx(want, abs=1e-5)
    # a teacher-forced span after the prompt: appended, never perturbed, its rows summed
    span = (5, 11, 13)
    t = _AttrTarget("prob", (n - 1, n, n + 1), span, None, span)
    f = faithfulness(model, prompt, scores, segments, target=t, random=0)
    for k in (0, 2, n):
        seq = [0 if i in order[:k] else tok for i, tok in enumerate(prompt)] + list(span)
        want = sum(_plain_value(plain, seq, n - 1 + j, span[j], "prob") for j in range(3))
        assert f.deletion[k] == pytest.approx(want, abs=1e-6)


def test_with_attribution_targets_module(pair):
    """The other half of issue 13's targets (attribution/targets.py), when it is there."""
    targets = pytest.importorskip("lmpeek.attribution.targets")
    model, plain = pair
    prompt = model.tokenizer(TEXT)["input_ids"]
    n = len(prompt)
    try:
        t = targets.resolve(model.tokenizer, prompt, 3, span=" Paris")
    except TypeError:
        pytest.skip("attribution.targets.resolve has another signature now")
    f = faithfulness(model, prompt, np.ones(n), [[i] for i in range(n)], target=t, random=0)
    seq = prompt + list(t.span_ids)
    want = sum(_plain_value(plain, seq, p, tid) for p, tid in zip(t.positions, t.token_ids, strict=True))
    assert f.full == pytest.approx(want, abs=1e-5)
