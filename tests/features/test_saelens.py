"""SAELens folders: every architecture's encode (and decode) equals the reference formula to 1e-6; old
and new cfg layouts read the same; normalisation modes; hook_z; TransformerLens name and centring."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek import features
from lmpeek.errors import InvalidInput
from lmpeek.features.saelens import read_config
from lmpeek.features.sources import FeatureSourceWarning
from tests.features.saes import (
    D,
    assert_close,
    f32,
    random_weights,
    ref_decode,
    ref_encode,
    ref_norm_in,
    ref_pre,
    v6_cfg,
    write_sae,
)

HOOK = "blocks.1.hook_resid_post"
MLP_IN = "blocks.1.ln2.hook_normalized"
MLP_OUT = "blocks.1.hook_mlp_out"
T, F = 24, 96


def _x(seed: int = 1, t: int = T, d: int = D) -> np.ndarray:
    return f32(np.random.default_rng(seed), t, d)


def _dictionary(arch: str, seed: int = 0, **over) -> tuple[dict, dict]:
    """(cfg, tensors) of a tiny random `arch` dictionary reading HOOK (transcoders: MLP_IN -> MLP_OUT)."""
    rng = np.random.default_rng(seed)
    w = random_weights(rng, D, F)
    if arch == "gated":
        del w["b_enc"]
        w.update(b_gate=f32(rng, F, scale=0.3), r_mag=f32(rng, F, scale=0.3), b_mag=f32(rng, F, scale=0.3))
    if arch in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        # thresholds where pre-activations are, so that some positive z are cut; a few negative ones
        # (clamped at 0 by SAELens 6.49's relu(threshold))
        w["threshold"] = rng.uniform(-0.2, 1.0, F).astype(np.float32)
    if arch in ("skip_transcoder", "jumprelu_skip_transcoder"):
        w["W_skip"] = f32(rng, D, D, scale=D**-0.5)
    if "transcoder" in arch:
        cfg = v6_cfg(arch, D, F, MLP_IN, d_out=D, metadata={"hook_name_out": MLP_OUT})
        cfg["apply_b_dec_to_input"] = False
    else:
        cfg = v6_cfg(arch, D, F, HOOK)
    if arch == "topk":
        cfg["k"] = 7
    cfg.update(over)
    return cfg, w


ARCHS = ["standard", "jumprelu", "topk", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder",
         "jumprelu_skip_transcoder"]  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_and_decode_equal_the_reference(arch, tmp_path):
    cfg, w = _dictionary(arch)
    src = features.load(write_sae(tmp_path / arch, cfg, w))
    x = _x()
    hook = src.hooks[0]
    assert hook == (MLP_IN if "transcoder" in arch else HOOK)
    want = ref_encode(arch, x, w, k=cfg.get("k"))
    got = src.encode({hook: x})
    assert_close(got, want, what=f"{arch} encode")
    assert src.n_features == F and got.shape == (T, F)
    # the test data reach the formula's branches: some features off, and the threshold cuts positive z
    assert 0 < (want > 0).mean() < 1
    if arch.startswith("jumprelu"):
        z = ref_pre(x, w, apply_b_dec=False)[0] @ w["W_enc"].astype(np.float64) + w["b_enc"]
        assert ((z > 0) & (want == 0)).sum() > 10
    # decode / reconstruct: the target is the input (SAEs) or the output point (transcoders)
    acts = {hook: x, MLP_OUT: _x(seed=2)}
    target, recon, feats = src.reconstruct(acts)
    assert_close(feats, want, what=f"{arch} reconstruct features")
    assert_close(recon, ref_decode(want, w, x), what=f"{arch} decode")
    assert_close(target, (acts[MLP_OUT] if "transcoder" in arch else x).astype(np.float64), what="target")
    assert_close(src.decode(got, acts), ref_decode(want, w, x), what=f"{arch} decode()")


def test_topk_rescaled_by_decoder_norm(tmp_path):
    cfg, w = _dictionary("topk", rescale_acts_by_decoder_norm=True)
    src = features.load(write_sae(tmp_path / "s", cfg, w))
    x = _x()
    want = ref_encode("topk", x, w, k=7, rescale=True)
    assert not np.array_equal(want > 0, ref_encode("topk", x, w, k=7) > 0)  # the rescale changes the choice
    assert_close(src.encode({HOOK: x}), want)
    assert ((want > 0).sum(1) <= 7).all()
    assert_close(src.decode(want.astype(np.float32)), ref_decode(want, w, rescale=True))


def test_jumprelu_legacy_log_threshold(tmp_path):
    cfg, w = _dictionary("jumprelu")
    w["threshold"] = np.abs(w["threshold"]) + 0.05
    legacy = {k: v for k, v in w.items() if k != "threshold"} | {"log_threshold": np.log(w["threshold"])}
    a = features.load(write_sae(tmp_path / "new", cfg, w))
    b = features.load(write_sae(tmp_path / "old", cfg, legacy))
    x = _x()
    assert_close(b.encode({HOOK: x}), ref_encode("jumprelu", x, w), tol=1e-6)
    np.testing.assert_allclose(b.encode({HOOK: x}), a.encode({HOOK: x}), atol=1e-6)


def test_batchtopk_saved_as_jumprelu_and_as_a_training_checkpoint(tmp_path):
    """SAELens saves BatchTopK for inference as jumprelu with one threshold for all features (decoder
    norms folded in); a training checkpoint keeps the scalar topk_threshold and rescales by the
    decoder norm (the training config's default)."""
    cfg, w = _dictionary("standard")
    theta = np.float32(0.6)
    saved = dict(w, threshold=np.full(F, theta, np.float32))
    a = features.load(write_sae(tmp_path / "inference", dict(cfg, architecture="jumprelu"), saved))
    x = _x()
    assert_close(a.encode({HOOK: x}), ref_encode("jumprelu", x, saved))
    ckpt = dict(w, topk_threshold=np.array(theta, np.float32))
    b = features.load(write_sae(tmp_path / "ckpt", dict(cfg, architecture="batchtopk", k=4.0), ckpt))
    want = ref_encode("batchtopk", x, saved, rescale=True)
    assert_close(b.encode({HOOK: x}), want)
    assert_close(b.decode(want.astype(np.float32)), ref_decode(want, saved, rescale=True))


def test_apply_b_dec_to_input_off(tmp_path):
    cfg, w = _dictionary("standard", apply_b_dec_to_input=False)
    src = features.load(write_sae(tmp_path / "s", cfg, w))
    x = _x()
    assert_close(src.encode({HOOK: x}), ref_encode("standard", x, w, apply_b_dec=False))
    assert not np.allclose(src.encode({HOOK: x}), ref_encode("standard", x, w), atol=1e-3)


def test_torch_input_equals_numpy_input(tmp_path):
    cfg, w = _dictionary("topk")
    src = features.load(write_sae(tmp_path / "s", cfg, w))
    x = _x()
    np.testing.assert_array_equal(src.encode({HOOK: torch.from_numpy(x)}), src.encode({HOOK: x}))
    assert isinstance(src.encode_torch({HOOK: x}), torch.Tensor)


# --- cfg layouts ----------------------------------------------------------------------------------


def _old_cfg(arch_fields: dict, hook: str = HOOK) -> dict:
    """A flat pre-6.0 cfg.json (SAELens 3-5: hook_point, activation_fn_str, bool normalize_activations)."""
    return {
        "model_name": "tiny",
        "hook_point": hook,
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "context_size": 128,
        "dataset_path": "x",
        "apply_b_dec_to_input": True,
        "sae_lens_training_version": "3.13.0",
        "prepend_bos": True,
        **arch_fields,
    }


@pytest.mark.parametrize(
    ("old_fields", "new_fields"),
    [
        ({"activation_fn_str": "relu"}, {"architecture": "standard"}),
        ({"activation_fn_str": "relu", "normalize_activations": False}, {"architecture": "standard"}),
        ({"activation_fn": "topk", "activation_fn_kwargs": {"k": 7}}, {"architecture": "topk", "k": 7}),
        ({"architecture": "jumprelu"}, {"architecture": "jumprelu"}),
        ({"activation_fn_str": "relu", "normalize_activations": "constant_norm_rescale"},
         {"architecture": "standard", "normalize_activations": "constant_norm_rescale"}),
    ],
)  # fmt: skip
def test_old_and_new_cfg_layouts_give_the_same_source(tmp_path, old_fields, new_fields):
    arch = new_fields["architecture"]
    new_cfg, w = _dictionary(arch)
    new_cfg.update(new_fields)
    old = features.load(write_sae(tmp_path / "old", _old_cfg(old_fields), w))
    new = features.load(write_sae(tmp_path / "new", new_cfg, w))
    assert old.cfg == new.cfg  # every field that changes what encode computes
    assert old.hooks == new.hooks == (HOOK,)
    x = _x()
    np.testing.assert_array_equal(old.encode({HOOK: x}), new.encode({HOOK: x}))


def test_old_cfg_defaults():
    old = read_config(_old_cfg({}, hook="blocks.0.attn.hook_z"))
    assert (old.architecture, old.reshape_activations, old.normalize_activations) == (
        "standard",
        "hook_z",
        "none",
    )
    assert (
        read_config(_old_cfg({"normalize_activations": True})).normalize_activations
        == "expected_average_only_in"
    )
    with pytest.raises(InvalidInput, match="tanh-relu"):
        read_config(_old_cfg({"activation_fn_str": "tanh-relu"}))


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_run_time_normalisation(tmp_path, mode):
    cfg, w = _dictionary("standard", normalize_activations=mode)
    src = features.load(write_sae(tmp_path / mode, cfg, w))
    x = _x() * 7.0  # away from unit scale, so that the normalisation matters
    want = ref_encode("standard", x, w, norm=mode)
    assert_close(src.encode({HOOK: x}), want, what=mode)
    assert not np.allclose(want, ref_encode("standard", x, w), atol=1e-2)
    state = ref_norm_in(x.astype(np.float64), mode)[1]
    assert_close(
        src.reconstruct({HOOK: x})[1], ref_decode(want, w, norm=mode, state=state), what=f"{mode} decode"
    )
    with pytest.raises(InvalidInput, match="needs the activations"):
        src.decode(want.astype(np.float32))


def test_expected_average_only_in(tmp_path):
    """Trained on s·x: with s known (argument or activation_scaler.json) encode(x) = standard(s·x)
    and the reconstruction is back in x's units; unknown s is a warning, not silence."""
    s = 0.37
    cfg, w = _dictionary("standard", normalize_activations="expected_average_only_in")
    x = _x()
    want = ref_encode("standard", x * s, w)
    by_arg = features.load(write_sae(tmp_path / "a", cfg, w), scaling_factor=s)
    assert_close(by_arg.encode({HOOK: x}), want)
    assert_close(by_arg.decode(want.astype(np.float32)), ref_decode(want, w) / s)
    by_file = features.load(
        write_sae(tmp_path / "b", cfg, w, **{"activation_scaler.json": {"scaling_factor": s}})
    )
    assert_close(by_file.encode({HOOK: x}), want)
    with pytest.warns(FeatureSourceWarning, match="scaling factor"):
        unknown = features.load(write_sae(tmp_path / "c", cfg, w))
    assert_close(unknown.encode({HOOK: x}), ref_encode("standard", x, w))
    with pytest.raises(InvalidInput, match="scaling_factor"):
        features.load(write_sae(tmp_path / "d", dict(cfg, normalize_activations="none"), w), scaling_factor=s)


# --- hook points ----------------------------------------------------------------------------------


def test_hook_z_reshape_and_head_index(tmp_path, llama):
    rng = np.random.default_rng(3)
    z = f32(rng, T, 4, 16)  # [T, H, d_head] as lmpeek's attn.hook_z
    w = random_weights(rng, D, F)
    cfg = v6_cfg("standard", D, F, "blocks.0.attn.hook_z", reshape_activations="hook_z")
    flat = features.load(write_sae(tmp_path / "z", cfg, w), llama, check=False)
    assert flat.hooks == ("blocks.0.attn.hook_z",)
    assert_close(flat.encode({flat.hooks[0]: z}), ref_encode("standard", z.reshape(T, D), w))
    w16 = random_weights(rng, 16, F)
    cfg = v6_cfg("standard", 16, F, "blocks.0.attn.hook_z", metadata={"hook_head_index": 2})
    head = features.load(write_sae(tmp_path / "h", cfg, w16), llama, check=False)
    assert_close(head.encode({head.hooks[0]: z}), ref_encode("standard", z[:, 2], w16))
    # against the model: the per-head hook captured in the same forward
    text = "The capital of France is Paris."
    kept = lmpeek.trace(llama, text, keep=["blocks.0.attn.hook_z"]).tensors["blocks.0.attn.hook_z"]
    got = features.activations(llama, flat, text)
    assert_close(got, ref_encode("standard", kept.reshape(len(kept), D), w), tol=1e-5)
    # a per-head hook read without reshape or head index is refused
    with pytest.raises(InvalidInput, match="hook_z"):
        features.load(write_sae(tmp_path / "bad", v6_cfg("standard", D, F, "blocks.0.attn.hook_z"), w), llama)


def test_transformer_lens_aliases(tmp_path, llama, neox):
    rng = np.random.default_rng(4)
    w = random_weights(rng, D, F)
    folder = write_sae(tmp_path / "in", v6_cfg("standard", D, F, "blocks.1.hook_mlp_in"), w)
    assert features.load(folder, llama, check=False).hooks == ("blocks.1.hook_resid_mid",)
    # a parallel block's MLP reads the block's input
    assert features.load(folder, neox, check=False).hooks == ("blocks.1.hook_resid_pre",)
    tc = v6_cfg("transcoder", D, F, "blocks.0.hook_mlp_in", d_out=D, apply_b_dec_to_input=False)
    src = features.load(write_sae(tmp_path / "tc", tc, w), llama, check=False)
    assert src.hooks == ("blocks.0.hook_resid_mid",) and src.hook_out == "blocks.0.hook_mlp_out"


def test_centred_residual_for_transformer_lens_processed_saes(tmp_path, gpt2, llama):
    """SAEs trained on HookedTransformer with center_writing_weights (gpt2-small-res-jb) read a residual
    stream with zero mean over d_model; a LayerNorm model's raw stream is centred before encoding, an
    RMSNorm model's is not (TransformerLens does not centre those)."""
    rng = np.random.default_rng(5)
    w = random_weights(rng, D, F)
    cfg = v6_cfg(
        "standard", D, F, HOOK, metadata={"model_from_pretrained_kwargs": {"center_writing_weights": True}}
    )
    folder = write_sae(tmp_path / "c", cfg, w)
    on_gpt2 = features.load(folder, gpt2, check=False)
    on_llama = features.load(folder, llama, check=False)
    x = _x() + 3.0
    assert_close(on_gpt2.encode({HOOK: x}), ref_encode("standard", x - x.mean(-1, keepdims=True), w))
    assert_close(on_llama.encode({HOOK: x}), ref_encode("standard", x, w))
    plain = features.load(write_sae(tmp_path / "p", v6_cfg("standard", D, F, HOOK), w), gpt2, check=False)
    assert_close(plain.encode({HOOK: x}), ref_encode("standard", x, w))


def test_sparsity_file(tmp_path):
    cfg, w = _dictionary("standard")
    log_density = np.linspace(-6, -1, F).astype(np.float32)
    src = features.load(
        write_sae(tmp_path / "s", cfg, w, **{"sparsity.safetensors": {"sparsity": log_density}})
    )
    np.testing.assert_array_equal(src.log_sparsity, log_density)
    assert features.load(write_sae(tmp_path / "n", cfg, w)).log_sparsity is None


def test_bfloat16_weights_are_read_as_float32(tmp_path):
    from safetensors.torch import save_file

    cfg, w = _dictionary("standard")
    folder = write_sae(tmp_path / "b", cfg, w)
    save_file(
        {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in w.items()},
        str(folder / "sae_weights.safetensors"),
    )
    src = features.load(folder)
    rounded = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in w.items()}
    x = _x()
    assert_close(src.encode({HOOK: x}), ref_encode("standard", x, rounded))


def test_no_warning_from_a_plain_load(tmp_path):
    cfg, w = _dictionary("jumprelu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features.load(write_sae(tmp_path / "s", cfg, w))


def test_weights_file_named_is_read_as_its_folder(tmp_path):
    # sae_weights.safetensors given as a file is an SAE (it was once taken for a crosscoder and refused)
    rng = np.random.default_rng(11)
    folder = write_sae(tmp_path / "res-l1", v6_cfg("standard", D, 32, "blocks.1.hook_resid_post"),
                       random_weights(rng, D, 32))  # fmt: skip
    by_file = features.load(folder / "sae_weights.safetensors")
    assert by_file.kind == "saelens" and by_file.name == "res-l1"
    x = rng.standard_normal((5, D)).astype(np.float32)
    acts = {"blocks.1.hook_resid_post": x}
    np.testing.assert_array_equal(by_file.encode(acts), features.load(folder).encode(acts))
