"""Batched capture: hook points of many texts, several per forward (what a corpus pass needs).

`activations(model, texts_or_ids, hooks, batch_size=8)` pads each batch to its longest text (right
or left), passes the attention mask and position ids that make every text see only its own tokens at
its own positions, and returns per text {hook: [T_i, ...]} float32, equal to the unbatched trace's
kept tensors up to the batched matmuls' float rounding (tests/capture/test_batched.py: 1e-5 on every
tiny architecture, both padding sides). Texts are run in order of length so each batch pads little.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from lmpeek import validate
from lmpeek.capture.hooks import Handler, attach
from lmpeek.capture.tokens import from_ids, tokenize
from lmpeek.capture.trace import require_model, resolve_keep, vocab_size
from lmpeek.errors import InvalidInput
from lmpeek.models.loaded import LoadedModel


def _ids(model: LoadedModel, item: str | Sequence[int]) -> np.ndarray:
    if isinstance(item, str):
        return tokenize(model.tokenizer, item, model.context_length).token_ids
    return from_ids(model.tokenizer, item, model.context_length, vocab_size(model)).token_ids


def _rows(x: torch.Tensor, i: int, start: int, n: int, pattern: bool) -> np.ndarray:
    """Text i's part of a batched hook tensor: its n positions from `start` (a pattern: its n × n
    block of queries and keys)."""
    if pattern:  # [B, H, Tq, Tk]
        part = x[i, :, start : start + n, start : start + n]
    else:  # [B, T, ...]
        part = x[i, start : start + n]
    return part.detach().to("cpu", torch.float32).numpy().copy()


class _Captured(Exception):
    """Raised by the last hook point a batch needs: what the model computes after it (the later
    layers, the logits over the whole vocabulary) would be thrown away. A corpus pass that reads a
    middle layer runs a third of the model and none of its unembedding."""


def _keeper(
    out: list[dict[str, np.ndarray]],
    name: str,
    layout: list[tuple[int, int, int]],
    seen: set[str],
    n_names: int,
) -> Handler:
    """A handler storing each batch row's part of hook `name` as out[text][name]; layout: (text,
    first position, length) per row. Once all `n_names` points of the batch are in, it stops the
    forward (_Captured)."""
    pattern = name.endswith("hook_pattern")

    def keep(x: torch.Tensor) -> None:
        for row, (i, start, n) in enumerate(layout):
            out[i][name] = _rows(x, row, start, n, pattern)
        seen.add(name)
        if len(seen) == n_names:
            raise _Captured

    return keep


@torch.inference_mode()
def activations(
    model: LoadedModel,
    texts_or_ids: Iterable[str | Sequence[int]],
    hooks: Iterable[str] | str,
    batch_size: int = 8,
    padding_side: str = "right",
) -> list[dict[str, np.ndarray]]:
    """The hook points `hooks` (names or glob patterns, as `lmpeek.trace`'s keep) of every text (or
    token id sequence), `batch_size` texts per forward. Returns one {hook: array} per input, in the
    input's order; arrays are [T_i, ...] (patterns [H, T_i, T_i]) float32."""
    require_model(model)
    batch_size = validate.integer("batch_size", batch_size, 1, 4096)
    if padding_side not in ("right", "left"):
        raise InvalidInput(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    names = resolve_keep(model, hooks)
    seqs = [_ids(model, item) for item in texts_or_ids]
    out: list[dict[str, np.ndarray]] = [{} for _ in seqs]
    pad_id = getattr(model.tokenizer, "pad_token_id", None)
    pad_id = int(pad_id) if isinstance(pad_id, int) else 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for a in range(0, len(order), batch_size):
        members = order[a : a + batch_size]
        lengths = [len(seqs[i]) for i in members]
        T = max(lengths)
        ids = torch.full((len(members), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(members), T), dtype=torch.long)
        starts = []
        for row, i in enumerate(members):
            n = lengths[row]
            start = 0 if padding_side == "right" else T - n
            ids[row, start : start + n] = torch.as_tensor(seqs[i])
            mask[row, start : start + n] = 1
            starts.append(start)
        # left padding: a text's first token is position 0 whatever precedes it (as model.generate does)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)

        layout = list(zip(members, starts, lengths, strict=True))
        device = model.device
        seen: set[str] = set()
        try:
            with attach(model.bound, {n: _keeper(out, n, layout, seen, len(names)) for n in names}):
                model.hf(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    use_cache=False,
                )
        except _Captured:
            pass
        missing = set(names) - seen
        if missing:  # never silently a text without its values
            raise InvalidInput(
                f"these hook points were not computed by {model.name}: {', '.join(sorted(missing))}"
            )
    return out
