"""Heavy per-layer tensors recomputed on demand from a trace's token ids, instead of being stored.

A Trace keeps only summaries; a view that needs one layer's attention pattern gets it here by running
the model up to that layer and stopping there (later layers cannot change it).
"""

from __future__ import annotations

import numpy as np
import torch

from lmpeek.capture.hooks import attach, install_attention
from lmpeek.errors import InvalidInput
from lmpeek.models.loaded import LoadedModel


class _Stop(Exception):
    """Raised from a hook to end the forward pass once the wanted layer has run."""


@torch.inference_mode()
def attention_pattern(model: LoadedModel, token_ids, layer: int) -> np.ndarray:
    """Layer `layer`'s attention pattern [H, T, T] (float32) for the sequence `token_ids`."""
    if not 0 <= layer < model.n_layers:
        raise InvalidInput(f"layer must be in 0..{model.n_layers - 1}, got {layer}")
    install_attention(model.hf)
    got: dict[str, np.ndarray] = {}

    def keep(pattern: torch.Tensor) -> None:
        got["pattern"] = pattern[0].to("cpu", torch.float32).numpy().copy()
        raise _Stop

    ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long, device=model.device)[None]
    with attach(model.bound, {f"blocks.{layer}.attn.hook_pattern": keep}):
        try:
            model.hf(input_ids=ids, use_cache=False)
        except _Stop:
            pass
    return got["pattern"]
