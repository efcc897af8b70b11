"""Session: the one service behind every way of looking at a model (web app, notebook, CLI, export).

A Session owns a loaded model, the queue in front of it (`lmpeek.worker.ModelWorker`: one job at a
time, on one thread) and a trace store. It runs texts, generates, and answers every question about a
stored trace: any hook point of any layer recomputed from the stored residual stream, attention
patterns (and their RoPE parts), logit lens, neurons, histograms, similarities, comparisons. Callers
only format what it returns (JSON, binary, widget messages, HTML); none of them computes a number.

Methods return numpy arrays and small dataclasses. Problems a caller can cause raise `LmpeekError`s
whose `status_code` is what the server answers (404 unknown trace, 409 no stored stream or another
model's trace, 422 an index out of range); the message says how to fix it.

Threads: model work runs on the worker's thread (`_on_model`); cached results are read on the
caller's thread, so a slice already computed never waits behind a long job. A method called from the
worker thread itself (the server runs whole jobs there) runs its model work directly.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from lmpeek.analysis.metrics import Metric
from lmpeek.errors import LmpeekError
from lmpeek.store.traces import TraceStore
from lmpeek.worker import ModelWorker

T = TypeVar("T")

Rope = Literal["full", "applied", "not_applied"]
Stat = Literal["norm", "abs_sum", "value"]
SimilarityKind = Literal["tokens", "previous", "residual"]
ComponentName = Literal["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"]

# the norms a trace's summary holds (computed in the forward pass): metric "norm" reads them
_NORM_IN_SUMMARY = re.compile(r"blocks\.\d+\.hook_(resid_pre|attn_out|resid_mid|mlp_out|resid_post)")

# what each residual component was added to (DeepPeek's "previous residual")
ADDED_TO = {
    "hook_attn_out": "hook_resid_pre",
    "attn.hook_result": "hook_resid_pre",
    "hook_mlp_out": "hook_resid_mid",
}


class TraceNotFound(LmpeekError):
    """No stored trace with that id (never made, or evicted to stay within the disk budget)."""

    status_code = 404


class NoStoredStream(LmpeekError):
    """The trace was stored without its residual stream, so nothing inside it can be recomputed."""

    status_code = 409


class OutOfRange(LmpeekError):
    """An index (token, layer, head, dimension, neuron) past the end of what the trace or model has."""

    status_code = 422


@dataclass(frozen=True)
class StoredTrace:
    id: str
    trace: Any  # lmpeek.capture.trace.Trace


@dataclass(frozen=True)
class HistogramResult:
    edges: np.ndarray  # [bins + 1]
    token: np.ndarray  # [bins] counts
    median: np.ndarray  # [bins]
    outliers: Any  # analysis.activations.Outliers
    outlier_values: np.ndarray  # the outlying dimensions' values, in `outliers.dims` order
    nonfinite: int  # dimensions left out (inf/NaN)


@dataclass(frozen=True)
class LensRows:
    ids: np.ndarray  # [L, k]
    probs: np.ndarray  # [L, k]
    tokens: list[list[str]]  # display labels (byte pieces as <0xC3>)
    # with a target token id: its label, and its rank (1 = most likely) and probability at every layer
    target: int | None = None
    target_token: str | None = None
    target_ranks: np.ndarray | None = None  # [L]
    target_probs: np.ndarray | None = None  # [L]


@dataclass(frozen=True)
class Comparison:
    mean_norm_a: np.ndarray  # [L]
    mean_norm_b: np.ndarray  # [L]

    @property
    def diff(self) -> np.ndarray:
        return self.mean_norm_a - self.mean_norm_b


class MissingParameter(LmpeekError):
    """A question that needs a parameter it was not given (e.g. metric 'neuron' without `neuron`)."""

    status_code = 422


class GenerationRun:
    """A generation started by `Session.start_generation`. `prompt`: the prompt's tokens (Tokenized);
    `seed`: the seed used (drawn when none was given: pass it back to repeat the run). Iterating
    yields `(step, attn_entropy_scale)`: one colour scale (analysis.scales) for the attention
    entropies of every step so far, so heatmaps of different tokens compare. Once the steps are done,
    `store()` stores the trace of the prompt and the generated tokens and returns its id."""

    def __init__(self, session: Session, prompt: Any, steps: Any) -> None:
        self.session = session
        self.prompt = prompt
        self.steps = steps  # capture.generate.Generation
        self.generated: list[int] = []

    @property
    def seed(self) -> int:
        return self.steps.seed

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        from lmpeek.analysis.scales import colour_scale

        maxima: list[float] = []  # each step's largest finite attention entropy
        for step in self.steps:
            self.generated.append(step.token_id)
            a = np.asarray(step.attn_entropy, dtype=np.float64)
            finite = a[np.isfinite(a)]
            maxima.append(float(finite.max()) if finite.size else float("nan"))
            # "raw" for a magnitude is 0..max, so the steps' maxima give the same limits as all values
            yield step, colour_scale(np.asarray(maxima), "magnitude", "raw")

    def store(self) -> str:
        """Store the trace of the prompt and the tokens generated so far; returns its id. It comes from
        the generation's own forwards (capture.generation_record): no second forward runs."""
        record = self.steps.record
        if record is None or record.positions != len(self.prompt.token_ids) + len(self.generated):
            return self.session.store_generation(self.prompt.token_ids, self.generated)
        t, resid = record.result()
        return self.session.store.put(t, resid)


