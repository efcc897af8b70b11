"""The attribution methods, one registry entry each, all computed by Captum (not re-implemented).

Every method returns signed, additive scores [R, n_features] for the target rows F_r (targets.py):
- integrated_gradients: Captum IntegratedGradients on the input embeddings, Gauss-Legendre,
  IG_i = (x_i - x'_i) . sum_k w_k dF(x' + a_k (x - x'))/dx_i, summed over the hidden size and over
  each segment's tokens (signed sums keep completeness: sum_i IG_i = F(x) - F(x')).
- gradient_x_input: Captum InputXGradient on d = x - x' (F read at x' + d), i.e. (x - x') . dF/dx(x);
  exact for a model linear in its embeddings.
- occlusion: Captum FeatureAblation, one segment at a time replaced by the baseline token.
- shapley: exact Shapley values over all 2^n segment subsets for n <= 10 (phi_i = sum over S not
  holding i of |S|!(n-|S|-1)!/n! [v(S+i) - v(S)]; checked equal to Captum's ShapleyValues, which
  enumerates the n! permutations), Captum ShapleyValueSampling beyond.
- kernel_shap: Captum KernelShap; lime: Captum Lime (cosine-kernel similarity). Their surrogate is a
  closed-form weighted least-squares fit (`weighted_least_squares`): sklearn, Captum's default, is not
  a dependency. Lime's default in Captum is a Lasso (alpha 0.01); least squares keeps it additive.

Perturbation methods see each segment as present (1) or replaced by the baseline token (0): Captum gets
the presence vector (as Captum's own LLMAttribution does), and `Problem.f_presence` builds the token
ids. Its results are memoised per presence pattern, so asking for R target rows costs one teacher-forced
forward per distinct perturbation (all rows come from that pass), not R. Those forwards run `batch` at a
time in order of their first changed token (latest first), each batch continuing from the text's own KV
cache up to that token (`f_ids`; where `hf_compat.prefix_cache_exact` says the cache reproduces a full
forward): occlusion runs about half the tokens. Gradient methods run one forward per step (batched) for
all rows and one backward per row from it (`_RowsFromOneForward`). Tokens in
no segment (outside user spans, the teacher-forced span) are never changed. F(x) of a next-token target
comes from the forward that found the target (`Problem.f_input`), not from one more.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lmpeek.attribution.targets import Target, scores
from lmpeek.models import hf_compat

SHAPLEY_EXACT_MAX = 10  # 2^10 = 1,024 forwards at most
RELATIVE_DELTA = 0.05  # IG raises its steps until |delta| / |F(x) - F(x')| is below this
IG_FIRST_STEPS, IG_MAX_STEPS = 16, 1024


@dataclass
class Problem:
    """One attribution to compute: the model, the tokens, the target rows and the features."""

    model: Any  # transformers CausalLM
    ids: torch.Tensor  # [1, S] prompt (+ teacher-forced span)
    target: Target
    token_segment: np.ndarray  # [S] segment of each token, -1: never perturbed
    n_features: int
    baseline_id: int | None = None  # perturbation methods: the replacement token
    baseline_embeds: torch.Tensor | None = None  # gradient methods: x' [1, S, D] (x at fixed tokens)
    steps: int | None = None
    samples: int | None = None
    seed: int = 0
    batch: int = 16
    time_budget: float = 60.0
    forwards: int = 0  # sequences scored
    tokens: int = 0  # tokens those forwards ran (fewer than forwards x S where a cached prefix was reused)
    # called with `forwards` before each forward (progress; it may raise to cancel between batches)
    progress: Callable[[int], None] | None = None
    f_input: torch.Tensor | None = None  # [R] F(x) when a forward already gave it (the target-finding one)
    reuse_prefix: bool = True  # perturbation batches start from the text's KV cache up to their first change
    _cache: dict[bytes, torch.Tensor] = field(default_factory=dict)

    def _logits(self, cache: Any = None, **inputs) -> torch.Tensor:
        first = self.target.first
        S = self.ids.shape[1]
        if self.progress is not None:
            self.progress(self.forwards)
        run = next(iter(inputs.values()))
        with_cache = hf_compat.cache_kwargs(self.model, cache) if cache is not None else {"use_cache": False}
        out = self.model(**inputs, **with_cache, logits_to_keep=S - first)
        self.forwards += run.shape[0]
        self.tokens += run.shape[0] * run.shape[1]
        return scores(out.logits[:, -(S - first) :], self.target, first)

    def f_embeds(self, embeds: torch.Tensor) -> torch.Tensor:
        """F [B, R] of input embeddings [B, S, D] (differentiable)."""
        return self._logits(inputs_embeds=embeds)

    def f_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """F [B, R] of token ids [B, S]: rows sorted by where they first differ from the text (latest
        first) and run `batch` at a time, each batch from the text's own KV cache up to its earliest change.
        A token's keys and values depend only on the tokens before it, so that prefix is computed once
        per batch instead of once per row: occlusion runs about half the tokens."""
        S = self.ids.shape[1]
        changed = ids != self.ids
        start = torch.where(changed.any(1), changed.int().argmax(1), S)  # [B] first changed position
        order = torch.argsort(start, descending=True, stable=True)
        exact = self.reuse_prefix and hf_compat.prefix_cache_exact(self.model.config, S)
        with torch.no_grad():
            parts = []
            for rows in order.split(self.batch):
                # the rows' logits are read from target.first on, so the prefix stops there at the latest
                p = min(int(start[rows].min()), self.target.first) if exact else 0
                parts.append(self._after_prefix(ids[rows], p))
            return torch.cat(parts)[torch.argsort(order)]

    def _after_prefix(self, ids: torch.Tensor, p: int) -> torch.Tensor:
        if p < 1:
            return self._logits(input_ids=ids)
        cache = hf_compat.new_kv_cache(self.model.config)
        self.model(input_ids=self.ids[:, :p], **hf_compat.cache_kwargs(self.model, cache), logits_to_keep=1)
        self.tokens += p
        cache.batch_repeat_interleave(ids.shape[0])
        return self._logits(cache, input_ids=ids[:, p:])

    def f_presence(self, presence: torch.Tensor) -> torch.Tensor:
        """F [B, R] with segment j kept where presence[b, j] > 0.5, else replaced by the baseline token."""
        if self.f_input is not None and not self._cache:  # every segment present: F(x), known
            self._cache[np.ones(self.n_features, bool).tobytes()] = self.f_input.float().cpu()
        keep = (presence.detach().cpu() > 0.5).numpy()
        keys = [row.tobytes() for row in keep]
        todo = {k: row for k, row in zip(keys, keep, strict=True) if k not in self._cache}
        if todo:
            rows = np.stack(list(todo.values()))  # [M, n]
            fixed = self.token_segment < 0
            kept = np.where(fixed[None], True, rows[:, np.maximum(self.token_segment, 0)])  # [M, S]
            kept_t = torch.from_numpy(kept).to(self.ids.device)
            ids = torch.where(kept_t, self.ids, torch.full_like(self.ids, int(self.baseline_id)))
            for k, f in zip(todo, self.f_ids(ids), strict=True):
                self._cache[k] = f.float().cpu()
        return torch.stack([self._cache[k] for k in keys]).to(presence.device)

    def segment_sum(self, per_token: torch.Tensor) -> np.ndarray:
        """[S] token scores -> [n_features] segment scores (tokens in no segment dropped)."""
        out = np.zeros(self.n_features)
        seg = self.token_segment
        np.add.at(out, seg[seg >= 0], per_token.detach().double().cpu().numpy()[seg >= 0])
        return out

    def rows(self) -> range:
        return range(len(self.target.positions))


@dataclass(frozen=True)
class Result:
    scores: np.ndarray  # [R, n_features]
    f_input: np.ndarray  # [R] F(x)
    f_baseline: np.ndarray  # [R] F(x'): every feature at its baseline
    steps: int | None = None
    samples: int | None = None


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "gradient" | "perturbation"
    run: Callable[[Problem], Result]
    summary: str


METHODS: dict[str, Method] = {}


def register(name: str, kind: str, summary: str):
    def deco(fn):
        METHODS[name] = Method(name, kind, fn, summary)
        return fn

    return deco


# ---------------------------------------------------------------- gradient methods


def _embeds(p: Problem) -> torch.Tensor:
    with torch.no_grad():
        return p.model.get_input_embeddings()(p.ids).detach()


def _ends(p: Problem, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        if p.f_input is not None:
            return p.f_input.double().cpu().numpy(), p.f_embeds(p.baseline_embeds)[0].double().cpu().numpy()
        f = p.f_embeds(torch.cat([x, p.baseline_embeds]))
    return f[0].double().cpu().numpy(), f[1].double().cpu().numpy()


def _relative(scores_: np.ndarray, fx: np.ndarray, fb: np.ndarray) -> np.ndarray:
    delta = scores_.sum(-1) - (fx - fb)
    return np.abs(delta) / np.maximum(np.abs(fx - fb), 1e-12)


class _RowsFromOneForward:
    """Captum's `gradient_func` for R target rows attributed one after another (a span's tokens): the
    first row's pass runs each batch's forward once and backpropagates every row from it (the graph
    kept between them), keeping the other rows' gradients for their own passes, which then run no
    forward. Captum calls it in the same order for every row (the same steps and batches), so the k-th
    call of row r takes the k-th gradients kept for r. One row: Captum's own compute_gradients."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.kept: list[collections.deque] = [collections.deque() for _ in range(rows)]

    def __call__(self, forward_fn, inputs, target_ind=None, additional_forward_args=None):
        row = int(target_ind)
        if self.kept[row]:
            return self.kept[row].popleft()
        assert additional_forward_args is None
        with torch.autograd.set_grad_enabled(True):
            out = forward_fn(*inputs)  # [B, R]
            mine = None
            for r in range(row, self.rows):  # rows before `row` have had their pass
                grads = torch.autograd.grad(torch.unbind(out[:, r]), inputs, retain_graph=r < self.rows - 1)
                if r == row:
                    mine = grads
                else:
                    self.kept[r].append(grads)
        return mine


