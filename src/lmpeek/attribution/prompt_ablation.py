"""Prompt-ablation studies: what changes when part of the prompt is dropped or replaced?

Variants of a prompt are the user's own texts, or automatic ones: `auto="sentences"` / `"words"` drop
each sentence / word from the text (the result is tokenized afresh, as a user's edit would be);
`auto="replace"` replaces each word's tokens, in token space, with the pad token (`replace_with="pad"`;
the eos token where there is none) or with one token drawn (numpy default_rng(seed)) from the model's own
top-k prediction at the word's first position, the original token excluded (`replace_with="plausible"`,
which stays closer to the text's distribution). The original and every variant run as batched forwards
(left padding, attention mask, position ids) and batched greedy generation; per variant:

- the target's log-prob and probability at the last position (default target: the original's own next
  token) and the top-k there;
- KL(original ‖ variant) = Σ_v p(v) (log p(v) − log q(v)) of the next-token distributions, in nats;
- the greedy regeneration (`max_new_tokens`, stopped at eos) and a word-level diff against the
  original's (difflib.SequenceMatcher on whitespace-split words);
- per layer, at the last position, the residual stream's norm (`blocks.{l}.hook_resid_pre`, then the last
  `hook_resid_post`), its difference from the original's, and the norm of the difference of the vectors.

`progress(done, total)` (optional) is called between the batched forwards and at each step of the
batched generation, in sequence units (`plan_ablation` counts them before anything runs: the app's
job estimate and progress bar); an exception it raises (a cancel) unwinds cleanly, no hook left on
the model. `variants` may also be (label, text) pairs, so that labels need not be unique.

Checked (tests/attribution/test_prompt_ablation.py) against plain transformers forwards and generate
calls one variant at a time, lmpeek.capture.activations one text at a time, the KL against a numpy
formula, and the diff against difflib.ndiff.
"""

from __future__ import annotations

import difflib
import json as _json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput

AUTO = ("sentences", "words", "replace")
REPLACE_WITH = ("pad", "plausible")


@dataclass(frozen=True)
class VariantResult:
    label: str
    text: str  # the variant as text (a token-space replacement: its ids decoded)
    token_ids: np.ndarray  # [T_v]
    target_logprob: float
    target_prob: float
    delta_logprob: float  # target_logprob − the original's
    topk_ids: np.ndarray  # [k] at the last position
    topk_probs: np.ndarray  # [k]
    topk_tokens: list[str]
    kl: float  # KL(original ‖ this) of the next-token distributions, nats
    generated_ids: np.ndarray  # greedy continuation, eos excluded
    generation: str
    diff: list[tuple[str, str]]  # ("=" | "-" | "+", words) against the original's generation
    resid_norms: np.ndarray  # [L+1] ‖h‖ at the last position
    resid_norm_diff: np.ndarray  # [L+1] ‖h‖ − ‖h_original‖
    resid_delta_norm: np.ndarray  # [L+1] ‖h − h_original‖

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class PromptAblation:
    prompt: str
    target_id: int
    target_token: str
    original: VariantResult
    variants: list[VariantResult]
    auto: str | None = None
    replace_with: str | None = None
    resid_hooks: list[str] = field(default_factory=list)
    forwards: int = 0  # model forwards (generation's own steps not counted)
    generate_calls: int = 0  # batched greedy generate calls

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["original"] = self.original.to_dict()
        d["variants"] = [v.to_dict() for v in self.variants]
        return d


# ------------------------------------------------------------------------------------- pure helpers


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of whitespace-separated words."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences: up to and including . ! ? (repeated), or to a line end."""
    return [m.span() for m in re.finditer(r"[^\s][^.!?\n]*(?:[.!?]+|(?=\n)|$)", text)]


def drop_span(text: str, span: tuple[int, int]) -> str:
    """`text` without text[s:e] and the whitespace after it (before it when it ends the text)."""
    s, e = span
    rest = text[e:]
    stripped = rest.lstrip()
    if stripped:
        return text[:s] + stripped if s == 0 or text[s - 1].isspace() else text[:s] + rest
    return text[:s].rstrip()


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """Word-level diff of b against a: ("=", words in both), ("-", words only in a), ("+", only in b)."""
    wa, wb = a.split(), b.split()
    out: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(("=", " ".join(wa[i1:i2])))
        if tag in ("delete", "replace"):
            out.append(("-", " ".join(wa[i1:i2])))
        if tag in ("insert", "replace"):
            out.append(("+", " ".join(wb[j1:j2])))
    return out


