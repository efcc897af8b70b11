"""Tiny models for the feature tests (dictionaries are written by tests/features/saes.py)."""

from __future__ import annotations

import warnings

import pytest

import lmpeek


@pytest.fixture(scope="session")
def llama():
    return lmpeek.load("tiny:llama")


@pytest.fixture(scope="session")
def gpt2():
    return lmpeek.load("tiny:gpt2")


@pytest.fixture(scope="session")
def neox():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:gpt_neox")
