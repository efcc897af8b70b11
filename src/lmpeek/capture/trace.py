"""Trace: one forward pass -> tokens, predictions, per-layer summaries and any kept tensors."""

from __future__ import annotations

import fnmatch
import inspect
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from lmpeek import validate
from lmpeek.capture.hooks import attach
from lmpeek.capture.predictions import NextToken, chunked_next_token_stats, next_token_stats
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


def trace(model: LoadedModel, text: str | Sequence[int], top_k: int = 10, keep: Iterable[str] = ()) -> Trace:
    """Run `model` once on `text` and return a Trace (see Trace for the fields and shapes).

    `text` may also be a sequence of token ids (e.g. prompt + generated tokens), used as given.
    `text` with `<eot>` separators is formatted with the tokenizer's chat template as alternating
    user/assistant turns. `keep`: hook names or glob patterns whose full arrays to keep, e.g.
    `["blocks.*.attn.hook_pattern", "blocks.3.hook_resid_post"]`.
    """
    return _trace(model, text, top_k, keep)


@torch.inference_mode()
def _trace(
    model: LoadedModel,
    text: str | Sequence[int],
    top_k: int,
    keep: Iterable[str],
    more: Callable[[int], dict[str, Any]] | None = None,
) -> Trace:
    """`trace`; `more(T)`, given the number of tokens, returns extra handlers for the forward."""
    require_model(model)
    top_k = validate.integer("top_k", top_k, 1, vocab_size(model))
    if isinstance(text, str):
        tok = tokenize(model.tokenizer, text, model.context_length)
    else:
        tok = from_ids(model.tokenizer, text, model.context_length, vocab_size(model))
    keep_names = resolve_keep(model, keep)
    summaries = Summaries(model.bound)
    kept: dict[str, np.ndarray] = {}
    handlers = merge(
        summaries.handlers(),
        {n: _keeper(kept, n) for n in keep_names},
        more(len(tok.token_ids)) if more else {},
    )
    stats = _forward(model, tok.token_ids, top_k, handlers)
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


# CausalLMs whose head, applied chunk by chunk, did not reproduce the logits their forward returned
_FULL_LOGITS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _forward(model: LoadedModel, token_ids: np.ndarray, top_k: int, handlers) -> NextToken:
    """One forward with `handlers` attached, and the prediction statistics of every position.

    The logits of a 4,096-token trace of the default model are [4096, 49152] float32, 0.8 GB: most of
    what a trace would hold. So the forward is asked for the last position's logits only
    (`logits_to_keep=1`), the final norm's output (the head's input) is kept from a hook, and the head
    runs on one chunk of rows at a time inside `chunked_next_token_stats`. The last row the forward
    returned checks that the head lmpeek applies is the model's (unembedding, then Gemma's final
    softcap where configured); a model whose CausalLM does more than that (a logit scale, say) gets a
    full-logits forward instead, from then on: its first trace runs the forward twice, once."""
    hf = model.hf
    ids = torch.as_tensor(token_ids, device=model.device)[None]
    T = ids.shape[1]
    if hf in _FULL_LOGITS or "logits_to_keep" not in inspect.signature(hf.forward).parameters:
        return _forward_full(model, ids, token_ids, top_k, handlers)
    final: dict[str, torch.Tensor] = {}
    with attach(model.bound, merge(handlers, {"ln_final.hook_out": lambda x: final.__setitem__("h", x)})):
        last = hf(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1]  # [V]
    hidden = final.pop("h")[0]  # [T, D]
    head = _head(model)
    if not _same_logits(head(hidden[T - 1 :])[0].float(), last.float()):
        _FULL_LOGITS.add(hf)
        del hidden
        return _forward_full(model, ids, token_ids, top_k, handlers)
    return chunked_next_token_stats(lambda a, b: head(hidden[a:b]), T, token_ids, top_k)


def _same_logits(mine: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal up to the rounding of a matmul over a different number of rows; inf and NaN (a model that
    overflows) where the model has them. A head that is not the model's is off by far more."""
    finite = theirs[torch.isfinite(theirs)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4 * (1 + scale), equal_nan=True)


def _forward_full(model: LoadedModel, ids: torch.Tensor, token_ids, top_k: int, handlers) -> NextToken:
    with attach(model.bound, handlers):
        logits = model.hf(input_ids=ids, use_cache=False).logits[0]  # [T, V]
    return next_token_stats(logits, token_ids, top_k)


def _head(model: LoadedModel):
    """final hidden states [n, D] -> logits [n, V], as the CausalLM's forward computes them."""
    unembed = model.bound.module(model.bound.adapter.unembed)
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    if cap is None:
        return unembed

    def head(h: torch.Tensor) -> torch.Tensor:
        # Gemma 2/3: the same three steps as their forward, so the numbers are the same
        return torch.tanh(unembed(h) / cap) * cap

    return head


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
        stacklevel=5,  # _check_finite, _trace, torch's inference_mode wrapper, trace(_with_resid), the caller
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
    held: dict[str, np.ndarray] = {}

    def writers(T: int) -> dict[str, Any]:
        # one [L+1, T, D] array, allocated before the forward, each row written in place by its hook:
        # per-row copies kept through the forward would pin the allocator's heap under the forward's
        # temporaries (a 4,096-token trace of the default model peaked 1 GB higher that way)
        resid = held["resid"] = np.empty((len(names), T, model.d_model), dtype=np.float32)

        def write(i: int):
            return lambda x: resid.__setitem__(i, x[0].detach().to("cpu", torch.float32).numpy())

        return {n: write(i) for i, n in enumerate(names)}

    t = _trace(model, text, top_k, (), writers)
    return t, held["resid"]