def _check_index(name: str, value: int, n: int, what: str = "") -> None:
    if not 0 <= value < n:
        raise OutOfRange(f"{name} must be < {n}{what}")


def _need(name: str, **given: Any) -> None:
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise MissingParameter(f"metric '{name}' needs {' and '.join(missing)}")


@dataclass(frozen=True)
class JobEstimate:
    forwards: int  # sequences the job will run (an adaptive method's first round)
    seconds: float  # forwards × one measured forward of this text's length (× 3 with a backward)
    cached: bool  # the answer is already known: no forward will run


WhyEstimate = JobEstimate  # the attribution's name for it


@dataclass(frozen=True)
class WhyResult:
    attribution: Any  # lmpeek.attribution.attribute.Attribution
    faithfulness: Any  # lmpeek.attribution.faithfulness.Faithfulness, or None when not asked
    cached: bool


def attribution_forwards(kind: str, method: str, n: int, steps: int | None, faith: bool,
                         rows: int = 1, span: bool = False) -> tuple[int, int]:  # fmt: skip
    """Sequences a method runs on n segments for `rows` target rows (a span's tokens), as methods.py
    counts them: the forward that finds the target (which also gives F(x) of a next-token target), then
    F(x) of a span and F(x'), then the method's own;
    faithfulness scores at most (1 + 8 random orders) × 2 curves × (n + 1) masks, of which the full
    and empty ones are shared. A perturbation is one teacher-forced pass for every row (its rows are
    memoised); a gradient method runs its forwards once for all rows and one backward per row from them.
    Returns (sequences, backward passes of a sequence: a gradient method's own × rows)."""
    own = {
        "integrated_gradients": steps or 16,  # adaptive IG may double it (progress totals then grow)
        "gradient_x_input": 1,
        "occlusion": n,
        "shapley": 2**n if n <= 10 else 25 * n,
        "kernel_shap": 200,
        "lime": 200,
    }.get(method, n)
    scored = 18 * max(n - 1, 0) + 2 if faith else 0
    return 1 + (2 if span else 1) + own + scored, own * max(rows, 1) if kind == "gradient" else 0


def greedy_continuation(
    model: Any, ids: Any, n: int, tick: Callable[[int, int], None] | None = None
) -> list[int]:
    """The model's greedy continuation of `ids` ([1, S] on its device): up to `n` token ids, with the KV
    cache (one forward of the prompt, then one of one token each), stopping after an end-of-sequence
    token. The Why tab's "generate N tokens" target: the tokens `lmpeek.generate(temperature=0)` gives."""
    import torch

    from lmpeek.capture.generate import _eos_ids
    from lmpeek.capture.hooks import model_lock
    from lmpeek.models import hf_compat

    eos = set(_eos_ids(model))
    out: list[int] = []
    with model_lock(model.hf), torch.no_grad():
        with_cache = hf_compat.cache_kwargs(model.hf, hf_compat.new_kv_cache(model.hf.config))
        logits = model.hf(input_ids=ids, **with_cache).logits
        for i in range(n):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if tick is not None:
                tick(i + 1, n)
            if nxt in eos or i == n - 1:
                break
            logits = model.hf(input_ids=torch.tensor([[nxt]], device=ids.device), **with_cache).logits
    return out


class LongRun:
    """A long job's answer (Session.start_job): `estimate`, then iterate it (on the model's thread)
    for (done, total) progress; `result` once it ends. Its computation runs in turns (lmpeek.turns),
    so the worker's other jobs (slices, summaries) run between them; closing the iteration early
    cancels it. The result is kept in the Session's LRU by the job's key (`kept(result)` is what a
    repeat gets back at once)."""

    def __init__(self, session: Session, key: tuple, estimate: JobEstimate, compute: Any, result: Any,
                 kept: Callable[[Any], Any] = lambda r: r, name: str = "lmpeek-job"):  # fmt: skip
        self.session, self.key, self.estimate = session, key, estimate
        self._compute, self._kept, self._name = compute, kept, name
        self.result: Any = result

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.result is not None:
            return
        from lmpeek.capture.hooks import model_lock
        from lmpeek.turns import Turns

        turns = Turns(self._compute, model_lock(self.session.model.hf), self._name)
        try:
            while True:
                kind, value = turns.step()
                if kind == "item":
                    yield value
                    continue
                if kind == "error":
                    raise value
                cache = self.session._results
                cache[self.key] = self._kept(value)
                while len(cache) > self.session.RESULTS_KEPT:
                    cache.popitem(last=False)
                self.result = value
                return
        finally:
            turns.close()


AttributionRun = LongRun  # an attribution's run (Session.start_attribution)


def ticker(pause: Callable[[Any], None], every: float = 0.05) -> Callable[[int, int], None]:
    """`tick(done, total)` for a long job's compute: pauses (the queue's other jobs run, progress
    is sent) about every `every` seconds, however often it is called."""
    import time

    last = [time.monotonic()]

    def tick(done: int, total: int) -> None:
        if time.monotonic() - last[0] >= every:
            pause((int(done), int(max(total, done))))
            last[0] = time.monotonic()

    return tick