def kl_divergence(logp: np.ndarray, logq: np.ndarray) -> float:
    """KL(p ‖ q) = Σ p (log p − log q) from log-probabilities (float64; 0·log 0 = 0)."""
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):  # 0 · (−inf − x) is the 0 the where keeps
        return float(np.sum(np.where(p > 0, p * (logp - logq), 0.0)))


def render_diff(diff: Sequence[tuple[str, str]]) -> str:
    """wdiff style: kept words plain, removed as [-…-], added as {+…+}."""
    return " ".join(w if op == "=" else f"[-{w}-]" if op == "-" else f"{{+{w}+}}" for op, w in diff)


# ------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class _Variant:
    label: str
    text: str
    ids: np.ndarray


def _tokens_of(offsets: np.ndarray, span: tuple[int, int], special: np.ndarray) -> list[int]:
    """Token indices whose characters lie in `span` (a token holding only later bytes of a character
    has an empty span where that character's token ends; it goes with it). Special tokens never."""
    s, e = span
    a, b = offsets[:, 0], offsets[:, 1]
    inside = ((a < e) & (b > s)) | ((a == b) & (a > s) & (a <= e))
    return [int(i) for i in np.flatnonzero(inside & ~special)]


def _auto_variants(model, prompt, tok, auto, replace_with, top_k, seed, labels):
    from lmpeek.capture.tokens import tokenize

    ctx = model.context_length
    if auto in ("sentences", "words"):
        spans = sentence_spans(prompt) if auto == "sentences" else word_spans(prompt)
        out = []
        for s, e in spans:
            text = drop_span(prompt, (s, e))
            if not text.strip():
                continue  # dropping the only sentence leaves nothing to run
            out.append(_Variant(f"-{prompt[s:e]!r}", text, tokenize(model.tokenizer, text, ctx).token_ids))
        return out, 0
    # replace: in token space, on the (chat-formatted) text the offsets index into
    ids = tok.token_ids
    special = np.isin(ids, list(getattr(model.tokenizer, "all_special_ids", []) or []))
    pad = _pad_id(model.tokenizer)
    logp = None
    forwards = 0
    if replace_with == "plausible":
        import torch

        with torch.inference_mode():
            logits = model.hf(
                input_ids=torch.as_tensor(ids, device=model.device)[None], use_cache=False
            ).logits
        logp = torch.log_softmax(logits[0].double(), -1).cpu().numpy()
        forwards = 1
    rng = np.random.default_rng(seed)
    out = []
    for s, e in word_spans(tok.text):
        where = _tokens_of(tok.offsets, (s, e), special)
        if not where:
            continue
        first = where[0]
        if logp is None or first == 0:  # nothing predicts the first token: pad
            new = np.concatenate([ids[:first], np.full(len(where), pad), ids[where[-1] + 1 :]])
            how = "pad"
        else:
            order = np.argsort(-logp[first - 1], kind="stable")[: top_k + 1]
            cand = [int(t) for t in order if t != ids[first]][:top_k]
            p = np.exp(logp[first - 1][cand])
            choice = int(rng.choice(cand, p=p / p.sum()))
            new = np.concatenate([ids[:first], [choice], ids[where[-1] + 1 :]])
            how = labels(choice)
        word = tok.text[s:e]
        out.append(_Variant(f"{word!r}->{how!r}", model.tokenizer.decode(new.tolist()), new.astype(np.int64)))
    return out, forwards


def _pad_id(tokenizer) -> int:
    for name in ("pad", "eos", "unk"):
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(tid, int):
            return tid
    return 0


# ------------------------------------------------------------------------------------- model runs


def _left_pad(seqs: Sequence[np.ndarray], pad: int):
    import torch

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s) :] = torch.as_tensor(s)
        mask[b, T - len(s) :] = 1
    return ids, mask


