"""Text -> token ids, char offsets, each token's bytes and display strings (with `<eot>` chat formatting).

Byte-level tokenizers (GPT-2 / SmolLM2 style BPE) split a multi-byte character ("ü", "🙂", "日") over
several tokens, none of which is valid UTF-8 alone. Conventions, the same for text and for token ids:

- `token_bytes[t]`: the exact bytes token t stands for; joined they give the text's UTF-8 exactly.
- `tokens[t]` (display): the bytes decoded, with each byte that is not part of a whole character on its
  own written as a visible marker `<0xC3>` (never U+FFFD); `is_partial(token_bytes[t])` says so.
- `offsets[t]`: a character belongs to the token holding its *first* byte; a token holding only later
  bytes of a character gets an empty span at the end of the previous token's span. Spans therefore
  never overlap and never go backwards (start[t] >= end[t-1]).
"""

from __future__ import annotations

import codecs
import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput

EOT = "<eot>"


@dataclass(frozen=True)
class Tokenized:
    text: str  # the text the offsets index into (chat-formatted when `chat`)
    token_ids: np.ndarray  # [T] int64
    offsets: np.ndarray  # [T, 2] int64 char spans into `text`; (0, 0) for added special tokens
    tokens: list[str]  # [T] as displayed (byte pieces as `<0xC3>` markers)
    chat: bool
    token_bytes: list[bytes]  # [T] the bytes each token stands for (see the module docstring)


def _hex_markers(err: UnicodeDecodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start : err.end]), err.end


codecs.register_error("lmpeek-byte-markers", _hex_markers)


def byte_label(data: bytes) -> str:
    """Bytes as text, each byte that is not part of a whole character shown as `<0xC3>`."""
    return data.decode("utf-8", errors="lmpeek-byte-markers")


def is_partial(data: bytes) -> bool:
    """True when `data` (one token's bytes) holds part of a character: it is not valid UTF-8 alone."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: the printable stand-in character -> the byte it encodes."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte-fallback pieces


def _is_byte_level(tokenizer) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes_fn(tokenizer):
    """A cached function id -> the bytes that token stands for, from the vocabulary (decode() would
    replace a partial character with U+FFFD): byte-level pieces ('Ã' -> 0xC3), sentencepiece
    byte-fallback pieces ('<0xC3>') and '▁' for a space; decode()'s text for any other tokenizer."""
    added = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    byte_level = _is_byte_level(tokenizer)
    table = _unicode_to_byte()
    cache: dict[int, bytes] = {}

    def one(tid: int) -> bytes:
        data = cache.get(tid)
        if data is not None:
            return data
        piece = tokenizer.convert_ids_to_tokens(tid)
        if piece and (m := _BYTE_FALLBACK.fullmatch(piece)):
            data = bytes([int(m.group(1), 16)])
        elif tid in added:
            data = added[tid].encode("utf-8")
        elif byte_level and piece and all(c in table for c in piece):
            data = bytes(table[c] for c in piece)
        elif not byte_level and piece and "▁" in piece:
            data = piece.replace("▁", " ").encode("utf-8")
        else:
            data = tokenizer.decode([tid]).encode("utf-8")
        cache[tid] = data
        return data

    return one


def token_labels_fn(tokenizer):
    """A cached function id -> a display label: distinct byte tokens get distinct labels (`<0xC3>`)."""
    to_bytes = token_bytes_fn(tokenizer)
    cache: dict[int, str] = {}

    def one(tid: int) -> str:
        label = cache.get(tid)
        if label is None:
            label = cache[tid] = byte_label(to_bytes(tid))
        return label

    return one


