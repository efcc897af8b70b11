"""Crosscoders over a base and a chat model: both on-disk layouts, encode against a float64 reference
written from shared/anchors/features.md B5 (independently of lmpeek.features.crosscoder), the two-model
activations path against independently traced float32 hook values, the relative decoder norm on a
constructed dictionary, and one-line errors."""

from __future__ import annotations

import datetime
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek import features
from lmpeek.errors import InvalidInput, LmpeekError, SourceNotFound
from lmpeek.features.crosscoder import (
    CrosscoderSource,
    decoder_norm_classes,
    relative_decoder_norm,
)
from lmpeek.features.sources import FeatureSource, FeatureSourceWarning
from lmpeek.models.tiny import tiny_hf_model
from tests.features.saes import D, assert_close, f32

HOOK = "blocks.1.hook_resid_post"
T, F = 20, 80
TEXT = "The capital of France is Paris. Once upon a time there was a small model."
CODES = {"CROSSCODER": 1, "SAE": 2, "MIXED": 3, "NONE": 4, "DECOUPLED": 5}


# --- tiny crosscoders on disk --------------------------------------------------------------------------


def dl_tensors(seed: int = 0, d: int = D, n_features: int = F, *, normalise: bool = True) -> dict:
    """A dictionary_learning (Batch)TopK crosscoder state dict, float32 numpy: decoder rows of varied norm
    per model, mean/std buffers (NaN when not normalising), target_rms."""
    rng = np.random.default_rng(seed)
    dec = f32(rng, 2, n_features, d, scale=d**-0.5) * rng.uniform(0.2, 2.0, (2, n_features, 1)).astype(
        np.float32
    )
    t = {
        "encoder.weight": f32(rng, 2, d, n_features, scale=d**-0.5),
        "encoder.bias": f32(rng, n_features, scale=0.2),
        "decoder.weight": dec.astype(np.float32),
        "decoder.bias": f32(rng, 2, d, scale=0.2),
        "target_rms": np.array(2.0, np.float32),
    }
    if normalise:
        t["activation_mean"] = f32(rng, 2, d, scale=0.5)
        t["activation_std"] = rng.uniform(0.5, 2.0, (2, d)).astype(np.float32)
    else:
        t["activation_mean"] = np.full((2, d), np.nan, np.float32)
        t["activation_std"] = np.full((2, d), np.nan, np.float32)
    return t


def kissane_tensors(seed: int = 0, d: int = D, n_features: int = F) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": f32(rng, 2, d, n_features, scale=d**-0.5),
        "W_dec": f32(rng, n_features, 2, d, scale=d**-0.5),
        "b_enc": f32(rng, n_features, scale=0.2),
        "b_dec": f32(rng, 2, d, scale=0.2),
    }


def kissane_cfg(d: int = D, n_features: int = F, hook: str = HOOK) -> dict:
    """A cfg as the replication's train.py writes it (training fields included)."""
    return {"seed": 49, "batch_size": 4096, "lr": 5e-5, "l1_coeff": 2, "d_in": d, "dict_size": n_features,
            "enc_dtype": "fp32", "model_name": "gemma-2-2b", "site": "resid_pre", "device": "cuda:0",
            "dec_init_norm": 0.08, "hook_point": hook}  # fmt: skip


def save(path, tensors: dict) -> None:
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    else:
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, str(path))


