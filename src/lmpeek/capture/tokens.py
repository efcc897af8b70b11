"""Text -> token ids, char offsets and display strings (with `<eot>` chat formatting)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput

EOT = "<eot>"


@dataclass(frozen=True)
class Tokenized:
    text: str  # the text the offsets index into (chat-formatted when `chat`)
    token_ids: np.ndarray  # [T] int64
    offsets: np.ndarray  # [T, 2] int64 char spans into `text`; (0, 0) for added special tokens
    tokens: list[str]  # [T] as displayed
    chat: bool


def chat_messages(text: str) -> list[dict[str, str]]:
    """'a<eot>b<eot>c' -> user a, assistant b, user c (tiny-activation-dashboard's convention)."""
    turns = text.split(EOT)
    if turns and turns[-1].strip() == "":
        turns = turns[:-1]
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def format_text(tokenizer, text: str) -> tuple[str, bool]:
    """Apply the chat template when the text has `<eot>` separators and the tokenizer has a template."""
    if EOT not in text or not getattr(tokenizer, "chat_template", None):
        return text, False
    messages = chat_messages(text)
    # Ending on a user turn means the model should answer next: open the assistant turn.
    prompt = messages[-1]["role"] == "user"
    formatted = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    return formatted, True


def display_tokens(text: str, offsets: np.ndarray, ids: np.ndarray, tokenizer) -> list[str]:
    """Each token's text as the user should see it; joining them gives back `text` where possible.

    Whitespace the tokenizer left out of every span (sentencepiece's '▁' prefix) goes to the following
    token, as sentencepiece does. Tokens with no span of their own (added BOS, or the 2nd piece of a
    character split over several byte tokens) are shown by decoding the id.
    """
    out: list[str] = []
    covered = 0
    for (start, end), tid in zip(offsets.tolist(), ids.tolist(), strict=True):
        if end <= start or start < covered:
            piece = tokenizer.decode([tid])
            out.append(piece if piece else tokenizer.convert_ids_to_tokens(tid))
            continue
        gap = text[covered:start]
        out.append((gap if gap.isspace() else "") + text[start:end])
        covered = end
    return out


def _as_id_array(token_ids) -> np.ndarray:
    """A 1-D int64 array from a list / tuple / numpy array / torch tensor of ints; anything else
    (2-D, floats, bools, strings, ints too big for int64) is refused rather than silently converted."""
    if hasattr(token_ids, "detach"):  # a torch tensor, maybe on the GPU
        token_ids = token_ids.detach().cpu().numpy()
    try:
        ids = np.asarray(token_ids)
    except (ValueError, TypeError, OverflowError) as err:  # ragged nesting, odd objects
        raise InvalidInput(f"token ids must be a flat list of integers ({err})") from None
    if ids.ndim != 1:
        shape = "x".join(map(str, ids.shape)) or "a scalar"
        raise InvalidInput(f"token ids must be a flat list (1-D) of integers, got shape {shape}")
    if ids.size and (ids.dtype.kind not in "iu"):
        kinds = {"f": "floats", "b": "booleans", "U": "strings", "S": "bytes"}
        kind = kinds.get(ids.dtype.kind, "non-integers")
        raise InvalidInput(f"token ids must be integers, got {kind} ({ids.dtype}); e.g. [1, 2, 3]")
    if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise InvalidInput("token ids must be integers below 2**63")
    return ids.astype(np.int64)


def from_ids(tokenizer, token_ids, context_length: int | None, vocab_size: int | None = None) -> Tokenized:
    """Tokens given as ids (e.g. a generated sequence): no re-tokenisation, which could split differently.

    Each token is decoded on its own and `text` is their concatenation, so offsets are exact for that
    text (it equals decode(ids) except where one character was split over several byte tokens).
    Ids must lie below both the tokenizer's size and `vocab_size` (the model's embedding rows).
    """
    if not (isinstance(token_ids, (list, tuple, range)) or hasattr(token_ids, "__array__")):
        raise InvalidInput(
            f"expected text (a str) or token ids (a list of integers), got {type(token_ids).__name__}"
        )
    ids = _as_id_array(token_ids)
    if ids.size == 0:
        raise InvalidInput("no token ids given")
    vocab = len(tokenizer) if vocab_size is None else min(len(tokenizer), vocab_size)
    if ids.min() < 0 or ids.max() >= vocab:
        raise InvalidInput(f"token ids must be in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")
    if context_length is not None and ids.size > context_length:
        raise InvalidInput(f"{ids.size} tokens; this model reads at most {context_length}")
    pieces = [tokenizer.decode([int(i)]) for i in ids]
    ends = np.cumsum([len(p) for p in pieces])
    offsets = np.stack([ends - [len(p) for p in pieces], ends], axis=1).astype(np.int64)
    return Tokenized("".join(pieces), ids, offsets, pieces, False)


def tokenize(
    tokenizer, text: str, context_length: int | None, *, add_special_tokens: bool = True
) -> Tokenized:
    validate.text(text)
    formatted, chat = format_text(tokenizer, text)
    enc = tokenizer(
        formatted,
        add_special_tokens=add_special_tokens and not chat,  # the chat template adds its own
        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)),
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    if ids.size == 0:
        raise InvalidInput("text produced no tokens")
    if context_length is not None and ids.size > context_length:
        raise InvalidInput(
            f"text is {ids.size} tokens long; this model reads at most {context_length}. Shorten the text."
        )
    if "offset_mapping" in enc:
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    else:  # slow tokenizer: no offsets; spans from decoding prefixes
        offsets = np.zeros((ids.size, 2), dtype=np.int64)
        pos = 0
        for i in range(ids.size):
            end = len(tokenizer.decode(ids[: i + 1].tolist()))
            offsets[i] = (pos, max(pos, end))
            pos = max(pos, end)
    return Tokenized(formatted, ids, offsets, display_tokens(formatted, offsets, ids, tokenizer), chat)