def _char_starts(data: bytes) -> tuple[str, list[int]]:
    """`data` decoded, and the byte offset where each character starts; a byte that is not part of a
    whole character (a generation cut mid-character) becomes one U+FFFD of its own."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        starts, pos = [], 0
        for c in text:
            starts.append(pos)
            pos += len(c.encode("utf-8"))
        return text, starts
    chars, starts, i = [], [], 0
    while i < len(data):
        for n in (1, 2, 3, 4):  # the one length (if any) at which a character starts here
            try:
                chars.append(data[i : i + n].decode("utf-8"))
                break
            except UnicodeDecodeError:
                continue
        else:
            chars.append("\ufffd")
            n = 1
        starts.append(i)
        i += n
    return "".join(chars), starts


def _spans(starts: list[int], byte_spans: list[tuple[int, int]]) -> np.ndarray:
    """Byte spans -> char spans: a character goes to the token holding its first byte."""
    out = [(bisect_left(starts, b0), bisect_left(starts, b1)) for b0, b1 in byte_spans]
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _align(
    pieces: list[bytes], data: bytes, special: list[bool], prefix_first: bool = False
) -> list[tuple[int, int]] | None:
    """Each piece's byte span in `data`, in order; a special token whose bytes are not at its place
    (an added BOS) gets an empty span there, and so does the space sentencepiece prepends to a text
    (or after a special token). None when the pieces do not spell `data` exactly. `prefix_first`:
    read the text's first space piece as that prepended space even where `data` starts with a space
    too ("  a" -> '▁', '▁', '▁', 'a'; the greedy reading takes the text's space and fails later)."""
    pos, spans = 0, []
    after_special = True
    for piece, is_special in zip(pieces, special, strict=True):
        space = not is_special and piece.startswith(b" ")
        dummy = after_special and space and data.startswith(piece[1:], pos)
        if data.startswith(piece, pos) and not (prefix_first and dummy and pos == 0):
            spans.append((pos, pos + len(piece)))
            pos += len(piece)
        elif is_special:
            spans.append((pos, pos))
        elif dummy:
            spans.append((pos, pos + len(piece) - 1))  # the dummy prefix space is not in `data`
            pos += len(piece) - 1
        else:
            return None
        after_special = is_special
    return spans if pos == len(data) else None


def _no_overlap(offsets: np.ndarray) -> np.ndarray:
    """Spans made monotonic: each starts no earlier than the previous one ended (a later piece of an
    already-shown character gets an empty span)."""
    out = offsets.copy()
    end = 0
    for row in out:
        row[0] = max(row[0], end)
        row[1] = max(row[1], row[0])
        end = row[1]
    return out


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
    """Each token's text as the user should see it, for tokenizers whose pieces do not spell the text
    byte for byte (sentencepiece); `offsets` must not overlap (see _no_overlap).

    Whitespace the tokenizer left out of every span (sentencepiece's '▁' prefix) goes to the following
    token, as sentencepiece does. Tokens with no span of their own (added BOS, or a later piece of a
    character split over several byte tokens) are shown by their bytes, byte pieces as `<0xC3>`.
    """
    label, to_bytes = token_labels_fn(tokenizer), token_bytes_fn(tokenizer)
    out: list[str] = []
    covered = 0
    for (start, end), tid in zip(offsets.tolist(), ids.tolist(), strict=True):
        if end <= start:
            out.append(label(tid) or tokenizer.convert_ids_to_tokens(tid))
            continue
        if is_partial(to_bytes(tid)):  # a byte piece whose span is its whole character: its own bytes
            out.append(label(tid))
            covered = end
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

    `text` is the tokens' bytes joined and decoded, so a character split over several byte tokens comes
    back whole (decode(ids) for a byte-level tokenizer); a sequence cut mid-character ends in one U+FFFD
    per dangling byte in `text` (never in `tokens`, which show `<0xE6>`).
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
    to_bytes = token_bytes_fn(tokenizer)
    pieces = [to_bytes(int(i)) for i in ids]
    text, starts = _char_starts(b"".join(pieces))
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    offsets = _spans(starts, list(zip([0, *ends[:-1]], ends, strict=True)))
    return Tokenized(text, ids, offsets, [byte_label(p) for p in pieces], False, pieces)


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
    exact = _exact(tokenizer, formatted, ids)
    if exact is not None:
        offsets, tokens, pieces = exact
        return Tokenized(formatted, ids, offsets, tokens, chat, pieces)
    if "offset_mapping" in enc:
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    else:  # slow tokenizer: no offsets; spans from decoding prefixes
        offsets = np.zeros((ids.size, 2), dtype=np.int64)
        pos = 0
        for i in range(ids.size):
            end = len(tokenizer.decode(ids[: i + 1].tolist()))
            offsets[i] = (pos, max(pos, end))
            pos = max(pos, end)
    offsets = _no_overlap(offsets)
    tokens = display_tokens(formatted, offsets, ids, tokenizer)
    to_bytes = token_bytes_fn(tokenizer)
    pieces = [t.encode("utf-8") if e > s and not is_partial(to_bytes(int(i))) else to_bytes(int(i))
              for t, (s, e), i in zip(tokens, offsets.tolist(), ids.tolist(), strict=True)]  # fmt: skip
    return Tokenized(formatted, ids, offsets, tokens, chat, pieces)


def _exact(tokenizer, text: str, ids: np.ndarray) -> tuple[np.ndarray, list[str], list[bytes]] | None:
    """(offsets, display tokens, bytes) from the tokens' own bytes when they spell `text` exactly (a
    byte-level tokenizer); None otherwise. A special token the tokenizer added that is not in `text`
    (a BOS) gets no bytes and an empty span, so the bytes always join to exactly `text`'s UTF-8."""
    to_bytes = token_bytes_fn(tokenizer)
    added = set(getattr(tokenizer, "added_tokens_decoder", {}))
    pieces = [to_bytes(i) for i in ids.tolist()]
    data = text.encode("utf-8")
    special = [i in added for i in ids.tolist()]
    byte_spans = _align(pieces, data, special) or _align(pieces, data, special, prefix_first=True)
    if byte_spans is None:
        return None
    _, starts = _char_starts(data)
    own = [data[b0:b1] for b0, b1 in byte_spans]
    tokens = [byte_label(o if o else p) for o, p in zip(own, pieces, strict=True)]
    return _spans(starts, byte_spans), tokens, own
