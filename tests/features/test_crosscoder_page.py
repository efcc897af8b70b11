"""The crosscoder page's pure functions (features.crosscoder: norm_histogram, class_table, page_summary,
contributions) against independent float64 numpy written here from the formulas in
shared/anchors/features.md B5, on tiny random crosscoders in both layouts."""

from __future__ import annotations

import numpy as np
import pytest

from lmpeek import features
from lmpeek.errors import InvalidInput
from lmpeek.features.crosscoder import (
    CLASSES,
    class_table,
    contributions,
    norm_histogram,
    page_summary,
)
from tests.features.saes import D
from tests.features.test_crosscoder import (
    NORMS,
    WANT_CLASS,
    WANT_REL,
    _acts,
    _constructed_decoder,
    _inputs,
    between_values,
    dl_tensors,
    kissane_cfg,
    kissane_tensors,
    ref_dl,
    ref_kissane,
    write,
)


def test_norm_histogram_counts_each_value_once():
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.uniform(0, 1, 997), [0.0, 1.0, 0.5, 0.05, np.nan, np.nan]]).astype(np.float32)
    h = norm_histogram(r, bins=20)
    assert h["edges"] == pytest.approx(np.linspace(0, 1, 21).tolist())
    want = np.zeros(20, int)
    for v in r.astype(np.float64):
        if np.isfinite(v):
            want[min(int(v * 20), 19)] += 1  # [k/20, (k+1)/20), the last bin closed at 1
    assert h["counts"] == want.tolist() and sum(h["counts"]) == 1001  # the two NaN (dead) left out
    assert norm_histogram([], bins=4)["counts"] == [0, 0, 0, 0]


def test_class_table_with_its_thresholds():
    rel = np.array([0.0, 0.099, 0.1, 0.4, 0.5, 0.6, 0.61, 0.9, 0.901, 1.0, np.nan])  # float64: exact edges
    table, class_of = class_table(rel)
    names = [CLASSES[i] for i in class_of]
    assert names == ["base-only", "base-only", "other", "shared", "shared", "shared", "other", "other",
                     "chat-only", "chat-only", "dead"]  # fmt: skip
    assert [(c["name"], c["count"]) for c in table] == [
        ("base-only", 2), ("shared", 3), ("chat-only", 2), ("other", 3), ("dead", 1)
    ]  # fmt: skip
    assert (table[0]["lo"], table[0]["hi"]) == (0.0, 0.1) and (table[1]["lo"], table[1]["hi"]) == (0.4, 0.6)
    assert (table[2]["lo"], table[2]["hi"]) == (0.9, 1.0) and table[4]["lo"] is None
    # other thresholds move features between classes and are reported
    table, class_of = class_table(rel, base_only=0.05, chat_only=0.95, shared=(0.3, 0.7))
    assert [c["count"] for c in table] == [1, 4, 1, 4, 1] and table[1]["lo"] == 0.3
    with pytest.raises(InvalidInput):
        class_table(rel, base_only=0.5, shared=(0.4, 0.6))


@pytest.mark.parametrize("layout", ["dictionary_learning", "kissane"])
def test_page_summary_on_a_constructed_dictionary(tmp_path, layout):
    dec = _constructed_decoder()
    n = len(NORMS)
    if layout == "dictionary_learning":
        t = dl_tensors(seed=0, n_features=n)
        t["decoder.weight"] = dec
        src = features.load(write(tmp_path / layout, {"model.safetensors": t}), layer=1)
    else:
        t = kissane_tensors(seed=0, n_features=n)
        t["W_dec"] = np.ascontiguousarray(dec.transpose(1, 0, 2))
        folder = write(tmp_path / layout, {"cc_weights.pt": t, "cfg.json": kissane_cfg(n_features=n)})
        src = features.load(folder, scaling_factors=(1.0, 1.0))
    page = page_summary(src)
    np.testing.assert_allclose(page["relative_norm"], WANT_REL, atol=1e-6)
    np.testing.assert_allclose(page["decoder_norms"]["base"], [a for a, _ in NORMS], atol=1e-6)
    np.testing.assert_allclose(page["decoder_norms"]["chat"], [b for _, b in NORMS], atol=1e-6)
    assert [CLASSES[i] for i in page["class_of"]] == WANT_CLASS
    counts = {c["name"]: c["count"] for c in page["classes"]}
    assert counts == {"base-only": 2, "shared": 1, "chat-only": 2, "other": 2, "dead": 1}
    # bins of 0.05 over the values (0.35 and 0.95 lie on edges: which side is float32 noise)
    want = np.zeros(20, int)
    for v in np.asarray(page["relative_norm"], np.float64):
        if np.isfinite(v):  # the dead one is not counted
            want[min(int(v * 20), 19)] += 1
    assert want[[0, 1, 10, 19]].tolist() == [1, 1, 1, 2 - int(want[18])]
    assert page["histogram"]["counts"] == want.tolist()
    assert (page["n_features"], page["d_model"], page["hook"]) == (n, D, "blocks.1.hook_resid_post")
    assert page["layout"] == layout


