"""The Features views' tokens render as Explore renders a trace's: for a byte-level BPE (tiny:llama,
tiny:gpt2; every lmpeek tiny model shares that tokenizer) and a sentencepiece-style tokenizer with byte
fallback, a BOS and a dummy prefix (built here, on tiny:llama's weights), texts with characters split
over byte tokens (ü, 🙂, 日本語, an emoji ZWJ sequence), tabs, newlines, "\r" and leading spaces.

Checked over HTTP: the online activations answer, every example of every feature page, and every
stored document (the "context" route). Tokens are joined as the page joins them (web/src/lib/features.ts
labelHex: `<0xNN>` markers back to their byte, the rest as UTF-8; then lib/tokens.ts mergeTokens
decodes runs of byte pieces together) and must give the text back byte for byte; no label holds U+FFFD,
and each label is Explore's label of its bytes (capture/tokens.byte_label: a byte that is not part of
a whole character is a `<0xC3>` marker, never a raw byte-level piece such as "Ã" or "Ġ"). The join
reference below is written from the page's code, not from lmpeek's Python."""

from __future__ import annotations

import json
import re
import warnings
from functools import lru_cache

import pytest
from fastapi.testclient import TestClient
from tokenizers import normalizers, processors

import lmpeek
from lmpeek.capture.tokens import byte_label, is_partial, tokenize
from lmpeek.features.builder import build
from lmpeek.models.tiny import tiny_hf_model
from lmpeek.server.app import create_app
from tests.capture.test_token_bytes import _sentencepiece_like

# The corpus documents (and the online texts): split characters, tabs, newlines, leading spaces.
TEXTS = [
    "über Straße grüßen\n\tdef f(x):\n    return x  # ok",
    "  a 🙂 b 👩\u200d👩\u200d👧 ok\n\n日本語のテキスト\tend",
    "\tindented\ttabs 🙂🙂 and ü\n\n  two spaces, then 日本 and a family 👩\u200d👩\u200d👧 again",
]
CR_TEXT = "windows\r\nline 日本\r\n\tend 🙂"  # in a .jsonl document: a .txt file's "\r\n" is read as "\n"
ALL = [*TEXTS, CR_TEXT]
BOS = "<s>"  # the sentencepiece-style tokenizer's BOS; the byte-level one adds none


def page_bytes(label: str) -> bytes:
    """web/src/lib/features.ts labelHex: a `<0xNN>` marker (NN >= 0x80) is its byte, the rest UTF-8."""
    out, at = bytearray(), 0
    for m in re.finditer(r"<0x([89A-F][0-9A-F])>", label):
        out += label[at : m.start()].encode("utf-8") + bytes([int(m.group(1), 16)])
        at = m.end()
    return bytes(out + label[at:].encode("utf-8"))


def page_text(labels: list[str]) -> str:
    """The text the page shows and copies for whole tokens (mergeTokens: byte pieces decoded together).
    Strict: a byte left over (a character shown as mojibake or lost) fails here."""
    return b"".join(page_bytes(lab) for lab in labels).decode("utf-8")


def check_labels(labels: list[str]) -> None:
    """No U+FFFD, no raw byte-level / sentencepiece pieces: each label is Explore's label of its bytes."""
    for lab in labels:
        assert "\ufffd" not in lab, labels
        assert lab == byte_label(page_bytes(lab)), (lab, labels)
        assert "▁" not in lab and "Ġ" not in lab and "Ċ" not in lab, labels


def check_join(joined: str, text: str, sp: bool, first: bool = True, bos: bool | None = None) -> None:
    """`joined` is `text`, after the tokens the tokenizer put in front of it: the sentencepiece-style
    tokenizer's BOS label (`bos`, default `sp`), and (at a document's start) its dummy-prefix space
    when that space is a token of its own (Explore shows both tokens too; they have no bytes of the text)."""
    if sp if bos is None else bos:
        assert joined.startswith(BOS), joined[:20]
        joined = joined[len(BOS) :]
    if sp:
        if first and joined != text:
            assert joined == " " + text
            return
    assert joined == text


