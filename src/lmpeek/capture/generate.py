"""Generation one token at a time, each step carrying its own summaries (for streaming views)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lmpeek import validate
from lmpeek.capture.generation_record import GenerationRecord
from lmpeek.capture.hooks import Attachment, attach
from lmpeek.capture.predictions import next_token_stats
from lmpeek.capture.summaries import COMPONENTS, StepSummaries, Summaries
from lmpeek.capture.tokens import token_bytes_fn, token_labels_fn, tokenize
from lmpeek.capture.trace import require_model, vocab_size
from lmpeek.errors import InvalidInput
from lmpeek.models import hf_compat
from lmpeek.models.loaded import LoadedModel


@dataclass(frozen=True)
class Step:
    """One generated token.

    prob, topk_*, entropy: the model's raw prediction at the previous position (softmax of the logits
    at temperature 1, no filtering). sampled_prob, sampled_topk_*: the distribution the token was
    actually drawn from, after temperature, top-k and top-p (renormalised); only tokens with a
    non-zero probability are listed, so there may be fewer than show_k. Greedy decoding
    (temperature 0) draws from the one-hot on the argmax: sampled_topk_ids = [token_id],
    sampled_topk_probs = [1.0]. norms[component] [L] and attn_entropy [L, H]: the model's internals
    at the new token's own position (computed when the token is fed back in).
    """

    index: int  # 0 for the first generated token
    position: int  # position in the whole sequence (prompt tokens come first)
    token_id: int
    token: str
    prob: float
    topk_ids: np.ndarray  # [k]
    topk_probs: np.ndarray  # [k]
    topk_tokens: list[str]
    entropy: float
    sampled_prob: float
    sampled_topk_ids: np.ndarray  # [<= k]
    sampled_topk_probs: np.ndarray  # [<= k] float64
    norms: dict[str, np.ndarray]  # component -> [L]
    attn_entropy: np.ndarray  # [L, H]
    finished: bool  # True on the last step (max_new_tokens reached or end-of-sequence token)
    token_bytes: bytes = b""  # the token's exact bytes: a byte piece is part of a character (merge to show)


class Generation(Iterator[Step]):
    """The steps of one generation, produced lazily as it is iterated (like a generator), and the
    `seed` it samples with: the one given, or the random one drawn when none was (pass it back as
    `seed=` to repeat the run). Greedy runs (temperature 0) ignore the seed."""

    def __init__(self, steps: Iterator[Step], seed: int, record: GenerationRecord | None = None) -> None:
        self._steps = steps
        self.seed = seed
        self.record = record

    def __next__(self) -> Step:
        return next(self._steps)

    def close(self) -> None:
        """Stop early, freeing the KV cache (as a generator's close())."""
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()


def generate(
    model: LoadedModel,
    prompt: str,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    show_k: int = 10,
    stop_at_eos: bool = True,
    record: bool = False,
) -> Generation:
    """Yield one `Step` per new token, using the KV cache (the prefix is never re-run).

    temperature 0 means greedy (equal to `model.generate(do_sample=False)`); otherwise tokens are
    sampled after temperature, top_k (0 = off) and top_p (1 = off) filtering, reproducibly for a seed.
    `prompt` with `<eot>` separators is chat-formatted, ending with an open assistant turn.
    Returns a `Generation`: iterate it for the steps; its `.seed` is the seed used (drawn at random
    when `seed` is None), so a sampled run can be repeated. `record`: also collect the trace of the whole
    text from the same forwards (`Generation.record.result()` once the steps are done), so storing it
    costs no second forward.
    """
    require_model(model)
    max_new_tokens = validate.integer("max_new_tokens", max_new_tokens, 1, 100_000)
    temperature = validate.number("temperature", temperature, 0.0, 100.0)
    top_p = validate.number("top_p", top_p, 0.0, 1.0, above=True)
    top_k = validate.integer("top_k", top_k, 0, vocab_size(model))
    show_k = validate.integer("show_k", show_k, 1, vocab_size(model))
    seed = validate.seed(seed)
    validate.text(prompt, "prompt")
    tok = tokenize(model.tokenizer, prompt, model.context_length)
    ctx = model.context_length
    if ctx is not None and tok.token_ids.size + max_new_tokens > ctx:
        raise InvalidInput(
            f"prompt ({tok.token_ids.size} tokens) + max_new_tokens ({max_new_tokens}) exceeds this "
            f"model's context length {ctx}"
        )
    if seed is None:  # drawn from torch's global generator: torch.manual_seed makes it repeatable too
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    # validation above runs at call time; the steps run lazily as the caller iterates
    rec = GenerationRecord(model, tok.token_ids) if record else None
    sampling = (temperature, top_p, top_k, seed)
    steps = _steps(model, tok.token_ids, max_new_tokens, *sampling, show_k, stop_at_eos, rec)
    return Generation(steps, seed, rec)


@torch.inference_mode()
def _steps(
    model, token_ids, max_new_tokens, temperature, top_p, top_k, seed, show_k, stop_at_eos, record=None
) -> Iterator[Step]:
    device = model.device
    # sampling runs on the CPU (see `_sampling_probs`): a seed gives the same tokens anywhere
    gen = torch.Generator()
    gen.manual_seed(seed)
    # temperature is applied here (see `_sampling_probs`); transformers' warpers only filter (top-k, top-p)
    filters = hf_compat.sampling_warpers(1.0, top_p, top_k) if temperature > 0 else None
    eos = set(_eos_ids(model))
    to_bytes = token_bytes_fn(model.tokenizer)
    label = token_labels_fn(model.tokenizer)  # decode_topk's labels (byte pieces as <0xC3>), cached
    cache = hf_compat.new_kv_cache(model.hf.config)
    with_cache = hf_compat.cache_kwargs(model.hf, cache)
    ids = torch.as_tensor(token_ids, device=device)[None]
    # the prompt runs through the same attention kernel as every later step, with or without a record
    # (a forward that wants no entropy takes the fused kernel, whose rounding differs)
    summaries = Summaries(model.bound)
    with attach(model.bound, summaries.handlers() if record is None else record.forward(summaries)):
        out = model.hf(input_ids=ids, **with_cache)
    if record is not None:
        record.add(out.logits[0])
    logits = out.logits[0, -1]
    position = ids.shape[1]
    warned = False
    # every step attaches the same handlers: resolved once here, registered around each step's forward
    # only (between two steps the model is the caller's); their buffers are read after each forward
    step_summaries = StepSummaries(model.bound)
    attachment = Attachment(model.bound, step_summaries.handlers())
    kept = None if record is None else [step_summaries.names.index(n) for n in record.names]
    L = model.n_layers
    for index in range(max_new_tokens):
        if filters is None:
            next_id = int(logits.argmax())
            sampled_ids, sampled_probs = np.array([next_id], np.int64), np.array([1.0])
            sampled_prob = 1.0  # greedy draws from the one-hot on the argmax
        else:
            probs = _sampling_probs(logits, ids, temperature, filters)
            next_id = int(torch.multinomial(probs, 1, generator=gen))
            sampled_ids, sampled_probs = _nonzero_topk(probs, show_k)
            sampled_prob = float(probs[next_id])
        if record is not None and index > 0 and record.top_k == show_k:
            stats = record.stats[-1]  # the record's statistics of this same row of logits
        else:
            stats = next_token_stats(logits[None], [0], show_k)
        prob = float(torch.softmax(logits.float(), -1)[next_id])
        ids = torch.tensor([[next_id]], device=device)
        if record is not None:
            record.chosen(next_id, logits)
        with attachment.attached():
            out = model.hf(input_ids=ids, **with_cache)
        norms, attn_entropy, resid = step_summaries.read(kept)
        bad = step_summaries.nonfinite(norms)
        if record is not None:
            record.add_step(out.logits[0], norms, attn_entropy, resid, bad, step_summaries.names)
        logits = out.logits[0, -1]
        if not warned and bad:
            warned = True  # once per generation: every step of a broken model would repeat it
            _warn_nonfinite(model, bad[0][0], position)
        finished = index == max_new_tokens - 1 or (stop_at_eos and next_id in eos)
        yield Step(
            index=index,
            position=position,
            token_id=next_id,
            token=label(next_id),
            prob=prob,
            topk_ids=stats.topk_ids[0].copy(),  # the record may hold the same stats: a step's own arrays
            topk_probs=stats.topk_probs[0].copy(),
            topk_tokens=[label(i) for i in stats.topk_ids[0].tolist()],
            entropy=float(stats.entropy[0]),
            sampled_prob=sampled_prob,
            sampled_topk_ids=sampled_ids,
            sampled_topk_probs=sampled_probs,
            # float64, as the Python floats they were once built from
            norms=dict(zip(COMPONENTS, norms.astype(np.float64).reshape(L, -1).T.copy(), strict=True)),
            attn_entropy=attn_entropy,
            finished=finished,
            token_bytes=to_bytes(next_id),
        )
        position += 1
        if finished:
            return


def _warn_nonfinite(model: LoadedModel, hook: str, position: int) -> None:
    from lmpeek.capture.trace import NonFiniteWarning

    warnings.warn(
        NonFiniteWarning(
            f"{model.name} produced inf or NaN while generating: first at {hook} (position {position}); "
            "the steps' norms and entropies hold NaN where values were lost"
        ),
        stacklevel=3,
    )


def _sampling_probs(logits: torch.Tensor, ids: torch.Tensor, temperature: float, filters) -> torch.Tensor:
    """The distribution a token is drawn from: softmax(logits / temperature) after top-k / top-p
    filtering (transformers' order: temperature, top-k, top-p), [V] float64 on the CPU.

    The largest logit is subtracted first (neither softmax nor the filters change), and the division
    runs in float64 on the CPU (MPS has no float64; float32 would turn 1e-300 into 0 and 0 / 0 into
    NaN): the best token's score is then exactly 0 and every other one is finite or -inf, never NaN,
    so a temperature as small as 1e-300 (or one whose scaled logits overflow) gives the greedy token
    (a one-hot) instead of crashing torch.multinomial.
    """
    scores = logits.to("cpu", torch.float64)
    scores = (scores - scores.max()) / temperature
    probs = filters(ids, scores[None])[0].softmax(-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        raise InvalidInput(
            "cannot sample: the model's next-token scores are not finite numbers (NaN or infinite "
            "logits; try float32 instead of a reduced dtype), or temperature / top_k / top_p leave no token"
        )
    return probs


def _nonzero_topk(probs: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely tokens of `probs`, leaving out those the filters removed (probability 0)."""
    top_p, top_ids = probs.topk(min(k, probs.numel()))
    keep = top_p > 0
    # float64, as sampled: a tiny temperature leaves probabilities like 1e-93 that float32 would zero
    return top_ids[keep].numpy().astype(np.int64), top_p[keep].numpy()


def _eos_ids(model: LoadedModel) -> list[int]:
    out: list[int] = []
    for src in (getattr(model.hf, "generation_config", None), model.hf.config, model.tokenizer):
        value = getattr(src, "eos_token_id", None)
        if isinstance(value, int):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out += [v for v in value if isinstance(v, int)]
    return out