def write(folder, files: dict) -> object:
    """files: name -> tensors (dict of arrays) or JSON (anything else)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.endswith(".json"):
            (folder / name).write_text(json.dumps(content))
        else:
            save(folder / name, content)
    return folder


# --- reference formulas (float64) ---------------------------------------------------------------------


def ref_code(dec: np.ndarray, mode: str, alphas=(1.0, 0.1)) -> np.ndarray:
    dec = dec.astype(np.float64)  # [2, F, d]
    cc = np.sqrt((dec**2).sum(-1)).sum(0)
    sae = np.sqrt((dec**2).sum((0, 2)))
    return {"CROSSCODER": cc, "SAE": sae, "MIXED": alphas[0] * sae + alphas[1] * cc,
            "NONE": np.ones(dec.shape[1])}[mode]  # fmt: skip


def ref_dl(xb, xc, t, *, keep=True, mode="CROSSCODER", threshold=None, alphas=(1.0, 0.1), scale=None):
    """dictionary_learning get_activations: normalise, relu(Σ_l x_l W_enc[l] + b), BatchTopK threshold
    on f·c, then f·c. `scale`: a stored activation_global_scale (else target_rms / sqrt(Σσ² + 1e-8))."""
    x = np.stack([xb, xc], 1).astype(np.float64)  # [T, 2, d]
    mu, sd = t["activation_mean"].astype(np.float64), t["activation_std"].astype(np.float64)
    if not np.isnan(mu).any():
        if keep:
            s = float(t["target_rms"]) / np.sqrt((sd**2).sum(-1) + 1e-8) if scale is None else scale
            x = (x - mu) * np.asarray(s, np.float64)[None, :, None]
        else:
            x = (x - mu) / (sd + 1e-8)
    f = np.maximum(np.einsum("tld,ldf->tf", x, t["encoder.weight"].astype(np.float64)) + t["encoder.bias"], 0)
    c = ref_code(t["decoder.weight"], mode, alphas)
    if threshold is not None:
        f = np.where(f * c > threshold, f, 0.0)
    return f * c


def ref_kissane(xb, xc, t, factors=(1.0, 1.0)):
    x = np.stack([xb * factors[0], xc * factors[1]], 1).astype(np.float64)
    return np.maximum(np.einsum("tld,ldf->tf", x, t["W_enc"].astype(np.float64)) + t["b_enc"], 0)


def between_values(fc: np.ndarray, q: float) -> float:
    """A threshold halfway between two neighbouring positive values of f·c near quantile q: it cuts some
    positive features, and no value lies within rounding of it (which would flip on float32 noise)."""
    v = np.unique(fc[fc > 0])
    i = int(q * (len(v) - 1))
    return float((v[i] + v[i + 1]) / 2)


def _inputs(t: dict | None = None, seed: int = 1, t_len: int = T, d: int = D):
    """Base and chat activations around the crosscoder's stored mean, spread like its std."""
    rng = np.random.default_rng(seed)
    xs = f32(rng, 2, t_len, d, scale=1.5)
    if t is not None and not np.isnan(t["activation_mean"]).any():
        xs = (t["activation_mean"][:, None] + xs * t["activation_std"][:, None]).astype(np.float32)
    return xs[0], xs[1]


def _acts(xb, xc, hook=HOOK):
    return {f"base:{hook}": xb, f"chat:{hook}": xc}


# --- encode against the reference -----------------------------------------------------------------------

DL_CASES = ["crosscoder-keep-safetensors", "batchtopk-pt-compiled", "stored-global-scale", "sae-no-keep",
            "mixed-from-config", "none-unnormalised", "option-code-normalization"]  # fmt: skip


