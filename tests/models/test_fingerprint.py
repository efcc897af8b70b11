"""Model fingerprints: equal for the same model however it was loaded, different for any other."""

from __future__ import annotations

import pytest
import torch

import lmpeek
from lmpeek.models.fingerprint import SAMPLES_PER_TENSOR, config_hash, fingerprint, weights_hash
from lmpeek.models.tiny import tiny_hf_model


@pytest.fixture(scope="module")
def llama():
    return lmpeek.load("tiny:llama")


def test_two_tiny_models_differ_and_one_model_loaded_twice_does_not(llama):
    gpt2 = lmpeek.load("tiny:gpt2")
    fp, other = llama.fingerprint, gpt2.fingerprint
    assert fp["name"] == "tiny:llama" and other["name"] == "tiny:gpt2"
    assert fp["config"] != other["config"] and fp["weights"] != other["weights"] and fp["id"] != other["id"]
    assert lmpeek.load("tiny:llama").fingerprint == fp


def test_a_folder_of_the_same_weights_has_the_same_identity(llama, tiny_llama_dir):
    # saved to disk and loaded back (another name and path, config fields transformers adds on save)
    again = lmpeek.load(str(tiny_llama_dir))
    assert again.fingerprint["id"] == llama.fingerprint["id"]
    assert again.fingerprint["name"] != llama.fingerprint["name"]


def test_one_changed_weight_changes_the_identity(llama):
    hf, tok = tiny_hf_model("llama")
    p = hf.model.layers[1].mlp.up_proj.weight
    assert p.numel() // SAMPLES_PER_TENSOR > 1  # index 1 is not among the sampled values
    before = weights_hash(hf)
    with torch.no_grad():
        p.view(-1)[1] += 0.01
    assert weights_hash(hf) != before
    assert lmpeek.wrap(hf, tok, name="tiny:llama").fingerprint["id"] != llama.fingerprint["id"]
    with torch.no_grad():
        p.view(-1)[1] -= 0.01
    assert weights_hash(hf) == before


def test_another_seed_or_dtype_changes_the_weights(llama):
    hf, _ = tiny_hf_model("llama", seed=1)
    assert weights_hash(hf) != llama.fingerprint["weights"]
    hf, _ = tiny_hf_model("llama")
    assert weights_hash(hf.to(torch.bfloat16)) != llama.fingerprint["weights"]


def test_the_config_hash_ignores_what_never_changes_a_number(llama):
    config = llama.hf.config
    base = config_hash(config)
    d = config.to_dict()
    for noise in (
        {"_name_or_path": "/elsewhere"},
        {"transformers_version": "9.9"},
        {"_attn_implementation": "sdpa"},
        {"use_cache": not d.get("use_cache", True)},
        {"architectures": ["Something"]},
    ):
        assert config_hash(d | noise) == base, noise
    for change in ({"rms_norm_eps": 1e-3}, {"num_hidden_layers": 3}, {"tie_word_embeddings": True}):
        assert config_hash(d | change) != base, change


def test_the_weights_hash_does_not_depend_on_the_thread_count(llama):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = weights_hash(llama.hf)
    finally:
        torch.set_num_threads(threads)
    assert one == llama.fingerprint["weights"]


def test_sums_on_an_accelerator_give_the_same_identity(llama, monkeypatch):
    import lmpeek.models.fingerprint as module

    monkeypatch.setattr(module, "_NUMPY_DEVICES", ())  # the torch path, which GPUs take
    assert weights_hash(llama.hf) == llama.fingerprint["weights"]


def test_offloaded_weights_are_identified_by_their_names_and_shapes(llama):
    with torch.device("meta"):
        hf, _ = tiny_hf_model("llama")
        gpt2, _ = tiny_hf_model("gpt2")
    assert weights_hash(hf) not in (weights_hash(gpt2), llama.fingerprint["weights"])


def test_computed_once_and_carried_by_every_trace(llama, monkeypatch):
    fp = llama.fingerprint
    import lmpeek.models.fingerprint as module

    monkeypatch.setattr(module, "fingerprint", lambda *a: pytest.fail("computed again"))
    assert llama.fingerprint is fp
    assert llama.info()["fingerprint"] == fp
    assert lmpeek.trace(llama, "Hello").model["fingerprint"] == fp


def test_a_tokenizer_with_another_vocabulary_differs(llama):
    other = fingerprint(llama.hf, _shifted(llama.tokenizer), "x")
    assert other["tokenizer"] != llama.fingerprint["tokenizer"] and other["id"] != llama.fingerprint["id"]


def _shifted(tokenizer):
    class Other:
        def get_vocab(self):
            return {k + "!": v for k, v in tokenizer.get_vocab().items()}

    return Other()


@pytest.mark.slow
def test_cheap_on_the_default_model():
    model = lmpeek.load("default", progress=False)
    # its cost (about 0.2 s here) is measured, not asserted: timings belong in benchmarks/
    assert fingerprint(model.hf, model.tokenizer, model.name) == model.fingerprint