def _one_forward_for_all_rows(explainer: Any, p: Problem) -> Any:
    if len(p.rows()) > 1:
        explainer.gradient_func = _RowsFromOneForward(len(p.rows()))
    return explainer


@register("integrated_gradients", "gradient", "path integral of gradients from the baseline (Captum IG)")
def integrated_gradients(p: Problem) -> Result:
    from captum.attr import IntegratedGradients

    x = _embeds(p)
    fx, fb = _ends(p, x)
    ig = IntegratedGradients(p.f_embeds)
    start = time.perf_counter()
    steps = p.steps or IG_FIRST_STEPS
    worst_before = np.inf
    while True:
        out = np.zeros((len(p.rows()), p.n_features))
        _one_forward_for_all_rows(ig, p)
        for r in p.rows():
            attr = ig.attribute(x, baselines=p.baseline_embeds, target=r, n_steps=steps,
                                method="gausslegendre", internal_batch_size=p.batch)  # fmt: skip
            out[r] = p.segment_sum(attr.sum(-1)[0])
        worst = _relative(out, fx, fb).max()
        # stop: steps given, converged, out of steps or time, or doubling no longer helps (a zero
        # baseline under RMSNorm makes F jump near alpha = 0, which more steps do not fix)
        done = p.steps is not None or worst < RELATIVE_DELTA or worst > 0.8 * worst_before
        if done or steps * 2 > IG_MAX_STEPS or time.perf_counter() - start > p.time_budget:
            return Result(out, fx, fb, steps=steps)
        steps, worst_before = steps * 2, worst


