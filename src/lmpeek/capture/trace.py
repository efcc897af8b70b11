"""Trace: one forward pass -> tokens, predictions, per-layer summaries and any kept tensors."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from lmpeek import validate
from lmpeek.capture.hooks import attach
from lmpeek.capture.predictions import next_token_stats
from lmpeek.capture.summaries import Summaries, merge
from lmpeek.capture.tokens import from_ids, token_labels_fn, tokenize
from lmpeek.errors import InvalidInput
from lmpeek.models.loaded import LoadedModel

# the Trace lives in lmpeek.schema (numpy only); imported from here by older code
from lmpeek.schema import NonFiniteValues, NonFiniteWarning, Trace  # noqa: F401


def resolve_keep(model: LoadedModel, keep: Iterable[str]) -> list[str]:
    """Expand glob patterns over this model's hook names; a pattern matching nothing is an error."""
    names = model.bound.hook_names()
    out: list[str] = []
    if isinstance(keep, str):
        keep = [keep]
    try:
        patterns = list(keep)
    except TypeError:
        raise InvalidInput(f"keep must be a list of hook names or glob patterns, got {keep!r}") from None
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise InvalidInput(f"keep patterns must be strings (hook names or globs), got {pattern!r}")
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise InvalidInput(
                f"keep pattern '{pattern}' matches no hook point of this model; examples: "
                f"'blocks.0.hook_resid_post', 'blocks.*.attn.hook_pattern', 'hook_embed'"
            )
        out += [h for h in hits if h not in out]
    return out


def _keeper(store: dict[str, np.ndarray], name: str):
    def keep(x: torch.Tensor) -> None:
        # drop the batch dim; float32 copy on the CPU, detached from the model's buffers
        store[name] = x[0].detach().to("cpu", torch.float32).numpy().copy()

    return keep


def require_model(model: Any) -> None:
    if not isinstance(model, LoadedModel):
        raise InvalidInput(
            f"model must be a model from lmpeek.load(...) or lmpeek.wrap(hf_model, tokenizer), "
            f"got {type(model).__name__}"
        )


def vocab_size(model: LoadedModel) -> int:
    """How many token ids the model can read (its embedding rows; may differ from len(tokenizer))."""
    return int(model.hf.get_input_embeddings().num_embeddings)


def decode_topk(tokenizer, topk_ids: np.ndarray) -> list[list[str]]:
    """Labels that read as text (' Paris', not 'ĠParis'), byte pieces as `<0xC3>` so that distinct
    byte tokens never share a label (decode() makes all of them U+FFFD)."""
    one = token_labels_fn(tokenizer)
    return [[one(i) for i in row] for row in topk_ids.tolist()]


@torch.inference_mode()
def trace(model: LoadedModel, text: str | Sequence[int], top_k: int = 10, keep: Iterable[str] = ()) -> Trace:
    """Run `model` once on `text` and return a Trace (see Trace for the fields and shapes).

    `text` may also be a sequence of token ids (e.g. prompt + generated tokens), used as given.
    `text` with `<eot>` separators is formatted with the tokenizer's chat template as alternating
    user/assistant turns. `keep`: hook names or glob patterns whose full arrays to keep, e.g.
    `["blocks.*.attn.hook_pattern", "blocks.3.hook_resid_post"]`.
    """
    require_model(model)
    top_k = validate.integer("top_k", top_k, 1, vocab_size(model))
    if isinstance(text, str):
        tok = tokenize(model.tokenizer, text, model.context_length)
    else:
        tok = from_ids(model.tokenizer, text, model.context_length, vocab_size(model))
    keep_names = resolve_keep(model, keep)
    summaries = Summaries(model.bound)
    kept: dict[str, np.ndarray] = {}
    handlers = merge(summaries.handlers(), {n: _keeper(kept, n) for n in keep_names})
    ids = torch.as_tensor(tok.token_ids, device=model.device)[None]
    with attach(model.bound, handlers):
        logits = model.hf(input_ids=ids, use_cache=False).logits[0]  # [T, V]
    stats = next_token_stats(logits, tok.token_ids, top_k)
    del logits
    nonfinite = _check_finite(model, summaries, stats)
    return Trace(
        text=tok.text,
        chat=tok.chat,
        tokens=tok.tokens,
        token_ids=tok.token_ids,
        offsets=tok.offsets,
        token_bytes=tok.token_bytes,
        topk_ids=stats.topk_ids,
        topk_probs=stats.topk_probs,
        topk_tokens=decode_topk(model.tokenizer, stats.topk_ids),
        entropy=stats.entropy,
        loss=stats.loss,
        true_prob=stats.true_prob,
        norms={k: v.cpu().numpy() for k, v in summaries.norms.items()},
        attn_entropy=summaries.stacked_entropy().cpu().numpy(),
        model=model.info(),
        tensors={n: kept[n] for n in keep_names},
        nonfinite=nonfinite,
    )


def _check_finite(model: LoadedModel, summaries: Summaries, stats) -> list[str]:
    """Where the forward produced inf or NaN (from the norms the hooks computed anyway, and the
    predictions), with a NonFiniteWarning naming the first place."""
    found = summaries.nonfinite()
    if not (np.isfinite(stats.entropy).all() and np.isfinite(stats.topk_probs).all()):
        bad = ~(np.isfinite(stats.entropy) & np.isfinite(stats.topk_probs).all(1))
        found.append(("logits", int(bad.argmax())))
    if not found:
        return []
    first, token = found[0]
    dtype = str(model.hf.get_input_embeddings().weight.dtype).removeprefix("torch.")
    others = f"; {len(found) - 1} more after it" if len(found) > 1 else ""
    warnings.warn(
        NonFiniteWarning(
            f"{model.name} produced inf or NaN: first at {first} (token {token}){others}; every place "
            f"is in trace.nonfinite. The model's own {dtype} arithmetic overflowed or its weights hold "
            f"inf/NaN; lmpeek shows these values as missing (null) and saves them only when told to"
        ),
        stacklevel=4,  # _check_finite, trace, torch's inference_mode wrapper, the caller
    )
    return [name for name, _ in found]


def resid_names(model: LoadedModel) -> list[str]:
    """The residual stream as hook names: every block's input, then the last block's output."""
    L = model.n_layers
    return [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]


def trace_with_resid(
    model: LoadedModel, text: str | Sequence[int], top_k: int = 10
) -> tuple[Trace, np.ndarray]:
    """`trace`, plus the residual stream [L+1, T, D] as float32: what a store keeps on disk so that any
    layer's internals can be recomputed later (see capture.slices.run_block). float32 because float16
    both overflows (Gemma 3's stream reaches 1e5) and leaves recomputed hook points 6e-3 × max|ref|
    off on the default model; bfloat16 7e-2 (benchmarks/resid_format.py)."""
    names = resid_names(model)
    t = trace(model, text, top_k=top_k, keep=names)
    first = t.tensors[names[0]]
    resid = np.empty((len(names), *first.shape), dtype=np.float32)
    for i, n in enumerate(names):  # row by row: each kept array is freed once copied
        resid[i] = t.tensors.pop(n)
    return t, resid
