"""A model that really produces inf/NaN (tiny:llama-inf: an inf weight in layer 0's MLP) is reported,
never silently stored: a NonFiniteWarning names the first hook point, the Trace lists every place, its
JSON summary holds null instead, and Trace.save refuses it unless told to keep it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.capture.trace import NonFiniteValues, NonFiniteWarning, Trace

TEXT = "The capital of France is Paris."


@pytest.fixture(scope="module")
def model():
    return lmpeek.load("tiny:llama-inf")


@pytest.fixture(scope="module")
def bad(model):
    with pytest.warns(NonFiniteWarning) as caught:
        t = lmpeek.trace(model, TEXT, keep=["blocks.*.hook_resid_post", "blocks.1.attn.hook_pattern"])
    assert len(caught) == 1
    return t, str(caught[0].message), caught[0].filename


def test_the_warning_names_the_layer_and_hook_point(bad):
    t, message, filename = bad
    assert "tiny:llama-inf" in message and "first at blocks.0.hook_mlp_out (token 0)" in message
    assert filename == __file__  # attributed to the caller's line, not to lmpeek's internals
    assert t.nonfinite[0] == "blocks.0.hook_mlp_out"
    assert "blocks.0.hook_resid_pre" not in t.nonfinite and "blocks.0.hook_attn_out" not in t.nonfinite
    assert {"blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "logits"} <= set(t.nonfinite)
    # what it names is really where the values stop being finite
    assert not np.isfinite(t["blocks.0.hook_resid_post"]).all()


def test_a_healthy_model_reports_nothing():
    t = lmpeek.trace(lmpeek.load("tiny:llama"), TEXT)  # any warning would fail the test suite
    assert t.nonfinite == [] and t.summary()["nonfinite"] == []


def test_the_summary_is_strict_json(bad):
    t, _, _ = bad
    summary = t.summary()
    text = json.dumps(summary, allow_nan=False)  # raises on NaN or inf
    assert summary["nonfinite"] == t.nonfinite and "null" in text
    assert summary["norms"]["blocks.0.hook_mlp_out"][0] is None


def test_save_refuses_unless_told(tmp_path, bad):
    t, _, _ = bad
    with pytest.raises(NonFiniteValues, match=r"blocks\.0\.hook_mlp_out.*allow_nonfinite=True"):
        t.save(tmp_path / "t")
    assert not (tmp_path / "t").exists()  # nothing half-written
    t.save(tmp_path / "kept", allow_nonfinite=True)
    back = Trace.load(tmp_path / "kept")
    assert back.nonfinite == t.nonfinite
    got, want = back["blocks.0.hook_resid_post"], t["blocks.0.hook_resid_post"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-3)


def test_save_refuses_an_inf_in_a_kept_tensor_alone(tmp_path, bad):
    t, _, _ = bad
    clean = lmpeek.trace(lmpeek.load("tiny:llama"), TEXT, keep=["blocks.0.hook_resid_post"])
    clean.tensors["blocks.0.hook_resid_post"][1, 2] = np.inf  # summaries finite, one tensor not
    with pytest.raises(NonFiniteValues, match="blocks.0.hook_resid_post"):
        clean.save(tmp_path / "t")


def test_generate_warns_once_naming_where():
    m = lmpeek.load("tiny:llama-inf")
    with pytest.warns(NonFiniteWarning, match=r"while generating: first at blocks\.\d+\.hook_\w+") as got:
        steps = list(lmpeek.generate(m, "hello there", max_new_tokens=4, stop_at_eos=False))
    assert len(steps) == 4 and len([w for w in got if w.category is NonFiniteWarning]) == 1
    ok = lmpeek.load("tiny:llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(lmpeek.generate(ok, "hello there", max_new_tokens=4))
