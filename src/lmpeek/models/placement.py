"""Where a model's weights go and whether they fit: dtype, device, accelerate device maps, and the
memory estimate lmpeek prints (and checks) before it loads anything.

The estimate comes from the config alone: the model is built on the meta device (accelerate's
`init_empty_weights`, no memory, no weights read) and its parameters are counted in the dtype they
will have. Working memory is what one trace of `TRACE_TOKENS` tokens adds on top (measured on the
default model: +177 MB at 4,096 tokens, benchmarks/trace_memory.py): a few [T, d] and [T, d_mlp]
activations, one attention block of every head, one chunk of logits and the runtime's own overhead.
A budget is what the device has free now (`accelerate.utils.get_max_memory`) or what `max_memory`
allows. Importing this module does not import torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from lmpeek.errors import InsufficientMemory, InvalidInput

TRACE_TOKENS = 4096  # the working memory is estimated for a trace this long (or the context, if shorter)
ATTENTION_BLOCK = 256  # rows of queries the blocked kernel holds at once (capture/attention_kernel.py)
LOGIT_CHUNK = 256  # rows of logits held at once (capture/trace.py)
RUNTIME_BYTES = 32 * 1024**2  # the per-layer summaries' buffers and the allocator's slack
SHOW_ABOVE = 2 * 1024**3  # bytes of weights above which loading prints the estimate unasked

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_GiB = 1024**3


@dataclass
class MemoryEstimate:
    """What loading a model (and tracing TRACE_TOKENS tokens) will take, against what there is."""

    label: str
    dtype: str  # "float32", "bfloat16", ...
    n_params: int
    weights: int  # bytes of weights in that dtype
    work: int  # bytes a trace of `tokens` tokens adds
    tokens: int
    where: dict[str, int] = field(default_factory=dict)  # device -> bytes of weights placed there
    budget: dict[str, int] = field(default_factory=dict)  # device -> bytes available there
    mapped: bool = False  # placed by a device map
    forced: bool = False

    @property
    def total(self) -> int:
        return self.weights + self.work

    def short_of(self) -> list[tuple[str, int, int]]:
        """(device, needed, available) for every device the plan overfills; disk never overfills.
        One device must hold the weights and a trace's activations; under a device map the budgets
        are accelerate's, which are for weights."""
        out = []
        for device, placed in self.where.items():
            need = placed + (0 if self.mapped else self.work)
            have = self.budget.get(device)
            if device != "disk" and have is not None and need > have:
                out.append((device, need, have))
        return out

    @property
    def fits(self) -> bool:
        return not self.short_of()

    def describe(self) -> str:
        plan = ", ".join(f"{_size(b)} on {d}" for d, b in self.where.items())
        free = ", ".join(f"{d} {_size(b)}" for d, b in self.budget.items() if d in self.where)
        if "disk" in self.where:
            free = f"{free}, disk (no limit)" if free else "disk (no limit)"
        return (
            f"{self.label}: {_count(self.n_params)} parameters, ≈ {_size(self.total)} "
            f"({_size(self.weights)} of {self.dtype} weights + {_size(self.work)} to trace "
            f"{self.tokens:,} tokens); placed: {plan}; available: {free or 'unknown'}"
        )


def _size(n: int) -> str:
    if n >= _GiB:
        return f"{n / _GiB:.1f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.0f} MiB"
    return f"{n / 1024:.0f} KiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n:,}"


# --- parsing what the user asked for ------------------------------------------------------------


def parse_device_map(value: Any) -> str | dict[str, Any] | None:
    """None, a strategy ("auto", "balanced", "balanced_low_0", "sequential"), or a dict module name ->
    device ("cpu", "disk", "cuda:0", 0). A string may also be JSON or "module=device,module=device"."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in DEVICE_MAP_STRATEGIES:
            return text
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise InvalidInput(f"device_map is not valid JSON: {err.msg} (at {err.pos})") from err
        elif "=" in text:
            value = dict(_pairs("device_map", text))
        else:
            raise InvalidInput(
                f"Unknown device_map {value!r}: use one of {', '.join(DEVICE_MAP_STRATEGIES)}, a JSON "
                "object or 'module=device,...' (e.g. 'model.layers.0=cpu,model.layers.1=disk')"
            )
    if not isinstance(value, dict) or not value:
        raise InvalidInput(f"device_map must be a strategy name or a non-empty dict, got {value!r}")
    out: dict[str, Any] = {}
    for module, device in value.items():
        if not isinstance(module, str):
            raise InvalidInput(f"device_map keys are module names (str), got {module!r}")
        out[module] = _map_device(module, device)
    return out


def _map_device(module: str, device: Any) -> Any:
    if isinstance(device, bool) or not isinstance(device, int | str):
        raise InvalidInput(
            f"device_map[{module!r}]: a device is 'cpu', 'disk', 'cuda:N' or N, got {device!r}"
        )
    if isinstance(device, str) and re.fullmatch(r"\d+", device.strip()):
        device = int(device.strip())
    if isinstance(device, int):
        _require_cuda(device, f"device_map[{module!r}]")
        return device
    device = device.strip()
    if device in ("cpu", "disk"):
        return device
    from lmpeek.models.sources import parse_device

    return parse_device(device)  # "cuda:1", "mps": refused when this machine has none


def _require_cuda(index: int, what: str) -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index < 0 or index >= count:
        have = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise InvalidInput(
            f"{what}: GPU {index} is not available: this machine has {have}; use 'cpu' or 'disk'"
        )


def parse_max_memory(value: Any) -> dict[Any, int] | None:
    """None, or a dict device -> bytes from {"cpu": "8GiB", 0: "20GiB"} or "cpu=8GiB,0=20GiB"."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dict(_pairs("max_memory", value))
    if not isinstance(value, dict) or not value:
        raise InvalidInput(f"max_memory must be a dict like {{'cpu': '8GiB', 0: '20GiB'}}, got {value!r}")
    out: dict[Any, int] = {}
    for device, size in value.items():
        key: Any = device.strip() if isinstance(device, str) else device
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            _require_cuda(key, "max_memory")
        elif key not in ("cpu", "disk", "mps"):
            raise InvalidInput(
                f"max_memory: unknown device {device!r}; use 'cpu', 'disk', 'mps' or a GPU index"
            )
        out[key] = _bytes(f"max_memory[{device!r}]", size)
    return out


