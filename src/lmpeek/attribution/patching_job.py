"""A patching grid (or its attribution-patching estimate) as a long job (Session.start_job): what the
Why tab's "Patching grid" section and `POST /api/why/patch` run.

    start_patching(session, A, B, hook="resid_pre", by="position", method="patch")
        -> LongRun: `.estimate` (sequences, seconds) before it runs, (done, total) while it runs,
           `.result` a PatchingResult (patching.patch_grid's or attribution_patching's answer and the
           labels a view needs), cached by (model, A, B, hook, by, target, contrast, method, verify).

The metric is read at A's last position: log p(target), default A's own top prediction (what the
patch from B takes away), or log p(target) - log p(contrast). Each cell costs one sequence of A's
length; the estimate is calibrated on one measured forward (Session.forward_seconds) and the cells
are batched so that a batched forward takes about a quarter second: the queue's light requests
(slices, summaries) run between batches, and a cancel lands there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lmpeek import validate
from lmpeek.attribution import patching
from lmpeek.errors import InvalidInput

METHODS = ("patch", "attribution")
MAX_TOKENS = 512  # per prompt: a position grid runs layers × T sequences of T tokens each
MAX_VERIFY = 256  # real patches that check an attribution-patching estimate


@dataclass(frozen=True)
class PatchingResult:
    """A patching job's answer: `grid` is a patching.PatchGrid (method "patch") or a
    patching.AttributionPatching (method "attribution"); the rest labels it."""

    method: str
    hook: str  # the short hook name patched ("z" for heads)
    grid: Any
    tokens: list[str]  # A's tokens as displayed
    source_tokens: list[str]  # B's
    target: int
    target_token: str
    contrast: int | None
    contrast_token: str | None
    metric: str  # the metric's label, with the tokens' text
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        g = self.grid
        heads = g.by == "head"
        out: dict[str, Any] = {
            "method": self.method,
            "by": g.by,
            "hook": self.hook,
            "grid": np.asarray(g.values, np.float64).tolist(),
            "rows": list(g.hooks),
            "columns": [f"H{h}" for h in range(g.values.shape[1])] if heads else list(self.tokens),
            "tokens": list(self.tokens),
            "source_tokens": list(self.source_tokens),
            "base": float(g.base),
            "full": float(g.source),
            "metric": self.metric,
            "target": self.target,
            "target_token": self.target_token,
            "contrast": self.contrast,
            "contrast_token": self.contrast_token,
            "forwards": int(g.forwards),
            "verified": None,
            "spearman": None,
            "cached": self.cached,
        }
        if self.method == "attribution":
            out["verified"] = [
                {"layer": int(layer), "column": int(col), "estimate": float(g.values[layer, col]),
                 "real": float(real)}
                for (layer, col), real in zip(g.verified, g.patched, strict=True)
            ]  # fmt: skip
            out["spearman"] = float(g.spearman)
        return out


def _token_text(tok: Any, i: int) -> str:
    return tok.decode([i])


def _resolve(model: Any, t: Any, name: str) -> int:
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        from lmpeek.capture.trace import vocab_size

        return validate.integer(name, t, 0, vocab_size(model) - 1)
    if isinstance(t, str) and t == "":
        raise InvalidInput(f"{name} is empty: give a token (its text or its id)")
    return patching._token(model, t)


def start_patching(session: Any, text: str, source: str, hook: str = "resid_pre", by: str = "position",
                   target: Any = None, contrast: Any = None, method: str = "patch",
                   verify: int = 10) -> Any:  # fmt: skip
    """A patching grid of `source` (B) into `text` (A) as a session.LongRun (see the module
    docstring). Bad input raises here; may run one forward (A's top prediction, the estimate's
    timing), so call it on the model's thread (the server runs it as a job; `Session.run_job` does)."""
    import torch

    from lmpeek.capture.hooks import model_lock
    from lmpeek.capture.tokens import tokenize
    from lmpeek.session import ticker

    validate.text(text, "text (prompt A)")
    validate.text(source, "source (prompt B)")
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    verify = validate.integer("verify", verify, 0, MAX_VERIFY)
    model, tok = session.model, session.model.tokenizer
    patching._hooks(model, hook, by)  # checks hook and by
    short = "z" if by == "head" else hook
    ta, tb = tokenize(tok, text, model.context_length), tokenize(tok, source, model.context_length)
    for name, t in (("A", ta), ("B", tb)):
        if t.token_ids.size > MAX_TOKENS:
            raise InvalidInput(
                f"prompt {name} has {t.token_ids.size} tokens; patching grids take at most {MAX_TOKENS}"
            )
    patching._pair(model, ta.token_ids, tb.token_ids, by)  # equal lengths (both said when not)
    key = (model.fingerprint["id"], "patching", text, source, short, by, target, contrast, method,
           verify if method == "attribution" else None)  # fmt: skip
    hit = session.cached_run(key)
    if hit is not None:
        return hit
    c_id = None if contrast is None else _resolve(model, contrast, "contrast")
    ids = torch.as_tensor(ta.token_ids, device=model.device)[None]
    if target is None:
        with model_lock(model.hf), torch.no_grad():
            t_id = int(patching._last_logits(model, ids)[0].argmax())
    else:
        t_id = _resolve(model, target, "target")
    if c_id is not None and c_id == t_id:
        raise InvalidInput("target and contrast are the same token: log p(t) - log p(t) is always 0")
    t_text = _token_text(tok, t_id)
    c_text = None if c_id is None else _token_text(tok, c_id)
    label = f"log p({json.dumps(t_text, ensure_ascii=False)})"
    if c_text is not None:
        label += f" − log p({json.dumps(c_text, ensure_ascii=False)})"
    metric_target: Any = t_id if c_id is None else (t_id, c_id)

    one = session.forward_seconds(ids)
    n_cells = model.n_layers * (ta.token_ids.size if by == "position" else model.n_heads)
    if method == "patch":
        sequences, seconds = 3 + n_cells, (3 + n_cells) * one
    else:  # B's capture, A's forward + backward (about two forwards), A's and B's runs, the checks
        sequences = 4 + min(verify, n_cells)
        seconds = (sequences + 2) * one
    # a batched forward of about a quarter second, so the queue's other jobs never wait long
    batch = max(1, min(32, int(0.25 / max(one, 1e-6))))
    a_ids, b_ids = ta.token_ids, tb.token_ids

    def compute(pause: Callable[[Any], None]) -> PatchingResult:
        tick = ticker(pause)
        if method == "patch":
            grid = patching.patch_grid(model, a_ids, b_ids, hook, by, metric_target, batch, progress=tick)
        else:
            grid = patching.attribution_patching(model, a_ids, b_ids, hook, by, metric_target, verify, batch,
                                                 progress=tick)  # fmt: skip
        tokens = (list(ta.tokens), list(tb.tokens))
        return PatchingResult(method, short, grid, *tokens, t_id, t_text, c_id, c_text, label)

    return session.start_job(key, sequences, seconds, compute, kept=lambda r: replace(r, cached=True),
                             name="lmpeek-patching")  # fmt: skip