def _forward_last(model, seqs, hooks, batch_size, on_batch=None):
    """Next-token log-probs [B, V] float64 and residual vectors [B, L+1, D] at each sequence's last
    position, `batch_size` sequences per forward; (… , forwards). `on_batch(b)` after each forward
    (of b sequences), once its hooks are gone."""
    import inspect

    import torch

    from lmpeek.capture.hooks import attach

    pad = _pad_id(model.tokenizer)
    keep_kw = "logits_to_keep" in inspect.signature(model.hf.forward).parameters
    logps, resids, forwards = [], [], 0
    for a in range(0, len(seqs), batch_size):
        ids, mask = _left_pad(seqs[a : a + batch_size], pad)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        held: dict[str, np.ndarray] = {}

        def keeper(name, held=held):
            return lambda x: held.__setitem__(name, x[:, -1].detach().to("cpu", torch.float32).numpy().copy())

        kw = {"logits_to_keep": 1} if keep_kw else {}
        dev = model.device
        with torch.inference_mode(), attach(model.bound, {h: keeper(h) for h in hooks}):
            out = model.hf(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=positions.to(dev),
                use_cache=False,
                **kw,
            )
        logits = out.logits[:, -1]
        forwards += 1
        logps.append(torch.log_softmax(logits.double(), -1).cpu().numpy())
        resids.append(np.stack([held[h] for h in hooks], axis=1))
        if on_batch is not None:
            on_batch(ids.shape[0])
    return np.concatenate(logps), np.concatenate(resids), forwards


def _generate(model, seqs, max_new_tokens, batch_size, on_step=None, on_batch=None):
    """Greedy continuations (eos and what follows dropped), batched with left padding. `on_step(b, n)`
    after each of a batch's decoding steps (b sequences, n steps so far); `on_batch(b · max_new_tokens)`
    when the batch is over (its steps all counted, even where every sequence stopped early)."""
    import torch

    pad = _pad_id(model.tokenizer)
    eos = model.hf.generation_config.eos_token_id
    if eos is None:
        eos = model.tokenizer.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    out, calls = [], 0
    for a in range(0, len(seqs), batch_size):
        ids, mask = _left_pad(seqs[a : a + batch_size], pad)
        dev = model.device
        b = ids.shape[0]
        kw = {} if on_step is None else {"stopping_criteria": _steps(lambda n, b=b: on_step(b, n))}
        with torch.inference_mode():
            gen = model.hf.generate(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                **kw,
            )
        calls += 1
        if on_batch is not None:
            on_batch(b * max_new_tokens)
        for row in gen[:, ids.shape[1] :].cpu().numpy():
            cut = next((i for i, t in enumerate(row.tolist()) if t in eos_ids), len(row))
            out.append(row[:cut].astype(np.int64))
    return out, calls


def _steps(call):
    """A stopping criterion that never stops: it calls `call(steps so far)` at each decoding step (the
    generation's progress, and where a cancel can interrupt it)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Steps(StoppingCriteria):
        n = 0

        def __call__(self, input_ids, scores, **kwargs):
            self.n += 1
            call(self.n)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Steps()])


def _resolve_target(model, target, logp0: np.ndarray) -> int:
    if target is None:
        return int(np.argmax(logp0))
    if isinstance(target, str):
        ids = model.tokenizer(target, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InvalidInput(f"target {target!r} has no tokens")
        return int(ids[0])
    return validate.integer("target", target, 0, logp0.shape[0] - 1)


def _checked(model, prompt, variants, auto, top_k, max_new_tokens, seed, replace_with, batch_size):
    """The arguments checked (InvalidInput says what is wrong): (top_k, max_new_tokens, batch_size)."""
    from lmpeek.capture.trace import require_model

    require_model(model)
    validate.text(prompt, "prompt")
    top_k = validate.integer("top_k", top_k, 1, 1000)
    max_new_tokens = validate.integer("max_new_tokens", max_new_tokens, 0, 4096)
    batch_size = validate.integer("batch_size", batch_size, 1, 4096)
    if validate.seed(seed) is not None and seed < 0:
        raise InvalidInput(f"seed must be an integer >= 0, got {seed}")  # numpy's default_rng
    if auto is not None and auto not in AUTO:
        raise InvalidInput(f"auto must be one of {', '.join(AUTO)} or None, got {auto!r}")
    if replace_with not in REPLACE_WITH:
        raise InvalidInput(f"replace_with must be 'pad' or 'plausible', got {replace_with!r}")
    if variants is None and auto is None:
        raise InvalidInput("give variants (texts) or auto='sentences' | 'words' | 'replace'")
    return top_k, max_new_tokens, batch_size


def _user_variants(model, variants) -> list[_Variant]:
    """The user's variants: texts, a {label: text} mapping or (label, text) pairs (label None or
    empty: the text's repr)."""
    from lmpeek.capture.tokens import tokenize

    if variants is None:
        return []
    if isinstance(variants, str):
        raise InvalidInput("variants must be a list of texts (or a {label: text} mapping), not one str")
    items = variants.items() if isinstance(variants, Mapping) else variants
    out = []
    for item in items:
        label, text = item if isinstance(item, tuple | list) and len(item) == 2 else (None, item)
        validate.text(text, "variant")
        if label is not None and not isinstance(label, str):
            raise InvalidInput(f"a variant's label must be a str, got {type(label).__name__}")
        ids = tokenize(model.tokenizer, text, model.context_length).token_ids
        out.append(_Variant(label or repr(text), text, ids))
    return out


