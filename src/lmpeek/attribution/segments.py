"""Features for attribution: which tokens are perturbed (or summed) together.

`segment(text, offsets, tokens, template, features)` groups the tokens of `text` into contiguous
segments: "tokens" (one each), "words" (whitespace-separated), "sentences" (ending in . ! ? followed by
whitespace, or at a line break), "lines", or user spans [(start_char, end_char), ...] into `text`.

How a token is placed: a token belongs to the unit (word, sentence, line) holding its first
non-whitespace character, so " Paris" joins "Paris" and a lone "\\n" ends the line it closes. A token
with an empty span (a later byte of a multibyte character split over several byte-level tokens, see
capture.tokens) joins the token before it, so a character is never split between segments.

Chat turns: template tokens (the tokenizer's special tokens: `<|user|>`, `<|im_end|>`, BOS...) are
always segments of their own and end the segment before them, so no segment spans two turns and no
template token is merged into a user's words. With user spans, tokens outside every span are no
feature at all (kept as they are by every method); a span holding a template token is refused.

Checked in tests/attribution/test_segments.py against hand-written groupings (multibyte characters,
newlines, `<eot>` chat turns, out-of-range spans).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmpeek.errors import InvalidInput

KINDS = ("tokens", "words", "sentences", "lines")

_UNIT_START = {
    "words": re.compile(r"\S+"),
    # a sentence starts at the first non-space character after . ! ? + whitespace, or after a newline
    "sentences": re.compile(r"(?:(?<=[.!?])\s+|\n\s*)(?=\S)"),
    "lines": re.compile(r"\n"),
}


@dataclass(frozen=True)
class Segments:
    """`labels[i]` and `ranges[i]` = (first token, end token) of segment i, in token order."""

    kind: str  # "tokens" | "words" | "sentences" | "lines" | "spans"
    labels: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.ranges)

    def token_map(self, n_tokens: int) -> np.ndarray:
        """[n_tokens] segment index of each token, -1 for tokens in no segment (outside user spans)."""
        out = np.full(n_tokens, -1, dtype=np.int64)
        for i, (a, b) in enumerate(self.ranges):
            out[a:b] = i
        return out


def _unit_starts(text: str, kind: str) -> list[int]:
    """Sorted character positions where a new word / sentence / line starts."""
    rx = _UNIT_START[kind]
    if kind == "words":
        return [m.start() for m in rx.finditer(text)]
    return [m.end() for m in rx.finditer(text)]


def _key_char(text: str, start: int, end: int) -> int:
    for i in range(start, end):
        if not text[i].isspace():
            return i
    return start


def segment(
    text: str,
    offsets: np.ndarray,
    tokens: Sequence[str],
    template: Sequence[bool],
    features: str | Sequence[tuple[int, int]] = "tokens",
) -> Segments:
    """Group tokens into segments (see the module docstring). offsets [T, 2] char spans into `text`;
    tokens: display strings (joined for labels); template[t]: token t is a chat/special token."""
    n = len(tokens)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    if isinstance(features, str):
        if features not in KINDS:
            raise InvalidInput(
                f"features must be one of {', '.join(KINDS)} or a list of (start_char, end_char) spans, "
                f"got {features!r}"
            )
        return _by_units(text, offsets, tokens, template, features)
    return _by_spans(text, offsets, tokens, template, features)


def _by_units(text, offsets, tokens, template, kind) -> Segments:
    starts = _unit_starts(text, kind) if kind != "tokens" else None
    groups: list[list[int]] = []
    last_unit = None
    for t in range(len(tokens)):
        s, e = (int(v) for v in offsets[t])
        if template[t]:
            groups.append([t])
            last_unit = None  # nothing joins a template token
            continue
        if starts is None:
            unit = ("token", t)
        elif e <= s and last_unit is not None:
            unit = last_unit  # a later byte of the previous token's character
        else:
            unit = ("unit", bisect_right(starts, _key_char(text, s, e)))
        if unit != last_unit:
            groups.append([t])
        else:
            groups[-1].append(t)
        last_unit = unit
    return _build(kind, text, offsets, tokens, [(g[0], g[-1] + 1) for g in groups])


def _by_spans(text, offsets, tokens, template, spans) -> Segments:
    try:
        spans = [(int(a), int(b)) for a, b in spans]
    except (TypeError, ValueError):
        raise InvalidInput(
            "features must be 'tokens', 'words', 'sentences', 'lines' or a list of (start_char, end_char)"
        ) from None
    if not spans:
        raise InvalidInput("features: the list of spans is empty; give at least one (start_char, end_char)")
    ranges: list[tuple[int, int]] = []
    owner = np.full(len(tokens), -1)
    for k, (a, b) in enumerate(spans):
        if not 0 <= a < b <= len(text):
            raise InvalidInput(f"span {k} ({a}, {b}) is out of range: need 0 <= start < end <= {len(text)}")
        hit = [t for t in range(len(tokens)) if offsets[t, 0] < b and offsets[t, 1] > a]
        if not hit:
            raise InvalidInput(f"span {k} ({a}, {b}) covers no token")
        first, last = hit[0], hit[-1] + 1
        while last < len(tokens) and offsets[last, 1] <= offsets[last, 0] and not template[last]:
            last += 1  # the rest of a split multibyte character
        if any(template[t] for t in range(first, last)):
            raise InvalidInput(f"span {k} ({a}, {b}) crosses a chat template token; draw one span per turn")
        clash = owner[first:last].max()
        if clash >= 0:
            raise InvalidInput(f"spans {int(clash)} and {k} share a token; spans must not overlap")
        owner[first:last] = k
        ranges.append((first, last))
    return _build("spans", text, offsets, tokens, ranges)


def _build(kind, text, offsets, tokens, ranges) -> Segments:
    # one token: as displayed (a byte piece shows as <0xC3>); several: the text they cover, so a
    # character split over byte tokens reads whole
    labels = []
    for a, b in ranges:
        start, end = int(offsets[a, 0]), int(offsets[a:b, 1].max())
        labels.append(text[start:end] if b - a > 1 and end > start else "".join(tokens[a:b]))
    return Segments(kind, tuple(labels), tuple(ranges))
