"""Shared fixtures.

The real default model (SmolLM2-135M) is loaded through the user's normal lmpeek cache, so its GGUF
file is converted once per machine (about 20 s), not on every run. Tests of caching behaviour use
`tmp_cache`, which points LMPEEK_CACHE at an empty folder for one test.
"""

from __future__ import annotations

import pathlib

import pytest


def save_tiny_llama(folder: pathlib.Path, *, seed: int = 0):
    """Save lmpeek's tiny random Llama (and its byte-level tokenizer) as a Hugging Face folder."""
    from lmpeek.models.tiny import tiny_hf_model

    model, tokenizer = tiny_hf_model("llama", seed=seed)
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


def pytest_collection_modifyitems(config, items):
    """Browser tests last: Playwright's sync API keeps an asyncio loop running in the main thread for
    as long as its session-wide browser lives, and `asyncio.run` in any later test would fail."""
    items.sort(key=lambda item: "/tests/e2e/" in str(item.path).replace("\\", "/"))
