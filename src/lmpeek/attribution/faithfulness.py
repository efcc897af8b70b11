"""Faithfulness of an attribution: does removing what it ranks highest change the prediction most?

Given segments (lists of token indices) and one score per segment, from any method, the segments are
ordered by score (highest first; ties keep their order) and the target F (a log-prob, probability or
logit of chosen tokens at chosen positions, summed) is measured on perturbed inputs, where a segment
that is "absent" has its tokens replaced by a baseline token (pad/unk/eos/any id) or removed:

- deletion curve   D[k] = F(x with the top-k segments absent),      k = 0..n  (D[0] = F(x))
- insertion curve  I[k] = F(x with only the top-k segments present), k = 0..n  (I[n] = F(x))
- with k_f = ceil(f·n) for each fraction f (5/10/20/50 % by default), ERASER's (DeYoung et al. 2020)
  comprehensiveness(f) = F(x) − D[k_f]  (higher: the top segments matter)
  sufficiency(f)       = F(x) − I[k_f]  (lower: the top segments are enough)
  and AOPC = the mean over the fractions; curve areas are trapezoids over k/n ∈ [0, 1].
- a random-order band: the same curves and AOPCs for R random orders (numpy default_rng(seed)),
  as mean ± standard deviation; an attribution is informative where it is outside that band.

Every distinct perturbed input is scored once, and they run as batched forwards (`batch_size` rows
each; left padding with an attention mask and position ids, so removal works too), reading only the
target's logit rows. Checked (tests/attribution/test_faithfulness.py) against a hand-computed case on
a toy F of which segments are present, against one-at-a-time forwards of the plain transformers model
on llama, gpt2 and gpt_neox tiny models (1e-5), and the random band against its exact expectation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput

KINDS = ("logprob", "prob", "logit")


@runtime_checkable
class Target(Protocol):
    """What F measures: Σ_i kind(logits[positions[i]])[token_ids[i]]. `positions` are logit rows (the
    row at p predicts the token at p + 1), so a span of generated tokens at t..t+m−1 that were fed back
    in is positions t−1..t+m−2 with their ids; all of it is read from one forward."""

    positions: Sequence[int]
    token_ids: Sequence[int]
    kind: str


@dataclass(frozen=True)
class TokenTarget:
    """The simplest Target: token ids at positions (rows), summed, as log-prob, probability or logit;
    with `contrast_id` B, each row is score(token) − score(B) (e.g. log p(' Paris') − log p(' Lyon'))."""

    positions: tuple[int, ...]
    token_ids: tuple[int, ...]
    kind: str = "logprob"
    contrast_id: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInput(f"target kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if len(self.positions) != len(self.token_ids) or not self.positions:
            raise InvalidInput("a target needs one token id per position, and at least one")


@dataclass(frozen=True)
class Band:
    """Mean and standard deviation over random orders (the band is mean ± std)."""

    mean: np.ndarray
    std: np.ndarray

    @property
    def lo(self) -> np.ndarray:
        return self.mean - self.std

    @property
    def hi(self) -> np.ndarray:
        return self.mean + self.std


@dataclass(frozen=True)
class Faithfulness:
    order: np.ndarray  # [n] segment indices, highest score first
    fractions: tuple[float, ...]
    k: tuple[int, ...]  # segments removed / kept at each fraction: ceil(f·n)
    deletion: np.ndarray  # [n+1] F with the top-k segments absent
    insertion: np.ndarray  # [n+1] F with only the top-k segments present
    comprehensiveness: np.ndarray  # [len(fractions)] F(x) − deletion[k_f]
    sufficiency: np.ndarray  # [len(fractions)] F(x) − insertion[k_f]
    aopc_comprehensiveness: float
    aopc_sufficiency: float
    deletion_auc: float  # trapezoid over k/n: lower is better
    insertion_auc: float  # higher is better
    random_orders: np.ndarray  # [R, n]
    random_deletion: Band  # [n+1]
    random_insertion: Band  # [n+1]
    random_aopc_comprehensiveness: Band  # scalars
    random_aopc_sufficiency: Band
    full: float  # F(x)
    empty: float  # F with every segment absent
    forwards: int  # model calls
    sequences: int  # distinct perturbed inputs scored
    baseline: str = ""
    baseline_id: int | None = None  # the token absent segments became (None: removed)
    target: str = ""


# ---------------------------------------------------------------------------------------------- maths


def order_by_score(scores: np.ndarray) -> np.ndarray:
    """Segment indices from highest score to lowest; equal scores keep their index order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def curve_masks(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(deletion, insertion) presence masks [n+1, n]: row k has the first k segments of `order`
    absent (deletion) or the only ones present (insertion)."""
    n = len(order)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    k = np.arange(n + 1)[:, None]
    top = rank[None, :] < k  # [n+1, n]: segment is among the first k
    return ~top, top


def fraction_counts(n: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """k_f = ceil(f·n) (at least 1 when n > 0); the epsilon keeps 0.1·10 at 1, not 2."""
    return tuple(min(n, max(1 if n else 0, math.ceil(f * n - 1e-9))) for f in fractions)


def aopc(deletion: np.ndarray, insertion: np.ndarray, k: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(comprehensiveness, sufficiency) per fraction from the curves (ERASER: β0 − βk)."""
    full = deletion[0]
    idx = np.asarray(k, dtype=np.int64)
    return full - deletion[idx], full - insertion[idx]


def curve_area(curve: np.ndarray) -> float:
    """Area under a curve over k/n ∈ [0, 1] (trapezoid); a single point is its own value."""
    n = len(curve) - 1
    if n == 0:
        return float(curve[0])
    return float(np.sum((curve[1:] + curve[:-1]) / 2) / n)


def evaluate(
    score: Callable[[np.ndarray], np.ndarray],
    scores: np.ndarray,
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.5),
    random: int = 8,
    seed: int = 0,
) -> Faithfulness:
    """Everything but the model: `score(masks [B, n] bool, True = present) -> [B]` gives F. It is
    called once with every distinct mask of every curve (the attribution's and the random orders')."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    order = order_by_score(scores)
    rng = np.random.default_rng(seed)
    random_orders = np.stack([rng.permutation(n) for _ in range(random)]) if random else np.zeros((0, n), int)
    curves = [curve_masks(o) for o in [order, *random_orders]]
    all_masks = np.concatenate([m for pair in curves for m in pair])  # [(1+R)·2·(n+1), n]
    unique, inverse = np.unique(all_masks, axis=0, return_inverse=True)
    values = np.asarray(score(unique), dtype=np.float64).reshape(-1)[inverse.reshape(-1)]
    values = values.reshape(1 + random, 2, n + 1)
    deletion, insertion = values[0]
    k = fraction_counts(n, fractions)
    comp, suff = aopc(deletion, insertion, k)

    r_del, r_ins = values[1:, 0], values[1:, 1]
    r_comp = np.array([aopc(d, i, k)[0].mean() for d, i in zip(r_del, r_ins, strict=True)])
    r_suff = np.array([aopc(d, i, k)[1].mean() for d, i in zip(r_del, r_ins, strict=True)])

    def band(x: np.ndarray) -> Band:
        if len(x) == 0:
            nan = np.full(x.shape[1:], np.nan)
            return Band(nan, nan)
        return Band(x.mean(0), x.std(0))

    return Faithfulness(
        order=order,
        fractions=tuple(float(f) for f in fractions),
        k=k,
        deletion=deletion,
        insertion=insertion,
        comprehensiveness=comp,
        sufficiency=suff,
        aopc_comprehensiveness=float(comp.mean()),
        aopc_sufficiency=float(suff.mean()),
        deletion_auc=curve_area(deletion),
        insertion_auc=curve_area(insertion),
        random_orders=random_orders,
        random_deletion=band(r_del),
        random_insertion=band(r_ins),
        random_aopc_comprehensiveness=band(r_comp),
        random_aopc_sufficiency=band(r_suff),
        full=float(deletion[0]),
        empty=float(deletion[n]),
        forwards=0,
        sequences=len(unique),
    )


# ---------------------------------------------------------------------------------------------- model


def _input_ids(model: Any, text_or_ids: str | Sequence[int]) -> np.ndarray:
    from lmpeek.capture.tokens import from_ids, tokenize
    from lmpeek.capture.trace import vocab_size

    if isinstance(text_or_ids, str):
        return tokenize(model.tokenizer, text_or_ids, model.context_length).token_ids
    return from_ids(model.tokenizer, text_or_ids, model.context_length, vocab_size(model)).token_ids


def baseline_token(tokenizer: Any, baseline: str | int) -> int | None:
    """The token an absent segment becomes: "pad" (the pad token; the eos token when there is none, as
    for GPT-2), "unk", "eos", "bos", a token id; "remove" (None) deletes the segment's tokens."""
    if baseline == "remove":
        return None
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        return validate.integer("baseline", baseline, 0, len(tokenizer) - 1)
    names = {"pad": ("pad", "eos", "unk"), "unk": ("unk",), "eos": ("eos",), "bos": ("bos",)}
    if baseline not in names:
        raise InvalidInput(
            f"baseline must be 'pad', 'unk', 'eos', 'bos', 'remove' or a token id, got {baseline!r}"
        )
    for name in names[baseline]:
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(tid, int):
            return tid
    raise InvalidInput(f"this tokenizer has no {baseline} token; pass baseline as a token id or 'remove'")


