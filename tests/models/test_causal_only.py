"""Causal language models only: a model that attends to later tokens, or has no LM head, is refused at
load and at wrap with one line naming the reason (CLI exit 2, HTTP 4xx); `check` names attention to
future tokens when it sees it. And LoadedModel says where the model came from and what was loaded."""

from __future__ import annotations

import pathlib
import warnings

import pytest
import torch
import transformers as tf
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import lmpeek
from lmpeek.cli import app as cli_app
from lmpeek.errors import UnsupportedArchitecture
from lmpeek.models import sources
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model, tiny_tokenizer
from lmpeek.server.app import create_app

NOT_CAUSAL = "is not a causal language model"


def _bidirectional_gemma3():
    model, tokenizer = tiny_hf_model("gemma3")
    model.config.use_bidirectional_attention = True
    return model, tokenizer


def _headless_gemma3():
    model, _ = tiny_hf_model("gemma3")
    return model.model  # Gemma3TextModel: the decoder without its LM head (as EmbeddingGemma ships)


def _llama_classifier():
    model, _ = tiny_hf_model("llama")
    return tf.LlamaForSequenceClassification(model.config)


def _t5():
    return tf.T5ForConditionalGeneration(
        tf.T5Config(vocab_size=300, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    )


def _bert():
    return tf.BertForMaskedLM(
        tf.BertConfig(
            vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )


# (name, build the model, what the one-line reason must say)
NON_CAUSAL = [
    ("gemma3-bidirectional", lambda: _bidirectional_gemma3()[0], "use_bidirectional_attention"),
    ("gemma3-headless", _headless_gemma3, "Gemma3TextModel"),
    ("llama-classifier", _llama_classifier, "LlamaForSequenceClassification"),
    ("t5", _t5, "encoder-decoder"),
    ("bert", _bert, "encoder (masked language model"),
]


def _save(folder: pathlib.Path, model) -> pathlib.Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' notes about untied / unused weights
        model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def non_causal_dirs(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("non-causal")
    return {name: _save(root / name, build()) for name, build, _ in NON_CAUSAL}


def _one_line_reason(message: str, reason: str) -> None:
    assert NOT_CAUSAL in message and reason in message, message
    assert "\n" not in message


# --- load ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "reason"), [(n, r) for n, _, r in NON_CAUSAL])
def test_load_refuses_non_causal_folders(non_causal_dirs, name, reason):
    with pytest.raises(UnsupportedArchitecture) as info:
        lmpeek.load(str(non_causal_dirs[name]), progress=False)
    _one_line_reason(str(info.value), reason)
    assert str(non_causal_dirs[name]) in str(info.value)


def test_bidirectional_flag_in_a_multimodal_text_config_is_refused():
    from lmpeek.models.causal import not_causal_reason

    text = tf.Gemma3TextConfig(use_bidirectional_attention=True)
    outer = tf.Gemma3Config(text_config=text.to_dict())
    assert "use_bidirectional_attention" in not_causal_reason(outer)
    # "vision": only image tokens see each other, the text stays causal
    assert not_causal_reason(tf.Gemma3TextConfig(), model_class="Gemma3ForCausalLM") is None


def test_is_causal_false_is_refused():
    from lmpeek.models.causal import not_causal_reason

    config = tf.LlamaConfig()
    config.is_causal = False
    assert "is_causal" in not_causal_reason(config)


def test_cli_exits_2_with_one_line(non_causal_dirs):
    result = CliRunner().invoke(
        cli_app, ["trace", "hello world", "-m", str(non_causal_dirs["gemma3-bidirectional"])]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    _one_line_reason(lines[0], "use_bidirectional_attention")
    assert "next-token" not in result.stdout and "mean loss" not in result.stdout


def test_server_reports_the_reason_and_answers_4xx(non_causal_dirs, tmp_path):
    source = str(non_causal_dirs["gemma3-bidirectional"])
    app = create_app(source, background=False, store_dir=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as client:
        health = client.get("/api/health").json()
        assert health["status"] == "error" and health["model"] is None
        _one_line_reason(health["message"], "use_bidirectional_attention")
        r = client.post("/api/trace", json={"text": "hello world"})
        assert 400 <= r.status_code < 500, r.text
        assert "use_bidirectional_attention" in r.json()["detail"]
        assert "retry-after" not in r.headers  # it will not load by waiting


# --- wrap ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "build", "reason"), NON_CAUSAL)
def test_wrap_refuses_non_causal_models(name, build, reason):
    model = build()
    with pytest.raises(UnsupportedArchitecture) as info:
        lmpeek.wrap(model, tiny_tokenizer())
    _one_line_reason(str(info.value), reason)
    assert type(model).__name__ in str(info.value)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_every_causal_tiny_model_still_wraps(arch):
    model, tokenizer = tiny_hf_model(arch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'.*' has no lmpeek adapter")  # olmo: the generic adapter
        assert lmpeek.wrap(model, tokenizer).n_layers >= 1


# --- check --------------------------------------------------------------------------------------


def test_check_names_attention_to_future_tokens():
    """A model that slips past the config checks (here: the flag is set after wrapping) and attends to
    later tokens fails `check` on a row that says so."""
    model, tokenizer = tiny_hf_model("gemma3")
    wrapped = lmpeek.wrap(model, tokenizer)
    assert all(row.ok for row in lmpeek.check(wrapped))
    model.config.use_bidirectional_attention = True
    failed = [row for row in lmpeek.check(wrapped) if not row.ok]
    future = [row for row in failed if "future tokens" in row.hook + row.against]
    assert future, [(r.hook, r.against) for r in failed]
    assert future[0].max_dev > 0.01


# --- where the model came from ------------------------------------------------------------------


def test_folder_source_and_folder_are_the_folder(tiny_llama_dir):
    model = lmpeek.load(str(tiny_llama_dir), progress=False)
    assert (model.origin, model.source, model.folder) == ("folder", str(tiny_llama_dir), str(tiny_llama_dir))
    info = model.info()
    assert (info["origin"], info["source"]) == ("folder", tiny_llama_dir.name)
    assert str(tiny_llama_dir.parent) not in str(info)  # info() travels inside traces: no local folders


def test_gguf_source_is_the_file_and_folder_the_converted_copy(
    tmp_cache, tmp_path, monkeypatch, tiny_llama_dir
):
    def convert(gguf, out):
        for f in tiny_llama_dir.iterdir():
            (out / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(sources, "_convert_gguf", convert)
    monkeypatch.setattr(sources, "_check_gguf", lambda gguf: None)  # a stand-in file, not a real GGUF
    gguf = tmp_path / "tiny.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    model = lmpeek.load(str(gguf), progress=False)
    assert (model.origin, model.source) == ("gguf", str(gguf.resolve()))
    folder = pathlib.Path(model.folder)
    assert folder.parent == tmp_cache / "models" and (folder / "config.json").is_file()
    assert model.info()["source"] == "tiny.Q4_K_M.gguf"


def test_tiny_and_memory_models_have_no_folder():
    tiny = lmpeek.load("tiny:llama")
    assert (tiny.origin, tiny.source, tiny.folder) == ("tiny", "tiny:llama", None)
    assert tiny.info()["source"] == "tiny:llama"
    hf, tokenizer = tiny_hf_model("gpt2")
    memory = lmpeek.wrap(hf, tokenizer)
    assert (memory.origin, memory.source, memory.folder) == ("memory", None, None)


def test_server_health_says_where_the_model_came_from(tiny_llama_dir, tmp_path):
    app = create_app(str(tiny_llama_dir), background=False, store_dir=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as client:
        model = client.get("/api/health").json()["model"]
    assert (model["origin"], model["source"]) == ("folder", tiny_llama_dir.name)


@pytest.mark.slow
def test_default_source_and_converted_folder():
    model = lmpeek.load("default", progress=False)
    assert (model.origin, model.source) == ("default", "default")
    folder = pathlib.Path(model.folder)
    assert (folder / "config.json").is_file() and folder.parent.name == "models"
    reloaded = tf.AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32)
    assert reloaded.config.num_hidden_layers == model.n_layers