@dataclass(frozen=True)
class AblationPlan:
    """What `ablate_prompt` will run, counted before it runs (no forward): the app's job estimate."""

    sequences: int  # the original and every variant
    lengths: list[int]  # tokens in each sequence (a token-space replacement keeps the prompt's length)
    prompt_forward: bool  # replace_with="plausible" runs the prompt once first
    max_new_tokens: int

    @property
    def units(self) -> int:
        """`progress`'s total: the prompt's extra forward, each sequence's scoring forward, and each
        sequence's generation steps."""
        return int(self.prompt_forward) + self.sequences * (1 + self.max_new_tokens)


def plan_ablation(
    model: Any,
    prompt: str,
    variants: Sequence[Any] | Mapping[str, str] | None = None,
    target: str | int | None = None,
    auto: str | None = None,
    top_k: int = 10,
    max_new_tokens: int = 20,
    seed: int = 0,
    replace_with: str = "pad",
    batch_size: int = 16,
) -> AblationPlan:
    """Check `ablate_prompt`'s arguments as it does (InvalidInput) and count what it will run, without
    a forward (a plausible replacement is counted as a pad one: one variant per word either way). A
    token-id target is checked against the model's vocabulary."""
    from lmpeek.capture.tokens import tokenize
    from lmpeek.capture.trace import vocab_size

    top_k, max_new_tokens, _ = _checked(
        model, prompt, variants, auto, top_k, max_new_tokens, seed, replace_with, batch_size
    )
    todo = _user_variants(model, variants)
    tok = tokenize(model.tokenizer, prompt, model.context_length)
    if auto is not None:
        todo += _auto_variants(model, prompt, tok, auto, "pad", top_k, seed, str)[0]
    if not todo:
        raise InvalidInput("no variants to run (the prompt has nothing to drop or replace)")
    if isinstance(target, str) and not model.tokenizer(target, add_special_tokens=False)["input_ids"]:
        raise InvalidInput(f"target {target!r} has no tokens")
    if target is not None and not isinstance(target, str):
        validate.integer("target", target, 0, vocab_size(model) - 1)
    lengths = [len(tok.token_ids), *(len(v.ids) for v in todo)]
    return AblationPlan(len(lengths), lengths, auto == "replace" and replace_with == "plausible",
                        max_new_tokens)  # fmt: skip


