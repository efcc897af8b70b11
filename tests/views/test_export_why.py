"""`--include why[=METHOD]` (views/export.py): an export records the Why tab's attribution (the POST
stream's estimate and result, under the body the page posts back) and GET /api/why/methods naming that
body as recorded; the recorded numbers are lmpeek.attribute's."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmpeek
from lmpeek.errors import InvalidInput
from lmpeek.views.export import WHY_METHOD, Include, export_html, record_pack, why_request
from lmpeek.views.features_export import post_key
from tests.views.test_export import block, body, unpack

TEXT = "The capital of France is Paris, and the capital of Spain is"


def _events(raw: bytes) -> list[tuple[str, dict]]:
    out, event = [], None
    for line in raw.decode().splitlines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
    return out


def test_include_parses_why():
    assert Include.parse("why").why == WHY_METHOD == "integrated_gradients"
    assert Include.parse("lens,why=occlusion").why == "occlusion"
    assert Include.parse("lens").why is None
    with pytest.raises(InvalidInput, match="why=METHOD"):
        Include.parse("why=")


def test_the_pack_holds_the_attribution_the_page_asks_for(session):
    stored = session.trace(TEXT)
    header, data = unpack(record_pack(session, stored.id, Include.parse("why=occlusion")))
    asked = why_request(stored.trace.text, "occlusion")
    assert asked == {"text": TEXT, "method": "occlusion", "features": "words", "faithfulness": True}
    key = post_key("/api/why/attribute", asked)
    assert header["responses"][key]["headers"]["content-type"] == "text/event-stream"
    events = _events(body(header, data, key))
    assert [e for e, _ in events] == ["estimate", "result"]  # no progress in a file
    res = events[-1][1]
    direct = lmpeek.attribute(session.model, TEXT, method="occlusion", features="words")
    np.testing.assert_allclose(res["scores"], direct.scores, rtol=1e-6, atol=1e-6)
    assert res["target"] == direct.target and res["faithfulness"]["deletion"]
    methods = json.loads(body(header, data, "GET /api/why/methods"))
    assert methods["recorded"] == [asked] and methods["default"] == "integrated_gradients"


def test_no_why_no_record(session):
    stored = session.trace(TEXT)
    header, _ = unpack(record_pack(session, stored.id, Include.parse("")))
    assert not any("/api/why/" in k for k in header["responses"])


def test_a_bad_method_fails_at_export_time(session):
    stored = session.trace(TEXT)
    with pytest.raises(InvalidInput, match="why=nope.*unknown method"):
        record_pack(session, stored.id, Include.parse("why=nope"))


def test_the_page_can_open_on_the_why_tab(session):
    stored = session.trace(TEXT)
    page = export_html(session, stored.id, "why=gradient_x_input", view="why")
    assert 'view: "why"' in page
    header, _ = unpack(block(page))
    assert any(k.startswith("POST /api/why/attribute ") for k in header["responses"])
