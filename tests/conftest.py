"""Shared fixtures.

The real default model (SmolLM2-135M) is loaded through the user's normal lmpeek cache, so its GGUF
file is converted once per machine (about 20 s), not on every run. Tests of caching behaviour use
`tmp_cache`, which points LMPEEK_CACHE at an empty folder for one test.
"""

from __future__ import annotations

import pathlib

import pytest

_WORDS = "the capital of france is paris germany berlin a an and . , hello world".split()


def make_tiny_tokenizer():
    """A tiny word-level tokenizer built in-process (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "<s>", "</s>", *_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )


def save_tiny_llama(folder: pathlib.Path, *, seed: int = 0):
    """Save a tiny random Llama model and its tokenizer as a Hugging Face folder; return the model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(name="save_tiny_llama")
def save_tiny_llama_fixture():
    """`save_tiny_llama(folder, seed=0) -> model`, for tests that need their own folder."""
    return save_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> pathlib.Path:
    """A folder with a tiny random Llama model (safetensors) and a word-level tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_llama(folder)
    return folder


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> pathlib.Path:
    """An empty lmpeek cache for this test only (LMPEEK_CACHE points at it)."""
    cache = tmp_path / "lmpeek-cache"
    monkeypatch.setenv("LMPEEK_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def default_model_resolved():
    """The real default model, resolved once per session from the user's lmpeek cache.

    Mark tests that use it `slow`.
    """
    from lmpeek.models.sources import resolve

    return resolve("default", progress=False)