def ablate_prompt(
    model: Any,
    prompt: str,
    variants: Sequence[Any] | Mapping[str, str] | None = None,
    target: str | int | None = None,
    auto: str | None = None,
    top_k: int = 10,
    max_new_tokens: int = 20,
    seed: int = 0,
    replace_with: str = "pad",
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> PromptAblation:
    """Run `prompt` and its variants (the user's texts, a {label: text} mapping or (label, text) pairs,
    and/or automatic ones, see the module docstring) batched, and report per variant the target's
    probability, the top-k, the KL from the original's next-token distribution, the greedy regeneration
    with a word diff, and the per-layer residual norm change at the last position. `progress(done,
    total)`: see the module docstring."""
    from lmpeek.capture.tokens import token_labels_fn, tokenize
    from lmpeek.capture.trace import resid_names

    top_k, max_new_tokens, batch_size = _checked(
        model, prompt, variants, auto, top_k, max_new_tokens, seed, replace_with, batch_size
    )
    labels = token_labels_fn(model.tokenizer)
    tok = tokenize(model.tokenizer, prompt, model.context_length)
    todo = _user_variants(model, variants)
    forwards = 0
    if auto is not None:
        extra, forwards = _auto_variants(model, prompt, tok, auto, replace_with, top_k, seed, labels)
        todo.extend(extra)
    if not todo:
        raise InvalidInput("no variants to run (the prompt has nothing to drop or replace)")

    seqs = [tok.token_ids, *(v.ids for v in todo)]
    total = forwards + len(seqs) * (1 + max_new_tokens)  # = plan_ablation(...).units
    done = [forwards]
    on_batch = on_step = None
    if progress is not None:
        progress(done[0], total)

        def on_batch(b: int) -> None:
            done[0] += b
            progress(done[0], total)

        def on_step(b: int, n: int) -> None:
            progress(min(done[0] + b * n, total), total)

    hooks = resid_names(model)
    logp, resid, n_fwd = _forward_last(model, seqs, hooks, batch_size, on_batch)
    forwards += n_fwd
    gens, calls = [np.zeros(0, np.int64)] * len(seqs), 0
    if max_new_tokens:
        gens, calls = _generate(model, seqs, max_new_tokens, batch_size, on_step, on_batch)
    tid = _resolve_target(model, target, logp[0])
    texts = [model.tokenizer.decode(g.tolist()) for g in gens]
    norms = np.linalg.norm(resid.astype(np.float64), axis=-1)  # [B, L+1]

    def result(i: int, label: str, text: str) -> VariantResult:
        top = np.argsort(-logp[i], kind="stable")[:top_k]
        return VariantResult(
            label=label,
            text=text,
            token_ids=np.asarray(seqs[i]),
            target_logprob=float(logp[i, tid]),
            target_prob=float(np.exp(logp[i, tid])),
            delta_logprob=float(logp[i, tid] - logp[0, tid]),
            topk_ids=top,
            topk_probs=np.exp(logp[i, top]),
            topk_tokens=[labels(int(t)) for t in top],
            kl=kl_divergence(logp[0], logp[i]),
            generated_ids=gens[i],
            generation=texts[i],
            diff=word_diff(texts[0], texts[i]),
            resid_norms=norms[i],
            resid_norm_diff=norms[i] - norms[0],
            resid_delta_norm=np.linalg.norm(resid[i].astype(np.float64) - resid[0], axis=-1),
        )

    return PromptAblation(
        prompt=prompt,
        target_id=tid,
        target_token=labels(tid),
        original=result(0, "original", prompt),
        variants=[result(i + 1, v.label, v.text) for i, v in enumerate(todo)],
        auto=auto,
        replace_with=replace_with if auto == "replace" else None,
        resid_hooks=hooks,
        forwards=forwards,
        generate_calls=calls,
    )


def format_table(result: PromptAblation, width: int = 60) -> str:
    """A plain-text table: one row per variant (original first)."""

    def cut(s: str, n: int) -> str:
        s = s.replace("\n", "\\n")
        return s if len(s) <= n else s[: n - 1] + "…"

    lines = [
        f"target {result.target_token!r} (id {result.target_id}) at the last position",
        f"{'variant':<28} {'p(target)':>9} {'Δlog p':>8} {'KL':>7} {'Δ‖h‖ last':>9}  {'top-1':<12} "
        "regeneration",
    ]
    for v in [result.original, *result.variants]:
        regen = v.generation if v is result.original else render_diff(v.diff)
        top1 = repr(v.topk_tokens[0]) if v.topk_tokens else ""
        lines.append(
            f"{cut(v.label, 28):<28} {v.target_prob:>9.4f} {v.delta_logprob:>+8.3f} {v.kl:>7.3f} "
            f"{v.resid_norm_diff[-1]:>+9.2f}  {cut(top1, 12):<12} {cut(regen, width)}"
        )
    return "\n".join(lines)


def ablate_prompt_cli(
    model: Any,
    prompt: str,
    variants: Sequence[str] | None = None,
    target: str | int | None = None,
    auto: str | None = None,
    top_k: int = 10,
    max_new_tokens: int = 20,
    seed: int = 0,
    replace_with: str = "pad",
    json: bool = False,
    echo: Any = print,
) -> PromptAblation:
    """What `lmpeek ablate` prints: the table, or (json=True) the whole result as JSON."""
    result = ablate_prompt(model, prompt, variants, target, auto, top_k, max_new_tokens, seed, replace_with)
    echo(_json.dumps(result.to_dict(), ensure_ascii=False) if json else format_table(result))
    return result