class Session:
    """A model, its queue and its traces. `model`: a LoadedModel, or a source for `lmpeek.load`.
    `store`: a TraceStore (default: one in a temporary folder, removed with the Session)."""

    def __init__(self, model: Any = "default", store: TraceStore | None = None, *,
                 worker: ModelWorker | None = None) -> None:  # fmt: skip
        if isinstance(model, str):
            from lmpeek.api import load

            model = load(model)
        self.model = model
        self._tmp: tempfile.TemporaryDirectory | None = None
        if store is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lmpeek-session-")
            store = TraceStore(Path(self._tmp.name))
        self.store = store
        self.worker = worker if worker is not None else ModelWorker()
        self._own_worker = worker is None
        self._results: OrderedDict[tuple, Any] = OrderedDict()  # long jobs' results by key (start_job)
        self._forward_seconds: dict[int, float] = {}  # one forward's time per length bucket (estimates)
        # trace id -> (flow Decomposition, its shares memo, answers by (token, threshold, contrast))
        self._flows: OrderedDict[str, tuple[Any, dict[Any, Any], dict[Any, Any]]] = OrderedDict()

    def close(self) -> None:
        if self._own_worker:
            self.worker.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_model(self, fn: Callable[[], T], kind: str = "job") -> T:
        return self.worker.call(fn, kind)

    # --- running the model --------------------------------------------------------------------------

    def trace(self, text: str | Any, top_k: int = 10) -> StoredTrace:
        """Run the model once on `text` (or token ids) and store the trace with its residual stream."""
        from lmpeek.capture.trace import trace_with_resid

        t, resid = self._on_model(lambda: trace_with_resid(self.model, text, top_k=top_k), "trace")
        return StoredTrace(self.store.put(t, resid), t)

    def generate(self, prompt: str, **sampling: Any):
        """`lmpeek.generate` on this model: a Generation (iterate it for Steps; `.seed`). Runs on the
        caller's thread: the server wraps it in a streaming job; see `store_generation` for the trace."""
        from lmpeek.capture.generate import generate

        return generate(self.model, prompt, **sampling)

    def start_generation(self, prompt: str, **sampling: Any) -> GenerationRun:
        """A generation to stream: the prompt's tokens, the seed, steps each with the colour scale of
        their attention entropies, and the whole text's trace stored at the end (`GenerationRun`).
        Bad prompts or sampling parameters raise here, before any step. Call it and iterate the run on
        the model's thread (the server submits both as jobs), as `generate`'s steps run the model."""
        from lmpeek.capture.generate import generate
        from lmpeek.capture.tokens import tokenize

        model = self.model
        tokens = tokenize(model.tokenizer, prompt, model.context_length)
        return GenerationRun(self, tokens, generate(model, prompt, record=True, **sampling))

    def store_generation(self, prompt_ids: np.ndarray, generated: list[int]) -> str:
        """Store the trace of a prompt and the tokens generated after it; returns its id."""
        from lmpeek.capture.trace import trace_with_resid

        ids = np.concatenate([np.asarray(prompt_ids, dtype=np.int64), np.asarray(generated, dtype=np.int64)])
        t, resid = self._on_model(lambda: trace_with_resid(self.model, ids), "trace")
        return self.store.put(t, resid)

    # --- stored traces ------------------------------------------------------------------------------

    def get(self, trace_id: str):
        """A stored trace (TraceNotFound; TraceFromAnotherModel if another model made it)."""
        try:
            # a trace is read only by the model that made it: its numbers mean nothing to another
            return self.store.get(trace_id, fingerprint=self.model.fingerprint)
        except KeyError:
            raise TraceNotFound(
                f"no trace with id '{trace_id}' (old traces are evicted to stay within the store's disk "
                "budget: lmpeek serve --store-budget)"
            ) from None

    def _need_stream(self, trace_id: str) -> None:
        if not self.store.has_resid(trace_id):
            raise NoStoredStream("this trace has no stored residual stream; run the text again")

    def component(self, trace_id: str, hook: str, head: int | None = None) -> np.ndarray:
        """A hook point's array for a stored trace ([T, ...], float32): one block recomputed from the
        stored stream, cached. Per-head points need `head` and come back as [T, d]."""
        from lmpeek.capture import recompute as comp

        self.get(trace_id)
        model = self.model
        comp.parse(model, hook)
        self._need_stream(trace_id)

        def calc() -> np.ndarray:
            hooks = comp.together(model, hook)
            try:
                arrays = self._on_model(
                    lambda: comp.compute_many(model, self.store, trace_id, hooks), "slice"
                )
            except KeyError:  # evicted meanwhile (e.g. by another server sharing the store)
                raise TraceNotFound(f"trace '{trace_id}' was evicted; run the text again") from None
            for other in hooks[1:]:  # computed anyway: cache them too
                self.store.derived(trace_id, ("component", other), lambda other=other: arrays[other])
            return arrays[hook]

        array = self.store.derived(trace_id, ("component", hook), calc)
        return comp.select_head(model, hook, array, head)

    def hook_points(self) -> list[dict[str, Any]]:
        """The hook points a view can select for this model (`{l}` stands for the layer)."""
        from lmpeek.capture.recompute import components

        return components(self.model)

    def vectors(self, trace_id: str, hook: str, head: int | None = None) -> np.ndarray:
        """`component` flattened to one vector per token: [T, D]."""
        x = self.component(trace_id, hook, head)
        return x.reshape(x.shape[0], -1)

    def vector(self, trace_id: str, hook: str, token: int, head: int | None = None) -> np.ndarray:
        """One token's vector at a hook point (float32)."""
        x = self.component(trace_id, hook, head)
        _check_index("token", token, x.shape[0])
        return np.ascontiguousarray(x[token], dtype=np.float32)

    # --- attention ----------------------------------------------------------------------------------

    def attention(self, trace_id: str, layer: int, head: int, *, query: int | None = None,
                  key: int | None = None, rope: Rope = "full") -> np.ndarray:  # fmt: skip
        """One head's attention pattern [T, T] (float16), or one row (`query`: attention from it) or
        column (`key`: attention to it) as [1, T]. `rope`: recomputed from the full Q/K, from only
        their rotary part ("applied") or only the rest ("not_applied")."""
        from lmpeek.capture.slices import as_float16, attention_pattern, head_pattern

        t = self.get(trace_id)
        model = self.model
        T, L, H = len(t), model.n_layers, model.n_heads
        if not (0 <= layer < L and 0 <= head < H):
            raise OutOfRange(f"layer must be < {L} and head < {H}")
        if query is not None and key is not None:
            raise OutOfRange("give query or key, not both")
        for name, value in (("query", query), ("key", key)):
            if value is not None:
                _check_index(name, value, T, f" (the trace has {T} tokens)")
        if rope != "full":
            pattern = self._rope_part(trace_id, layer, head, rope)
        elif self.store.has_resid(trace_id):
            # this head only, from its Q and K recomputed out of the stored residual stream
            rotary = model.bound.rotary_dims is not None
            q_hook, k_hook = (
                ("attn.hook_rot_q", "attn.hook_rot_k") if rotary else ("attn.hook_q", "attn.hook_k")
            )
            q = self.component(trace_id, f"blocks.{layer}.{q_hook}", head)
            k = self.component(trace_id, f"blocks.{layer}.{k_hook}", head)
            pattern = self.store.derived(
                trace_id,
                ("head_pattern", layer, head),
                lambda: as_float16(head_pattern(model, layer, q, k)),
            )
        else:  # no stored stream: run the model up to this layer

            def compute() -> np.ndarray:
                return self._on_model(lambda: as_float16(attention_pattern(model, t.token_ids, layer)))

            pattern = self.store.derived(trace_id, ("pattern", layer), compute)[head]
        if query is not None:
            pattern = pattern[query : query + 1]
        elif key is not None:
            pattern = pattern[:, key][None]
        return np.ascontiguousarray(pattern)

    def _rope_part(self, trace_id: str, layer: int, head: int, part: str) -> np.ndarray:
        """One head's pattern recomputed from part of Q/K (see analysis.attention.rope_parts_pattern)."""
        from lmpeek.analysis.attention import rope_parts_pattern
        from lmpeek.capture.slices import as_float16

        b = self.model.bound
        if not b.rotary_dims:
            raise OutOfRange("this model has no RoPE: only rope=full applies")
        self._need_stream(trace_id)
        # pre-RoPE q/k are what RoPE rotates: after q_norm/k_norm where the model has them
        q_pre, k_pre = b.pre_rope_points()
        points = {"q": q_pre, "k": k_pre, "rot_q": "attn.hook_rot_q", "rot_k": "attn.hook_rot_k"}
        qk = {n: self.component(trace_id, f"blocks.{layer}.{p}", head)[:, None] for n, p in points.items()}
        scale = b.attention_params(layer).scale

        def calc() -> np.ndarray:
            p = rope_parts_pattern(qk["q"], qk["k"], qk["rot_q"], qk["rot_k"], b.rotary_dims, part, scale, 1)
            return as_float16(p[0])

        return self.store.derived(trace_id, ("rope", part, layer, head), calc)

    # --- activations --------------------------------------------------------------------------------

    def activations(self, trace_id: str, hook: str, head: int | None = None, stat: Stat = "norm",
                    dim: int | None = None) -> np.ndarray:  # fmt: skip
        """Per token [T]: the vector's L2 norm, the sum of |values|, or one dimension's (signed) value."""
        from lmpeek.analysis import activations as act

        x = self.vectors(trace_id, hook, head)
        if stat == "value":
            if dim is None or not 0 <= dim < x.shape[1]:
                raise OutOfRange(f"stat=value needs dim in 0..{x.shape[1] - 1}")
            return act.values(x, dim)
        if stat == "norm":
            with np.errstate(all="ignore"):  # inf/NaN the model produced stay inf/NaN
                return np.linalg.norm(x, axis=1)
        if stat == "abs_sum":
            return act.abs_sum(x)
        raise OutOfRange(f"unknown stat '{stat}': use norm, abs_sum or value")

    def similarity(self, trace_id: str, hook: str, head: int | None = None, token: int = 0,
                   kind: SimilarityKind = "tokens") -> np.ndarray:  # fmt: skip
        """Cosine similarities [T]: `token`'s vector with every token's ("tokens"); each token's vector
        with the same hook one layer earlier ("previous"); each token's component with the residual
        stream it was added to ("residual")."""
        from lmpeek.analysis import activations as act
        from lmpeek.capture.recompute import parse

        x = self.vectors(trace_id, hook, head)
        _check_index("token", token, x.shape[0])
        if kind == "tokens":
            return act.cosine_to_tokens(x, token)
        layer, point = parse(self.model, hook)
        if kind == "previous":
            if layer is None or layer == 0:
                raise OutOfRange("'previous' needs a block hook at layer >= 1")
            return act.cosine_rows(x, self.vectors(trace_id, f"blocks.{layer - 1}.{point}", head))
        if kind == "residual":
            if point not in ADDED_TO:
                raise OutOfRange(f"'residual' applies to {', '.join(ADDED_TO)}")
            return act.cosine_rows(x, self.vectors(trace_id, f"blocks.{layer}.{ADDED_TO[point]}"))
        raise OutOfRange(f"unknown kind '{kind}': use tokens, previous or residual")

    def histogram(self, trace_id: str, hook: str, head: int | None = None, token: int = 0,
                  bins: int = 64) -> HistogramResult:  # fmt: skip
        """The token's histogram over its vector's dimensions, the median histogram of all tokens, and
        the token's outlier dimensions (IQR, factor 3, negatives and positives separately)."""
        from lmpeek.analysis import activations as act

        x = self.vectors(trace_id, hook, head)
        _check_index("token", token, x.shape[0])
        h = act.histogram(x, token, bins=bins)
        out = act.iqr_outliers(x[token])
        return HistogramResult(
            edges=h.edges, token=h.token, median=h.median, outliers=out,
            outlier_values=x[token][np.asarray(out.dims, dtype=int)],
            nonfinite=int(x[token].size - np.isfinite(x[token]).sum()),
        )  # fmt: skip

    def scatter(self, trace_id: str, hook: str, head: int | None = None, *, x: int | None = None,
                y: int | None = None, a: int | None = None, b: int | None = None):  # fmt: skip
        """`scatter_dims` when given dimensions x and y, `scatter_tokens` when given tokens a and b."""
        self.vectors(trace_id, hook, head)  # the trace and hook are checked before the parameters
        if x is not None and y is not None:
            return self.scatter_dims(trace_id, hook, x, y, head)
        if a is not None and b is not None:
            return self.scatter_tokens(trace_id, hook, a, b, head)
        raise MissingParameter("give x and y (dimensions) or a and b (tokens)")

    def scatter_dims(self, trace_id: str, hook: str, x: int, y: int, head: int | None = None):
        """Dimension x against dimension y over tokens: ([T], [T])."""
        from lmpeek.analysis import activations as act

        v = self.vectors(trace_id, hook, head)
        _check_index("dimensions", max(x, y), v.shape[1])
        return act.values(v, x), act.values(v, y)

    def scatter_tokens(self, trace_id: str, hook: str, a: int, b: int, head: int | None = None):
        """Token a's vector against token b's: ([D], [D])."""
        v = self.vectors(trace_id, hook, head)
        _check_index("token", max(a, b), v.shape[0])
        return v[a].copy(), v[b].copy()

    # --- predictions inside the model --------------------------------------------------------------

    def logit_lens(self, trace_id: str, token: int, k: int = 5, target: int | None = None) -> LensRows:
        """What each layer's residual stream (resid_post) at position `token` would predict through the
        final norm and the unembedding: top-k ids, probabilities and labels, a row per layer. With
        `target` (a token id, e.g. the token that actually came next): its rank and probability at
        every layer, also where it is outside the top-k."""
        import torch

        from lmpeek.analysis.lens import logit_lens
        from lmpeek.capture.trace import decode_topk

        model = self.model
        t = self.get(trace_id)
        _check_index("token", token, len(t))
        self._need_stream(trace_id)
        resid = np.stack([self.store.resid(trace_id, layer + 1)[token] for layer in range(model.n_layers)])
        b = model.bound
        norm = b.module(b.adapter.final_norm)
        unembed = b.module(b.adapter.unembed)
        if target is not None and not 0 <= target < unembed.weight.shape[0]:
            raise OutOfRange(f"target: must be a token id < {unembed.weight.shape[0]}")

        def final_norm(v: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return norm(torch.as_tensor(v, dtype=torch.float32)).numpy()

        def run():
            from lmpeek.models.hf_compat import parameter_value

            bias = parameter_value(unembed, "bias")  # offloaded weights are read where they are kept
            w = parameter_value(unembed, "weight").detach().float().cpu().numpy()
            bias_w = None if bias is None else bias.detach().float().cpu().numpy()
            return logit_lens(resid, final_norm, w, bias_w, k=k, target=target)

        result = self._on_model(run, "lens")
        labels = decode_topk(model.tokenizer, result.ids)
        if target is None:
            return LensRows(result.ids, result.probs, labels)
        label = decode_topk(model.tokenizer, np.array([[target]]))[0][0]
        return LensRows(
            result.ids, result.probs, labels, target, label, result.target_rank, result.target_prob
        )

    def neurons(self, trace_id: str, layer: int, token: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The MLP neurons (mlp.hook_post) most active (by |value|) at one token: (indices, values)."""
        from lmpeek.analysis.neurons import top_neurons

        x = self.component(trace_id, f"blocks.{layer}.mlp.hook_post")
        _check_index("token", token, x.shape[0])
        return top_neurons(x, token, k=k)

    def neuron(self, trace_id: str, layer: int, index: int) -> np.ndarray:
        """One MLP neuron's activation over the whole text [T]."""
        from lmpeek.analysis.neurons import neuron_over_text

        x = self.component(trace_id, f"blocks.{layer}.mlp.hook_post")
        _check_index("index", index, x.shape[1])
        return neuron_over_text(x, index)

    def compare(self, a: str, b: str, component: ComponentName = "resid_post") -> Comparison:
        """Per layer: the mean norm of one component over each text's tokens."""
        ta, tb = self.get(a), self.get(b)
        return Comparison(ta.norm_matrix(component).mean(1), tb.norm_matrix(component).mean(1))

    # --- colouring tokens ---------------------------------------------------------------------------

    def metric(self, trace_id: str, name: str, *, hook: str | None = None, head: int | None = None,
               dim: int | None = None, layer: int | None = None, neuron: int | None = None,
               token: int | None = None, rope: Rope = "full", mode: str = "raw", skip_first: bool = False,
               with_: str | None = None) -> Metric:  # fmt: skip
        """Per-token values of one Explore metric (analysis.metrics.QUANTITY names them) with its colour
        scale (analysis.scales). `with_`: a second trace, answered with the same metric and limits
        shared by both (texts compared side by side); its selected token is `token` clamped to its
        length. What each metric needs: `hook` (norm, act-*, cos-*; `dim` for act-value, `token` for
        cos-tokens), `layer` and `neuron` (neuron), `layer`, `head` and `token` (attn-from, attn-to)."""
        from lmpeek.analysis.metrics import QUANTITY, metric

        self.get(trace_id)  # an unknown or foreign trace is said first, as by every other question
        if name not in QUANTITY:
            raise OutOfRange(f"unknown metric '{name}': use one of {', '.join(QUANTITY)}")
        p = {"hook": hook, "head": head, "dim": dim, "layer": layer, "neuron": neuron, "rope": rope}
        values, leave = self._metric_values(trace_id, name, token=token, **p)
        arrays, leaves = [values], [leave]
        if with_ is not None:
            other = self.get(with_)
            clamped = None if token is None else min(token, max(len(other) - 1, 0))
            more, leave_b = self._metric_values(with_, name, token=clamped, **p)
            arrays.append(more)
            leaves.append(leave_b)
        return metric(name, arrays, leaves, mode, skip_first)

    def _metric_values(self, trace_id: str, name: str, *, hook: str | None, head: int | None, dim: int | None,
                       layer: int | None, neuron: int | None, token: int | None,
                       rope: Rope) -> tuple[np.ndarray, list[int]]:  # fmt: skip
        """The metric's values [T] for one trace, and tokens its limits leave out by definition."""
        from lmpeek.analysis.metrics import ACTIVATION, SIMILARITY, SUMMARY, summary_metric

        if name in SUMMARY:
            return summary_metric(self.get(trace_id), name), []
        if name in ("attn-from", "attn-to"):
            _need(name, layer=layer, head=head, token=token)
            assert layer is not None and head is not None and token is not None
            if name == "attn-from":
                out = self.attention(trace_id, layer, head, query=token, rope=rope)[0].astype(np.float64)
                out[token + 1 :] = np.nan  # keys after the query: not attended (causal)
            else:
                out = self.attention(trace_id, layer, head, key=token, rope=rope)[0].astype(np.float64)
                out[:token] = np.nan  # queries before the key cannot see it
            return out, []
        if name == "neuron":
            _need(name, layer=layer, neuron=neuron)
            assert layer is not None and neuron is not None
            return self.neuron(trace_id, layer, neuron), []
        _need(name, hook=hook)
        assert hook is not None
        if name == "norm" and head is None and _NORM_IN_SUMMARY.fullmatch(hook):
            norms = self.get(trace_id).norms
            if hook in norms:  # computed in the forward pass: no recomputation
                return np.asarray(norms[hook], dtype=np.float64), []
        if name in ("norm", *ACTIVATION):
            return self.activations(trace_id, hook, head, ACTIVATION.get(name, "norm"), dim), []
        kind = SIMILARITY[name]
        if kind == "tokens":
            _need(name, token=token)
        token = token or 0
        cos = self.similarity(trace_id, hook, head, token, kind)
        return cos, [token] if kind == "tokens" else []  # a token's cosine with itself is 1 by definition

    # --- information flow ---------------------------------------------------------------------------

    FLOW_KEPT = 2  # decompositions kept (a text's residual parts: O(L·T·D) each), newest last

    def flow(self, trace_id: str, token: int, threshold: float = 0.04, contrast: int | None = None):
        """The information-flow graph (lmpeek.attribution.flow) of the prediction at `token` of a
        stored trace: an attribution.flow.Graph. `threshold` in (0, 1]; `contrast`: a token id B
        (edges then carry their direct effect on log p(top) − log p(B)). One forward per trace
        (its Decomposition is kept for the FLOW_KEPT newest traces) and each node's shares once: another
        threshold, token or contrast re-walks from them; each answer is cached too."""
        from lmpeek import validate
        from lmpeek.attribution.flow import Decomposition, explain

        t = self.get(trace_id)
        T = len(t)
        _check_index("token", token, T, f" (the trace has {T} tokens)")
        threshold = validate.number("threshold", threshold, 0.0, 1.0, above=True)
        key = (token, threshold, contrast)
        held = self._flows.get(trace_id)
        if held is not None and key in held[2]:
            return held[2][key]

        def run():
            state = self._flows.get(trace_id)
            if state is None:
                state = (Decomposition(self.model, [int(i) for i in t.token_ids], list(t.tokens)), {}, {})
                self._flows[trace_id] = state
                while len(self._flows) > self.FLOW_KEPT:
                    self._flows.popitem(last=False)
            self._flows.move_to_end(trace_id)
            graph = explain(state[0], token, threshold, contrast, memo=state[1])  # a bad contrast: 400
            if len(state[2]) >= 64:  # answers are small; a slider dragged for minutes should not grow them
                state[2].pop(next(iter(state[2])))
            state[2][key] = graph
            return graph

        return self._on_model(run, "flow")

    # --- attribution (the Why tab): a long job with an estimate, progress, cancel and a cache --------

    RESULTS_KEPT = 32  # long jobs' results kept (LRU), keyed by model, text and every parameter

    def cached_run(self, key: tuple) -> LongRun | None:
        """The finished run for `key` when its result is kept (moved to the LRU's end), else None."""
        if key not in self._results:
            return None
        self._results.move_to_end(key)
        return LongRun(self, key, JobEstimate(0, 0.0, True), None, self._results[key])

    def start_job(self, key: tuple, forwards: int, seconds: float, compute: Callable[[Any], Any],
                  kept: Callable[[Any], Any] = lambda r: r, name: str = "lmpeek-job") -> LongRun:  # fmt: skip
        """A long job to stream (the server) or run (`run_job`): `compute(pause)` runs on the model's
        thread in turns, calling `pause((done, total))` now and then (see `ticker`); its value is
        the run's result, kept under `key` (put the model's fingerprint id and every parameter in
        it). `forwards`/`seconds` are the estimate sent before it starts."""
        hit = self.cached_run(key)
        if hit is not None:
            return hit
        estimate = JobEstimate(int(forwards), float(seconds), False)
        return LongRun(self, key, estimate, compute, None, kept, name)

    def run_job(self, start: Callable[[], LongRun], kind: str = "job") -> Any:
        """`start()` (a `start_*` method) then its run to the end, as jobs on the model's queue (other
        jobs run between its turns); for the notebook, the library and tests. The server streams the
        run's progress instead."""
        run = self._on_model(start, kind)

        def steps_() -> Iterator[Any]:
            yield from run

        out = self._on_model(steps_, kind)
        if inspect.isgenerator(out):  # called on the model's thread itself: run the steps here
            for _ in out:
                pass
        return run.result

    def forward_seconds(self, ids: Any) -> float:
        """One plain forward's seconds for a sequence as long as `ids` ([1, S] on the model's device),
        measured once per length bucket (2^(b-1) < S <= 2^b) on a second forward (the first pays
        warm-up): what long jobs' estimates are calibrated on. Call it on the model's thread."""
        import time

        import torch

        from lmpeek.capture.hooks import model_lock

        bucket = max(int(ids.shape[-1]) - 1, 1).bit_length()
        if bucket not in self._forward_seconds:
            with model_lock(self.model.hf), torch.no_grad():
                self.model.hf(ids, use_cache=False, logits_to_keep=1)
                start = time.perf_counter()
                self.model.hf(ids, use_cache=False, logits_to_keep=1)
                self._forward_seconds[bucket] = time.perf_counter() - start
        return self._forward_seconds[bucket]

    def start_attribution(self, text: str, target: Any = None, method: str = "integrated_gradients",
                          features: Any = "tokens", contrast: Any = None, steps: int | None = None,
                          faithfulness: bool = True, *, span: Any = None, generate: int | None = None,
                          score: str = "log_prob") -> AttributionRun:  # fmt: skip
        """An attribution (lmpeek.attribute) of `text`, with its faithfulness (curves, AOPC, random
        band) when asked, to run as a job: `.estimate` (forwards, seconds) first, then iterate it on the
        model's thread for (done, total) sequences, `.result` at the end (cached: a repeat is done at
        once). Bad input raises here. Runs one forward (finds the default target; timed once per length
        bucket), so call it on the model's thread too (the server runs it as a job; `attribute` does).

        The target is the next token (`target`, `contrast`), or a span of tokens after the text, each a
        row (the token × input matrix): `span` (a continuation, teacher-forced) or `generate` (the
        model's own greedy continuation of up to N <= 64 tokens, generated first as part of the job).
        `score`: "log_prob" | "prob" | "logit". `features`: a kind, or (start_char, end_char) spans."""

        from lmpeek import validate
        from lmpeek.attribution import segments as seg
        from lmpeek.attribution import targets as tgt
        from lmpeek.attribution.attribute import _baseline_token, _template_mask
        from lmpeek.attribution.methods import METHODS, occlusion_token_share
        from lmpeek.capture.hooks import model_lock
        from lmpeek.capture.tokens import tokenize
        from lmpeek.errors import InvalidInput
        from lmpeek.models import hf_compat

        validate.text(text)
        if method not in METHODS:
            raise InvalidInput(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        if steps is not None:
            steps = validate.integer("steps", steps, 1, 4096)
        if score not in tgt.SCORES:
            raise InvalidInput(f"score must be one of {', '.join(tgt.SCORES)}, got {score!r}")
        if generate is not None:
            generate = validate.integer("generate", generate, 1, 64)
            if span is not None:
                raise InvalidInput("give either span (a continuation) or generate (N tokens), not both")
        if (span is not None or generate is not None) and (target is not None or contrast is not None):
            raise InvalidInput("a span target (span or generate) takes no target or contrast token")
        model, tok = self.model, self.model.tokenizer
        feats = features if isinstance(features, str) else tuple(tuple(s) for s in features)
        span_key = span if isinstance(span, str) or span is None else tuple(int(i) for i in span)
        key = (model.fingerprint["id"], text, target, contrast, method, feats, steps, bool(faithfulness),
               span_key, generate, score)  # fmt: skip
        hit = self.cached_run(key)
        if hit is not None:
            return hit
        tz = tokenize(tok, text, model.context_length)
        segments = seg.segment(tz.text, tz.offsets, tz.tokens, _template_mask(tok, tz.token_ids), features)
        import torch

        ids = torch.as_tensor(tz.token_ids, device=model.device)[None]
        with model_lock(model.hf), torch.no_grad():
            logits = model.hf(ids, use_cache=False, logits_to_keep=1).logits
        one = self.forward_seconds(ids)
        next_id = int(logits[0, -1].argmax())
        prompt = tz.token_ids.tolist()
        # the target as far as it is known now (a generated span is known once the job generated it)
        resolved = tgt.resolve(tok, prompt, next_id, target, contrast, score, span)
        rows = generate if generate is not None else len(resolved.positions)
        ctx = model.context_length
        if ctx is not None and len(prompt) + rows > ctx:
            raise InvalidInput(f"the text ({len(prompt)} tokens) + span ({rows}) exceed the context {ctx}")
        baseline_id, baseline_text = _baseline_token(tok, None) if faithfulness else (None, "")
        kind = METHODS[method].kind
        estimate, backward = attribution_forwards(
            kind,
            method,
            len(segments),
            steps,
            faithfulness,
            rows,
            span=span is not None or generate is not None,
        )
        generating = generate or 0  # one forward of one token each (the KV cache), after the first
        # sequences per batched forward: about a quarter second each, so the queue's other jobs (run
        # between batches) never wait long; at most the library's defaults
        batch = max(1, min(16, int(0.25 / max(one, 1e-6))))
        seconds = (estimate + 2 * backward) * one + generating * one / max(len(prompt), 1)
        if method == "occlusion":  # its batches continue the text's cache: fewer tokens than sequences
            forced = generate if generate is not None else len(resolved.span_ids)  # the span's tokens
            token_segment = np.concatenate([segments.token_map(len(prompt)), -np.ones(forced, int)])
            exact = hf_compat.prefix_cache_exact(model.hf.config, len(token_segment))
            share = occlusion_token_share(token_segment, len(segments), batch, len(prompt) - 1, exact)
            seconds -= len(segments) * one * (1 - share)
        estimate += generating

        def compute(pause: Callable[[Any], None]) -> WhyResult:
            from lmpeek.attribution.attribute import attribute
            from lmpeek.attribution.faithfulness import faithfulness as faith

            every = ticker(pause)

            def tick(done: int) -> None:
                every(generating + done, estimate)

            target_, span_ = resolved, span
            if generate is not None:
                span_ = greedy_continuation(model, ids, generate, lambda d, _n: every(d, estimate))
                target_ = tgt.resolve(tok, prompt, next_id, None, None, score, span_)
            a = attribute(model, text, target, method, features, steps, contrast=contrast, batch=batch,
                          score=score, span=span_, progress=tick)  # fmt: skip
            f = None
            if faithfulness:
                spans = [list(range(lo, hi)) for lo, hi in a.segments.ranges]
                f = faith(model, text, a.scores, spans, target=target_, baseline=baseline_id,
                          batch_size=batch, progress=lambda d, _n: tick(a.forwards + d))  # fmt: skip
                f = replace(f, baseline=baseline_text)  # the token's name, not its id
            return WhyResult(a, f, False)

        return self.start_job(key, estimate, seconds, compute, kept=lambda r: replace(r, cached=True),
                              name="lmpeek-attribution")  # fmt: skip

    def attribute(self, text: str, target: Any = None, method: str = "integrated_gradients",
                  features: Any = "tokens", contrast: Any = None, steps: int | None = None,
                  faithfulness: bool = True, **span: Any) -> WhyResult:  # fmt: skip
        """`start_attribution` run to its end as jobs on the model's queue (other jobs run between its
        turns); for the notebook and tests. The server streams the run's progress instead. `span`:
        start_attribution's span, generate and score."""
        args = (text, target, method, features, contrast, steps, faithfulness)
        start = lambda: self.start_attribution(*args, **span)  # noqa: E731
        return self.run_job(start, "attribute")

    # --- the catalogue ------------------------------------------------------------------------------

    def traces(self) -> Iterator[dict[str, Any]]:
        """The stored traces, newest first (the store's catalogue)."""
        yield from self.store.catalogue()