def _ref_parts(x: np.ndarray, w_enc: np.ndarray, shift, mult, idx):
    """x [2, T, d] raw values -> each model's contribution [2, K, T] in float64."""
    xn = (x.astype(np.float64) - np.asarray(shift, np.float64)[:, None]) * np.asarray(mult, np.float64)[
        :, None
    ]
    w = w_enc.astype(np.float64)[:, :, idx]  # [2, d, K]
    return np.stack([xn[m] @ w[m] for m in (0, 1)]).transpose(0, 2, 1)


def test_contributions_dictionary_learning_against_float64(tmp_path):
    t = dl_tensors(seed=5)
    xb, xc = _inputs(t, seed=3)
    threshold = between_values(ref_dl(xb, xc, t), 0.3)
    t["threshold"] = np.array(threshold, np.float32)
    src = features.load(write(tmp_path / "cc", {"model.safetensors": t}), layer=1)
    idx = [3, 0, 41, 79, 3]
    got = contributions(src, _acts(xb, xc), idx)

    # keep_relative_variance: x'_l = (x_l - μ_l) · target_rms / sqrt(Σ σ²_l + 1e-8)
    sd = t["activation_std"].astype(np.float64)
    s = float(t["target_rms"]) / np.sqrt((sd**2).sum(-1) + 1e-8)
    mult = np.repeat(s[:, None], D, 1)
    parts = _ref_parts(np.stack([xb, xc]), t["encoder.weight"], t["activation_mean"], mult, idx)
    np.testing.assert_allclose(got["base"], parts[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["chat"], parts[1], rtol=1e-6, atol=1e-6)
    bias = t["encoder.bias"].astype(np.float64)[idx]
    np.testing.assert_allclose(got["bias"], bias, rtol=1e-7)
    dec = t["decoder.weight"].astype(np.float64)
    code = np.sqrt((dec**2).sum(-1)).sum(0)[idx]
    np.testing.assert_allclose(got["code"], code, rtol=1e-6)
    assert got["threshold"] == pytest.approx(threshold)
    # the activation is relu(base + chat + bias), cut by the threshold on f·c, times c: what encode shows
    f = np.maximum(parts[0] + parts[1] + bias[:, None], 0)
    want = np.where(f * code[:, None] > threshold, f, 0) * code[:, None]
    np.testing.assert_allclose(got["activation"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["activation"], ref_dl(xb, xc, t, threshold=threshold)[:, idx].T, atol=1e-5)
    assert 0 < (want > 0).mean() < 1 and (parts < 0).any() and (parts > 0).any()
    # each model's raw hook-value norm
    np.testing.assert_allclose(got["norms"]["base"], np.linalg.norm(xb.astype(np.float64), axis=1), rtol=1e-9)
    np.testing.assert_allclose(got["norms"]["chat"], np.linalg.norm(xc.astype(np.float64), axis=1), rtol=1e-9)
    # no features: tokens' norms only
    none = contributions(src, _acts(xb, xc), [])
    assert none["activation"].shape == none["base"].shape == (0, len(xb)) and len(
        none["norms"]["base"]
    ) == len(xb)


def test_contributions_kissane_with_scaling_factors(tmp_path):
    t = kissane_tensors(seed=6)
    folder = write(tmp_path / "k", {"cc_weights.pt": t, "cfg.json": kissane_cfg()})
    factors = (0.5, 2.0)
    src = features.load(folder, scaling_factors=factors)
    xb, xc = _inputs(seed=4)
    idx = list(range(0, 80, 7))
    got = contributions(src, _acts(xb, xc), idx)
    mult = np.array([[factors[0]] * D, [factors[1]] * D])
    parts = _ref_parts(np.stack([xb, xc]), t["W_enc"], np.zeros((2, D)), mult, idx)
    np.testing.assert_allclose(got["base"], parts[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["chat"], parts[1], rtol=1e-6, atol=1e-6)
    assert got["code"].tolist() == [1.0] * len(idx) and got["threshold"] is None  # raw activations
    want = np.maximum(parts[0] + parts[1] + t["b_enc"].astype(np.float64)[idx, None], 0)
    np.testing.assert_allclose(got["activation"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["activation"], ref_kissane(xb, xc, t, factors)[:, idx].T, atol=1e-5)
