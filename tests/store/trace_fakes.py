"""Traces built by hand (no model run), so that store tests stay fast."""

from __future__ import annotations

import numpy as np

from lmpeek.capture.trace import Trace

LLAMA = {"name": "tiny:llama", "config": "c" * 16, "weights": "w" * 16, "tokenizer": "t" * 16, "id": "a" * 16}
GPT2 = {"name": "tiny:gpt2", "config": "d" * 16, "weights": "x" * 16, "tokenizer": "t" * 16, "id": "b" * 16}


def make_trace(n_tokens: int = 8, fingerprint: dict | None = LLAMA, n_layers: int = 2, k: int = 3) -> Trace:
    rng = np.random.default_rng(n_tokens)
    T = n_tokens
    tokens = [f"t{i}" for i in range(T)]
    model = {"name": fingerprint["name"] if fingerprint else "old", "n_layers": n_layers}
    if fingerprint is not None:
        model["fingerprint"] = fingerprint
    return Trace(
        text="".join(tokens),
        tokens=tokens,
        token_ids=np.arange(T, dtype=np.int64),
        offsets=np.stack([np.arange(T) * 2, np.arange(T) * 2 + 2], axis=1).astype(np.int64),
        topk_ids=rng.integers(0, 50, (T, k)).astype(np.int64),
        topk_probs=rng.random((T, k)).astype(np.float32),
        topk_tokens=[[f"x{j}" for j in range(k)] for _ in range(T)],
        entropy=rng.random(T).astype(np.float32),
        loss=rng.random(T).astype(np.float32),
        true_prob=rng.random(T).astype(np.float32),
        norms={f"blocks.{i}.hook_resid_post": rng.random(T).astype(np.float32) for i in range(n_layers)},
        attn_entropy=rng.random((n_layers, 2, T)).astype(np.float32),
        model=model,
    )


def make_resid(n_tokens: int = 8, n_layers: int = 2, d_model: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n_layers + 1, n_tokens, d_model)).astype(np.float16)
