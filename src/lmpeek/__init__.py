"""lmpeek: see inside a transformer language model while it reads or writes text.

    import lmpeek
    model = lmpeek.load("default")
    t = lmpeek.trace(model, "The capital of France is", keep=["blocks.*.attn.hook_pattern"])

The top-level names are imported lazily, so `import lmpeek.analysis` does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"load", "wrap", "trace", "generate", "check", "Trace", "Step", "Generation", "LoadedModel"}
__all__ = sorted(_API | {"Session", "show", "capture", "features", "__version__"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from lmpeek import api

        return getattr(api, name)
    if name == "Session":
        from lmpeek.session import Session

        return Session
    if name in ("capture", "features"):  # lmpeek.capture.activations(...) after a bare import lmpeek
        import importlib

        return importlib.import_module(f"lmpeek.{name}")
    if name == "show":
        from lmpeek.views.widget import show

        return show
    raise AttributeError(f"module 'lmpeek' has no attribute {name!r}")
