"""MLP neurons: which fire at a token, and one neuron over a whole text."""

from __future__ import annotations

import numpy as np


def _acts(acts) -> np.ndarray:
    a = np.asarray(acts)
    if a.ndim != 2:
        raise ValueError(f"acts must be [T, M] (MLP activations per token), got shape {a.shape}")
    return a


def top_neurons(acts: np.ndarray, t: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """acts [T, M] (mlp.hook_post): the k neurons with the largest |activation| at token t, sorted by
    |value| descending (ties: lower index first) -> (indices [k] int64, values [k], signed, in acts'
    dtype). k is capped at M; ValueError if t is not in 0..T-1 or k < 0."""
    acts = _acts(acts)
    if not 0 <= t < acts.shape[0]:
        raise ValueError(f"token {t} is out of range 0..{acts.shape[0] - 1}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    row = acts[t]
    order = np.lexsort((np.arange(row.size), -np.abs(row)))[:k].astype(np.int64)
    return order, row[order]


def neuron_over_text(acts: np.ndarray, index: int) -> np.ndarray:
    """One neuron's activation at every token: acts [T, M] -> [T]. ValueError if index is not in 0..M-1."""
    acts = _acts(acts)
    if not 0 <= index < acts.shape[1]:
        raise ValueError(f"neuron {index} is out of range 0..{acts.shape[1] - 1}")
    return acts[:, index].copy()
