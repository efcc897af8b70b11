"""Each generated step carries its token's exact bytes, so a page can merge byte pieces into characters."""

from __future__ import annotations

import warnings

import lmpeek
from lmpeek.capture.tokens import byte_label
from lmpeek.models.tiny import tiny_hf_model


def test_step_bytes_equal_the_traced_bytes_and_label():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        m = lmpeek.wrap(*tiny_hf_model("llama"), name="llama")
    steps = list(lmpeek.generate(m, "日本", max_new_tokens=12, temperature=0, stop_at_eos=False))
    prompt_ids = m.tokenizer("日本")["input_ids"]
    t = lmpeek.trace(m, prompt_ids + [s.token_id for s in steps])
    for s in steps:
        assert s.token_bytes == t.token_bytes[s.position]
        assert s.token == byte_label(s.token_bytes)
    assert any(s.token.startswith("<0x") for s in steps), "the case needs a byte piece to mean anything"