def _from_attribution_target(target: Any) -> tuple[TokenTarget, np.ndarray] | None:
    """attribution.targets.Target (score "log_prob"/"prob"/"logit", contrast_id, span_ids: a
    continuation teacher-forced after the prompt) as a TokenTarget, with the ids to append."""
    score = getattr(target, "score", None)
    if not isinstance(score, str) or not hasattr(target, "positions") or not hasattr(target, "token_ids"):
        return None
    kind = {"log_prob": "logprob"}.get(score, score)
    tt = TokenTarget(
        tuple(target.positions), tuple(target.token_ids), kind, getattr(target, "contrast_id", None)
    )
    return tt, np.asarray(getattr(target, "span_ids", ()) or (), dtype=np.int64)


def resolve_target(model: Any, ids: np.ndarray, target: Any) -> tuple[Target | Callable, np.ndarray]:
    """(target, ids to append after the input). None: the model's own next token after the input (its
    argmax), as a log-prob; an int: that token id there; a str: its first token there; a Target or a
    callable(logits [B, T, V]) -> [B]: itself; an attribution.targets.Target: the same F, its span
    (if any) appended."""
    import torch

    none = np.zeros(0, dtype=np.int64)
    converted = _from_attribution_target(target)
    if converted is not None:
        target, none = converted
        ids = np.concatenate([ids, none])
    last = len(ids) - 1
    if target is None:
        with torch.inference_mode():
            logits = model.hf(
                input_ids=torch.as_tensor(ids, device=model.device)[None], use_cache=False
            ).logits
        return TokenTarget((last,), (int(logits[0, -1].argmax()),)), none
    if isinstance(target, str):
        tok = model.tokenizer(target, add_special_tokens=False)["input_ids"]
        if not tok:
            raise InvalidInput(f"target {target!r} has no tokens")
        return TokenTarget((last,), (int(tok[0]),)), none
    if isinstance(target, int) and not isinstance(target, bool):
        return TokenTarget((last,), (validate.integer("target", target, 0, len(model.tokenizer) - 1),)), none
    if isinstance(target, Target):
        if target.kind not in KINDS:
            raise InvalidInput(f"target kind must be one of {', '.join(KINDS)}, got {target.kind!r}")
        for p in target.positions:
            validate.integer("target position", p, 0, last)
        return target, none
    if callable(target):
        return target, none
    raise InvalidInput(f"target must be None, a token id, a string, a Target or a callable, got {target!r}")


