"""Copy in the Features views gives the text back, as Explore's copy does: the online answers carry each
token's exact bytes (`token_bytes`, hex, as a trace envelope's), which the page joins for the text it
copies (web/src/lib/features.ts tokensText with bytes: lib/tokens.ts mergeTokens, whose joined `text`
is the tokens' bytes decoded). A BOS ("<s>") and sentencepiece's prepended space have labels but no
bytes of the text: joined labels (what the page copied before) hold both, joined bytes neither.

Over HTTP with test_feature_tokens' models (byte-level BPE, and a sentencepiece-style tokenizer with a
BOS and a dummy prefix) and texts (split characters, tabs, newlines, "\r", leading spaces)."""

from __future__ import annotations

import pytest

import lmpeek
from tests.features.test_feature_tokens import ALL, BOS, page_text, served  # noqa: F401 - served: a fixture


def copied(answer: dict, first: int = 0, last: int | None = None) -> str:
    """What the page copies for tokens first..last: their bytes joined (strict: a byte left over fails)."""
    hexes = answer["token_bytes"][first : None if last is None else last + 1]
    return b"".join(bytes.fromhex(h) for h in hexes).decode("utf-8")


@pytest.mark.parametrize("text", ALL)
def test_copy_of_the_online_tokens_is_the_text(served, text):  # noqa: F811 - the imported fixture
    model, client, sp = served
    r = client.post("/api/features/neurons:1/activations", json={"text": text, "features": [0]})
    assert r.status_code == 200, r.text
    answer = r.json()
    labels = [t["label"] for t in answer["tokens"]]
    assert len(answer["token_bytes"]) == len(labels)
    assert copied(answer) == text
    # Explore's bytes for the same text, token by token
    assert answer["token_bytes"] == [b.hex() for b in lmpeek.trace(model, text, top_k=1).token_bytes]
    if sp:  # the labels alone copy the BOS and the prepended space
        assert page_text(labels).startswith(BOS) and page_text(labels) != text


def test_copy_of_a_generation_is_its_prompt_then_its_response(served):  # noqa: F811
    model, client, sp = served
    if sp:  # tiny:llama's 400 embedding rows under a 302-token vocabulary: it writes ids the tokenizer lacks
        pytest.skip("the sentencepiece-style model generates ids outside its tokenizer")
    text = ALL[1]
    r = client.post("/api/features/neurons:1/generate", json={"text": text, "max_new_tokens": 6, "seed": 1})
    assert r.status_code == 200, r.text
    answer = r.json()
    P = answer["prompt_tokens"]
    assert len(answer["token_bytes"]) == len(answer["tokens"]) > P
    assert copied(answer, 0, P - 1) == text
    response = b"".join(bytes.fromhex(h) for h in answer["token_bytes"][P:])
    assert response.decode("utf-8", "replace").startswith(answer["response"].rstrip("\ufffd"))
