"""MLP neurons: which fire at a token, and one neuron over a whole text."""

from __future__ import annotations

import numpy as np


def top_neurons(acts: np.ndarray, t: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """acts [T, M] (mlp.hook_post): the k neurons with the largest |activation| at token t, largest
    first (ties: lower index first) -> (indices [k], values [k])."""
    row = np.asarray(acts)[t]
    order = np.lexsort((np.arange(row.size), -np.abs(row)))[:k]
    return order, row[order]


def neuron_over_text(acts: np.ndarray, index: int) -> np.ndarray:
    """One neuron's activation at every token: [T, M] -> [T]."""
    acts = np.asarray(acts)
    if not 0 <= index < acts.shape[1]:
        raise ValueError(f"neuron {index} is out of range 0..{acts.shape[1] - 1}")
    return acts[:, index]
