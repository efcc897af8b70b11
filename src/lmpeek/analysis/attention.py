"""Attention patterns and their statistics."""

from __future__ import annotations

import torch


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention distribution: pattern [..., Tq, Tk] -> [..., Tq]."""
    p = pattern.float()
    return -torch.special.xlogy(p, p).sum(-1)
