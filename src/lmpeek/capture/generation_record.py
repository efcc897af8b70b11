"""The stored trace of a generation, assembled from the generation's own forwards.

DESIGN's one-pass rule: a generation's prompt runs once (all its positions) and each generated token once
(its own position, the rest cached); whatever the stored trace holds (next-token stats, norms, attention
entropy, the residual stream rows) is read off those same forwards, so storing it needs no second full
forward over prompt + generated tokens. The values equal `trace_with_resid` over the same ids up to the
KV cache's float rounding (tests/capture/test_generation_record.py).

The loss of a position is known only once the token after it is chosen: `chosen` fills it in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmpeek.capture.hooks import Handler
from lmpeek.capture.predictions import next_token_stats
from lmpeek.capture.summaries import Summaries, merge
from lmpeek.capture.tokens import from_ids
from lmpeek.capture.trace import Trace, decode_topk, resid_names, vocab_size
from lmpeek.models.loaded import LoadedModel


class GenerationRecord:
    """Collects, forward by forward, what `trace_with_resid` computes in one. Use: `forward(summaries)`
    gives the handlers to attach to the next forward, `add(logits)` after it (the prompt's forward), or
    `add_step(...)` with what a step's `StepSummaries` read (a generated token's forward),
    `chosen(id, logits_row)` when the next token is picked, `result()` once done."""

    def __init__(self, model: LoadedModel, prompt_ids: Sequence[int], top_k: int = 10) -> None:
        self.model = model
        self.top_k = top_k
        self.ids = [int(i) for i in prompt_ids]
        self.names = resid_names(model)
        self._summaries: Summaries | None = None
        self._kept: dict[str, torch.Tensor] = {}
        self.norm_names: list[str] = []  # hook names, in the order of the first forward's norms
        self.norms: list[np.ndarray] = []  # [len(norm_names), n] float32 per forward
        self.entropy: list[np.ndarray] = []  # [L, H, n] per forward
        self.resid: list[np.ndarray] = []  # [L+1, n, D] per forward
        self.stats: list = []  # NextToken per forward
        self.loss: list[np.ndarray] = []  # [n] float64 per forward (NaN where the next token is unknown)
        self.nonfinite: list[tuple[int, str]] = []  # (position, hook)
        self._order: tuple[Sequence[str], np.ndarray] | None = None  # add_step's names -> norm_names rows

    @property
    def positions(self) -> int:
        return sum(len(x) for x in self.loss)

    def forward(self, summaries: Summaries) -> dict[str, Handler]:
        """Handlers for the next forward: `summaries` (of its positions; `last_only` for a generation
        step on a cache) and the residual stream rows of the same positions."""
        self._summaries, self._kept = summaries, {}

        def keeper(name: str) -> Handler:
            def keep(x: torch.Tensor) -> None:
                self._kept[name] = summaries._rows(x).detach().float().cpu()

            return keep

        return merge(summaries.handlers(), {n: keeper(n) for n in self.names})

    def add(self, logits: torch.Tensor) -> None:
        """After the forward: its logits [n, V] (n = 1 for a step)."""
        s = self._summaries
        assert s is not None, "forward() first"
        start = self.positions
        n = logits.shape[0]
        ids = self.ids[start : start + n]
        if len(ids) < n:  # a step: its token is the one chosen last, already in self.ids
            raise RuntimeError("add() got more positions than tokens chosen")
        if not self.norm_names:
            self.norm_names = list(s.norms)
        self.norms.append(torch.stack([s.norms[name].float() for name in self.norm_names]).cpu().numpy())
        self.entropy.append(s.stacked_entropy().float().cpu().numpy())
        self.resid.append(np.stack([self._kept[n_].numpy() for n_ in self.names]))
        stats = next_token_stats(logits, ids, self.top_k)
        self.stats.append(stats)
        self.loss.append(stats.loss.astype(np.float64))
        self.nonfinite += [(start + t, name) for name, t in s.nonfinite()]
        self._summaries, self._kept = None, {}

    def add_step(
        self,
        logits: torch.Tensor,
        norms: np.ndarray,
        entropy: np.ndarray,
        resid: np.ndarray,
        nonfinite: list[tuple[str, int]],
        names: Sequence[str],
    ) -> None:
        """After a generated token's forward: its logits [1, V] and what `StepSummaries.read()` gave
        for it: norms [N] of hook points `names`, attention entropy [L, H], residual stream [L+1, D]
        (rows of `self.names`); `nonfinite` as `StepSummaries.nonfinite`."""
        start = self.positions
        if len(self.ids) <= start:
            raise RuntimeError("add_step() before chosen(): the step's token is not known")
        if not self.norm_names:  # no prompt forward came first
            self.norm_names = list(names)
        if self._order is None or self._order[0] is not names:
            where = {n: i for i, n in enumerate(names)}
            self._order = (names, np.array([where[n] for n in self.norm_names]))
        self.norms.append(norms[self._order[1], None])
        self.entropy.append(entropy[:, :, None].copy())
        self.resid.append(resid[:, None])
        stats = next_token_stats(logits, self.ids[start : start + 1], self.top_k)
        self.stats.append(stats)
        self.loss.append(stats.loss.astype(np.float64))
        self.nonfinite += [(start + t, name) for name, t in nonfinite]

    def chosen(self, token_id: int, logits_row: torch.Tensor) -> None:
        """The token after the last recorded position: its id, and the logits [V] it was chosen from
        (the last position's), which give that position's loss."""
        z = logits_row.detach().double().cpu()
        self.loss[-1][-1] = float(torch.logsumexp(z, -1) - z[int(token_id)])
        self.ids.append(int(token_id))

    def result(self) -> tuple[Trace, np.ndarray]:
        """The trace of every recorded position and its residual stream [L+1, T, D] float32, as
        `trace_with_resid` returns them."""
        model = self.model
        T = self.positions
        ids = self.ids[:T]
        tok = from_ids(model.tokenizer, ids, model.context_length, vocab_size(model))
        topk_ids = np.concatenate([s.topk_ids for s in self.stats])
        loss = np.concatenate(self.loss)
        bad = sorted(self.nonfinite)
        entropy = np.concatenate([s.entropy for s in self.stats])
        topk_probs = np.concatenate([s.topk_probs for s in self.stats])
        if not (np.isfinite(entropy).all() and np.isfinite(topk_probs).all()):
            bad.append((int((~np.isfinite(entropy)).argmax()), "logits"))
        trace = Trace(
            text=tok.text,
            chat=tok.chat,
            tokens=tok.tokens,
            token_ids=tok.token_ids,
            offsets=tok.offsets,
            token_bytes=tok.token_bytes,
            topk_ids=topk_ids,
            topk_probs=topk_probs,
            topk_tokens=decode_topk(model.tokenizer, topk_ids),
            entropy=entropy,
            loss=loss.astype(np.float32),
            true_prob=np.exp(-loss).astype(np.float32),
            norms=dict(zip(self.norm_names, np.concatenate(self.norms, axis=1), strict=True)),
            attn_entropy=np.concatenate(self.entropy, axis=2),
            model=model.info(),
            tensors={},
            nonfinite=list(dict.fromkeys(name for _, name in bad)),
        )
        return trace, np.concatenate(self.resid, axis=1)
