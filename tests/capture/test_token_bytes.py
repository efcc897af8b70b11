"""Characters split over byte-level tokens: exact bytes, visible `<0xC3>` markers (never U+FFFD),
offsets that never overlap, distinct top-k labels, and text that round-trips byte for byte."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.capture.tokens import byte_label, from_ids, is_partial, tokenize
from lmpeek.capture.trace import Trace
from lmpeek.models.tiny import tiny_hf_model, tiny_tokenizer

TEXTS = [
    "über Straße grüßen",
    "a 🙂 b 👩‍👩‍👧",
    "日本語のテキスト",
    "abc\u202edef",  # right-to-left override
    "tab\there\t\tend",
    "zero\u200bwidth",
    "mixed: ü🙂日\u202e\t\u200b!",
]


def _model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.wrap(*tiny_hf_model("llama"), name="llama")


def _check_offsets(offsets: np.ndarray, text: str) -> None:
    starts, ends = offsets[:, 0], offsets[:, 1]
    assert (ends >= starts).all()
    assert (starts[1:] >= ends[:-1]).all(), "offsets overlap or go backwards"
    assert ends.max() == len(text) and "".join(text[s:e] for s, e in offsets.tolist()) == text


def _check(tokens, token_bytes, offsets, text):
    assert b"".join(token_bytes) == text.encode("utf-8")
    assert not any("\ufffd" in t for t in tokens)
    _check_offsets(offsets, text)
    for tok, data, (s, e) in zip(tokens, token_bytes, offsets.tolist(), strict=True):
        if not data:  # not in the text: an added special token or sentencepiece's prepended space
            assert s == e and tok
        elif is_partial(data):
            assert "<0x" in tok and tok == byte_label(data)
        else:  # a whole-character token shows exactly its span
            assert tok == data.decode("utf-8") == text[s:e]


def test_byte_label_marks_only_broken_bytes():
    assert byte_label("ü".encode()) == "ü"
    assert byte_label(b" \xc3") == " <0xC3>"
    assert byte_label(b"\xbcber") == "<0xBC>ber"
    assert byte_label(b"\xf0\x9f") == "<0xF0><0x9F>"
    assert is_partial(b"\xc3") and not is_partial("日".encode()) and not is_partial(b"")


@pytest.mark.parametrize("text", TEXTS)
def test_tokenize_round_trips_bytes(text):
    tok = tokenize(tiny_tokenizer(), text, None)
    assert any(is_partial(b) for b in tok.token_bytes) or text.isascii()
    _check(tok.tokens, tok.token_bytes, tok.offsets, text)


def test_split_character_goes_to_its_first_piece():
    tok = tokenize(tiny_tokenizer(), "über", None)
    assert tok.token_bytes[:2] == [b"\xc3", b"\xbc"]  # the tiny tokenizer splits "ü"
    assert tok.tokens[:2] == ["<0xC3>", "<0xBC>"]
    assert tok.offsets[:2].tolist() == [[0, 1], [1, 1]]  # "ü" to the first piece, an empty span after it


@pytest.mark.parametrize("text", TEXTS)
def test_from_ids_gives_back_the_text(text):
    tokenizer = tiny_tokenizer()
    tok = tokenize(tokenizer, text, None)
    again = from_ids(tokenizer, tok.token_ids, None)
    assert again.text == text
    assert again.tokens == tok.tokens and again.token_bytes == tok.token_bytes
    assert (again.offsets == tok.offsets).all()


def test_from_ids_cut_mid_character():
    tokenizer = tiny_tokenizer()
    ids = tokenize(tokenizer, "日本", None).token_ids
    cut = from_ids(tokenizer, ids[:-1], None)  # the last character's last byte is missing
    assert b"".join(cut.token_bytes) == "日本".encode()[:-1]
    assert not any("\ufffd" in t for t in cut.tokens)
    assert cut.text.startswith("日") and cut.text.count("\ufffd") == 2  # one per dangling byte
    assert (cut.offsets[1:, 0] >= cut.offsets[:-1, 1]).all()


def test_trace_fields_summary_and_store_round_trip(tmp_path):
    text = TEXTS[-1]
    t = lmpeek.trace(_model(), text, top_k=50)
    _check(t.tokens, t.token_bytes, t.offsets, text)
    s = t.summary()
    assert b"".join(bytes.fromhex(h) for h in s["token_bytes"]) == text.encode()
    assert s["partial"] == [is_partial(b) for b in t.token_bytes] and any(s["partial"])
    assert s["offsets"] == t.offsets.tolist()
    back = Trace.load(t.save(tmp_path / "t"))
    assert back.token_bytes == t.token_bytes and back.tokens == t.tokens


def test_topk_labels_distinct_for_distinct_tokens():
    m = _model()
    t = lmpeek.trace(m, "ü🙂日", top_k=200)  # the tiny vocab is small: the top 200 hold byte tokens
    labels: dict[str, set[int]] = {}
    for row_ids, row_labels in zip(t.topk_ids.tolist(), t.topk_tokens, strict=True):
        for i, label in zip(row_ids, row_labels, strict=True):
            assert "\ufffd" not in label
            labels.setdefault(label, set()).add(i)
    assert any(label.startswith("<0x") for label in labels)
    assert all(len(ids) == 1 for ids in labels.values()), "two tokens share a label"


def test_generated_token_labels_have_no_replacement_character():
    m = _model()
    steps = list(lmpeek.generate(m, "日本", max_new_tokens=12, temperature=0, show_k=200))
    label_of: dict[int, str] = {}
    for step in steps:
        label_of[step.token_id] = step.token
        label_of.update(zip(step.topk_ids.tolist(), step.topk_tokens, strict=True))
    assert not any("\ufffd" in label for label in label_of.values())
    assert any(label.startswith("<0x") for label in label_of.values())
    assert len(set(label_of.values())) == len(label_of), "distinct tokens share a label"


@pytest.mark.slow
@pytest.mark.parametrize("text", TEXTS)
def test_default_model_round_trips(text):
    m = lmpeek.load("default")
    t = lmpeek.trace(m, text, top_k=5)
    _check(t.tokens, t.token_bytes, t.offsets, text)
    again = lmpeek.trace(m, t.token_ids.tolist(), top_k=5)
    assert again.text == text and again.tokens == t.tokens


def _sentencepiece_like():
    """A BPE with sentencepiece's conventions: '▁' for a space, a prepended space, byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *byte_pieces])
    tok.train_from_iterator(["the cat sat on the mat", "hello world the end"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_byte_fallback(text):
    tokenizer = _sentencepiece_like()
    tok = tokenize(tokenizer, text, None)
    assert any(is_partial(b) for b in tok.token_bytes) or text.isascii()
    _check(tok.tokens, tok.token_bytes, tok.offsets, text)
