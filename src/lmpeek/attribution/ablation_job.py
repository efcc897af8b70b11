"""A prompt-ablation study (lmpeek.ablate_prompt) as a long job on the model's queue (Session.start_job):
the server streams its estimate, progress and result (POST /api/why/ablate); the notebook runs it with
`session.run_job(lambda: start_prompt_ablation(session, ...))`.

The estimate is calibrated on one measured forward (Session.forward_seconds, per length bucket): the
scoring forwards and the generation's prefill cost about a forward of the longest sequence per
sequence, every decoding step of a batch about one one-token forward. Progress counts the same units as
`plan_ablation(...).units`. Results are cached by (model, prompt, variants, target, auto, every
parameter): a repeat is answered at once (`cached`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lmpeek import validate
from lmpeek.attribution.prompt_ablation import PromptAblation, ablate_prompt, plan_ablation
from lmpeek.errors import InvalidInput


@dataclass(frozen=True)
class AblationResult:
    ablation: PromptAblation
    batch_size: int  # sequences per batched forward / generate call (the job picks it from the timing)
    estimate_seconds: float  # what the estimate said, to compare with `seconds`
    seconds: float  # what the computation took
    cached: bool = False


def _pairs(variants: Sequence[Any] | Mapping[str, str] | None) -> tuple[tuple[str | None, str], ...] | None:
    """The user's variants as hashable (label, text) pairs (the cache key and ablate_prompt's input)."""
    if variants is None:
        return None
    if isinstance(variants, str):
        raise InvalidInput("variants must be a list of texts (or a {label: text} mapping), not one str")
    items = variants.items() if isinstance(variants, Mapping) else variants
    out = []
    for item in items:
        if isinstance(item, Mapping):  # the route's {text, label}
            item = (item.get("label"), item.get("text"))
        label, text = item if isinstance(item, tuple | list) and len(item) == 2 else (None, item)
        validate.text(text, "variant")
        if label is not None and not isinstance(label, str):
            raise InvalidInput(f"a variant's label must be a str, got {type(label).__name__}")
        out.append((label or None, text))
    return tuple(out)


def start_prompt_ablation(
    session: Any,
    prompt: str,
    variants: Sequence[Any] | Mapping[str, str] | None = None,
    auto: str | None = None,
    replace_with: str = "pad",
    target: str | int | None = None,
    top_k: int = 10,
    max_new_tokens: int = 20,
    seed: int = 0,
    max_variants: int | None = None,
) -> Any:
    """`ablate_prompt` as a LongRun (see Session.start_job): `.estimate` first, iterate it on the model's
    thread for (done, total) progress, `.result` (an AblationResult) at the end. Bad input raises here
    (InvalidInput), as does a study of more than `max_variants` variants (None: no limit). Runs two
    forwards to time one (once per length bucket), so call it on the model's thread."""
    import time

    import torch

    from lmpeek.session import ticker

    model = session.model
    pairs = _pairs(variants)
    if not (target is None or isinstance(target, str | int)) or isinstance(target, bool):
        raise InvalidInput(f"target must be a token (str), a token id or None, got {type(target).__name__}")
    key = ("prompt_ablation", model.fingerprint["id"], prompt, pairs, auto, replace_with, target, top_k,
           max_new_tokens, seed)  # fmt: skip
    hit = session.cached_run(key)
    if hit is not None:
        return hit
    plan = plan_ablation(model, prompt, pairs, target, auto, top_k, max_new_tokens, seed, replace_with)
    if max_variants is not None and plan.sequences - 1 > max_variants:
        raise InvalidInput(
            f"{plan.sequences - 1} variants (at most {max_variants}): shorten the prompt or write variants"
        )
    longest = torch.zeros((1, max(plan.lengths)), dtype=torch.long, device=model.device)
    one = session.forward_seconds(longest)  # a plain forward of the longest sequence
    step = session.forward_seconds(longest[:, :1])  # about one decoding step of one sequence
    # sequences per batch: about a quarter second per forward, so the queue's other jobs (run between
    # turns) never wait long; at most the library's default
    batch = max(1, min(16, int(0.25 / max(one, 1e-6))))
    n, batches = plan.sequences, -(-plan.sequences // batch)
    prefill = n if plan.max_new_tokens else 0
    # a decoding step reads every weight once for the whole batch (memory-bound): a batch's step costs
    # about one sequence's
    decode = batches * max(plan.max_new_tokens - 1, 0) * step
    seconds = (int(plan.prompt_forward) + n + prefill) * one + decode

    def compute(pause: Callable[[Any], None]) -> AblationResult:
        tick = ticker(pause)
        t0 = time.perf_counter()
        a = ablate_prompt(model, prompt, pairs, target, auto, top_k, max_new_tokens, seed, replace_with,
                          batch_size=batch, progress=tick)  # fmt: skip
        return AblationResult(a, batch, seconds, time.perf_counter() - t0)

    return session.start_job(key, plan.units, seconds, compute, kept=lambda r: replace(r, cached=True),
                             name="lmpeek-ablation")  # fmt: skip