@lru_cache(maxsize=1)
def _sp_tokenizer():
    """A sentencepiece-style tokenizer: '▁' for a space, a prepended space, byte-fallback pieces, and a
    BOS in front of every text (as Llama 2's)."""
    tok = _sentencepiece_like()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.convert_tokens_to_ids(BOS))]
    )
    return tok


def _sp_model():
    """tiny:llama's weights with _sp_tokenizer."""
    tok = _sp_tokenizer()
    hf, byte_level = tiny_hf_model("llama")
    assert len(tok) <= len(byte_level)  # its ids fit the model's embedding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.wrap(hf, tok, name="sp-llama")


@pytest.fixture(scope="module", params=["llama", "gpt2", "sp"])
def served(request, tmp_path_factory):
    """(model, HTTP client, is sentencepiece): neurons:1 over a corpus folder of ALL, seq_len 24 so
    documents are cut into parts (some mid-character) and example windows start mid-character."""
    name = request.param
    model = _sp_model() if name == "sp" else lmpeek.load(f"tiny:{name}")
    folder = tmp_path_factory.mktemp(f"ftok-{name}")
    corpus = folder / "corpus"
    corpus.mkdir()
    for i, text in enumerate(TEXTS):
        (corpus / f"{i}.txt").write_text(text, encoding="utf-8")
    (corpus / "9.jsonl").write_text(json.dumps({"text": CR_TEXT}) + "\n", encoding="utf-8")
    out = folder / "features.db"
    opts = dict(seq_len=24, batch_size=2, k=4, context=(4, 2), quantiles=3, per_bin=2)
    build(model, ["neurons:1"], [corpus], out, **opts)
    app = create_app(name, background=False, loader=lambda _s: model, store_dir=folder / "store",
                     allowed_hosts=["testserver"], features=[out])  # fmt: skip
    with TestClient(app) as client:
        yield model, client, name == "sp"


def _documents(client) -> list[dict]:
    docs = []
    while (r := client.get(f"/api/features/neurons:1/0/document/{len(docs)}")).status_code == 200:
        docs.append(r.json())
    assert r.status_code == 400 and "no document" in r.json()["detail"]
    return docs


@pytest.mark.parametrize("text", ALL)
def test_online_tokens_give_the_text_back(served, text):
    model, client, sp = served
    r = client.post("/api/features/neurons:1/activations", json={"text": text, "features": [0]})
    assert r.status_code == 200, r.text
    labels = [t["label"] for t in r.json()["tokens"]]
    check_labels(labels)
    check_join(page_text(labels), text, sp)
    assert any(is_partial(page_bytes(lab)) for lab in labels)  # characters really are split here
    assert labels == lmpeek.trace(model, text, top_k=1).tokens  # the labels Explore shows


def test_documents_give_the_corpus_back(served):
    model, client, sp = served
    docs = _documents(client)
    prefix = 1 if sp else 0  # the BOS every part starts with
    by_path: dict[str, list[dict]] = {}
    for d in docs:
        check_labels(d["tokens"])
        assert len(d["tokens"]) == len(d["token_ids"])
        by_path.setdefault(d["path"], []).append(d)
    assert len(by_path) == len(ALL) and len(docs) > len(ALL)  # long documents were cut into parts
    cut_mid_character = False
    for path, parts in by_path.items():
        n = int(re.search(r"/(\d)\.(txt|jsonl)", path).group(1))  # 0.txt .. 2.txt, 9.jsonl (+ a line)
        text = TEXTS[n] if n < len(TEXTS) else CR_TEXT
        parts.sort(key=lambda d: d["part"])
        assert [d["part"] for d in parts] == list(range(len(parts)))
        if sp:
            assert all(d["tokens"][0] == BOS for d in parts)
        data = b"".join(page_bytes(lab) for d in parts for lab in d["tokens"][prefix:])
        check_join((BOS if sp else "") + data.decode("utf-8"), text, sp)
        for d in parts[1:]:  # a part that starts inside a character shows the rest as byte markers
            first = page_bytes(d["tokens"][prefix])
            cut_mid_character |= bool(first) and 0x80 <= first[0] < 0xC0
    assert cut_mid_character, "no part starts inside a character: the seq_len no longer tests that"