def target_values(logits, token_ids: Sequence[int], kind: str, contrast_id: int | None = None):
    """F: logits [B, P, V] (the target's rows, in order) -> [B] float64 torch, summed over rows."""
    import torch

    x = logits.double()
    if kind != "logit":
        x = torch.log_softmax(x, -1)
        if kind == "prob":
            x = x.exp()
    idx = torch.as_tensor(list(token_ids), device=x.device)[None, :, None].expand(x.shape[0], -1, 1)
    picked = x.gather(-1, idx)[..., 0]
    if contrast_id is not None:
        picked = picked - x[..., contrast_id]
    return picked.sum(-1)


def perturb(ids: np.ndarray, segments: Sequence[Sequence[int]], present: np.ndarray, baseline_id: int | None):
    """(token ids, kept original positions) of the input with absent segments replaced or removed."""
    out = ids.copy()
    keep = np.ones(len(ids), dtype=bool)
    for seg, here in zip(segments, present, strict=True):
        if not here:
            if baseline_id is None:
                keep[list(seg)] = False
            else:
                out[list(seg)] = baseline_id
    return out[keep], np.flatnonzero(keep)


class _ModelScorer:
    """F on perturbed copies of `ids`, `batch_size` per forward (left-padded with attention mask and
    position ids, as capture.batched does), reading only the logit rows the target needs."""

    def __init__(self, model, ids, segments, baseline_id, target, batch_size, progress=None) -> None:
        self.model, self.ids, self.segments = model, ids, segments
        self.baseline_id, self.target, self.batch_size = baseline_id, target, batch_size
        self.progress = progress  # (sequences done, sequences in all) before each batch
        self.forwards = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        out = []
        for a in range(0, len(masks), self.batch_size):
            if self.progress is not None:
                self.progress(a, len(masks))
            out.append(self._batch(masks[a : a + self.batch_size]))
        return np.concatenate(out) if out else np.zeros(0)

    def _rows(self, kept: np.ndarray) -> list[int]:
        """The target's original logit rows, as rows of the perturbed sequence (a removed row's
        prediction comes from the last kept token before it)."""
        rows = []
        for p in self.target.positions:
            r = int(np.searchsorted(kept, p, side="right")) - 1
            if r < 0:
                raise InvalidInput(
                    "baseline='remove' left no token before a target position; keep one token outside "
                    "the segments (a BOS token, say) or use a replacement baseline"
                )
            rows.append(r)
        return rows

    def _batch(self, masks: np.ndarray) -> np.ndarray:
        import torch

        seqs = [perturb(self.ids, self.segments, m, self.baseline_id) for m in masks]
        T = max(len(s) for s, _ in seqs)
        pad = self.baseline_id if self.baseline_id is not None else 0
        ids = torch.full((len(seqs), T), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for b, (s, _) in enumerate(seqs):
            ids[b, T - len(s) :] = torch.as_tensor(s)
            mask[b, T - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        kw: dict[str, Any] = dict(attention_mask=mask, position_ids=positions, use_cache=False)
        callable_target = not isinstance(self.target, Target)
        if not callable_target:
            rows = [[T - len(s) + r for r in self._rows(kept)] for s, kept in seqs]
            keep = T - min(min(r) for r in rows)
            if "logits_to_keep" in inspect.signature(self.model.hf.forward).parameters:
                kw["logits_to_keep"] = keep  # the last `keep` rows: a 49k vocabulary × T is GBs
            else:
                keep = T
        elif any(len(s) != T for s, _ in seqs):
            raise InvalidInput("a callable target needs a replacement baseline (the positions must not move)")
        device = self.model.device
        with torch.inference_mode():
            logits = self.model.hf(input_ids=ids.to(device), **{k: v.to(device) if torch.is_tensor(v) else v
                                                                for k, v in kw.items()}).logits  # fmt: skip
            self.forwards += 1
            if callable_target:
                return np.asarray(self.target(logits.float()), dtype=np.float64).reshape(-1)
            first = T - keep
            idx = torch.as_tensor([[r - first for r in row] for row in rows], device=logits.device)
            picked = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))  # [B, P, V]
            contrast = getattr(self.target, "contrast_id", None)
            return target_values(picked, self.target.token_ids, self.target.kind, contrast).cpu().numpy()


