"""A model ready for lmpeek: the transformers model, its tokenizer and its bound adapter."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from lmpeek.models.adapters import Bound, bind


@dataclass
class LoadedModel:
    hf: Any  # transformers PreTrainedModel (CausalLM), eval mode
    tokenizer: Any  # transformers tokenizer
    bound: Bound
    name: str
    origin: str = "memory"  # what kind of source: "default" | "folder" | "hub" | "gguf" | "tiny" | "memory"
    # Where the model came from, as the user named it: "default", the .gguf file, the folder, the hub
    # id, "tiny:llama"; None for a model wrapped from memory.
    source: str | None = None
    # The folder that was actually loaded: lmpeek's converted safetensors copy for "default" and
    # GGUF files, the folder itself, the hub id's snapshot folder; None when nothing was read from disk.
    folder: str | None = None
    # What loading was estimated to take (models.placement.MemoryEstimate), when it came from disk
    memory: Any = None

    @property
    def architecture(self) -> str:
        return self.bound.architecture

    @property
    def n_layers(self) -> int:
        return self.bound.n_layers

    @property
    def n_heads(self) -> int:
        return self.bound.n_heads

    @property
    def d_model(self) -> int:
        return self.bound.d_model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device. A model split by accelerate keeps offloaded
        weights on "meta" and moves inputs itself; its first real device is then the answer."""
        weight = self.hf.get_input_embeddings().weight
        if weight.device.type != "meta":
            return weight.device
        for p in self.hf.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

    @property
    def context_length(self) -> int | None:
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(self.hf.config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @cached_property
    def fingerprint(self) -> dict[str, str]:
        """{"name", "config", "weights", "tokenizer", "id"}: what stored traces record so that another
        model never reads them (see models.fingerprint). Computed once per LoadedModel: a model whose
        weights are edited in place afterwards needs a new `wrap`."""
        from lmpeek.models.fingerprint import fingerprint

        return fingerprint(self.hf, self.tokenizer, self.name)

    @property
    def source_label(self) -> str | None:
        """The source without the local folders above it ("default", a hub id, "model.Q4_K_M.gguf",
        a folder's name): what info() reports, since info() travels inside saved and served traces."""
        if self.origin in ("gguf", "folder") and self.source:
            return Path(self.source).name
        return self.source

    def info(self) -> dict[str, Any]:
        b = self.bound
        return {
            "name": self.name,
            "architecture": self.architecture,
            "adapter": b.adapter.name,
            "n_layers": b.n_layers,
            "n_heads": b.n_heads,
            "n_kv_heads": b.n_kv_heads,
            "d_model": b.d_model,
            "d_head": b.d_head,
            "d_mlp": b.d_mlp,
            "rotary_dims": b.rotary_dims,
            "parallel": b.parallel,
            "vocab_size": int(self.hf.config.vocab_size),
            "context_length": self.context_length,
            "origin": self.origin,
            "source": self.source_label,
            "fingerprint": self.fingerprint,
        }


def wrap(hf_model: Any, tokenizer: Any, name: str | None = None, **kw: Any) -> LoadedModel:
    """Wrap an in-memory transformers CausalLM (+ tokenizer) without loading anything. A model that
    is not a causal language model (bidirectional attention, no LM head, an encoder) is refused."""
    from lmpeek.models.causal import require_causal_model

    require_causal_model(hf_model, kw.get("source"))
    return LoadedModel(
        hf=hf_model,
        tokenizer=tokenizer,
        bound=bind(hf_model),
        name=name or getattr(hf_model.config, "name_or_path", "") or hf_model.config.model_type,
        **kw,
    )
