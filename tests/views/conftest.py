"""What the export and view tests share: a Session over the tiny llama model, one per test module
(test_widget.py names its own)."""

from __future__ import annotations

import warnings

import pytest

import lmpeek
from lmpeek.session import Session


@pytest.fixture(scope="module")
def session():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    with Session(model) as s:
        yield s
