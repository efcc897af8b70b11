"""A tiny feature database for the service and route tests, and brute-force references for what the
feature service computes (quantiles, rankings, top features, peak tokens), written independently of
lmpeek.features.service: plain Python loops over the feature pages FeatureDB returns."""

from __future__ import annotations

import math
import re

import numpy as np

from lmpeek import features
from lmpeek.features.builder import build
from tests.features.saes import D, random_weights, v6_cfg, write_sae

TEXTS = [
    "The capital of France is Paris, and the capital of Italy is Rome. Paris is big.",
    "def square(x):\n    return x * x\n\nprint(square(12))\nfor i in range(3): print(i)",
    "Once upon a time there was a small model that read every word twice and wrote it down.",
    "Numbers: 3.14159, 2.71828 and 1.41421 are famous constants. Paris, Rome, Berlin.",
]
SAE_HOOK = "blocks.0.hook_resid_post"
OPTS = dict(seq_len=16, batch_size=2, k=4, context=(4, 2), quantiles=3, per_bin=2)


def make_sae(folder, seed: int = 5, n: int = 32):
    rng = np.random.default_rng(seed)
    w = random_weights(rng, D, n)
    w["b_enc"] = w["b_enc"] - 0.3  # sparse: most features off at most tokens
    return write_sae(folder, v6_cfg("standard", D, n, SAE_HOOK), w)


def build_db(folder, model):
    """features.db with sources neurons:1 and an SAE ("sae") over TEXTS; returns (db path, sae folder)."""
    sae = make_sae(folder / "sae")
    out = folder / "features.db"
    build(model, ["neurons:1", features.load(sae, model, check=False)], TEXTS, out, **OPTS)
    return out, sae


def quantile(page: dict, v: float) -> float | None:
    """The documented quantile of value v, walking the feature page's histogram bin by bin."""
    n = page["n"]
    if n == 0:
        return None
    if v <= 0:
        mn = page["min"]
        if mn is None or mn >= 0:
            return 0.0
        return page["count_neg"] * min(1.0, max(0.0, (v - mn) / (0.0 - mn))) / n
    if v >= page["max"]:
        return 1.0
    below = n - page["count"]
    edges, counts = page["histogram"]["edges"], page["histogram"]["counts"]
    for i, c in enumerate(counts):
        lo = edges[i]
        hi = edges[i + 1] if edges[i + 1] is not None else math.inf
        if v >= hi:
            below += c
            continue
        if v >= lo:
            top = min(hi, page["max"])
            below += c * (v - lo) / (top - lo) if top > lo else c
        break
    return below / n


def ranking(values: np.ndarray, top: int, pages: dict | None, by_quantile: bool) -> list[list[tuple]]:
    """Per token: (feature, value, quantile) of its `top` active features, sorted in Python."""
    out = []
    for row in values:
        items = []
        for f, v in enumerate(row.tolist()):
            if v > 0:
                items.append((f, float(np.float32(v)), None if pages is None else quantile(pages[f], v)))
        if by_quantile:
            items.sort(key=lambda it: (-it[2], -it[1], it[0]))
        else:
            items.sort(key=lambda it: (-it[1], it[0]))
        out.append(items[:top])
    return out


def top_features(values: np.ndarray, rows: list[int], pages: dict | None, by_quantile: bool) -> list[tuple]:
    """(feature, max, tokens active, quantile of max) over the token rows, best first, at most 50."""
    items = []
    for f in range(values.shape[1]):
        col = [float(values[t, f]) for t in rows]
        mx = max(col) if col else 0.0
        if mx > 0:
            q = None if pages is None else quantile(pages[f], mx)
            items.append((f, mx, sum(v > 0 for v in col), q))
    if by_quantile:
        items.sort(key=lambda it: (-it[3], -it[1], it[0]))
    else:
        items.sort(key=lambda it: (-it[1], it[0]))
    return items[:50]


def words(label: str) -> list[str]:
    """What SQLite FTS5's unicode61 tokenizer makes of ASCII text: runs of letters and digits, folded."""
    return re.findall(r"[a-z0-9]+", label.lower())


def peak_labels(db, source, feature: int) -> list[str]:
    """The labels of the tokens at the peaks of a feature's top examples, best first."""
    return [ex["tokens"][ex["index"]] for ex in db.examples(feature, "top", source)]
