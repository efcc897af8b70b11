"""`--include flow=TOKEN` of an HTML export: the recorded answers are the app's flow route's (and so
lmpeek.flow's graph) at each slider stop the export promises; bad items fail before anything runs."""

from __future__ import annotations

import json

import pytest

import lmpeek
from lmpeek.errors import InvalidInput
from lmpeek.views.export import FLOW_THRESHOLDS, Include, record_pack, request_key
from tests.views.test_export import body, unpack

TEXT = "The capital of France is Paris. The capital of Germany is"


def test_include_flow_parses_and_refuses_bad_items():
    assert Include.parse("flow=3,flow").flow == [3, -1]
    with pytest.raises(InvalidInput, match="flow=TOKEN"):
        Include.parse("flow=x")
    with pytest.raises(InvalidInput, match="flow=TOKEN"):
        Include.parse("flow=-2")


def test_pack_holds_the_flow_at_each_stop(session):
    stored = session.trace(TEXT)
    T = len(stored.trace)
    header, data = unpack(record_pack(session, stored.id, Include.parse("flow=3,flow,flow=3")))
    path = f"/api/traces/{stored.id}/flow"
    keys = [k for k in header["responses"] if k.startswith(f"GET {path}")]
    assert len(keys) == 2 * len(FLOW_THRESHOLDS)  # tokens 3 and T-1, each stop once
    assert 0.04 in FLOW_THRESHOLDS  # the view's default stop
    for token in (3, T - 1):
        for t in FLOW_THRESHOLDS:
            key = request_key("GET", path, {"token": token, "threshold": t})
            assert key.endswith(f"threshold={t}&token={token}")  # as the page writes String(t)
            got = json.loads(body(header, data, key))
            want = lmpeek.flow(session.model, TEXT, token=token, threshold=t).to_json()
            assert [e["source"] + e["target"] + str(e["head"]) for e in got["edges"]] == [
                e["source"] + e["target"] + str(e["head"]) for e in want["edges"]
            ]
            assert [e["flow"] for e in got["edges"]] == pytest.approx(
                [e["flow"] for e in want["edges"]], rel=1e-6
            )
            assert [n["id"] for n in got["nodes"]] == [n["id"] for n in want["nodes"]]


def test_a_token_past_the_text_is_refused(session):
    stored = session.trace("short text")
    with pytest.raises(InvalidInput, match="flow=99"):
        record_pack(session, stored.id, Include.parse("flow=99"))
