"""What an attribution explains: F, a number per target row read from the model's logits.

Rows and kinds:
- one token at one position (default: the model's top prediction after the last token; a given
  string's first token there; or, with `position=p`, the text's own next token p+1 read at p);
- a span of generated tokens (`span=`): the continuation is appended and teacher-forced, row t is
  the log-prob of span token t given everything before it. Causal masking means ONE forward of
  prompt + span gives every row, so a perturbation costs one pass for all rows; log-probs add, so
  the span's total is the sum of the rows.
- score: "log_prob" (log softmax, default), "prob" (softmax) or "logit" (raw);
- contrast B (one token): F = score(A) - score(B), e.g. log p(' Paris') - log p(' Lyon').

`scores(logits, target)` is the one formula; tests check it against log_softmax by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmpeek.errors import InvalidInput

SCORES = ("log_prob", "prob", "logit")


@dataclass(frozen=True)
class Target:
    score: str  # "log_prob" | "prob" | "logit"
    positions: tuple[int, ...]  # [R] the position whose next-token logits each row reads
    token_ids: tuple[int, ...]  # [R] the token scored at each
    contrast_id: int | None  # one token B, or None
    labels: tuple[str, ...]  # [R] the scored tokens as text
    description: str
    span_ids: tuple[int, ...] = ()  # the teacher-forced continuation appended to the prompt

    @property
    def first(self) -> int:
        return min(self.positions)


def _one_token(tokenizer, value, what: str) -> tuple[int, str]:
    """A token id from an int id or a string's first token."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a string or a token id, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value < len(tokenizer):
            raise InvalidInput(f"{what} token id {value} is out of range [0, {len(tokenizer)})")
        return value, tokenizer.decode([value])
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string or a token id, got {type(value).__name__}")
    ids = tokenizer.encode(value, add_special_tokens=False)
    if not ids:
        raise InvalidInput(f"{what} {value!r} is not a token: it encodes to no tokens")
    return int(ids[0]), tokenizer.decode([ids[0]])


def resolve(
    tokenizer,
    prompt_ids: Sequence[int],
    next_id: int,
    target=None,
    contrast=None,
    score: str = "log_prob",
    span=None,
    position: int | None = None,
) -> Target:
    """The Target for a prompt whose model top prediction after the last token is `next_id`."""
    if score not in SCORES:
        raise InvalidInput(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    n = len(prompt_ids)
    contrast_id, contrast_label = (
        _one_token(tokenizer, contrast, "contrast") if contrast is not None else (None, "")
    )
    vs = f" vs {contrast_label!r}" if contrast_id is not None else ""
    if span is not None:
        if target is not None or position is not None:
            raise InvalidInput("give either span= (a continuation) or target=/position=, not both")
        if contrast_id is not None:
            raise InvalidInput("contrast works with one target token, not with a span")
        if isinstance(span, str):
            span_ids = tokenizer.encode(span, add_special_tokens=False)
        else:
            span_ids = [_one_token(tokenizer, int(i), "span")[0] for i in span]
        if not span_ids:
            raise InvalidInput(f"span {span!r} encodes to no tokens")
        labels = tuple(tokenizer.decode([i]) for i in span_ids)
        return Target(
            score,
            tuple(range(n - 1, n - 1 + len(span_ids))),
            tuple(int(i) for i in span_ids),
            None,
            labels,
            f"{score} of span {''.join(labels)!r} ({len(span_ids)} tokens, teacher-forced)",
            tuple(int(i) for i in span_ids),
        )
    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int) or not -n <= position < n:
            raise InvalidInput(f"position must be an integer in [{-n}, {n}), got {position!r}")
        position %= n
    if position is not None and position < n - 1 and target is None:
        tid, how = int(prompt_ids[position + 1]), "the text's next token"
    elif target is None:
        tid, how = int(next_id), "top prediction"
    else:
        tid, how = _one_token(tokenizer, target, "target")[0], "given"
    pos = n - 1 if position is None else position
    label = tokenizer.decode([tid])
    return Target(score, (pos,), (tid,), contrast_id, (label,), f"{score} of {label!r}{vs} at {pos} ({how})")


def scores(logits: torch.Tensor, target: Target, first: int) -> torch.Tensor:
    """logits [B, P, V] for positions first..first+P-1 -> F [B, R] (float32)."""
    rows = torch.tensor([p - first for p in target.positions], device=logits.device)
    x = logits[:, rows].float()  # [B, R, V]
    if target.score == "log_prob":
        x = torch.log_softmax(x, dim=-1)
    elif target.score == "prob":
        x = torch.softmax(x, dim=-1)
    ids = torch.tensor(target.token_ids, device=logits.device)
    out = x.gather(-1, ids.view(1, -1, 1).expand(x.shape[0], -1, 1)).squeeze(-1)
    if target.contrast_id is not None:
        out = out - x[..., target.contrast_id]
    return out
