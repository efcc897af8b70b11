"""Activation statistics over the last (feature) dimension."""

from __future__ import annotations

import torch


def norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each vector: x [..., D] -> [...]."""
    return torch.linalg.vector_norm(x.float(), dim=-1)