def _check_segments(segments: Any, T: int) -> list[list[int]]:
    if not isinstance(segments, Sequence) or isinstance(segments, str) or not segments:
        raise InvalidInput("segments must be a non-empty list of token index lists")
    out, seen = [], set()
    for seg in segments:
        idx = [validate.integer("segment token index", i, 0, T - 1) for i in seg]
        if not idx:
            raise InvalidInput("every segment needs at least one token index")
        if seen & set(idx):
            raise InvalidInput("segments must not overlap (a token belongs to one segment)")
        seen |= set(idx)
        out.append(idx)
    return out


def _describe(target: Any, tokenizer: Any) -> str:
    if isinstance(target, Target):
        toks = "".join(tokenizer.decode([t]) for t in target.token_ids)
        vs = getattr(target, "contrast_id", None)
        vs = f" vs {tokenizer.decode([vs])!r}" if vs is not None else ""
        return f"{target.kind} {toks!r}{vs} at {list(target.positions)}"
    return getattr(target, "__name__", type(target).__name__)


def faithfulness(
    model: Any,
    text_or_ids: str | Sequence[int],
    scores: Any,
    segments: Sequence[Sequence[int]] | None,
    target: Any = None,
    baseline: str | int = "pad",
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.5),
    random: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Faithfulness:
    """Deletion / insertion curves, AOPC comprehensiveness and sufficiency, and a random-order band
    for an attribution's `scores` (one per segment; a [n_targets, n] array is summed over targets,
    as signed additive scores of a summed span are) over `segments` (token index lists; None: every
    token) of the input, on a LoadedModel. See the module docstring for the definitions. `progress`:
    called with (sequences scored, sequences in all) before each batch (raise from it to cancel)."""
    from lmpeek.capture.trace import require_model

    require_model(model)
    ids = _input_ids(model, text_or_ids)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2:
        s = s.sum(0)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise InvalidInput("scores must be finite, one per segment (or [n_targets, n_segments])")
    segs = _check_segments([[i] for i in range(len(ids))] if segments is None else segments, len(ids))
    if len(segs) != len(s):
        raise InvalidInput(f"{len(s)} scores for {len(segs)} segments: give one score per segment")
    for f in fractions:
        validate.number("fraction", f, 0.0, 1.0, above=True)
    random = validate.integer("random", random, 0, 10_000)
    batch_size = validate.integer("batch_size", batch_size, 1, 65_536)
    validate.seed(seed)
    baseline_id = baseline_token(model.tokenizer, baseline)
    before = 1 if target is None else 0  # the forward that found the default target
    tgt, span = resolve_target(model, ids, target)
    ids = np.concatenate([ids, span])  # a teacher-forced continuation, never perturbed
    scorer = _ModelScorer(model, ids, segs, baseline_id, tgt, batch_size, progress)
    result = evaluate(scorer, s, fractions, random, seed)
    return replace(
        result,
        forwards=scorer.forwards + before,
        baseline=str(baseline),
        baseline_id=baseline_id,
        target=_describe(tgt, model.tokenizer),
    )
