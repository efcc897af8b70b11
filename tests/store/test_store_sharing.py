"""One store folder shared by two processes (two servers on one cache), and traces of another model."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from trace_fakes import GPT2, LLAMA, make_resid, make_trace

from lmpeek.errors import TraceFromAnotherModel
from lmpeek.store.traces import TraceStore


def test_a_trace_evicted_by_another_store_is_not_served(tmp_path):
    ours, theirs = TraceStore(tmp_path), TraceStore(tmp_path)
    tid = ours.put(make_trace(), make_resid())
    assert ours.get(tid) is not None  # in our memory now
    ours.derived(tid, "x", lambda: np.ones(3))
    # the other server evicts it (its budget is smaller than two traces)
    theirs.max_disk_bytes = theirs.disk_bytes() + 1000
    theirs.put(make_trace(), make_resid())
    assert not (tmp_path / tid).exists()
    with pytest.raises(KeyError):
        ours.get(tid)
    assert ours.derived(tid, "x", lambda: np.zeros(3))[0] == 0  # its cached arrays went too


def test_both_stores_see_each_others_traces(tmp_path):
    a, b = TraceStore(tmp_path), TraceStore(tmp_path)
    ta, tb = a.put(make_trace(5), make_resid(5)), b.put(make_trace(7), make_resid(7))
    assert len(b.get(ta)) == 5 and len(a.get(tb)) == 7
    assert {r["id"] for r in a.catalogue()} == {ta, tb}


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_trace_is_refused_to_another_model(tmp_path, on_disk):
    store = TraceStore(tmp_path if on_disk else None)
    tid = store.put(make_trace(fingerprint=LLAMA), make_resid() if on_disk else None)
    assert store.get(tid, fingerprint=dict(LLAMA, name="the same model, loaded from a folder")) is not None
    with pytest.raises(TraceFromAnotherModel, match="made by tiny:llama.*this server runs tiny:gpt2") as err:
        store.get(tid, fingerprint=GPT2)
    assert err.value.status_code == 409
    assert store.get(tid) is not None  # the Python API, which names no model, still reads it
    if on_disk:  # also once restarted, from the catalogue
        with pytest.raises(TraceFromAnotherModel):
            TraceStore(tmp_path).get(tid, fingerprint=GPT2)


def test_same_name_other_weights_is_refused(tmp_path):
    store = TraceStore(tmp_path)
    tid = store.put(make_trace(fingerprint=LLAMA), make_resid())
    retrained = dict(LLAMA, weights="e" * 16, id="f" * 16)
    with pytest.raises(TraceFromAnotherModel, match="weights wwwwwwww.*weights eeeeeeee"):
        store.get(tid, fingerprint=retrained)


def test_the_catalogue_records_the_fingerprint(tmp_path):
    store = TraceStore(tmp_path)
    tid = store.put(make_trace(fingerprint=LLAMA), make_resid())
    (row,) = TraceStore(tmp_path).catalogue()
    assert row["id"] == tid and row["fingerprint"] == LLAMA and row["model"] == "tiny:llama"
    on_disk = json.loads((tmp_path / tid / "trace.json").read_text())
    assert on_disk["model"]["fingerprint"] == LLAMA


def test_traces_from_before_fingerprints_are_refused_to_a_model(tmp_path):
    # a catalogue written by the previous lmpeek: no fingerprint column, traces without fingerprints
    old = make_trace(fingerprint=None)
    old.save(tmp_path / "00000000000000aa")
    with sqlite3.connect(tmp_path / "catalogue.sqlite") as db:
        db.execute(
            "CREATE TABLE traces (id TEXT PRIMARY KEY, created REAL, model TEXT, n_tokens INTEGER, "
            "preview TEXT, bytes INTEGER)"
        )
        db.execute("INSERT INTO traces VALUES ('00000000000000aa', 1, 'old', 8, '', 100)")
    store = TraceStore(tmp_path)
    assert store.catalogue()[0]["fingerprint"] is None
    with pytest.raises(TraceFromAnotherModel, match="no fingerprint.*older lmpeek.*Run the text again"):
        store.get("00000000000000aa", fingerprint=LLAMA)
    assert len(store.get("00000000000000aa")) == 8
