"""The feature-source seam: load() dispatch and the registry, neurons, user functions, activations()
from one forward against independently captured float32 hook values, the reconstruction guard, and
one-line errors for bad folders."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek import features
from lmpeek.capture.tokens import tokenize
from lmpeek.errors import InvalidInput, LmpeekError, SourceNotFound
from lmpeek.features.sources import FeatureSource, FeatureSourceWarning, Kind
from tests.features.saes import D, assert_close, random_weights, ref_encode, v6_cfg, write_sae

TEXT = "The capital of France is Paris. Once upon a time there was a small model."


# --- neurons ----------------------------------------------------------------------------------------


def test_neurons_equal_the_traced_mlp_activations(llama):
    src = features.load("neurons:1", llama)
    assert isinstance(src, FeatureSource)
    assert (src.name, src.kind, src.hooks, src.n_features) == (
        "neurons:1",
        "neurons",
        ("blocks.1.mlp.hook_post",),
        128,
    )
    want = lmpeek.trace(llama, TEXT, keep=["blocks.1.mlp.hook_post"]).tensors["blocks.1.mlp.hook_post"]
    got = features.activations(llama, src, TEXT)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    # a spec works in place of a source, a column subset in the order asked
    np.testing.assert_array_equal(
        features.activations(llama, "neurons:1", TEXT, features=[5, 2]), got[:, [5, 2]]
    )
    assert features.load("neurons:-1", llama).layer == 1


@pytest.mark.parametrize("spec", ["neurons:2", "neurons:x", "neurons:-3"])
def test_neurons_bad_layer(llama, spec):
    with pytest.raises(InvalidInput):
        features.load(spec, llama)


def test_neurons_need_the_model():
    with pytest.raises(InvalidInput, match="needs the model"):
        features.load("neurons:0")


# --- SAEs against the model's own forward -------------------------------------------------------------


def test_sae_activations_equal_encode_of_the_captured_float32_values(tmp_path, llama):
    """activations(model, sae, text) = the reference formula on the hook values `lmpeek.trace` keeps
    (float32, captured in a forward of its own)."""
    rng = np.random.default_rng(7)
    w = random_weights(rng, D, 48)
    for arch, hook in [
        ("standard", "blocks.1.hook_resid_post"),
        ("jumprelu", "blocks.0.ln2.hook_normalized"),
    ]:
        if arch == "jumprelu":
            w["threshold"] = rng.uniform(0.0, 0.5, 48).astype(np.float32)
        src = features.load(write_sae(tmp_path / arch, v6_cfg(arch, D, 48, hook), w), llama, check=False)
        kept = lmpeek.trace(llama, TEXT, keep=[hook]).tensors[hook]
        assert kept.dtype == np.float32
        got = features.activations(llama, src, TEXT)
        assert_close(got, ref_encode(arch, kept, w), tol=1e-5, what=arch)
        assert_close(got, src.encode({hook: kept}).astype(np.float64), tol=1e-5, what=f"{arch} encode")


def test_transcoder_reads_mlp_input_and_checks_against_mlp_out(tmp_path, llama):
    rng = np.random.default_rng(8)
    w = random_weights(rng, D, 48)
    cfg = v6_cfg("transcoder", D, 48, "blocks.0.ln2.hook_normalized", d_out=D, apply_b_dec_to_input=False)
    src = features.load(write_sae(tmp_path / "tc", cfg, w), llama, check=False)
    assert src.hooks == ("blocks.0.ln2.hook_normalized",) and src.check_hooks[-1] == "blocks.0.hook_mlp_out"
    with pytest.warns(FeatureSourceWarning):  # random weights reconstruct nothing
        r = features.check_reconstruction(llama, src, texts=[TEXT])
    assert r.hook == "blocks.0.hook_mlp_out"
    # the FVU, computed here from the trace's tensors (first position left out)
    t = lmpeek.trace(llama, TEXT, keep=list(src.check_hooks)).tensors
    f = ref_encode("transcoder", t["blocks.0.ln2.hook_normalized"], w)
    y = f @ w["W_dec"].astype(np.float64) + w["b_dec"]
    x = t["blocks.0.hook_mlp_out"].astype(np.float64)
    x, y, f = x[1:], y[1:], f[1:]
    fvu = ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert r.fvu == pytest.approx(fvu, rel=1e-4)
    assert r.l0 == pytest.approx((f > 0).sum(1).mean(), abs=0.1)
    assert r.n_tokens == len(x)


# --- the reconstruction guard -------------------------------------------------------------------------


def _identity_sae(folder, hook):
    """W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x, a perfect (if useless) dictionary."""
    eye = np.eye(D, dtype=np.float32)
    w = {"W_enc": np.concatenate([eye, -eye], 1), "b_enc": np.zeros(2 * D, np.float32),
         "W_dec": np.concatenate([eye, -eye], 0), "b_dec": np.zeros(D, np.float32)}  # fmt: skip
    return write_sae(folder, v6_cfg("standard", D, 2 * D, hook), w)


def test_random_sae_warns_and_identity_like_sae_does_not(tmp_path, llama):
    hook = "blocks.1.hook_resid_post"
    rng = np.random.default_rng(9)
    bad = write_sae(tmp_path / "random", v6_cfg("standard", D, 256, hook), random_weights(rng, D, 256))
    with pytest.warns(FeatureSourceWarning, match="FVU") as caught:
        features.load(bad, llama)  # on load, with a model: the guard runs on the bundled samples
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    good = _identity_sae(tmp_path / "identity", hook)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureSourceWarning)
        src = features.load(good, llama)
        r = features.check_reconstruction(llama, src)
    assert r.ok and r.fvu < 1e-10
    assert r.l0 == pytest.approx(D, abs=0.5)  # each coordinate is on in exactly one of its two features
    assert 200 <= r.n_tokens <= features.CHECK_TOKENS
    with pytest.raises(InvalidInput, match="reconstructs nothing"):
        features.check_reconstruction(llama, features.load("neurons:0", llama))


def test_check_can_be_skipped(tmp_path, llama):
    folder = write_sae(tmp_path / "r", v6_cfg("standard", D, 32, "blocks.0.hook_resid_post"),
                       random_weights(np.random.default_rng(1), D, 32))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureSourceWarning)
        features.load(folder, llama, check=False)


# --- user functions ---------------------------------------------------------------------------------


def test_function_source(llama):
    def fn(text, indices):
        n = len(tokenize(llama.tokenizer, text, None).token_ids)
        return np.arange(n, dtype=np.float64)[:, None] * 10 + np.asarray(indices)[None, :]

    src = features.load(fn, n_features=5)
    assert (src.kind, src.hooks, src.n_features, src.name) == ("function", (), 5, "fn")
    got = features.activations(llama, src, TEXT, features=[4, 1])
    n = len(tokenize(llama.tokenizer, TEXT, None).token_ids)
    np.testing.assert_array_equal(got, np.arange(n)[:, None] * 10 + np.array([4, 1])[None, :])
    assert got.dtype == np.float32
    assert features.activations(llama, src, TEXT).shape == (n, 5)
    with pytest.raises(InvalidInput, match="reads text"):
        src.encode({})
    wrong = features.load(lambda text, idx: np.zeros((3, len(idx))), n_features=2, name="wrong")
    with pytest.raises(InvalidInput, match="tokens"):
        features.activations(llama, wrong, TEXT)
    with pytest.raises(InvalidInput, match="n_features"):
        features.load(fn)
    with pytest.raises(InvalidInput, match="feature index"):
        features.activations(llama, src, TEXT, features=[5])


# --- the registry ---------------------------------------------------------------------------------


def test_a_new_kind_is_one_registered_entry(llama, monkeypatch):
    monkeypatch.setattr(features.sources, "KINDS", list(features.sources.KINDS))
    module = type(sys)("lmpeek_test_const_source")

    class Const:
        kind, n_features, hooks = "const", 2, ("blocks.0.hook_resid_post",)
        name = "const"

        def encode(self, acts):
            return np.ones((len(acts[self.hooks[0]]), 2), np.float32)

    module.load = lambda spec, model, **options: Const()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    features.register(Kind("const", lambda s: s == "const", f"{module.__name__}:load", "'const'"))
    assert features.kind_for("const").name == "const"
    got = features.activations(llama, "const", TEXT)
    assert got.shape == (len(tokenize(llama.tokenizer, TEXT, None).token_ids), 2)


# --- bad specs and folders: one-line errors ---------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message, message
    return message


def test_bad_specs(tmp_path):
    with pytest.raises(InvalidInput) as err:
        features.load("nonsense")
    assert "neurons:3" in _one_line(err)
    with pytest.raises(SourceNotFound) as err:
        features.load(str(tmp_path / "missing" / "sae"))
    _one_line(err)
    with pytest.raises(SourceNotFound, match="no cfg.json") as err:
        features.load(tmp_path)
    _one_line(err)


def _good(tmp_path, name="s", **over):
    cfg = v6_cfg("jumprelu", D, 32, "blocks.0.hook_resid_post", **over)
    w = random_weights(np.random.default_rng(0), D, 32) | {"threshold": np.zeros(32, np.float32)}
    return write_sae(tmp_path / name, cfg, w), cfg, w


@pytest.mark.parametrize(
    "case",
    ["no weights", "bad json", "unknown architecture", "missing tensor", "shape vs cfg", "d_in vs model",
     "hook not in model", "corrupt weights", "bad normalize"],
)  # fmt: skip
def test_bad_folders(tmp_path, llama, case):
    folder, cfg, w = _good(tmp_path)
    expected: type[LmpeekError] = InvalidInput
    if case == "no weights":
        (folder / "sae_weights.safetensors").unlink()
        expected = SourceNotFound
    elif case == "bad json":
        (folder / "cfg.json").write_text("{not json")
    elif case == "unknown architecture":
        (folder / "cfg.json").write_text(json.dumps(dict(cfg, architecture="matching_pursuit")))
    elif case == "missing tensor":
        write_sae(folder, cfg, {k: v for k, v in w.items() if k != "threshold"})
    elif case == "shape vs cfg":
        write_sae(folder, dict(cfg, d_sae=33), w)
    elif case == "d_in vs model":
        w32 = random_weights(np.random.default_rng(0), 32, 32) | {"threshold": np.zeros(32, np.float32)}
        write_sae(folder, dict(cfg, d_in=32), w32)
    elif case == "hook not in model":
        write_sae(folder, dict(cfg, metadata=dict(cfg["metadata"], hook_name="blocks.7.hook_resid_post")), w)
    elif case == "corrupt weights":
        (folder / "sae_weights.safetensors").write_bytes(b"\x00" * 40)
    elif case == "bad normalize":
        (folder / "cfg.json").write_text(json.dumps(dict(cfg, normalize_activations="whiten")))
    with pytest.raises(expected) as err:
        features.load(folder, llama)
    message = _one_line(err)
    if case == "d_in vs model":
        assert "d_in=32" in message and "64" in message


def test_importing_features_leaves_torch_out():
    modules = "lmpeek.features, lmpeek.features.sources, lmpeek.features.points"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