@register("gradient_x_input", "gradient", "gradient times (input - baseline), one backward (Captum)")
def gradient_x_input(p: Problem) -> Result:
    from captum.attr import InputXGradient

    x = _embeds(p)
    fx, fb = _ends(p, x)
    base = p.baseline_embeds
    ixg = _one_forward_for_all_rows(InputXGradient(lambda d: p.f_embeds(base + d)), p)
    out = np.zeros((len(p.rows()), p.n_features))
    for r in p.rows():
        d = (x - base).requires_grad_()
        out[r] = p.segment_sum(ixg.attribute(d, target=r).sum(-1)[0])
    return Result(out, fx, fb)


# ---------------------------------------------------------------- perturbation methods


def _presence_ends(p: Problem) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    ones = torch.ones(1, p.n_features)
    zeros = torch.zeros(1, p.n_features)
    f = p.f_presence(torch.cat([ones, zeros])).double().numpy()
    return ones, zeros, f[0], f[1]


def _seeded(p: Problem, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    # the same seed for every row: the same samples, so rows after the first are cache hits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        return fn()


def _per_row(p: Problem, attribute: Callable[..., torch.Tensor], **kw) -> np.ndarray:
    ones, zeros, _, _ = _presence_ends(p)
    out = np.zeros((len(p.rows()), p.n_features))
    for r in p.rows():
        attr = _seeded(p, lambda r=r: attribute(ones, baselines=zeros, target=r, **kw))
        out[r] = attr[0].double().cpu().numpy()
    return out


@register("occlusion", "perturbation", "F(x) - F(x with one segment replaced), one forward each (Captum)")
def occlusion(p: Problem) -> Result:
    from captum.attr import FeatureAblation

    _, _, fx, fb = _presence_ends(p)
    out = _per_row(p, FeatureAblation(p.f_presence).attribute, perturbations_per_eval=p.batch)
    return Result(out, fx, fb)


def occlusion_token_share(
    token_segment: np.ndarray, n_features: int, batch: int, first: int, exact: bool
) -> float:
    """The tokens occlusion's n perturbations run, as a share of n whole sequences (`Problem.f_ids`):
    Captum hands them over `batch` consecutive segments at a time, and each batch runs the text's prefix
    up to its earliest change once and its rows from there. 1.0 where no cached prefix is reused."""
    S = len(token_segment)
    if not exact or n_features == 0 or S == 0:
        return 1.0
    starts = np.full(n_features, S)
    for position, j in enumerate(token_segment):
        if j >= 0:
            starts[j] = min(starts[j], position)
    run = 0
    for b in range(0, n_features, batch):
        rows = starts[b : b + batch]
        p = min(int(rows.min()), first)
        run += len(rows) * (S - p) + (p if p >= 1 else 0)
    return run / (n_features * S)


def exact_shapley(values: np.ndarray, n: int) -> np.ndarray:
    """Shapley values from v over all subsets: values[m] = v(subset with bit j of m set for player j),
    values [2^n, R] -> phi [R, n]."""
    m = np.arange(2**n)
    size = np.array([bin(i).count("1") for i in m])
    phi = np.zeros((values.shape[1], n))
    for j in range(n):
        without = m[(m >> j) & 1 == 0]
        s = size[without]
        w = np.array([math.factorial(k) * math.factorial(n - k - 1) for k in s]) / math.factorial(n)
        phi[:, j] = (w[:, None] * (values[without | (1 << j)] - values[without])).sum(0)
    return phi


@register(
    "shapley", "perturbation", "Shapley values: exact over all subsets for <= 10 segments, else sampled"
)
def shapley(p: Problem) -> Result:
    _, _, fx, fb = _presence_ends(p)
    n = p.n_features
    if n <= SHAPLEY_EXACT_MAX:
        m = np.arange(2**n)
        presence = torch.from_numpy(((m[:, None] >> np.arange(n)[None]) & 1).astype(np.float32))
        values = torch.cat([p.f_presence(c) for c in presence.split(256)]).double().numpy()
        return Result(exact_shapley(values, n), fx, fb, samples=None)
    from captum.attr import ShapleyValueSampling

    samples = p.samples or 25
    out = _per_row(p, ShapleyValueSampling(p.f_presence).attribute, n_samples=samples,
                   perturbations_per_eval=p.batch)  # fmt: skip
    return Result(out, fx, fb, samples=samples)


def weighted_least_squares(model, dataloader, construct_kwargs, **_) -> dict[str, float]:
    """A Captum `LinearModel` train_fn: y ~ X w + b minimising sum_k weight_k (y_k - X_k w - b)^2, in
    closed form (numpy lstsq; the minimum-norm w when there are fewer samples than features)."""
    xs, ys, ws = [], [], []
    for batch in dataloader:
        xs.append(batch[0].double().cpu().numpy())
        ys.append(batch[1].double().cpu().numpy().reshape(len(batch[0]), -1))
        ws.append(batch[2].double().cpu().numpy() if len(batch) == 3 else np.ones(len(batch[0])))
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws).reshape(-1)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    root = np.sqrt(np.clip(w, 0, None))[:, None]
    coef = np.linalg.lstsq(design * root, y * root, rcond=None)[0]  # [n + 1, outputs]
    model._construct_model_params(
        norm_type=None,
        weight_values=torch.tensor(coef[:-1].T, dtype=torch.float32),
        bias_value=torch.tensor(coef[-1], dtype=torch.float32),
    )
    return {}


def surrogate():
    """Captum's LinearModel fitted by `weighted_least_squares`."""
    from captum._utils.models.linear_model import LinearModel

    return LinearModel(train_fn=weighted_least_squares)


@register("kernel_shap", "perturbation", "weighted linear fit on random coalitions, Shapley kernel (Captum)")
def kernel_shap(p: Problem) -> Result:
    from captum.attr import KernelShap

    _, _, fx, fb = _presence_ends(p)
    samples = p.samples or 200
    ks = KernelShap(p.f_presence)
    ks.interpretable_model = surrogate()
    out = _per_row(p, ks.attribute, n_samples=samples, perturbations_per_eval=p.batch)
    return Result(out, fx, fb, samples=samples)


@register("lime", "perturbation", "local weighted linear fit on random coalitions (Captum Lime)")
def lime(p: Problem) -> Result:
    from captum.attr import Lime

    _, _, fx, fb = _presence_ends(p)
    samples = p.samples or 200
    out = _per_row(p, Lime(p.f_presence, interpretable_model=surrogate()).attribute, n_samples=samples,
                   perturbations_per_eval=p.batch)  # fmt: skip
    return Result(out, fx, fb, samples=samples)