@pytest.mark.parametrize("case", DL_CASES)
def test_dictionary_learning_encode_equals_the_reference(tmp_path, case):
    t = dl_tensors(seed=DL_CASES.index(case), normalise=case != "none-unnormalised")
    xb, xc = _inputs(t)
    cfg: dict = {"trainer": {"layer": 1, "lm_name": "tiny"}}
    options: dict = {}
    ref: dict = {}
    weights = "model.safetensors"
    if case == "crosscoder-keep-safetensors":
        t["code_normalization_id"] = np.array(CODES["CROSSCODER"], np.int64)
    elif case == "batchtopk-pt-compiled":
        # a threshold where f·c lies, so that it cuts some positive features
        ref["threshold"] = between_values(ref_dl(xb, xc, t), 0.5)
        t["threshold"] = np.array(ref["threshold"], np.float32)
        t["k"] = np.array(8, np.int32)
        t = {f"_orig_mod.{k}": v for k, v in t.items()}  # saved under torch.compile
        weights = "model_final.pt"
    elif case == "stored-global-scale":  # dictionary_learning encodes with the stored buffer
        ref["scale"] = np.array([0.7, 1.3])
        t["activation_global_scale"] = ref["scale"].astype(np.float32)
    elif case == "sae-no-keep":
        t["code_normalization_id"] = np.array(CODES["SAE"], np.int64)
        cfg["keep_relative_variance"] = False
        ref.update(mode="SAE", keep=False)
    elif case == "mixed-from-config":  # hub config.json: init kwargs, no stored id
        cfg = {"activation_dim": D, "dict_size": F, "num_layers": 2, "code_normalization": "MIXED",
               "code_normalization_alpha_sae": 0.5, "code_normalization_alpha_cc": 0.2,
               "layer": 1}  # fmt: skip
        ref.update(mode="MIXED", alphas=(0.5, 0.2))
    elif case == "none-unnormalised":
        t["code_normalization_id"] = np.array(CODES["NONE"], np.int64)
        ref["mode"] = "NONE"
    elif case == "option-code-normalization":  # an old file with no id: the option says which
        options = {"code_normalization": "sae", "keep_relative_variance": False}
        ref.update(mode="SAE", keep=False)
    folder = write(tmp_path / case, {weights: t, "config.json": cfg})
    assert features.kind_for(folder).name == "crosscoder"
    src = features.load(folder, **options)
    assert isinstance(src, FeatureSource) and isinstance(src, CrosscoderSource)
    assert (src.kind, src.models, src.hook, src.n_features) == ("crosscoder", ("base", "chat"), HOOK, F)
    assert src.hooks == (f"base:{HOOK}", f"chat:{HOOK}") and src.layout == "dictionary_learning"
    t = {k.removeprefix("_orig_mod."): v for k, v in t.items()}
    want = ref_dl(xb, xc, t, **ref)
    got = src.encode(_acts(xb, xc))
    assert_close(got, want, what=case)
    assert 0 < (want > 0).mean() < 1
    if "threshold" in ref:  # the threshold does cut positive features
        assert ((ref_dl(xb, xc, t) > 0) & (want == 0)).any()
    # torch in, same numbers
    torch_in = {k: torch.from_numpy(v) for k, v in _acts(xb, xc).items()}
    np.testing.assert_array_equal(src.encode(torch_in), got)


def test_keep_relative_variance_matters(tmp_path):
    """The two normalisations give different features (so the parametrized cases test something)."""
    t = dl_tensors(seed=3)
    folder = write(tmp_path / "x", {"model.safetensors": t})
    xb, xc = _inputs(t)
    keep = features.load(folder, layer=1).encode(_acts(xb, xc))
    plain = features.load(folder, layer=1, keep_relative_variance=False).encode(_acts(xb, xc))
    assert_close(plain, ref_dl(xb, xc, t, keep=False))
    assert np.abs(keep - plain).max() > 0.1


@pytest.mark.parametrize("files", ["cfg.json + cc_weights.pt", "cc_weights.safetensors", "versioned"])
def test_kissane_encode_equals_the_reference(tmp_path, files):
    t = kissane_tensors(seed=5)
    xb, xc = _inputs(seed=6)
    factors = (0.7367579, 0.38336924)
    if files == "cfg.json + cc_weights.pt":
        folder = write(tmp_path / "k", {"cfg.json": kissane_cfg(), "cc_weights.pt": t})
    elif files == "cc_weights.safetensors":
        folder = write(tmp_path / "k", {"cfg.json": kissane_cfg(), "cc_weights.safetensors": t})
    else:  # the replication's checkpoint folder: the newest {v}.pt with its {v}_cfg.json
        old = kissane_tensors(seed=99)
        old_cfg = kissane_cfg(hook="blocks.0.hook_resid_pre")
        files = {"0_cfg.json": old_cfg, "0.pt": old, "1_cfg.json": kissane_cfg(), "1.pt": t}
        folder = write(tmp_path / "version_0", files)
    assert features.kind_for(folder).name == "crosscoder"  # not SAELens, though there is a cfg.json
    src = features.load(folder, scaling_factors=factors)
    assert (src.layout, src.hook, src.n_features, src.d_model) == ("kissane", HOOK, F, D)
    got = src.encode(_acts(xb, xc))
    want = ref_kissane(xb, xc, t, factors)
    assert_close(got, want, what=files)
    assert 0 < (want > 0).mean() < 1
    # the scaling factors matter, and leaving them out is a visible warning
    with pytest.warns(FeatureSourceWarning, match="scaling_factors") as caught:
        unscaled = features.load(folder)
    assert "\n" not in str(caught[0].message)
    assert_close(unscaled.encode(_acts(xb, xc)), ref_kissane(xb, xc, t))
    # one weights file given directly
    if files == "cfg.json + cc_weights.pt":
        direct = features.load(folder / "cc_weights.pt", scaling_factors=factors)
        np.testing.assert_array_equal(direct.encode(_acts(xb, xc)), got)


