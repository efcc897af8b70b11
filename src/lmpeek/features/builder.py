"""The offline feature builder: one streaming pass over a corpus -> a feature database (db.py).

    from lmpeek.features.builder import build
    build(model, ["neurons:3", "path/to/sae"], ["corpus/", "more.jsonl"], "features.db", tokens=1_000_000)

The corpus (corpus.py) is read in a fixed order and cut into sequences of at most `seq_len` tokens;
`batch_size` sequences at a time run through the model once (batched capture of every source's hook
points together) and every source encodes its features from those same float32 hook values. Per
feature the builder keeps, in memory O(features × (k + sample_size) × window), flat in corpus size:

- count of activations > 0 (and < 0), sum, sum of squares, max, min, and a histogram over fixed
  log-spaced edges (db.HIST_EDGES: the same for every feature, so nothing depends on a warm-up);
- the top k activations > 0 with their windows (the feature's activations at pos - left .. pos +
  right), admitted through a running threshold (only values above the current k-th best are touched);
- a uniform random sample of sample_size activations > 0: each (doc, pos, feature) gets a key that is
  a hash of (seed, doc, pos) shifted by feature × golden ratio (mod 1), and the sample_size smallest
  keys are kept (a bottom-k sketch, the same selection whatever the batching, and resumable). At the
  end the feature's activations > 0 are split at their true quantiles (read from the final
  histogram, exact counts) and each bin shows the first per_bin sampled members that fall in it:
  quantile bins can only be true quantiles once the whole distribution is known, which a reservoir
  per bin, fixed in advance, cannot give;
- shifted moments (sums of x - c, (x - c)², (x - c)(y - c) with c the first batch's mean, float64)
  for Pearson correlations against every feature of the same source (sources up to `correlations`
  features: the F × F sums are the one part of the state that grows with F²).

Shards: the batches are grouped into shards of `shard_batches` consecutive batches. Everything above
merges exactly across shards (counts and histograms add, max/min, the banks keep the best (key, doc,
pos) of both, which is what admission one batch at a time keeps too) except float64 sums, whose
rounding depends on the order of additions. So every float64 sum is summed per shard from zero and
the shard totals are then added in shard order, in every build: a local build closes its shard every
`shard_batches` batches (`SourceState.close_shard`); a Ray build (`ray=`, features/ray_build.py) runs
each shard on a fresh state on a worker (`run_shard`) and the driver merges them in shard order
(`SourceState.merge`). Both add the same float64 numbers in the same order, so they write the same
database, bit for bit, as long as the model's forward gives the same floats on the workers as here
(same hardware and thread settings). The shard's sums are a second copy of the float64 sums (the
F × F one included).

A crosscoder build (`model=(base, chat)`) runs both models once per batch on the same padded ids, each
only as far as its hook points: the crosscoder reads "base:HOOK" from the base model's capture and
"chat:HOOK" from the chat model's, and any other source reads the chat model.

Position 0 of every sequence (the BOS / attention sink, whose activations dwarf all others) is left
out of every statistic and example unless `skip_first=False`. Top/bottom logits are each feature's
direct effect through the unembedding (see `logit_effects`). Every `checkpoint_every` batches the
whole state is written into the database with the documents run so far, in one transaction (a Ray
build: after every shard); running the same build again after a crash (kill -9 included) resumes from
the last checkpoint and gives the same database as an uninterrupted build, with or without Ray. The
same inputs always give the same database.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput
from lmpeek.features import db as dbf
from lmpeek.features.corpus import Sequence, documents, sequences
from lmpeek.features.corpus import inputs as corpus_inputs

PHI = 0.6180339887498949  # the golden ratio's fraction: shifts one token key per feature
_U53 = 2.0**-53
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
LOGIT_BINS = 50  # SAEDashboard's logits histogram
LOGIT_CHUNK_BYTES = 1 << 25  # 32 MiB of [features, V] float32 logits at a time (see logit_chunk)
_MATMUL_ROWS = 8  # logits are multiplied exactly this many rows at a time (see logit_effects)
_CORR_ROWS = 512  # correlation rows finished per chunk (the F × F float64 matrices are not copied)
_EMPTY_DOC = -1
PAIR = ("base", "chat")  # a crosscoder build's two models, in the order `model=(base, chat)` gives them


@dataclass(frozen=True)
class BuildProgress:
    """What a progress callback receives after every batch."""

    tokens: int  # tokens run so far (all sources see the same tokens)
    total: int | None  # the token budget, when one was given
    documents: int  # sequences run so far
    batches: int
    elapsed_s: float  # in this run (a resumed build restarts the clock)
    tokens_per_s: float  # in this run
    eta_s: float | None  # to the token budget, when there is one


# --- deterministic keys for the sample ---------------------------------------------------------------


def token_keys(doc: np.ndarray, pos: np.ndarray, seed: int) -> np.ndarray:
    """A uniform key in [0, 1) for each (doc, pos): splitmix64 of (seed, doc, pos), top 53 bits."""
    with np.errstate(over="ignore"):
        z = (np.asarray(doc, np.uint64) << np.uint64(21)) ^ np.asarray(pos, np.uint64)
        z = z + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * _U53


def feature_keys(token_key: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """The sample key of (token, feature): the token's key shifted by feature × PHI, mod 1. For one
    feature the keys over tokens stay independent and uniform; different features rank tokens differently."""
    return np.mod(token_key + np.asarray(feature, np.float64) * PHI, 1.0)


# --- the best m entries per group ----------------------------------------------------------------


def best_per_group(group: np.ndarray, key: np.ndarray, doc: np.ndarray, pos: np.ndarray, m: int):
    """Indices of the entries that are among the m best of their group, and their ranks; best = the
    smallest (key, doc, pos), so equal keys go to the earlier document and position."""
    order = np.lexsort((pos, doc, key, group))
    g = group[order]
    if not len(g):
        return order, order
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    keep = rank < m
    return order[keep], rank[keep]


class Bank:
    """The m best (key, doc, pos) entries of each of G groups, with their scores and windows; rows are
    kept sorted, so key[:, -1] is each group's admission threshold (inf while not full)."""

    FIELDS = ("key", "doc", "pos", "score", "win")

    def __init__(self, groups: int, m: int, width: int):
        self.m = m
        self.key = np.full((groups, m), np.inf)
        self.doc = np.full((groups, m), _EMPTY_DOC, dtype=np.int64)
        self.pos = np.full((groups, m), -1, dtype=np.int64)
        self.score = np.zeros((groups, m), dtype=np.float32)
        self.win = np.full((groups, m, width), np.nan, dtype=np.float32)

    @property
    def threshold(self) -> np.ndarray:
        return self.key[:, -1]

    def merge(self, group, key, doc, pos, score, win) -> None:
        touched = np.unique(group)
        m = self.m
        g = np.concatenate([np.repeat(touched, m), group])
        k = np.concatenate([self.key[touched].ravel(), key])
        d = np.concatenate([self.doc[touched].ravel(), doc])
        p = np.concatenate([self.pos[touched].ravel(), pos])
        s = np.concatenate([self.score[touched].ravel(), score])
        w = np.concatenate([self.win[touched].reshape(-1, self.win.shape[-1]), win])
        idx, rank = best_per_group(g, k, d, p, m)  # every touched group had m entries: all m slots refilled
        gi = g[idx]
        self.key[gi, rank], self.doc[gi, rank], self.pos[gi, rank] = k[idx], d[idx], p[idx]
        self.score[gi, rank], self.win[gi, rank] = s[idx], w[idx]

    def absorb(self, other: Bank) -> None:
        """Merge a bank over the same groups (another shard's): each group keeps the m best entries
        of both, ordered as merge() orders them. Exact: (key, doc, pos) are distinct per group, so the
        m best do not depend on which shard saw an entry first."""
        m, width = self.m, self.win.shape[-1]
        step = max(1, (1 << 22) // (2 * m * width))  # groups per chunk: the joined windows stay small
        for a in range(0, len(self.key), step):
            g = slice(a, a + step)
            key = np.concatenate([self.key[g], other.key[g]], 1)
            doc = np.concatenate([self.doc[g], other.doc[g]], 1)
            pos = np.concatenate([self.pos[g], other.pos[g]], 1)
            best = np.lexsort((pos, doc, key), axis=-1)[:, :m]
            self.key[g] = np.take_along_axis(key, best, 1)
            self.doc[g] = np.take_along_axis(doc, best, 1)
            self.pos[g] = np.take_along_axis(pos, best, 1)
            score = np.concatenate([self.score[g], other.score[g]], 1)
            self.score[g] = np.take_along_axis(score, best, 1)
            win = np.concatenate([self.win[g], other.win[g]], 1)
            self.win[g] = np.take_along_axis(win, best[..., None], 1)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{f}": getattr(self, f) for f in self.FIELDS}

    def restore(self, prefix: str, arrays: Mapping[str, np.ndarray]) -> None:
        for f in self.FIELDS:
            _restore(self, f, arrays[f"{prefix}.{f}"])


def _restore(obj: Any, name: str, value: np.ndarray) -> None:
    old = getattr(obj, name)
    if value.shape != old.shape or value.dtype != old.dtype:
        raise InvalidInput(
            f"the checkpoint's {name} has shape {value.shape}, expected {old.shape}: start over"
        )
    setattr(obj, name, value.copy())


# --- one batch's positions -------------------------------------------------------------------------


@dataclass
class _Rows:
    """The counted positions of one batch, in order: which sequence, where, and where its activations
    start in the batch's concatenated [N_all, F] array."""

    doc: np.ndarray  # global sequence index
    pos: np.ndarray
    base: np.ndarray  # row of the sequence's position 0 in the concatenated array
    length: np.ndarray  # the sequence's length
    index: np.ndarray  # row in the concatenated array
    key: np.ndarray  # token_keys(doc, pos)


def _rows(first_doc: int, lengths: list[int], first: int, seed: int) -> _Rows:
    lengths_a = np.asarray(lengths, dtype=np.int64)
    bases = np.r_[0, np.cumsum(lengths_a)[:-1]]
    counted = np.maximum(lengths_a - first, 0)
    seq = np.repeat(np.arange(len(lengths)), counted)
    pos = np.arange(int(counted.sum())) - np.repeat(np.cumsum(counted) - counted, counted) + first
    doc = first_doc + seq
    return _Rows(doc, pos, bases[seq], lengths_a[seq], bases[seq] + pos, token_keys(doc, pos, seed))


# --- per-source state ------------------------------------------------------------------------------


class SourceState:
    """Everything kept for one source's F features (see the module docstring). The float64 sums of the
    current shard are kept apart in `shard` until close_shard() adds them to the totals."""

    SCALARS = ("count", "count_neg", "sum", "sum_sq", "max", "min", "hist")
    MOMENTS = ("shift", "s1", "s2", "sxy")

    def __init__(self, n_features: int, k: int, sample_size: int, context: tuple[int, int], corr: bool):
        F, nb = n_features, len(dbf.HIST_EDGES) - 1
        self.F, self.left, self.right = F, context[0], context[1]
        width = context[0] + context[1] + 1
        self.count = np.zeros(F, np.int64)
        self.count_neg = np.zeros(F, np.int64)
        self.sum = np.zeros(F, np.float64)
        self.sum_sq = np.zeros(F, np.float64)
        self.max = np.full(F, -np.inf, np.float32)
        self.min = np.full(F, np.inf, np.float32)
        self.hist = np.zeros((F, nb), np.int64)
        self.top = Bank(F, k, width)
        self.sample = Bank(F, sample_size, width)
        self.corr = corr
        if corr:
            self.shift = np.full(F, np.nan, np.float32)
            self.s1 = np.zeros(F, np.float64)
            self.s2 = np.zeros(F, np.float64)
            self.sxy = np.zeros((F, F), np.float64)
        sums = ("sum", "sum_sq") + (("s1", "s2", "sxy") if corr else ())
        self.shard = {n: np.zeros_like(getattr(self, n)) for n in sums}

    def arrays(self, shard: bool = True) -> dict[str, np.ndarray]:
        """The state by name (a checkpoint's; shard=False leaves out the open shard's sums, which a
        closed shard sent to the driver does not need)."""
        out = {n: getattr(self, n) for n in self.SCALARS}
        out |= self.top.arrays("top") | self.sample.arrays("sample")
        if self.corr:
            out |= {n: getattr(self, n) for n in self.MOMENTS}
        if shard:
            out |= {f"shard.{n}": a for n, a in self.shard.items()}
        return out

    def restore(self, arrays: Mapping[str, np.ndarray], shard: bool = True) -> None:
        for n in self.SCALARS + (self.MOMENTS if self.corr else ()):
            _restore(self, n, arrays[n])
        self.top.restore("top", arrays)
        self.sample.restore("sample", arrays)
        for n, a in self.shard.items():
            value = arrays[f"shard.{n}"] if shard else np.zeros_like(a)
            if value.shape != a.shape or value.dtype != a.dtype:
                raise InvalidInput(f"the checkpoint's shard.{n} has shape {value.shape}: start over")
            self.shard[n] = value.copy()

    def close_shard(self) -> None:
        """Add the shard's float64 sums to the totals (see the module docstring: in shard order)."""
        for n, a in self.shard.items():
            total = getattr(self, n)
            total += a
            a[...] = 0

    def merge(self, other: SourceState) -> None:
        """Add another shard's closed state (the next one in corpus order): what running its batches
        here, then close_shard(), would have given."""
        self.count += other.count
        self.count_neg += other.count_neg
        self.hist += other.hist
        np.maximum(self.max, other.max, out=self.max)
        np.minimum(self.min, other.min, out=self.min)
        for n in self.shard:
            total = getattr(self, n)
            total += getattr(other, n)  # other's totals are its one shard's sums (0 + sums)
        if self.corr and np.isnan(self.shift).any():
            self.shift = other.shift.copy()
        self.top.absorb(other.top)
        self.sample.absorb(other.sample)

    def _windows(self, acts: np.ndarray, rows: _Rows, r: np.ndarray, f: np.ndarray, first: int) -> np.ndarray:
        """[C, left + 1 + right] activations of feature f[c] around row r[c] (NaN outside the counted
        part of its sequence)."""
        p = rows.pos[r][:, None] + np.arange(-self.left, self.right + 1)
        valid = (p >= first) & (p < rows.length[r][:, None])
        at = rows.base[r][:, None] + np.clip(p, 0, rows.length[r][:, None] - 1)
        return np.where(valid, acts[at, f[:, None]], np.float32(np.nan)).astype(np.float32)

    def _admit(self, bank: Bank, acts, rows, r, f, key, score, first) -> None:
        if not len(r):
            return
        doc, pos = rows.doc[r], rows.pos[r]
        idx, _ = best_per_group(f, key, doc, pos, bank.m)  # only the batch's own best can get in
        r, f = r[idx], f[idx]
        bank.merge(f, key[idx], doc[idx], pos[idx], score[idx], self._windows(acts, rows, r, f, first))

    def update(self, acts: np.ndarray, rows: _Rows, first: int) -> None:
        """Add one batch: acts [N_all, F] float32 (every position of the batch's sequences)."""
        x = acts[rows.index]  # the counted positions
        self.count += (x > 0).sum(0)
        self.count_neg += (x < 0).sum(0)
        x64 = x.astype(np.float64)
        sums = self.shard  # float64 sums go to the shard's (close_shard adds them up)
        sums["sum"] += x64.sum(0)
        sums["sum_sq"] += (x64 * x64).sum(0)
        self.max = np.maximum(self.max, x.max(0))
        self.min = np.minimum(self.min, x.min(0))
        r, f = np.nonzero(x > 0)  # sorted by row, then feature
        v = x[r, f]
        nb = self.hist.shape[1]
        b = np.searchsorted(dbf.HIST_EDGES, v.astype(np.float64), side="right") - 1
        self.hist += np.bincount(f * nb + b, minlength=self.F * nb).reshape(self.F, nb)
        # top k: a running threshold (the k-th best so far, 0 while fewer) leaves almost nothing to sort
        c = v > np.maximum(-self.top.threshold, 0.0)[f]
        self._admit(self.top, acts, rows, r[c], f[c], -v[c].astype(np.float64), v[c], first)
        # the sample: keys below the sample_size-th smallest so far
        keys = feature_keys(rows.key[r], f)
        c = keys < self.sample.threshold[f]
        self._admit(self.sample, acts, rows, r[c], f[c], keys[c], v[c], first)
        if self.corr:
            if np.isnan(self.shift).any():
                self.shift = x64.mean(0).astype(np.float32)  # any constant gives the same Pearson
            xc = x - self.shift
            sums["s1"] += xc.sum(0, dtype=np.float64)
            sums["s2"] += np.square(xc, dtype=np.float64).sum(0)
            sums["sxy"] += xc.T @ xc  # float32 products per batch, summed in float64


# --- shards: what a local build and a Ray worker both run ---------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    """What every shard of one build needs besides its sequences (a Ray worker gets it once)."""

    n_features: tuple[int, ...]  # per source
    corr: tuple[bool, ...]  # per source: correlations kept
    k: int
    sample_size: int
    context: tuple[int, int]
    first: int  # the first counted position: 1 leaves position 0 out
    seed: int
    batch_size: int
    shift: tuple[np.ndarray | None, ...] | None = None  # the correlation shifts, once known
    first_batch: tuple[np.ndarray, ...] = ()  # otherwise the build's first batch: its means are the shifts


def new_states(job: ShardJob) -> list[SourceState]:
    return [
        SourceState(F, job.k, job.sample_size, job.context, corr)
        for F, corr in zip(job.n_features, job.corr, strict=True)
    ]


def run_batch(model: Any, srcs: list[Any], states: list[SourceState], ids: list[np.ndarray], first_doc: int,
              first: int, seed: int) -> int:  # fmt: skip
    """One forward of the sequences `ids` (numbers first_doc, first_doc + 1, ...), every source encoded
    from the same hook values and added to its state; returns the number of positions counted. `model`
    may be the pair (base, chat): each runs once on the same ids, at the points its sources read."""
    from lmpeek.capture.batched import activations as capture

    models = model if isinstance(model, tuple) else (model,)
    reads = {h: _reads(h, len(models)) for src in srcs for h in src.hooks}  # hook -> (model, point)
    if len(models) == 2:
        _same_pieces(models, ids)
    acts = []
    for m, mdl in enumerate(models):
        points = sorted({p for i, p in reads.values() if i == m})
        acts.append(capture(mdl, [s.tolist() for s in ids], points, batch_size=len(ids)) if points else [])
    lengths = [len(s) for s in ids]
    rows = _rows(first_doc, lengths, first, seed)
    for src, st in zip(srcs, states, strict=True):
        joined = {h: np.concatenate([a[reads[h][1]] for a in acts[reads[h][0]]]) for h in src.hooks}
        x = np.asarray(src.encode(joined), dtype=np.float32)
        if x.shape != (sum(lengths), st.F):
            raise InvalidInput(f"{src.name} encoded {list(x.shape)}, expected [{sum(lengths)}, {st.F}]")
        st.update(x, rows, first)
    return len(rows.doc)


def _reads(hook: str, n_models: int) -> tuple[int, str]:
    """(which model, lmpeek hook name) a source's hook reads: with a (base, chat) pair, a crosscoder's
    "base:HOOK" / "chat:HOOK" (crosscoder.key) name their model, every other hook is the chat model's."""
    if n_models == 1:
        return 0, hook
    role, sep, point = hook.partition(":")
    if sep and role in PAIR:
        return PAIR.index(role), point
    return 1, hook


def _same_pieces(pair: tuple[Any, Any], ids: list[np.ndarray]) -> None:
    """Refuse token ids the two models read as different pieces (where their vocabularies differ at all:
    a chat model may add tokens; the ids the corpus uses must mean the same to both)."""
    base, chat = pair
    if base.fingerprint.get("tokenizer") == chat.fingerprint.get("tokenizer"):
        return
    from lmpeek.capture.trace import vocab_size

    used = np.unique(np.concatenate(ids))
    n = min(vocab_size(base), len(base.tokenizer))
    known = used[used < n].tolist()
    pieces = [m.tokenizer.convert_ids_to_tokens(known) for m in pair]
    bad = used[used >= n].tolist() + [i for i, a, b in zip(known, *pieces, strict=True) if a != b]
    if bad:
        raise InvalidInput(
            f"{base.name} reads token id {bad[0]} of the corpus (tokenized by {chat.name}) as another piece "
            f"or not at all: a crosscoder build needs both models to share a tokenizer"
        )


def first_shift(model: Any, srcs: list[Any], job: ShardJob) -> tuple[np.ndarray | None, ...] | None:
    """The correlation shifts of the build: job.shift, or the first batch's means, computed as a local
    build computes them (the same batch through the same update)."""
    if job.shift is not None or not any(job.corr):
        return job.shift
    states = new_states(job)
    run_batch(model, srcs, states, list(job.first_batch), 0, job.first, job.seed)
    return tuple(st.shift if st.corr else None for st in states)


def shard_item(shard: int, first_doc: int, seqs: list[np.ndarray]) -> dict[str, Any]:
    """One shard as a row of plain values (Ray Data's input): its number, its first sequence's number,
    the sequences' token ids (int32) and lengths (int64) as bytes."""
    return {
        "shard": shard,
        "first_doc": first_doc,
        "ids": dbf.blob(np.concatenate(seqs), "<i4"),
        "lengths": dbf.blob([len(s) for s in seqs], "<i8"),
    }


def run_shard(model: Any, srcs: list[Any], job: ShardJob, item: Mapping[str, Any],
              shift: tuple[np.ndarray | None, ...] | None) -> bytes:  # fmt: skip
    """One shard (a shard_item) on fresh states, closed and packed: what a Ray worker returns for the
    driver to merge (SourceState.merge) in shard order."""
    ids = dbf.unblob(item["ids"], "<i4")
    seqs = np.split(ids, np.cumsum(dbf.unblob(item["lengths"], "<i8"))[:-1])
    states = new_states(job)
    for st, c in zip(states, shift or (None,) * len(states), strict=True):
        if c is not None:
            st.shift = np.array(c, np.float32)
    first_doc = int(item["first_doc"])
    for a in range(0, len(seqs), job.batch_size):
        run_batch(model, srcs, states, seqs[a : a + job.batch_size], first_doc + a, job.first, job.seed)
    buf = io.BytesIO()
    arrays = {}
    for s, st in enumerate(states):
        st.close_shard()
        arrays |= {f"{s}.{n}": a for n, a in st.arrays(shard=False).items()}
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_shard(job: ShardJob, data: bytes) -> list[SourceState]:
    """The states run_shard packed."""
    states = new_states(job)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        for s, st in enumerate(states):
            prefix = f"{s}."
            st.restore({k[len(prefix) :]: z[k] for k in z.files if k.startswith(prefix)}, shard=False)
    return states


def run_inline(
    model: Any, srcs: list[Any], job: ShardJob, items: list[dict[str, Any]]
) -> Iterator[tuple[int, bytes]]:
    """The shards one after the other in this process, through the same packing as Ray (ray="inline")."""
    shift = first_shift(model, srcs, job)
    for item in items:
        yield int(item["shard"]), run_shard(model, srcs, job, item, shift)


# --- model side: where features write, and their logits -------------------------------------------------


def _through(module: Any, rows: np.ndarray, device: Any) -> np.ndarray:
    """What a linear `module` adds to its output for each input row (its bias taken out)."""
    import torch

    p = next(module.parameters())
    dtype = p.dtype
    device = p.device if p.device.type != "meta" else device
    out = []
    with torch.inference_mode():
        zero = module(torch.zeros((1, rows.shape[1]), dtype=dtype, device=device)).float()
        for a in range(0, len(rows), 1024):
            x = torch.as_tensor(rows[a : a + 1024], dtype=dtype, device=device)
            out.append((module(x).float() - zero).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def directions(model: Any, source: Any) -> np.ndarray | None:
    """[F, d_model]: what one unit of each feature writes into the residual stream, or None when the
    source writes nowhere lmpeek can follow. A source may define `residual_directions(model)`.

    Neurons: the MLP's down-projection row. SAEs: the decoder row (divided by its norm where encode
    multiplied by it, times a fine-tuning scale), as is for residual points and MLP/attention outputs,
    through the down projection for mlp.hook_post and through the output projection for attn.hook_z;
    transcoders: the decoder row in their output point. Run-time input normalisation is left out
    (a direction, as SAEDashboard's W_dec @ W_U)."""
    from lmpeek.features import points

    custom = getattr(source, "residual_directions", None)
    if callable(custom):
        out = custom(model)
        return None if out is None else np.asarray(out, dtype=np.float32)
    b = model.bound
    if source.kind == "neurons":
        module = b.block_module(source.layer, b.adapter.mlp_post.path)
        return _through(module, np.eye(source.n_features, dtype=np.float32), model.device)
    if source.kind == "crosscoder":
        return crosscoder_directions(source, "chat") if points.is_residual(source.hook) else None
    if source.kind != "saelens":
        return None
    w = {k: v.detach().float().cpu().numpy() for k, v in source.w.items()}
    dec = w["W_dec"]
    if getattr(source, "_dec_norm", None) is not None:
        dec = dec / np.linalg.norm(dec, axis=-1, keepdims=True)
    if "finetuning_scaling_factor" in w:
        dec = dec * w["finetuning_scaling_factor"][:, None]
    hook = source.hook_out if source.transcoder else source.hooks[0]
    if hook is None:
        return None
    layer, point = points.split(hook)
    if points.is_residual(hook) and dec.shape[1] == b.d_model:
        return dec.astype(np.float32)
    if layer is not None and point == "mlp.hook_post":
        return _through(b.block_module(layer, b.adapter.mlp_post.path), dec, model.device)
    if layer is not None and point == "attn.hook_z":
        head = source.cfg.hook_head_index
        if head is not None and not source.transcoder:  # one head's slice of the output projection's input
            full = np.zeros((len(dec), b.n_heads * b.d_head), np.float32)
            full[:, head * b.d_head : (head + 1) * b.d_head] = dec
            dec = full
        return _through(b.block_module(layer, b.adapter.o_proj), dec, model.device)
    return None


def crosscoder_directions(source: Any, role: str) -> np.ndarray:
    """[F, d]: what one unit of each crosscoder feature (as encode shows it, f · c) writes into `role`'s
    ("base" or "chat") stream: its decoder row for that model, divided by the code normalisation c and
    mapped out of the normalised space the crosscoder decodes in (x = x' / mult + shift; the shift is a
    constant, not a direction). A dead feature (c = 0) writes nothing."""
    i = source.models.index(role)
    dec = source.w["W_dec"][i].detach().float().cpu().numpy().astype(np.float64)
    dec = dec / source.mult[i].detach().float().cpu().numpy().astype(np.float64)
    if source.code is not None:
        c = source.code.detach().float().cpu().numpy().astype(np.float64)[:, None]
        dec = np.divide(dec, c, out=np.zeros_like(dec), where=c > 0)
    return dec.astype(np.float32)


def _gain(norm: Any) -> np.ndarray:
    """The final norm's per-dimension gain, measured (so (1 + w) gains and any dtype are right):
    norm(x) = normalized(x) · g + b, and normalized(-x) = -normalized(x)."""
    import torch

    from lmpeek.models.adapters import normalized

    p = next(norm.parameters())
    d = p.shape[-1]
    i = torch.arange(d, dtype=torch.float32)
    x = (1.0 + i / d) * torch.where(i % 2 == 0, 1.0, -1.0)  # no entry near 0 after normalising
    xs = torch.stack([x, -x]).to(p.device if p.device.type != "meta" else "cpu", p.dtype)
    with torch.inference_mode():
        y = norm(xs).float().cpu()
        n = normalized(norm, xs).float().cpu()
    return ((y[0] - y[1]) / (2 * n[0])).numpy().astype(np.float32)


def logit_chunk(vocab: int) -> int:
    """Features per chunk of logits: [rows, V] float32 of about LOGIT_CHUNK_BYTES (170 features of a 49k
    vocabulary), so the logits' memory is flat in F (their temporaries are a few chunks)."""
    return max(1, LOGIT_CHUNK_BYTES // (4 * max(vocab, 1)))


def logit_effects(model: Any, dirs: np.ndarray, chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Each direction's direct effect on the logits, as TransformerLens' folded, centred W_U gives it
    (what SAEDashboard's W_dec @ W_U computes on a TL model): the direction centred over d_model for a
    LayerNorm final norm, times the norm's gain, through the unembedding (no bias), minus its mean over
    the vocabulary (softmax ignores a constant). Yields (first row, [rows, V]) chunks of `chunk` rows
    (default: logit_chunk(V)); V stops at the tokenizer's size (rows past it are padding)."""
    from lmpeek.models.adapters import norm_centers
    from lmpeek.models.hf_compat import parameter_value

    b = model.bound
    norm = b.module(b.adapter.final_norm)
    W_U = parameter_value(b.module(b.adapter.unembed), "weight").detach().float().cpu().numpy()
    W_U = W_U[: min(len(W_U), len(model.tokenizer))]
    gain = _gain(norm)
    centre = norm_centers(norm)
    step = chunk or logit_chunk(len(W_U))
    for a in range(0, len(dirs), step):
        d = dirs[a : a + step].astype(np.float32)
        if centre:
            d = d - d.mean(-1, keepdims=True)
        x = d * gain
        logits = _fixed_rows_matmul(x, W_U.T)
        logits -= logits.mean(-1, keepdims=True)
        yield a, logits
        del logits  # the next chunk is made without this one alive


def _fixed_rows_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w, _MATMUL_ROWS rows of x per BLAS call (the last zero-padded): a row's result then does not
    depend on how many rows came with it. BLAS picks kernels and blockings by the row count (gemv for
    one row; on AVX2 OpenBLAS with one thread, blocks of 16 rows already round row by row differently
    from blocks of 8), so a chunk of 3 and one of 170 would give other float32 bits; with every call
    the same small shape, any chunking (and the one-at-a-time reference of the tests) gives the same
    bits. ~4x the time of one big call (each call streams w again): ~5 s for 2,048 features of the
    default model, a fixed cost of the build."""
    out = np.empty((len(x), w.shape[1]), np.float32)
    for a in range(0, len(x), _MATMUL_ROWS):
        block = x[a : a + _MATMUL_ROWS]
        n = len(block)
        if n < _MATMUL_ROWS:
            block = np.pad(block, ((0, _MATMUL_ROWS - n), (0, 0)))
        out[a : a + n] = (block @ w)[:n]
    return out


def _extremes(row: np.ndarray, kth: float, n: int, top: bool) -> np.ndarray:
    """The n largest (top) or smallest entries of `row`, ties to the smaller token id: what a full
    lexsort((ids, ∓row))[:n] gives, sorting only the entries at or beyond the n-th value `kth`."""
    if not np.isfinite(kth) or np.isnan(row).any():  # NaN: the full sort, which puts NaN last
        ids = np.arange(len(row))
        return np.lexsort((ids, -row if top else row))[:n]
    cand = np.flatnonzero(row >= kth if top else row <= kth)
    return cand[np.lexsort((cand, -row[cand] if top else row[cand]))][:n]


def _logit_rows(model: Any, dirs: np.ndarray, n: int, chunk: int | None = None) -> list[tuple]:
    """Each feature's logits row: the n top and bottom tokens and a LOGIT_BINS histogram, computed one
    chunk of features at a time (only these small parts of the [F, V] logits are kept)."""
    rows = []
    for a, logits in logit_effects(model, dirs, chunk):
        V = logits.shape[1]
        m = min(n, V)
        part = np.partition(logits, sorted({m - 1, V - m}), axis=1)
        lo_kth, hi_kth = part[:, m - 1], part[:, V - m]
        del part
        lo, hi = logits.min(1), logits.max(1)
        kept = []
        for j, row in enumerate(logits):
            top, bottom = _extremes(row, hi_kth[j], m, True), _extremes(row, lo_kth[j], m, False)
            kept.append((top, row[top], bottom, row[bottom]))
        # the histogram, in place: (logits - lo) / span * LOGIT_BINS, the same float32 steps as at once
        span = np.where(hi > lo, hi - lo, 1.0)
        logits -= lo[:, None]
        logits /= span[:, None]
        logits *= LOGIT_BINS
        bins = logits.astype(np.int64)
        np.clip(bins, 0, LOGIT_BINS - 1, out=bins)
        bins += np.arange(len(bins))[:, None] * LOGIT_BINS
        counts = np.bincount(bins.ravel(), minlength=len(bins) * LOGIT_BINS).reshape(len(bins), LOGIT_BINS)
        del logits, bins  # (as logit_effects drops its reference): one chunk alive at a time
        for j, (top, top_v, bottom, bottom_v) in enumerate(kept):
            rows.append(
                (
                    a + j,
                    dbf.blob(top, "<i4"),
                    dbf.blob(top_v, "<f4"),
                    dbf.blob(bottom, "<i4"),
                    dbf.blob(bottom_v, "<f4"),
                    dbf.blob(counts[j], "<i4"),
                    float(lo[j]),
                    float(hi[j]),
                )
            )
    return rows


# --- finishing a source ----------------------------------------------------------------------------------


def quantile_boundaries(hist: np.ndarray, quantiles: int) -> np.ndarray:
    """Indices into HIST_EDGES where one feature's activations > 0 are split into `quantiles` bins:
    for j = 1 .. quantiles-1, the edge above the histogram bin where the cumulative count first
    reaches j/quantiles of the total; repeated edges and edges with nothing above or below dropped."""
    cum = np.cumsum(hist)
    total = cum[-1] if len(cum) else 0
    if total == 0:
        return np.zeros(0, np.int64)
    targets = total * np.arange(1, quantiles) / quantiles
    edges = np.unique(np.searchsorted(cum, targets, side="left") + 1)
    return edges[(cum[edges - 1] > 0) & (cum[edges - 1] < total)]


def _window_blobs(win: np.ndarray, pos: int, left: int) -> tuple[int, int, bytes, bytes]:
    valid = np.flatnonzero(~np.isnan(win))
    lo, hi = int(valid[0]), int(valid[-1]) + 1
    values = win[lo:hi]
    nz = np.flatnonzero(values != 0)
    if 3 * len(nz) > 2 * len(values):  # mostly non-zero (neurons): dense is smaller (no offsets)
        return pos - left + lo, hi - lo, b"", dbf.blob(values, "<f4")
    return pos - left + lo, hi - lo, dbf.blob(nz, "<u2"), dbf.blob(values[nz], "<f4")


def _finish_source(s: int, st: SourceState, n: int, quantiles: int, per_bin: int, n_corr: int):
    """(feature rows, quantile bin rows, example rows, correlation rows) for source s."""
    feats, bins, examples, corr = [], [], [], []
    E = dbf.HIST_EDGES
    for f in range(st.F):
        h = st.hist[f]
        nzb = np.flatnonzero(h)
        first, last = (int(nzb[0]), int(nzb[-1]) + 1) if len(nzb) else (0, 0)
        mx = float(st.max[f]) if n else None
        mn = float(st.min[f]) if n else None
        feats.append(
            (
                s,
                f,
                n,
                int(st.count[f]),
                int(st.count_neg[f]),
                float(st.sum[f]),
                float(st.sum_sq[f]),
                mx,
                mn,
                st.count[f] / n if n else 0.0,
                first,
                dbf.blob(h[first:last], "<i8"),
            )
        )
        for rank in range(st.top.m):
            if st.top.doc[f, rank] == _EMPTY_DOC:
                break
            pos = int(st.top.pos[f, rank])
            examples.append(
                (
                    s,
                    f,
                    "top",
                    0,
                    rank,
                    float(st.top.score[f, rank]),
                    int(st.top.doc[f, rank]),
                    pos,
                    *_window_blobs(st.top.win[f, rank], pos, st.left),
                )
            )
        cuts = quantile_boundaries(h, quantiles)
        if st.count[f] == 0:
            continue
        cum = np.r_[0, np.cumsum(h)]
        idx = np.r_[0, cuts, len(h)]
        for b in range(len(idx) - 1):
            lo = 0.0 if b == 0 else float(E[idx[b]])
            hi = float(st.max[f]) if b == len(idx) - 2 else float(E[idx[b + 1]])
            bins.append((s, f, b, lo, hi, int(cum[idx[b + 1]] - cum[idx[b]])))
        taken = np.zeros(len(idx) - 1, np.int64)
        valid = st.sample.doc[f] != _EMPTY_DOC
        which = np.searchsorted(E[cuts], st.sample.score[f].astype(np.float64), side="right")
        for j in np.flatnonzero(valid):  # rows are in key order: the first per_bin of each bin
            b = int(which[j])
            if taken[b] >= per_bin:
                continue
            pos = int(st.sample.pos[f, j])
            examples.append(
                (
                    s,
                    f,
                    "quantile",
                    b,
                    int(taken[b]),
                    float(st.sample.score[f, j]),
                    int(st.sample.doc[f, j]),
                    pos,
                    *_window_blobs(st.sample.win[f, j], pos, st.left),
                )
            )
            taken[b] += 1
    if st.corr and n > 1:
        corr = _correlations(s, st, n, n_corr)
    return feats, bins, examples, corr


def _correlations(s: int, st: SourceState, n: int, n_corr: int) -> list[tuple]:
    """Pearson (from the shifted sums) and cosine (the raw sums, unshifted) of every pair; each
    feature's n_corr most correlated others, ties to the smaller index."""
    c = st.shift.astype(np.float64)
    var = st.s2 - st.s1 * st.s1 / n
    raw_sq = st.s2 + 2 * c * st.s1 + n * c * c
    ok = var > 1e-12 * np.maximum(raw_sq, 1e-30)  # a feature that never varies has no correlation
    rows = []
    idx = np.arange(st.F)
    for a in range(0, st.F, _CORR_ROWS):
        r = slice(a, min(a + _CORR_ROWS, st.F))
        sxy = st.sxy[r]
        cov = sxy - np.outer(st.s1[r], st.s1) / n
        with np.errstate(invalid="ignore", divide="ignore"):
            pearson = cov / np.sqrt(np.outer(var[r], var))
            raw = sxy + np.outer(st.s1[r], c) + np.outer(c[r], st.s1) + n * np.outer(c[r], c)
            cosine = raw / np.sqrt(np.outer(raw_sq[r], raw_sq))
        pearson[~ok[r]] = np.nan
        pearson[:, ~ok] = np.nan
        pearson[np.arange(pearson.shape[0]), idx[r]] = np.nan  # not itself
        for j, row in enumerate(pearson):
            good = np.flatnonzero(~np.isnan(row))
            best = good[np.lexsort((good, -row[good]))][:n_corr]
            rows += [
                (s, a + j, rank, int(o), float(row[o]), float(cosine[j, o])) for rank, o in enumerate(best)
            ]
    return rows


# --- identity, checkpoints --------------------------------------------------------------------------------


def _source_hash(source: Any) -> str:
    """What the source is: kind, name, hooks, size, and the bytes of its folder's files (an SAE)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([source.kind, source.name, list(source.hooks), source.n_features]).encode())
    folder = getattr(source, "folder", None)
    if folder and Path(folder).is_dir():
        for p in sorted(Path(folder).iterdir()):
            if p.is_file():
                h.update(p.name.encode() + b"\0")
                with p.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def _chain(h: str, ids: np.ndarray) -> str:
    """The corpus hash after one more sequence (a chain, so it can be checkpointed)."""
    data = bytes.fromhex(h) + len(ids).to_bytes(8, "little") + dbf.blob(ids, "<i4")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _limited(seqs: Iterator[Sequence], tokens: int | None) -> Iterator[Sequence]:
    """Sequences until `tokens` tokens have been taken (the last one cut to fit)."""
    taken = 0
    for seq in seqs:
        if tokens is not None:
            room = tokens - taken
            if room < 2:
                return
            if len(seq.ids) > room:
                seq = Sequence(seq.ids[:room], seq.path, seq.part)
        taken += len(seq.ids)
        yield seq


def _state_rows(progress: dict[str, Any], states: list[SourceState]) -> Iterator[tuple[str, bytes]]:
    """A checkpoint's rows, one array's .npy bytes at a time: a list of them all would be a second copy
    of the whole state (the F × F sums included) at every checkpoint. The small progress row goes last:
    the cached INSERT keeps its last row's values bound (SQLite's own copy) until it runs again."""
    for s, st in enumerate(states):
        for name, a in st.arrays().items():
            yield f"{s}.{name}", dbf.npy(a)
    yield "progress", json.dumps(progress, sort_keys=True).encode()


def _save(conn: sqlite3.Connection, progress: dict[str, Any], states: list[SourceState]) -> None:
    conn.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", _state_rows(progress, states))
    conn.commit()


def _load(conn: sqlite3.Connection, states: list[SourceState]) -> dict[str, Any]:
    stored = dict(conn.execute("SELECT key, value FROM state"))
    if "progress" not in stored:  # created, but killed before the first checkpoint
        return {}
    for s, st in enumerate(states):
        prefix = f"{s}."
        st.restore({k[len(prefix) :]: dbf.from_npy(v) for k, v in stored.items() if k.startswith(prefix)})
    return json.loads(stored["progress"])


# --- progress ------------------------------------------------------------------------------------------


class _Bar:
    """A rich progress bar with tokens/s and an ETA (the CLI's default)."""

    def __init__(self, total: int | None, done: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]features"),
            BarColumn(),
            TextColumn("{task.completed:,} tokens"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("build", total=total, completed=done, rate="")
        self.progress.start()

    def __call__(self, p: BuildProgress) -> None:
        self.progress.update(self.task, completed=p.tokens, rate=f"{p.tokens_per_s:,.0f} tokens/s")

    def close(self) -> None:
        self.progress.stop()


# --- the build ------------------------------------------------------------------------------------------


def _load_sources(model: Any, sources: Any) -> list[Any]:
    """The sources, loaded with the model; with a (base, chat) pair, crosscoders with the pair and every
    other source with the chat model."""
    from lmpeek import features
    from lmpeek.features.sources import FeatureSource, kind_for

    if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, Iterable) or callable(sources):
        sources = [sources]
    pair = isinstance(model, tuple)
    # "crosscoder:PATH" (as `lmpeek features build -s` spells it) is the folder PATH
    sources = [s[11:] if isinstance(s, str) and s.startswith("crosscoder:") else s for s in sources]

    def reads_pair(s: Any) -> bool:
        return bool(getattr(s, "models", None)) if isinstance(s, FeatureSource) else kind_for(s).pair

    loaded = [features.load(s, model if pair and reads_pair(s) else _chat(model)) for s in sources]
    if not loaded:
        raise InvalidInput("give at least one feature source (e.g. 'neurons:0' or a SAELens folder)")
    for src in loaded:
        if not src.hooks:
            raise InvalidInput(
                f"{src.name} computes features from text, not from hook points: the builder reads a corpus "
                f"through the model's hooks (give neurons:L or an SAE)"
            )
        if getattr(src, "models", None) and not pair:
            raise InvalidInput(
                f"{src.name} is a crosscoder: it reads a base and a chat model; build with the pair "
                f"(base_model, chat_model) (lmpeek features build: --model CHAT --base-model BASE)"
            )
    if pair and not any(getattr(src, "models", None) for src in loaded):
        raise InvalidInput(
            "a base model is read by crosscoder sources only, and none of these sources is one: give one "
            "model (no --base-model)"
        )
    return loaded


def _chat(model: Any) -> Any:
    """The model whose tokenizer, logits and fingerprint a build uses: the chat model of a pair."""
    return model[1] if isinstance(model, tuple) else model


def _models(model: Any) -> tuple[Any, ...]:
    """(model,) or the pair (base, chat), each checked; a pair must share a tokenizer (one line if not)."""
    from lmpeek.capture.trace import require_model

    models = model if isinstance(model, tuple) else (model,)
    if len(models) not in (1, 2):
        raise InvalidInput(
            f"build reads one model, or the pair (base_model, chat_model) a crosscoder reads; got "
            f"{len(models)} models"
        )
    for m in models:
        require_model(m)
    if len(models) == 2 and models[0].fingerprint.get("tokenizer") != models[1].fingerprint.get("tokenizer"):
        from lmpeek.features.crosscoder import shared_ids

        try:  # vocabularies may differ in added tokens; the text must come out as the same ids
            shared_ids(models, "The quick brown fox jumps over the lazy dog. 1 + 1 = 2.")
        except InvalidInput:
            raise InvalidInput(
                f"{models[0].name} and {models[1].name} tokenize text differently: a crosscoder build runs "
                f"both models on the same token ids, so they need the same tokenizer"
            ) from None
    return models


def _context(context: Any) -> tuple[int, int]:
    if isinstance(context, int) and not isinstance(context, bool):
        context = (context, context)
    if not isinstance(context, (tuple, list)) or len(context) != 2:
        raise InvalidInput(f"context must be (left, right) token counts, got {context!r}")
    left = validate.integer("context left", context[0], 0, 1000)
    return left, validate.integer("context right", context[1], 0, 1000)


def build(
    model: Any,
    sources: Any,
    corpus: Any,
    out: Any,
    *,
    tokens: int | None = None,
    batch_size: int = 8,
    k: int = 20,
    context: Any = (24, 8),
    seq_len: int = 128,
    quantiles: int = 5,
    per_bin: int = 5,
    sample_size: int | None = None,
    skip_first: bool = True,
    correlations: int = 4096,
    n_correlated: int = 5,
    n_logits: int = 10,
    shard_batches: int = 64,
    checkpoint_every: int = 50,
    seed: int = 0,
    progress: bool | Callable[[BuildProgress], Any] | None = None,
    overwrite: bool = False,
    ray: str | None = None,
    ray_workers: int | None = None,
    ray_load: Mapping[str, Any] | None = None,
) -> Path:
    """Build the feature database `out` for `sources` (specs or loaded sources) over `corpus` (paths
    and/or texts: see corpus.py), reading at most `tokens` tokens. Returns the database's path.

    k: top examples per feature; context: (left, right) positions of activations kept around each
    example; seq_len: tokens per sequence run; quantiles × per_bin: the quantile examples, drawn from
    a uniform sample of sample_size activations > 0 (default 4 × quantiles × per_bin); correlations:
    the largest source (in features) whose correlations are computed; shard_batches: batches per shard
    (see the module docstring: part of the build, like batch_size); progress: a callback taking
    BuildProgress, or True for a progress bar. An existing `out` from the same build is resumed (or
    returned, when complete); one from another build is refused unless overwrite=True.

    model: a loaded model, or the pair (base_model, chat_model) when a source is a crosscoder (which reads
    "base:HOOK" and "chat:HOOK"): the corpus is tokenized by the chat model, both models run once per
    batch on the same ids (their tokenizers must agree), other sources read the chat model, logits go
    through the chat model's unembedding (a crosscoder's chat-side decoder rows), and the manifest names
    both models ("model": chat, "base_model"). Not with a Ray cluster.

    ray: run the shards on the Ray cluster at this address ("host:port", "ray://host:port", "auto";
    needs the extra lmpeek[ray]: see features/ray_build.py), with ray_workers model replicas (default:
    one per GPU, or per CPU without GPUs), each loading the model with lmpeek.load(source, **ray_load)
    (default: the dtype of `model`'s weights); "inline" runs the same sharded path in this process.
    The database is the same as without `ray`."""
    from lmpeek import __version__

    models = _models(model)
    model = models if len(models) == 2 else models[0]
    chat = _chat(model)
    if tokens is not None:
        tokens = validate.integer("tokens", tokens, 2)
    batch_size = validate.integer("batch_size", batch_size, 1, 4096)
    k = validate.integer("k", k, 1, 10_000)
    left, right = _context(context)
    longest = min([m.context_length or 1 << 20 for m in models] + [1 << 20])
    seq_len = validate.integer("seq_len", seq_len, 2, longest)
    quantiles = validate.integer("quantiles", quantiles, 1, 100)
    per_bin = validate.integer("per_bin", per_bin, 1, 1000)
    sample_size = validate.integer(
        "sample_size", 4 * quantiles * per_bin if sample_size is None else sample_size, 1, 100_000
    )
    correlations = validate.integer("correlations", correlations, 0)
    n_correlated = validate.integer("n_correlated", n_correlated, 1, 1000)
    n_logits = validate.integer("n_logits", n_logits, 1, 1000)
    shard_batches = validate.integer("shard_batches", shard_batches, 1)
    checkpoint_every = validate.integer("checkpoint_every", checkpoint_every, 1)
    seed = validate.integer("seed", seed, 0, 2**32 - 1)
    if left + right + 1 > 65535:
        raise InvalidInput("context windows are at most 65,535 positions")
    if ray is not None and (not isinstance(ray, str) or not ray.strip()):
        raise InvalidInput(f"ray must be a cluster address such as '127.0.0.1:6379', got {ray!r}")
    if ray_workers is not None:
        ray_workers = validate.integer("ray_workers", ray_workers, 1)
    if ray is not None and ray.strip() != "inline":
        from lmpeek.features import ray_build

        ray_build.preflight(ray.strip(), model)  # no Ray, no cluster: refused before the corpus is read
    srcs = _load_sources(model, sources)
    seqs = _limited(sequences(chat.tokenizer, documents(corpus), seq_len), tokens)  # bad paths fail here
    peek = next(seqs, None)  # an empty corpus is refused before anything is created
    if peek is None:
        raise InvalidInput("the corpus has no text to run (no documents, or only empty ones)")
    seqs = itertools.chain([peek], seqs)
    out = Path(out).expanduser()
    first = 1 if skip_first else 0

    info = [
        {
            "source": s,
            "name": src.name,
            "kind": src.kind,
            # what features.load takes to load it again: a registered name ("default"), a folder, a name
            "spec": getattr(src, "spec", None) or getattr(src, "folder", None) or src.name,
            "hooks": list(src.hooks),
            "n_features": int(src.n_features),
            "hash": _source_hash(src),
            "correlations": int(src.n_features) <= correlations,
            # a crosscoder's logits: its chat-side decoder rows through the chat model's unembedding
            **({"logits_model": "chat"} if getattr(src, "models", None) else {}),
        }
        for s, src in enumerate(srcs)
    ]
    build_cfg = {
        "tokens_limit": tokens,
        "batch_size": batch_size,
        "shard_batches": shard_batches,
        "k": k,
        "context": [left, right],
        "seq_len": seq_len,
        "quantiles": quantiles,
        "per_bin": per_bin,
        "sample_size": sample_size,
        "skip_first": skip_first,
        "correlations": correlations,
        "n_correlated": n_correlated,
        "n_logits": n_logits,
        "seed": seed,
        "hist_edges": dbf.HIST_EDGES[:-1].tolist(),  # then [last, inf): standard JSON has no inf
    }
    fp = chat.fingerprint
    identity = {
        "format_version": dbf.FORMAT_VERSION,
        "lmpeek_version": __version__,
        "model": {"name": chat.name, "source": chat.source_label, "fingerprint": fp},
        "tokenizer": fp.get("tokenizer"),
        "sources": info,
        "corpus_inputs": corpus_inputs(corpus),
        "build": build_cfg,
    }
    if len(models) == 2:  # a crosscoder build: "model" is the chat model
        base = models[0]
        identity["base_model"] = {
            "name": base.name,
            "source": base.source_label,
            "fingerprint": base.fingerprint,
        }
    job = ShardJob(
        n_features=tuple(i["n_features"] for i in info),
        corr=tuple(i["correlations"] for i in info),
        k=k,
        sample_size=sample_size,
        context=(left, right),
        first=first,
        seed=seed,
        batch_size=batch_size,
    )
    states = new_states(job)

    conn = _open(out, identity, overwrite)
    if conn is None:
        return out
    bar = None
    try:
        run = _Run(conn, states, _load(conn, states), shard_batches, checkpoint_every)
        run.replay(seqs, out)
        if progress is True:
            bar = run.report = _Bar(tokens, run.tokens_run)
        else:
            run.report = progress if callable(progress) else None
        run.total = tokens
        batches = _batches(seqs, batch_size)
        if ray is None:
            run.local(model, srcs, job, batches)
        else:
            run.local(model, srcs, job, batches, shard_end=True)  # finish a shard a checkpoint left open
            run.sharded(model, srcs, job, batches, ray.strip(), ray_workers, ray_load)
        for st in states:
            st.close_shard()
        _finish(conn, chat, srcs, states, info, run.counted, quantiles, per_bin, n_correlated, n_logits)
        dbf.write_manifest(
            conn,
            {
                "status": "complete",
                "tokens_run": run.tokens_run,
                "tokens": run.counted,
                "corpus": {"inputs": identity["corpus_inputs"], "hash": run.chain, "documents": run.docs},
            },
        )
        conn.execute("DELETE FROM state")
        conn.commit()
        conn.execute("VACUUM")
    except BaseException:  # what is not checkpointed is rolled back, as a kill -9 would leave it
        conn.rollback()
        conn.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    conn.close()
    return out


def _batches(seqs: Iterator[Sequence], batch_size: int) -> Iterator[list[Sequence]]:
    while batch := list(itertools.islice(seqs, batch_size)):
        yield batch


class _Run:
    """One build's way through the corpus: the documents written, the counters, shards closed,
    checkpoints, progress reports. Local and Ray builds record their batches here alike."""

    def __init__(self, conn: sqlite3.Connection, states: list[SourceState], saved: dict[str, Any],
                 shard_batches: int, checkpoint_every: int):  # fmt: skip
        self.conn, self.states = conn, states
        self.shard_batches, self.checkpoint_every = shard_batches, checkpoint_every
        self.docs = int(saved.get("documents", 0))
        self.tokens_run = int(saved.get("tokens_run", 0))
        self.counted = int(saved.get("tokens", 0))
        self.batches = int(saved.get("batches", 0))
        self.chain = saved.get("chain", "00" * 16)
        self.report: Callable[[BuildProgress], Any] | None = None
        self.total: int | None = None
        self.t0, self.run_tokens = time.perf_counter(), 0

    def replay(self, seqs: Iterator[Sequence], out: Path) -> None:
        """Skip the sequences already in the checkpoint; the corpus must not have changed."""
        check = "00" * 16
        for _ in range(self.docs):
            seq = next(seqs, None)
            if seq is None:
                break
            check = _chain(check, seq.ids)
        if self.docs and check != self.chain:
            raise InvalidInput(
                f"{out}: the corpus differs from the one this build started on (its first {self.docs} "
                f"sequences changed); remove {out.name} or pass overwrite=True to start over"
            )

    def done(self, batch: list[Sequence], counted: int, close: bool = True) -> None:
        """One batch added to the states: its documents, the counters, the shard closed at its end."""
        self.conn.executemany(
            "INSERT INTO documents (doc, tokens, n_tokens, path, part) VALUES (?, ?, ?, ?, ?)",
            [
                (self.docs + j, dbf.blob(s.ids, "<i4"), len(s.ids), s.path, s.part)
                for j, s in enumerate(batch)
            ],
        )
        for s in batch:
            self.chain = _chain(self.chain, s.ids)
        n = sum(len(s.ids) for s in batch)
        self.docs += len(batch)
        self.tokens_run += n
        self.run_tokens += n
        self.counted += counted
        self.batches += 1
        if close and self.batches % self.shard_batches == 0:
            for st in self.states:
                st.close_shard()

    def save(self) -> None:
        progress = {"documents": self.docs, "tokens_run": self.tokens_run, "tokens": self.counted,
                    "batches": self.batches, "chain": self.chain}  # fmt: skip
        _save(self.conn, progress, self.states)

    def tell(self) -> None:
        if self.report is None:
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.run_tokens / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.tokens_run) / rate if self.total is not None and rate > 0 else None
        self.report(BuildProgress(self.tokens_run, self.total, self.docs, self.batches, elapsed, rate, eta))

    def local(self, model: Any, srcs: list[Any], job: ShardJob, batches: Iterator[list[Sequence]],
              shard_end: bool = False) -> None:  # fmt: skip
        """Run batches here (with shard_end: only up to the end of the current shard)."""
        if shard_end and self.batches % self.shard_batches == 0:
            return
        for batch in batches:
            counted = run_batch(
                model, srcs, self.states, [s.ids for s in batch], self.docs, job.first, job.seed
            )
            self.done(batch, counted)
            if self.batches % self.checkpoint_every == 0:
                self.save()
            self.tell()
            if shard_end and self.batches % self.shard_batches == 0:
                return

    def sharded(self, model: Any, srcs: list[Any], job: ShardJob, batches: Iterator[list[Sequence]],
                address: str, workers: int | None, load: Mapping[str, Any] | None) -> None:  # fmt: skip
        """Run the remaining whole shards elsewhere (Ray, or "inline"), merge each in shard order."""
        shards = []
        while shard := list(itertools.islice(batches, self.shard_batches)):
            shards.append(shard)
        if not shards:
            return
        if self.docs:  # the shifts are in the state (restored, or set by a shard run here)
            job = replace(job, shift=tuple(st.shift if st.corr else None for st in self.states))
        else:
            job = replace(job, first_batch=tuple(s.ids for s in shards[0][0]))
        items, doc = [], self.docs
        for i, shard in enumerate(shards):
            seqs = [s.ids for batch in shard for s in batch]
            items.append(shard_item(i, doc, seqs))
            doc += len(seqs)
        if address == "inline":
            partials = run_inline(model, srcs, job, items)
        else:
            from lmpeek.features import ray_build

            partials = ray_build.run(address, job, items, model, srcs, workers=workers, load=load)
        for i, data in partials:  # in shard order
            for st, part in zip(self.states, unpack_shard(job, data), strict=True):
                st.merge(part)
            for batch in shards[i]:
                self.done(batch, sum(max(len(s.ids) - job.first, 0) for s in batch), close=False)
            self.save()
            self.tell()


def _open(out: Path, identity: dict[str, Any], overwrite: bool) -> sqlite3.Connection | None:
    """The database to build into: a new one, or the existing one to resume; None when `out` already
    holds this build, finished."""
    if out.exists() and overwrite:
        out.unlink()
    if out.exists():
        conn = dbf.connect(out)
        try:
            manifest = dbf.read_manifest(conn)
            dbf.check_version(manifest, out)
            differs = [key for key, value in identity.items() if manifest.get(key) != value]
            if differs:
                raise InvalidInput(
                    f"{out} holds another build (its {', '.join(differs)} differ); remove it, choose another "
                    f"output or pass overwrite=True"
                )
        except Exception:
            conn.close()
            raise
        if manifest.get("status") == "complete":
            conn.close()
            return None
        return conn
    out.parent.mkdir(parents=True, exist_ok=True)
    conn = dbf.create(out)
    dbf.write_manifest(conn, {**identity, "status": "building"})
    conn.executemany(
        "INSERT INTO sources (source, name, kind, spec, hooks, n_features, hash, logits, correlations) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                i["source"],
                i["name"],
                i["kind"],
                i["spec"],
                json.dumps(i["hooks"]),
                i["n_features"],
                i["hash"],
                0,
                int(i["correlations"]),
            )
            for i in identity["sources"]
        ],
    )
    conn.commit()
    return conn


def _finish(conn, model, srcs, states, info, n, quantiles, per_bin, n_correlated, n_logits) -> None:
    """The final tables, from the state: features, quantile bins, examples, correlations, logits, vocab,
    search."""
    mentioned: set[int] = set()
    for s, (src, st) in enumerate(zip(srcs, states, strict=True)):
        feats, bins, examples, corr = _finish_source(s, st, n, quantiles, per_bin, n_correlated)
        conn.executemany(f"INSERT INTO features VALUES ({', '.join('?' * 12)})", feats)
        conn.executemany("INSERT INTO quantile_bins VALUES (?, ?, ?, ?, ?, ?)", bins)
        conn.executemany(f"INSERT INTO examples VALUES ({', '.join('?' * 12)})", examples)
        conn.executemany("INSERT INTO correlations VALUES (?, ?, ?, ?, ?, ?)", corr)
        dirs = directions(model, src)
        if dirs is not None and dirs.shape == (st.F, model.bound.d_model):
            rows = _logit_rows(model, dirs, n_logits)
            conn.executemany(f"INSERT INTO logits VALUES ({s}, {', '.join('?' * 8)})", rows)
            conn.execute("UPDATE sources SET logits = 1 WHERE source = ?", (s,))
            for r in rows:
                mentioned.update(dbf.unblob(r[1], "<i4").tolist())
                mentioned.update(dbf.unblob(r[3], "<i4").tolist())
    for (data,) in conn.execute("SELECT tokens FROM documents"):
        mentioned.update(np.unique(dbf.unblob(data, "<i4")).tolist())
    from lmpeek.capture.tokens import byte_label, token_bytes_fn

    to_bytes = token_bytes_fn(model.tokenizer)
    conn.executemany(
        "INSERT INTO vocab (token, label, bytes) VALUES (?, ?, ?)",
        [(t, byte_label(to_bytes(t)), to_bytes(t)) for t in sorted(mentioned)],
    )
    dbf.fill_search(conn)  # the FTS5 index over labels (none yet) and each feature's peak tokens


# --- the CLI ----------------------------------------------------------------------------------------------


def build_cli(
    model: Any,
    sources: list[str],
    corpus: list[str],
    out: str,
    tokens: int | None = None,
    batch_size: int = 8,
    k: int = 20,
    seq_len: int = 128,
    overwrite: bool = False,
    echo: Callable[[str], Any] = print,
    ray: str | None = None,
    ray_load: Mapping[str, Any] | None = None,
    base_model: Any = None,
) -> Path:
    """What `lmpeek features build` runs: load the model and the sources (an SAE is checked against the
    model and warns when it does not fit), build with a progress bar (on the Ray cluster at `ray`,
    whose workers load the model with `ray_load`), say what was written. With `base_model`, `model` is
    the chat model of a crosscoder build."""
    import lmpeek

    m = lmpeek.load(model) if isinstance(model, str) else model  # the CLI loads it with its flags
    if base_model is not None:
        m = (lmpeek.load(base_model) if isinstance(base_model, str) else base_model, m)
    # the CLI's arguments are paths (or "demo", the bundled corpus), never texts
    corpus = [c if c == "demo" else Path(c) for c in corpus]
    path = build(
        m,
        sources,
        corpus,
        out,
        tokens=tokens,
        batch_size=batch_size,
        k=k,
        seq_len=seq_len,
        progress=True,
        overwrite=overwrite,
        ray=ray,
        ray_load=ray_load,
    )
    with dbf.FeatureDB(path) as db:
        names = ", ".join(f"{s['name']} ({s['n_features']:,} features)" for s in db.sources)
        m = db.manifest
        echo(f"{path}: {names} over {m['tokens']:,} tokens of {m['corpus']['documents']:,} sequences")
    return path
