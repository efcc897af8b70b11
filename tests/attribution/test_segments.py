"""Segments: tokens grouped into words / sentences / lines / user spans, chat turns kept apart."""

from __future__ import annotations

import numpy as np
import pytest

from lmpeek.attribution.segments import segment
from lmpeek.capture.tokens import tokenize
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import tiny_tokenizer


def _segments(text, features):
    tok = tiny_tokenizer()
    tz = tokenize(tok, text, None)
    template = [int(i) in set(tok.all_special_ids) | {tok.convert_tokens_to_ids("<|user|>"),
                tok.convert_tokens_to_ids("<|assistant|>"), tok.convert_tokens_to_ids("<|end|>")}
                for i in tz.token_ids]  # fmt: skip
    return tz, segment(tz.text, tz.offsets, tz.tokens, template, features)


def _covers(tz, segs):
    # every token in exactly one segment, in order, for the unit kinds
    m = segs.token_map(len(tz.tokens))
    assert (m >= 0).all() and (np.diff(m) >= 0).all()


def test_words_multibyte_and_newlines():
    text = "Der Hund schläft. 日本 ok\nline two"
    tz, segs = _segments(text, "words")
    _covers(tz, segs)
    # labels are the words with their leading whitespace; multibyte characters never split
    assert [lab.strip() for lab in segs.labels] == ["Der", "Hund", "schläft.", "日本", "ok", "line", "two"]
    assert "".join(segs.labels) == text
    assert len(segs) < len(tz.tokens)  # some words are several tokens (日本 is 6 byte tokens)


def test_tokens_sentences_lines():
    text = "One fish. Two fish!\nRed fish\n\nblue fish"
    tz, toks = _segments(text, "tokens")
    assert toks.ranges == tuple((t, t + 1) for t in range(len(tz.tokens)))
    _, sents = _segments(text, "sentences")
    assert [s.strip() for s in sents.labels] == ["One fish.", "Two fish!", "Red fish", "blue fish"]
    _, lines = _segments(text, "lines")
    assert [s for s in lines.labels] == ["One fish. Two fish!\n", "Red fish\n", "\n", "blue fish"]


def test_chat_turns_template_tokens_alone():
    tz, segs = _segments("Hi there. You?<eot>Fine thanks.<eot>", "sentences")
    assert tz.chat
    specials = {"<|user|>", "<|assistant|>", "<|end|>"}
    for lab in segs.labels:
        # a template token is a segment of its own, never merged with text
        assert lab in specials or not any(s in lab for s in specials)
    assert [lab for lab in segs.labels if lab not in specials] == ["Hi there. ", "You?", "Fine thanks."]
    _covers(tz, segs)


def test_user_spans():
    text = "The capital of France is"
    tz, segs = _segments(text, [(4, 11), (15, 21)])
    assert [lab.strip() for lab in segs.labels] == ["capital", "France"]
    m = segs.token_map(len(tz.tokens))
    for k, (a, b) in enumerate([(4, 11), (15, 21)]):
        inside = [t for t in range(len(tz.tokens)) if tz.offsets[t, 0] < b and tz.offsets[t, 1] > a]
        assert list(np.flatnonzero(m == k)) == inside
    assert (m == -1).sum() == len(tz.tokens) - sum(b - a for a, b in segs.ranges)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ([(0, 99)], "out of range"),
        ([(5, 3)], "out of range"),
        ([(0, 6), (4, 9)], "share a token"),
        ([], "empty"),
        ("paragraphs", "features must be one of"),
        ([("a", "b")], "start_char"),
    ],
)
def test_bad_features(features, message):
    with pytest.raises(InvalidInput, match=message):
        _segments("The capital of France is", features)


def test_span_across_turns_refused():
    tz, _ = _segments("Hi<eot>Yo<eot>", "tokens")
    with pytest.raises(InvalidInput, match="chat template token"):
        _segments("Hi<eot>Yo<eot>", [(0, len(tz.text))])
