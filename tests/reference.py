"""Independent references the tests compare lmpeek with: plain transformers, nothing of lmpeek's in the
forward (only hf_compat's switch to eager attention, the one implementation that returns patterns)."""

from __future__ import annotations

import numpy as np
import torch

from lmpeek.models import hf_compat


def eager_attentions(hf, token_ids) -> list[np.ndarray]:
    """[L] of [H, T, T] float32: transformers' eager attention patterns for one sequence."""
    ids = torch.as_tensor(np.asarray(token_ids))[None]
    with hf_compat.attention_implementation_as(hf, "eager"), torch.no_grad():
        out = hf(ids, output_attentions=True).attentions
    return [a[0].float().numpy() for a in out]