def test_safetensors_preferred_over_pt(tmp_path):
    a, b = dl_tensors(seed=1), dl_tensors(seed=2)
    folder = write(tmp_path / "both", {"model_final.pt": a, "model.safetensors": b})
    xb, xc = _inputs(b)
    assert_close(features.load(folder, layer=1).encode(_acts(xb, xc)), ref_dl(xb, xc, b))


# --- relative decoder norm ----------------------------------------------------------------------------

# per feature: (‖W_dec[base]‖, ‖W_dec[chat]‖) and the answer
NORMS = [(3.0, 0.0), (0.0, 2.0), (1.0, 1.0), (1.0, 3.0), (0.0, 0.0), (0.05, 0.95), (0.92, 0.08), (0.65, 0.35)]
WANT_REL = [0.0, 1.0, 0.5, 0.75, np.nan, 0.95, 0.08, 0.35]
WANT_CLASS = ["base-only", "chat-only", "shared", "other", "dead", "chat-only", "base-only", "other"]


def _constructed_decoder(d: int = D) -> np.ndarray:
    """[2, F, d] decoder rows in random directions with exactly the norms of NORMS."""
    rng = np.random.default_rng(11)
    dirs = rng.standard_normal((2, len(NORMS), d))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return (dirs * np.array(NORMS).T[:, :, None]).astype(np.float32)


@pytest.mark.parametrize("layout", ["dictionary_learning", "kissane"])
def test_relative_decoder_norm_on_a_constructed_dictionary(tmp_path, layout):
    dec = _constructed_decoder()
    n = len(NORMS)
    if layout == "dictionary_learning":
        t = dl_tensors(seed=0, n_features=n)
        t["decoder.weight"] = dec
        folder = write(tmp_path / layout, {"model.safetensors": t})
        src = features.load(folder, layer=1)
    else:
        t = kissane_tensors(seed=0, n_features=n)
        t["W_dec"] = np.ascontiguousarray(dec.transpose(1, 0, 2))  # Kissane's [F, 2, d]
        folder = write(tmp_path / layout, {"cc_weights.pt": t, "cfg.json": kissane_cfg(n_features=n)})
        src = features.load(folder, scaling_factors=(1.0, 1.0))
    np.testing.assert_allclose(src.decoder_norms, np.array(NORMS).T, atol=1e-6)
    rel = relative_decoder_norm(src)
    assert rel.shape == (n,) and rel.dtype == np.float32
    np.testing.assert_allclose(rel, WANT_REL, atol=1e-6)
    assert decoder_norm_classes(rel).tolist() == WANT_CLASS
    # the thresholds are parameters
    assert decoder_norm_classes(rel, base_only=0.01, chat_only=0.99).tolist()[5:7] == ["other", "other"]
    with pytest.raises(InvalidInput):
        decoder_norm_classes(rel, shared=(0.7, 0.3))


# --- two models, one text -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat():
    """A second tiny llama with other weights and the same tokenizer: the 'chat' model."""
    hf, tok = tiny_hf_model("llama", seed=1)
    return lmpeek.wrap(hf, tok, name="tiny-llama-chat")


