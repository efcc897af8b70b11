"""What the batched benchmarks share: token-id lists padded into [B, T] batches (what the plain
transformers forward they compare against is given), and the interleaved round-robin timing whose
medians they report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def padded(seqs: Sequence[Sequence[int]]):
    """input_ids and attention_mask [B, T] (torch.long) for `seqs`, right-padded with 0 to the
    longest; the mask is 1 on each sequence's own tokens."""
    import torch  # here, not at the top: the benchmarks answer --help without loading torch

    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.as_tensor(s)
        mask[row, : len(s)] = 1
    return ids, mask


def batches(seqs: Sequence[Sequence[int]], size: int) -> list:
    """`seqs` in groups of `size` (the last one shorter), each padded: [(ids, mask), …]."""
    return [padded(seqs[a : a + size]) for a in range(0, len(seqs), size)]


def interleaved(
    modes: dict[str, Callable[[], object]], repeat: int, warm_up: bool = True
) -> dict[str, float]:
    """The median wall time in seconds of each mode over `repeat` rounds, each round running every mode
    once in turn, so a change in the machine's speed falls on all of them alike. With `warm_up`, each
    mode runs once first, untimed (first-call costs: lazy loads, allocator growth)."""
    if warm_up:
        for fn in modes.values():
            fn()
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeat):
        for name, fn in modes.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def sample_text(tokenizer, tokens: int) -> str:
    """The first words of benchmarks/sample.txt that the tokenizer makes at most `tokens` tokens."""
    import pathlib

    words = pathlib.Path(__file__).with_name("sample.txt").read_text().split()
    text = ""
    for w in words:
        if len(tokenizer.encode(text + " " + w)) > tokens:
            break
        text = (text + " " + w).strip()
    return text