def _bytes(what: str, size: Any) -> int:
    from accelerate.utils import convert_file_size_to_int

    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    if isinstance(size, str):
        try:
            n = convert_file_size_to_int(size.strip())
        except ValueError:
            n = -1
        if n > 0:
            return n
    raise InvalidInput(f"{what}: a size is a positive number of bytes or e.g. '8GiB', '500MB', got {size!r}")


def _pairs(what: str, text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise InvalidInput(f"{what}: expected 'name=value,...', got {part.strip()!r}")
        pairs.append((key.strip(), val.strip()))
    return pairs


# --- the estimate -------------------------------------------------------------------------------


def estimate(
    config: Any,
    *,
    label: str,
    dtype: Any,
    device: str,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, int] | None = None,
    trust_remote_code: bool = False,
) -> MemoryEstimate:
    """The memory a model of this config will take where it is asked to go (nothing is loaded)."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes, get_max_memory
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    # a tied embedding and head are one tensor in memory: count it once (outside the context, which
    # would turn the assignment into a new meta parameter)
    meta.tie_weights()
    real_dtype = _weights_dtype(config, dtype, torch)
    n_params = sum(p.numel() for p in meta.parameters())
    sizes = compute_module_sizes(meta, dtype=real_dtype)
    weights = int(sizes[""])
    tokens = min(TRACE_TOKENS, _context(config) or TRACE_TOKENS)
    budget = {_name(k): int(v) for k, v in get_max_memory(dict(max_memory) if max_memory else None).items()}
    if device_map is None:
        where = {_name(device): weights}
        if "mps" in where and "mps" not in budget:  # Apple's GPU shares the CPU's memory
            budget["mps"] = budget.get("cpu", 0)
    else:
        where = _placed(meta, device_map, max_memory, real_dtype, sizes)
    return MemoryEstimate(
        label=label,
        dtype=str(real_dtype).removeprefix("torch."),
        n_params=n_params,
        weights=weights,
        work=_work_bytes(config, tokens),
        tokens=tokens,
        where=where,
        budget=budget,
        mapped=device_map is not None,
    )


def _weights_dtype(config: Any, dtype: Any, torch: Any) -> Any:
    if dtype != "auto":
        return dtype
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float32


def _context(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _work_bytes(config: Any, tokens: int) -> int:
    """A trace's activations in float32: the residual stream and a few copies of it, the MLP's
    hidden activations (up, gate, act), one attention block of every head, one chunk of logits."""
    text = getattr(config, "get_text_config", lambda: config)()
    d = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 0)
    d_mlp = int(getattr(text, "intermediate_size", 0) or getattr(text, "n_inner", 0) or 4 * d)
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 1)
    vocab = int(getattr(text, "vocab_size", 0) or 0)
    floats = tokens * (6 * d + 3 * d_mlp) + heads * ATTENTION_BLOCK * tokens + LOGIT_CHUNK * vocab
    return 4 * floats + RUNTIME_BYTES


def _placed(meta: Any, device_map: Any, max_memory: Any, dtype: Any, sizes: dict[str, int]) -> dict[str, int]:
    """Bytes of weights per device under a device map (a strategy is planned as accelerate will)."""
    from accelerate.utils import infer_auto_device_map

    if isinstance(device_map, str):
        no_split = getattr(meta, "_no_split_modules", None) or []
        plan = infer_auto_device_map(meta, max_memory=max_memory, no_split_module_classes=list(no_split),
                                     dtype=dtype)  # fmt: skip
    else:
        plan = device_map
    where: dict[str, int] = {}
    for module, device in plan.items():
        key = _name(device)
        where[key] = where.get(key, 0) + int(sizes.get(module, 0))
    return where


def _name(device: Any) -> str:
    """One spelling per device: 0 and "cuda:0" are both "cuda:0"; "cuda" is "cuda:0"."""
    if isinstance(device, int):
        return f"cuda:{device}"
    text = str(device)
    return "cuda:0" if text == "cuda" else text


def require_fit(est: MemoryEstimate, *, force: bool) -> None:
    """Refuse a model that will not fit where it is asked to go, unless forced."""
    short = est.short_of()
    if not short:
        return
    if force:
        est.forced = True
        return
    device, need, have = short[0]
    hints = []
    if est.dtype == "float32":
        hints.append(f"--dtype bfloat16 (≈ {_size(est.weights // 2 + est.work)})")
    hints.append("--device-map auto (puts what does not fit on the CPU, then on disk: slower)")
    raise InsufficientMemory(
        f"{est.label} needs ≈ {_size(need)} on {device} ({_size(est.weights)} of {est.dtype} weights "
        f"+ {_size(est.work)} to trace {est.tokens:,} tokens) but {device} has {_size(have)} available. "
        f"Try {' or '.join(hints)}, or pass --force (force=True) to load it anyway."
    )