@pytest.fixture(scope="module")
def other_tokenizer_model():
    """A tiny llama whose tokenizer splits text differently (another BPE, same vocabulary size range)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["zebra quartz jumping vexed wizard boxing " * 3], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return lmpeek.wrap(tiny_hf_model("llama", seed=2)[0], fast, name="other-tokenizer")


def test_pair_activations_equal_encode_of_independently_traced_values(tmp_path, llama, chat):
    t = dl_tensors(seed=4)
    t["code_normalization_id"] = np.array(CODES["CROSSCODER"], np.int64)
    base_trace = lmpeek.trace(llama, TEXT, keep=[HOOK]).tensors[HOOK]
    chat_trace = lmpeek.trace(chat, TEXT, keep=[HOOK]).tensors[HOOK]
    assert base_trace.dtype == chat_trace.dtype == np.float32
    assert np.abs(base_trace - chat_trace).max() > 0.1  # two different models
    # centre the normalisation on these models' values, and a threshold that cuts
    t["activation_mean"] = np.stack([base_trace.mean(0), chat_trace.mean(0)]).astype(np.float32)
    t["activation_std"] = np.stack([base_trace.std(0), chat_trace.std(0)]).astype(np.float32) + 0.1
    threshold = between_values(ref_dl(base_trace, chat_trace, t), 0.3)
    t["threshold"] = np.array(threshold, np.float32)
    folder = write(tmp_path / "cc", {"model.safetensors": t, "config.json": {"trainer": {"layer": 1}}})

    src = features.load(folder, (llama, chat), check=False)  # random: the guard would warn
    got = features.activations((llama, chat), src, TEXT)
    want = ref_dl(base_trace, chat_trace, t, threshold=threshold)
    assert got.dtype == np.float32 and got.shape == (len(base_trace), F)
    assert_close(got, want, tol=1e-5, what="pair")
    assert 0 < (want > 0).mean() < 1
    assert_close(got, src.encode(_acts(base_trace, chat_trace)).astype(np.float64), tol=1e-5)
    # the order of the pair matters: (chat, base) is another input
    assert np.abs(features.activations((chat, llama), src, TEXT) - got).max() > 1e-3
    # a spec in place of the source, a column subset, token ids in place of text
    np.testing.assert_array_equal(
        features.activations((llama, chat), folder, TEXT, features=[7, 2]), got[:, [7, 2]]
    )
    ids = lmpeek.trace(llama, TEXT).token_ids
    np.testing.assert_array_equal(features.activations((llama, chat), src, list(ids)), got)


def test_pair_activations_kissane_and_chat_turns(tmp_path, llama, chat):
    t = kissane_tensors(seed=8)
    folder = write(
        tmp_path / "k", {"cfg.json": kissane_cfg(hook="blocks.0.hook_resid_pre"), "cc_weights.pt": t}
    )
    factors = (0.5, 2.0)
    src = features.load(folder, (llama, chat), scaling_factors=factors, check=False)
    hook = "blocks.0.hook_resid_pre"
    text = "Hello there<eot>Hi! How can I help?<eot>What is the capital of France?"  # chat turns
    got = features.activations((llama, chat), src, text)
    xb = lmpeek.trace(llama, text, keep=[hook]).tensors[hook]
    xc = lmpeek.trace(chat, text, keep=[hook]).tensors[hook]
    assert_close(got, ref_kissane(xb, xc, t, factors), tol=1e-5)


def test_mismatched_tokenizers_are_refused(tmp_path, llama, other_tokenizer_model):
    folder = write(tmp_path / "cc", {"model.safetensors": dl_tensors(), "config.json": {"layer": 1}})
    src = features.load(folder, (llama, other_tokenizer_model))  # loading needs no tokens
    with pytest.raises(InvalidInput, match="tokenize this text differently") as err:
        features.activations((llama, other_tokenizer_model), src, TEXT)
    assert "\n" not in str(err.value)
    # token ids: both tokenizers hold them, but as different pieces
    with pytest.raises(InvalidInput, match="different pieces") as err:
        features.activations((llama, other_tokenizer_model), src, [100, 101, 102])
    assert "\n" not in str(err.value)


def test_one_model_and_pairs_mixed_up(tmp_path, llama, chat):
    folder = write(tmp_path / "cc", {"model.safetensors": dl_tensors(), "config.json": {"layer": 1}})
    src = features.load(folder, llama)  # one model: its hook names and d_model checked
    with pytest.raises(InvalidInput, match="two models") as err:
        features.activations(llama, src, TEXT)
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidInput, match="two models"):
        features.activations((llama, chat, llama), src, TEXT)
    with pytest.raises(InvalidInput, match="one model"):
        features.activations((llama, chat), "neurons:1", TEXT)
    with pytest.raises(InvalidInput, match="one model"):
        features.activations((llama, chat), features.load("neurons:1", llama), TEXT)
    # the single-model path is unchanged
    assert features.activations(llama, "neurons:1", TEXT).shape[1] == 128


# --- bad folders: one-line errors ----------------------------------------------------------------------

BAD = ["empty folder", "missing path", "not a crosscoder", "three models", "decoder shape", "missing bias",
       "corrupt pt", "pickled object", "d vs model", "no hook", "hook not in model", "decoupled",
       "kissane cfg vs weights", "bad scaling factors", "scaling factors for dictionary_learning",
       "kissane decoder shape", "conflicting code normalization", "unknown code normalization",
       "encode: positions differ", "encode: missing model"]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_crosscoders(tmp_path, llama, chat, case):
    folder = tmp_path / "cc"
    t = dl_tensors()
    files: dict = {"model.safetensors": t, "config.json": {"layer": 1}}
    options: dict = {}
    expected: type[LmpeekError] = InvalidInput
    spec: object = folder
    if case == "empty folder":
        folder.mkdir()
        files, expected = {}, SourceNotFound
    elif case == "missing path":
        spec, expected, files = tmp_path / "nowhere" / "cc", SourceNotFound, {}
    elif case == "not a crosscoder":
        files["model.safetensors"] = {"weight": np.zeros((3, 3), np.float32)}
    elif case == "three models":
        t["encoder.weight"] = np.zeros((3, D, F), np.float32)
    elif case == "decoder shape":
        t["decoder.weight"] = np.zeros((2, F + 1, D), np.float32)
    elif case == "missing bias":
        del t["decoder.bias"]
    elif case == "corrupt pt":
        files = {"model_final.pt": None}
        folder.mkdir()
        (folder / "model_final.pt").write_bytes(b"\x80\x02not a pickle at all")
    elif case == "pickled object":  # weights_only refuses to run arbitrary pickles
        folder.mkdir()
        files = {}
        (folder / "model_final.pt").write_bytes(pickle.dumps(datetime.date(2020, 1, 1)))
    elif case == "d vs model":
        files["model.safetensors"] = dl_tensors(d=32)
    elif case == "no hook":
        files["config.json"] = {"lr": 1e-4}
    elif case == "hook not in model":
        options = {"layer": 7}
    elif case == "decoupled":
        t["code_normalization_id"] = np.array(CODES["DECOUPLED"], np.int64)
    elif case == "kissane cfg vs weights":
        files = {"cfg.json": dict(kissane_cfg(), d_in=32), "cc_weights.pt": kissane_tensors()}
    elif case == "bad scaling factors":
        files = {"cfg.json": kissane_cfg(), "cc_weights.pt": kissane_tensors()}
        options = {"scaling_factors": (1.0, -2.0)}
    elif case == "scaling factors for dictionary_learning":
        options = {"scaling_factors": (1.0, 1.0)}
    elif case == "kissane decoder shape":
        k = kissane_tensors()
        k["W_dec"] = np.ascontiguousarray(k["W_dec"].transpose(1, 0, 2))  # dictionary_learning's order
        files = {"cfg.json": kissane_cfg(), "cc_weights.pt": k}
        options = {"scaling_factors": (1.0, 1.0)}
    elif case == "conflicting code normalization":
        t["code_normalization_id"] = np.array(CODES["SAE"], np.int64)
        options = {"code_normalization": "crosscoder"}
    elif case == "unknown code normalization":
        options = {"code_normalization": "whitened"}
    files = {k: v for k, v in files.items() if v is not None}
    if files:
        write(folder, files)
    if case.startswith("encode"):
        src = features.load(spec, (llama, chat), check=False)
        xb, xc = _inputs(t)
        acts = _acts(xb, xc[:-1]) if case == "encode: positions differ" else {f"base:{HOOK}": xb}
        with pytest.raises(InvalidInput) as err:
            src.encode(acts)
    else:
        with pytest.raises(expected) as err:
            features.load(spec, (llama, chat), **options)
    message = str(err.value)
    assert message and "\n" not in message, message
    if case == "d vs model":
        assert "32" in message and "64" in message


def test_pair_with_a_single_model_source_is_refused(tmp_path, llama, chat):
    with pytest.raises(InvalidInput, match="one model"):
        features.load("neurons:0", (llama, chat))


def test_finding_a_crosscoder_folder_leaves_torch_out(tmp_path):
    folder = write(tmp_path / "k", {"cfg.json": kissane_cfg(), "cc_weights.safetensors": kissane_tensors()})
    code = (
        "import sys; from lmpeek import features; "
        f"print(features.kind_for({str(folder)!r}).name, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["crosscoder", "False"]


# --- the reconstruction guard for crosscoders --------------------------------------------------------


def _identity_crosscoder(folder, d=D):
    """Kissane layout, 4d features: for each model l and coordinate i a pair relu(x) and relu(-x) that
    the decoder adds back with signs: a perfect reconstruction of both models' values."""
    F4 = 4 * d
    w_enc = np.zeros((2, d, F4), np.float32)
    w_dec = np.zeros((F4, 2, d), np.float32)
    eye = np.eye(d, dtype=np.float32)
    for layer in range(2):
        a = layer * 2 * d
        w_enc[layer, :, a : a + d], w_enc[layer, :, a + d : a + 2 * d] = eye, -eye
        w_dec[a : a + d, layer], w_dec[a + d : a + 2 * d, layer] = eye, -eye
    t = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_enc": np.zeros(F4, np.float32),
        "b_dec": np.zeros((2, d), np.float32),
    }
    return write(folder, {"cfg.json": kissane_cfg(n_features=F4), "cc_weights.pt": t})


