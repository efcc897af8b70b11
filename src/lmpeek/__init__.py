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
# why the model said it (lmpeek.attribution): name -> the module that defines it
_WHY = {
    "attribute": "attribute",
    "ablate_prompt": "prompt_ablation",
    "faithfulness": "faithfulness",
    "flow": "flow",
    "intervene": "intervene",
    "patch_grid": "patching",
    "attribution_patching": "patching",
    "steer_generate": "steering",
}
__all__ = sorted(_API | set(_WHY) | {"Session", "show", "capture", "features", "attribution", "__version__"})


def __getattr__(name: str) -> Any:
    if name in _API:
        from lmpeek import api

        return getattr(api, name)
    if name == "Session":
        from lmpeek.session import Session

        return Session
    if name in _WHY:
        import importlib

        return getattr(importlib.import_module(f"lmpeek.attribution.{_WHY[name]}"), name)
    if name in ("capture", "features", "attribution"):  # usable after a bare `import lmpeek`
        import importlib

        return importlib.import_module(f"lmpeek.{name}")
    if name == "show":
        from lmpeek.views.widget import show

        return show
    raise AttributeError(f"module 'lmpeek' has no attribute {name!r}")
