"""A model's fingerprint: what a stored trace records so that another model never reinterprets it.

A stored trace is recomputed (attention slices, vectors, the logit lens) with whatever model the reader
has loaded, so the reader must be sure it is the model that made the trace. Three parts, each a short
hex digest:

- config: canonical JSON of `config.to_dict()` without the fields that change between two loads of the
  same model and never change a number (paths, transformers version, attention backend, cache flags,
  label maps, token ids used only by generation).
- weights: every parameter's name, shape and dtype, a deterministic strided sample of its values, and
  the sum of its values' bit patterns as integers: exact, so summation order (threads, device) cannot
  change it, and any edit of any single value does (a float sum would need rounding, and rounding
  hides small edits). Costs one read of the weights: ~0.2 s for the 135M default model on a busy CPU.
- tokenizer: the vocabulary (the token strings a trace's ids decode to).

Two fingerprints are the same model when their `id` (a digest of the three parts) is equal; `name`
is only for messages.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

SAMPLES_PER_TENSOR = 256

# config fields that differ between two loads of one model but never change what it computes
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "name_or_path",
        "transformers_version",
        "architectures",
        "torch_dtype",  # the weights' dtype is part of the weight identity instead
        "dtype",
        "attn_implementation",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "output_router_logits",
        "return_dict",
        "torchscript",
        "id2label",
        "label2id",
        "problem_type",
        "finetuning_task",
        "task_specific_params",
        "tokenizer_class",
        "prefix",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "unk_token_id",
        "decoder_start_token_id",
        "chunk_size_feed_forward",
        "auto_map",
    }
)


def _digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def _stable(value: Any) -> Any:
    """The config without volatile fields, recursively (sub-configs of multimodal models too).
    Private fields (`_name_or_path`, `_attn_implementation`, `_commit_hash`, ...) all start with '_'."""
    if isinstance(value, dict):
        return {
            str(k): _stable(v)
            for k, v in value.items()
            if not str(k).startswith("_") and k not in _VOLATILE_CONFIG_KEYS
        }
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    return value


def config_hash(config: Any) -> str:
    """Digest of the parts of a transformers config that can change a model's numbers."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return _digest(json.dumps(_stable(data), sort_keys=True, default=str, allow_nan=True))


_NUMPY_DEVICES = ("cpu",)  # where the sums are taken with numpy rather than torch


def weights_hash(module: Any) -> str:
    """Digest of every parameter's name, shape, dtype, a strided sample of its values and the sum of
    its bit patterns as integers (exact, so independent of summation order, threads and device, and
    changed by any edit of any single value). torch is imported here, not at the top: the store reads
    fingerprints (`same_model`, `describe`) without a model."""
    import torch

    with torch.no_grad():
        return _weights_hash(torch, module)


def _weights_hash(torch: Any, module: Any) -> str:
    # integer types of each element size: a tensor's bits are summed as integers of its own width
    _BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    heads: list[str] = []
    samples: list[Any] = []
    sums: list[Any] = []
    from lmpeek.models.hf_compat import offloaded_parameters

    offloaded = offloaded_parameters(module)
    for name, p in module.named_parameters():
        heads.append(f"{name}|{tuple(p.shape)}|{p.dtype}")
        if p.device.type == "meta" and name in offloaded:  # accelerate keeps it on disk / CPU
            p = offloaded[name]
        if p.device.type == "meta" or p.element_size() not in _BITS:
            # no values anywhere or an exotic type: identified by name, shape and dtype
            samples.append(torch.zeros(0, dtype=torch.float64))
            sums.append(0)
            continue
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
        samples.append(flat[::step][:SAMPLES_PER_TENSOR].to(torch.float64))
        bits = flat.view(_BITS[p.element_size()])
        if bits.device.type in _NUMPY_DEVICES:
            # numpy, one thread: torch's CPU reductions use a thread pool that is several times
            # slower than one thread when the cores are busy (measured: 0.4-1.6 s against 0.2 s)
            sums.append(int(bits.numpy().sum(dtype=np.int64)))
        else:
            sums.append(bits.sum().reshape(1))  # int64; wraps only for 8-byte types, as everywhere
    if not heads:
        return _digest("no parameters")
    # one transfer from the device for all tensors, not one sync per tensor (a model split over
    # devices gathers its small per-tensor results on one of them first)
    on_device = [s for s in sums if isinstance(s, torch.Tensor)]
    device = on_device[0].device if on_device else torch.device("cpu")
    sample_values = torch.cat([s.to(device) for s in samples]).cpu().numpy()
    device_sums = iter(torch.cat([s.to(device) for s in on_device]).cpu().tolist() if on_device else [])
    h = hashlib.sha256()
    start = 0
    for head, sample, total in zip(heads, samples, sums, strict=True):
        values = sample_values[start : start + len(sample)]
        start += len(sample)
        h.update(head.encode())
        h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
        h.update(str(next(device_sums) if isinstance(total, torch.Tensor) else total).encode())
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    """Digest of the vocabulary (token string -> id), added tokens included."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return _digest("no tokenizer")
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return _digest(json.dumps(vocab, ensure_ascii=False))


def fingerprint(hf_model: Any, tokenizer: Any, name: str) -> dict[str, str]:
    """{"name", "config", "weights", "tokenizer", "id"}: see the module docstring."""
    parts = {
        "config": config_hash(hf_model.config),
        "weights": weights_hash(hf_model),
        "tokenizer": tokenizer_hash(tokenizer),
    }
    return {"name": name, **parts, "id": _digest("|".join(parts[k] for k in sorted(parts)))}


def same_model(made_by: dict[str, Any] | None, loaded: dict[str, Any]) -> bool:
    """Whether a trace whose model carried fingerprint `made_by` may be read with model `loaded`."""
    return bool(made_by) and made_by.get("id") == loaded.get("id")


def describe(fp: dict[str, Any] | None) -> str:
    """'tiny:llama (config 1a2b…, weights 3c4d…)' for messages."""
    if not fp:
        return "an unknown model (the trace has no fingerprint: it was made by an older lmpeek)"
    name = fp.get("name") or "an unnamed model"
    return f"{name} (config {str(fp.get('config', '?'))[:8]}, weights {str(fp.get('weights', '?'))[:8]})"