def test_crosscoder_reconstruction_guard(tmp_path, llama, chat):
    import warnings

    factors = (0.5, 2.0)
    good = _identity_crosscoder(tmp_path / "identity")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureSourceWarning)
        src = features.load(good, (llama, chat), scaling_factors=factors)  # the guard runs, silent
        r = features.check_reconstruction((llama, chat), src)
    assert r.ok and r.fvu < 1e-10 and 200 <= r.n_tokens <= features.CHECK_TOKENS
    assert r.l0 == pytest.approx(2 * D, abs=1)  # each coordinate of each model: one of its two features
    # reconstruct against the formula: decode in the scaled space, then undo the scaling (float64)
    xb, xc = _inputs(seed=3)
    t = kissane_tensors(seed=5)
    folder = write(tmp_path / "k", {"cfg.json": kissane_cfg(), "cc_weights.pt": t})
    with pytest.warns(FeatureSourceWarning, match="FVU") as caught:  # random weights: a visible warning
        src = features.load(folder, (llama, chat), scaling_factors=factors)
    assert len(caught) == 1 and "both models" in str(caught[0].message)
    target, recon, f = src.reconstruct(_acts(xb, xc))
    want_f = ref_kissane(xb, xc, t, factors)
    x_hat = np.einsum("tf,fld->tld", want_f, t["W_dec"].astype(np.float64)) + t["b_dec"]
    x_hat /= np.array(factors)[None, :, None]
    assert_close(f, want_f, tol=1e-5, what="features")
    assert_close(recon, x_hat.reshape(len(xb), -1), tol=1e-4, what="reconstruction")
    np.testing.assert_array_equal(target, np.concatenate([xb, xc], 1))
