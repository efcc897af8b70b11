"""`attribute(model, text, ...)`: why the model gave this target its score, as signed additive scores.

scores[r, j] is segment j's contribution to target row r (targets.py); rows of a span add up to the
span's total. Every result carries its completeness error
    delta_r = sum_j scores[r, j] - (F_r(x) - F_r(x'))
with x' the input with every feature at its baseline, and |delta| / |F(x) - F(x')|: zero for exact
Shapley (efficiency), small for IG once it has enough steps (IG doubles its steps from 16 until the
relative error is below 5 % or `time_budget` seconds have gone), not expected small for occlusion.

Baselines: gradient methods start from zero input embeddings ("zeros", the default) or a token's
embedding ("pad", "unk", "eos", or any single token / id); perturbation methods replace segments with a
token: by default pad, else unk, else eos (the result says which). The model is the plain transformers
model behind the LoadedModel (lmpeek.load leaves it untouched), run under lmpeek's model lock.

Checked in tests/attribution/test_attribute.py against Captum called directly on the plain model.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lmpeek import validate
from lmpeek.attribution import segments as seg
from lmpeek.attribution import targets as tgt
from lmpeek.attribution.methods import METHODS, Problem
from lmpeek.errors import InvalidInput


@dataclass(frozen=True, eq=False)
class Attribution:
    text: str  # as run (chat-formatted when the text had <eot> turns); user spans index into it
    tokens: tuple[str, ...]  # prompt (+ span) tokens as displayed
    token_ids: np.ndarray  # [S]
    segments: seg.Segments
    scores: np.ndarray  # [n_targets, n_features] signed
    delta: np.ndarray  # [n_targets] sum(scores) - (F(x) - F(x'))
    relative_delta: np.ndarray  # [n_targets] |delta| / |F(x) - F(x')|
    f_input: np.ndarray  # [n_targets] F(x)
    f_baseline: np.ndarray  # [n_targets] F(x')
    method: str
    target: str  # description
    target_labels: tuple[str, ...]  # [n_targets]
    baseline: str  # description
    steps: int | None  # IG steps used
    samples: int | None  # samples of sampled methods
    forwards: int  # sequences run forward (gradient methods: each also ran backward)
    seconds: float

    def _repr_html_(self) -> str:
        """A notebook's static view: a heat row of the text, the bars, a span's matrix (no script)."""
        from lmpeek.views.attribution_html import table_html

        return table_html(self)

    @property
    def total(self) -> np.ndarray:
        """[n_features] attribution of the whole span (rows' sum; log-probs add)."""
        return self.scores.sum(0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "target_labels": list(self.target_labels),
            "baseline": self.baseline,
            "features": self.segments.kind,
            "segments": [
                {"label": lab, "tokens": list(r)}
                for lab, r in zip(self.segments.labels, self.segments.ranges, strict=True)
            ],
            "tokens": list(self.tokens),
            "scores": self.scores.tolist(),
            "delta": self.delta.tolist(),
            "relative_delta": self.relative_delta.tolist(),
            "f_input": self.f_input.tolist(),
            "f_baseline": self.f_baseline.tolist(),
            "steps": self.steps,
            "samples": self.samples,
            "forwards": self.forwards,
            "seconds": self.seconds,
        }


def _template_mask(tokenizer, ids: np.ndarray) -> list[bool]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            special.add(int(i))
    return [int(i) in special for i in ids]


def _baseline_token(tokenizer, baseline) -> tuple[int, str]:
    names = {"pad": "pad_token_id", "unk": "unk_token_id", "eos": "eos_token_id", "bos": "bos_token_id"}
    if baseline is None:
        for name in ("pad", "unk", "eos"):
            tid = getattr(tokenizer, names[name], None)
            if tid is not None:
                return int(tid), f"token {tokenizer.decode([tid])!r} ({name})"
        raise InvalidInput("the tokenizer has no pad, unk or eos token: give baseline= a token")
    if baseline in names:
        tid = getattr(tokenizer, names[baseline], None)
        if tid is None:
            raise InvalidInput(f"baseline {baseline!r}: this tokenizer has no {baseline} token")
        return int(tid), f"token {tokenizer.decode([tid])!r} ({baseline})"
    tid, label = tgt._one_token(tokenizer, baseline, "baseline")
    return tid, f"token {label!r}"


def attribute(
    model,
    text: str,
    target=None,
    method: str = "integrated_gradients",
    features="tokens",
    steps: int | None = None,
    baseline=None,
    contrast=None,
    *,
    score: str = "log_prob",
    span=None,
    position: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    batch: int = 16,
    time_budget: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> Attribution:
    """Attribute a target's score to segments of `text` (see the module docstring).

    target: None (the model's top next token), a string (its first token) or a token id; contrast:
    a token B for log p(A) - log p(B); span: a continuation whose tokens are all targets (one row each,
    teacher-forced); position: read the target at this position instead of the last (with target None,
    the text's own next token). score: "log_prob" | "prob" | "logit". baseline: None (zeros for
    gradient methods, pad/unk/eos token for perturbation ones), "zeros", "pad", "unk", "eos", a token
    string or id. steps: IG steps (None: adaptive); samples: for shapley (> 10 segments), kernel_shap,
    lime; seed: their random samples; batch: sequences per forward. progress: called with the number
    of sequences run so far before each batched forward (raise from it to cancel between batches).
    """
    from lmpeek.capture.hooks import model_lock
    from lmpeek.capture.tokens import tokenize
    from lmpeek.capture.trace import require_model

    require_model(model)
    validate.text(text)
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    kind = METHODS[method].kind
    if steps is not None:
        steps = validate.integer("steps", steps, 1, 4096)
    if samples is not None:
        samples = validate.integer("samples", samples, 1, 100_000)
    seed = validate.integer("seed", seed, 0, 2**63 - 1)
    batch = validate.integer("batch", batch, 1, 4096)
    time_budget = validate.number("time_budget", time_budget, 0.0)
    hf, tok = model.hf, model.tokenizer
    tz = tokenize(tok, text, model.context_length)
    prompt = tz.token_ids
    segments = seg.segment(tz.text, tz.offsets, tz.tokens, _template_mask(tok, prompt), features)

    start = time.perf_counter()
    device = model.device
    with model_lock(hf):
        with torch.no_grad():
            last = hf(torch.as_tensor(prompt, device=device)[None], use_cache=False, logits_to_keep=1)
        next_id = int(last.logits[0, -1].argmax())
        target_ = tgt.resolve(tok, prompt.tolist(), next_id, target, contrast, score, span, position)
        all_ids = np.concatenate([prompt, np.asarray(target_.span_ids, dtype=np.int64)])
        ids = torch.as_tensor(all_ids, device=device)[None]
        token_segment = np.concatenate(
            [segments.token_map(len(prompt)), -np.ones(len(target_.span_ids), int)]
        )
        problem = Problem(hf, ids, target_, token_segment, len(segments), steps=steps, samples=samples,
                          seed=seed, batch=batch, time_budget=time_budget, progress=progress)  # fmt: skip
        problem.forwards = 1
        if target_.positions == (len(prompt) - 1,) and not target_.span_ids:  # F(x): that forward's
            problem.f_input = tgt.scores(last.logits[:, -1:], target_, len(prompt) - 1)[0]
        if kind == "gradient":
            x = hf.get_input_embeddings()(ids).detach()
            if baseline in (None, "zeros"):
                base, described = torch.zeros_like(x), "zeros (input embeddings)"
            else:
                bid, described = _baseline_token(tok, baseline)
                base = hf.get_input_embeddings()(torch.full_like(ids, bid)).detach()
                described += " embedding"
            fixed = torch.as_tensor(token_segment < 0, device=device)[None, :, None]
            problem.baseline_embeds = torch.where(fixed, x, base)
        else:
            if baseline == "zeros":
                raise InvalidInput(
                    f"{method} replaces segments with a token: give baseline='pad', 'unk', 'eos' or a token"
                )
            problem.baseline_id, described = _baseline_token(tok, baseline)
        result = METHODS[method].run(problem)
    delta = result.scores.sum(-1) - (result.f_input - result.f_baseline)
    rel = np.abs(delta) / np.maximum(np.abs(result.f_input - result.f_baseline), 1e-12)
    tokens = tuple(tz.tokens) + tuple(target_.labels if target_.span_ids else ())
    return Attribution(
        text=tz.text,
        tokens=tokens,
        token_ids=all_ids,
        segments=segments,
        scores=result.scores,
        delta=delta,
        relative_delta=rel,
        f_input=result.f_input,
        f_baseline=result.f_baseline,
        method=method,
        target=target_.description,
        target_labels=target_.labels,
        baseline=described,
        steps=result.steps,
        samples=result.samples,
        forwards=problem.forwards,
        seconds=time.perf_counter() - start,
    )


def format_table(a: Attribution, width: int = 30) -> str:
    """A text table: one line per segment with its signed score (span total for spans) as a bar."""
    values = a.total
    scale = max(float(np.abs(values).max()), 1e-12)
    label_w = min(24, max((len(repr(lab)) for lab in a.segments.labels), default=8))
    half = width // 2
    lines = [f"method {a.method} | target {a.target} | baseline {a.baseline}"]
    for lab, v in zip(a.segments.labels, values, strict=True):
        n = round(abs(v) / scale * half)
        bar = (" " * (half - n) + "█" * n + "|" + " " * half) if v < 0 else (" " * half + "|" + "█" * n)
        lines.append(f"{repr(lab)[:label_w]:<{label_w}} {v:+10.4f} {bar.rstrip()}")
    fx, fb = a.f_input.sum(), a.f_baseline.sum()
    d, rel = a.delta.sum(), abs(a.delta.sum()) / max(abs(fx - fb), 1e-12)
    steps = f" | steps {a.steps}" if a.steps else ""
    lines.append(f"F(x) {fx:.4f}  F(x') {fb:.4f}  delta {d:+.4f} ({rel:.1%}){steps} | {a.forwards} forwards")
    return "\n".join(lines)


def attribute_cli(
    model,
    text: str,
    target=None,
    method: str = "integrated_gradients",
    features="tokens",
    as_json: bool = False,
    file=None,
    **kwargs,
) -> Attribution:
    """What `lmpeek attribute TEXT [--target T] [--method M] [--features F] [--json]` prints: the table
    (format_table) or the JSON of `Attribution.to_dict()`. `model`: a LoadedModel or a source string."""
    if isinstance(model, str):
        from lmpeek.api import load

        model = load(model, progress=False)
    result = attribute(model, text, target=target, method=method, features=features, **kwargs)
    out = file or sys.stdout
    print(json.dumps(result.to_dict()) if as_json else format_table(result), file=out)
    return result
