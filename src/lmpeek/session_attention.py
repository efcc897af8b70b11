"""The attention overview's questions to a Session (model view thumbnails, neuron view q·k terms).

Functions of a `lmpeek.Session` rather than methods so that they can land while session.py is being
reworked; callers (server routes, notebook) pass the Session. Everything comes from the recompute
path: each layer's Q and K recomputed from the stored residual stream (cached by the Session), then
only the rows a window needs: a thumbnail grid never holds an [L, H, T, T] array, nor even one [T, T].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmpeek.analysis.attention_overview import QkTerms, pool_factor, pool_window, qk_terms
from lmpeek.session import OutOfRange, Session

MAX_GRID_WINDOW = 1024  # tokens a thumbnail may summarise (pooled); wider windows say so
MAX_GRID_SIZE = 128  # thumbnail cells per side


@dataclass(frozen=True)
class AttentionGrid:
    patterns: np.ndarray  # [L, H, n, n] float16: pooled rows start..end-1 × keys start..end-1
    start: int
    end: int
    factor: int  # tokens per cell along each axis (1: not pooled); see analysis.attention_overview


def _qk_points(session: Session, rope: bool = True) -> tuple[str, str]:
    """The q and k hook points the model scores with (after RoPE), or the ones RoPE rotates."""
    b = session.model.bound
    if b.rotary_dims is None:
        return "attn.hook_q", "attn.hook_k"
    return ("attn.hook_rot_q", "attn.hook_rot_k") if rope else b.pre_rope_points()


def _window(session: Session, trace_id: str, start: int, end: int | None) -> tuple[int, int]:
    T = len(session.get(trace_id))
    end = T if end is None else end
    if not 0 <= start < end <= T:
        raise OutOfRange(f"need 0 <= start < end <= {T} (the trace has {T} tokens), got {start}, {end}")
    if end - start > MAX_GRID_WINDOW:
        raise OutOfRange(f"a window of {end - start} tokens is too wide: at most {MAX_GRID_WINDOW}")
    return start, end


def attention_grid(session: Session, trace_id: str, start: int = 0, end: int | None = None,
                   size: int = 64) -> AttentionGrid:  # fmt: skip
    """Every layer × head's pattern over tokens start..end-1 (queries and keys), pooled to at most
    `size` cells per side. Computed layer by layer from the query rows in the window
    against the keys up to `end` (a row's weights on keys before `start` are not shown, so rows of a
    window that starts after 0 need not sum to 1)."""
    from lmpeek.capture.attention_rows import pattern_rows

    if not 1 <= size <= MAX_GRID_SIZE:
        raise OutOfRange(f"size must be in 1..{MAX_GRID_SIZE}, got {size}")
    start, end = _window(session, trace_id, start, end)
    model = session.model
    q_hook, k_hook = _qk_points(session)
    factor = pool_factor(end - start, size)
    n = -(-(end - start) // factor)
    out = np.empty((model.n_layers, model.n_heads, n, n), dtype=np.float16)
    heads = range(model.n_heads)
    for layer in range(model.n_layers):  # one layer's heads at a time: [H, w, end] scores at most
        q = np.stack([session.component(trace_id, f"blocks.{layer}.{q_hook}", h)[start:end] for h in heads])
        k = np.stack([session.component(trace_id, f"blocks.{layer}.{k_hook}", h)[:end] for h in heads])
        rows = pattern_rows(model, layer, q, k)[..., start:end]
        out[layer] = pool_window(rows, factor).astype(np.float16)
    return AttentionGrid(out, start, end, factor)


@dataclass(frozen=True)
class QkPart:
    name: str  # "rotated" (what the model scores with), "unrotated" (before RoPE) or "plain" (no RoPE)
    q_hook: str
    k_hook: str
    q: np.ndarray  # [d]
    k: np.ndarray  # [d]
    terms: QkTerms


@dataclass(frozen=True)
class QkAnswer:
    layer: int
    head: int
    kv_head: int
    query: int
    key: int
    scale: float
    softcap: float | None
    window: int | None
    parts: list[QkPart]
    pattern_row: np.ndarray  # [query + 1] the model's pattern row (Session.attention), for comparison


def qk(session: Session, trace_id: str, layer: int, head: int, query: int, key: int) -> QkAnswer:
    """The products q_i·k_i behind one score, for q/k after RoPE (what the model scores with) and,
    where the model has RoPE, before it (the same dot products without position information)."""
    model = session.model
    b = model.bound
    T = len(session.get(trace_id))
    limits = (("layer", layer, model.n_layers), ("head", head, model.n_heads), ("query", query, T))
    for name, value, n in limits:
        if not 0 <= value < n:
            raise OutOfRange(f"{name} must be < {n}, got {value}")
    if not 0 <= key <= query:
        raise OutOfRange(f"key must be in 0..{query}: a query attends only to itself and earlier tokens")
    params = b.attention_params(layer)
    names = ["plain"] if b.rotary_dims is None else ["rotated", "unrotated"]
    parts = []
    for name in names:
        q_point, k_point = _qk_points(session, rope=name != "unrotated")
        q_hook, k_hook = f"blocks.{layer}.{q_point}", f"blocks.{layer}.{k_point}"
        q = session.component(trace_id, q_hook, head)[query]
        keys = session.component(trace_id, k_hook, head)[: query + 1]
        terms = qk_terms(q, keys, key, params.scale, params.softcap, params.window)
        q, k = np.asarray(q, np.float32), np.asarray(keys[key], np.float32)
        parts.append(QkPart(name, q_hook, k_hook, q, k, terms))
    row = session.attention(trace_id, layer, head, query=query)[0, : query + 1].astype(np.float32)
    kv_head = head // (model.n_heads // b.n_kv_heads)
    return QkAnswer(layer, head, kv_head, query, key, params.scale, params.softcap, params.window, parts, row)