def test_feature_page_examples_are_document_windows(served):
    model, client, sp = served
    docs = _documents(client)
    n = client.get("/api/features").json()["sources"][0]["n_features"]
    seen = starts_inside = 0
    for f in range(n):
        page = client.get(f"/api/features/neurons:1/{f}").json()
        for side in ("top", "bottom"):
            check_labels([lg["label"] for lg in page["logits"][side]])
        for ex in page["examples"]["top"] + page["examples"]["quantile"]:
            doc = docs[ex["doc"]]
            window = slice(ex["start"], ex["start"] + len(ex["tokens"]))
            assert ex["tokens"] == doc["tokens"][window] and ex["token_ids"] == doc["token_ids"][window]
            check_labels(ex["tokens"])
            data = b"".join(page_bytes(lab) for lab in ex["tokens"])
            assert data in b"".join(page_bytes(lab) for lab in doc["tokens"])
            starts_inside += 0x80 <= data[0] < 0xC0
            seen += 1
    assert seen > n and starts_inside > 0  # windows cut inside a character were checked too


def test_list_top_tokens_have_no_replacement_character(served):
    _, client, _ = served
    items = client.get("/api/features/neurons:1/list?limit=1000").json()["items"]
    labels = [lab for it in items for lab in it["top_tokens"]]
    assert labels
    check_labels(labels)


# capture/tokens.py (Explore's tokenizing, which the online answer uses) with a sentencepiece-style
# tokenizer: a text starting with a space used to fall back to offset-based display tokens, which put
# a split character on its first byte piece and the other pieces' bytes again after it ("🙂<0x9F>…").


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("text", ["  a 🙂", " ü", "\tü 🙂", "a 🙂", "  a 🙂 b 🙂 c", TEXTS[1]])
def test_sentencepiece_leading_space_keeps_exact_bytes(text, bos):
    tok = tokenize(_sp_tokenizer() if bos else _sentencepiece_like(), text, None)
    assert b"".join(tok.token_bytes) == text.encode("utf-8")  # the BOS and the dummy space: no bytes
    emoji_or_u = [t for t, b in zip(tok.tokens, tok.token_bytes, strict=True) if is_partial(b)]
    assert emoji_or_u and all(t.startswith("<0x") for t in emoji_or_u)
    check_labels(tok.tokens)
    check_join(page_text(tok.tokens), text, sp=True, bos=bos)


def test_normalizing_tokenizer_shows_byte_pieces_by_their_bytes():
    """A tokenizer whose pieces do not spell the text (NFKC turns "ﬁ" into "fi") gets offset-based
    display tokens; a byte piece there still shows its own byte, so the page merges its character once."""
    tokenizer = _sentencepiece_like()
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), backend.normalizer])
    tok = tokenize(tokenizer, "x ﬁ 🙂 ü\tend", None)
    check_labels(tok.tokens)
    pieces = [tokenizer.convert_ids_to_tokens(i) for i in tok.token_ids.tolist()]
    for label, piece in zip(tok.tokens, pieces, strict=True):
        if piece.startswith("<0x") and int(piece[3:5], 16) >= 0x80:
            assert label == piece  # not the whole character on the first piece, then its bytes again
    shown = page_text(tok.tokens)
    assert shown.count("🙂") == 1 and shown.count("ü") == 1 and shown.endswith(" 🙂 ü\tend")
