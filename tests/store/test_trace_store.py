"""The trace store: summaries in memory, residual streams on disk, a catalogue that outlives the process."""

from __future__ import annotations

import numpy as np
import pytest

import lmpeek
from lmpeek.capture.trace import trace_with_resid
from lmpeek.store.traces import TraceStore


@pytest.fixture(scope="module")
def model():
    return lmpeek.load("tiny:llama")


def test_residual_stream_round_trip(tmp_path, model):
    t, resid = trace_with_resid(model, "The capital of France is Paris.")
    full = lmpeek.trace(
        model, "The capital of France is Paris.", keep=["blocks.*.hook_resid_pre", "blocks.1.hook_resid_post"]
    )
    assert resid.shape == (model.n_layers + 1, len(t), model.d_model) and resid.dtype == np.float32
    assert not t.kept  # the stream is returned separately, not duplicated in the trace
    store = TraceStore(tmp_path)
    tid = store.put(t, resid)
    assert store.has_resid(tid)
    for layer in range(model.n_layers):  # stored as float32: exactly the full forward's
        np.testing.assert_array_equal(store.resid(tid, layer), full[f"blocks.{layer}.hook_resid_pre"])
    np.testing.assert_array_equal(store.resid(tid, model.n_layers), full["blocks.1.hook_resid_post"])
    # a new store on the same folder (a restarted server) finds it
    again = TraceStore(tmp_path)
    assert again.get(tid).tokens == t.tokens and again.catalogue()[0]["id"] == tid
    assert again.catalogue()[0]["n_tokens"] == len(t)


def test_memory_only_store(model):
    store = TraceStore(None, max_traces=2)
    t = lmpeek.trace(model, "Hello")
    ids = [store.put(t) for _ in range(3)]
    with pytest.raises(KeyError):
        store.get(ids[0])
    assert store.get(ids[2]) is t and not store.has_resid(ids[2])
    with pytest.raises(ValueError, match="no residual"):
        store.put(t, np.zeros((3, 1, 64), np.float16))


def test_disk_budget_evicts_the_oldest(tmp_path, model):
    t, resid = trace_with_resid(model, "Hello there, " * 20)
    one = TraceStore(tmp_path / "probe")
    one.put(t, resid)
    size = one.disk_bytes()  # one trace, with the catalogue
    store = TraceStore(tmp_path / "s", max_disk_bytes=int(size * 2.5))  # room for two
    ids = [store.put(t, resid) for _ in range(4)]
    assert [r["id"] for r in store.catalogue()] == ids[:1:-1]  # the two newest, newest first
    for gone in ids[:2]:
        assert not (tmp_path / "s" / gone).exists()
        with pytest.raises(KeyError):
            store.get(gone)
    assert store.disk_bytes() <= store.max_disk_bytes


@pytest.mark.parametrize("bad", ["../etc", "", "nope", "a/b"])
def test_unknown_or_unsafe_ids(tmp_path, bad):
    store = TraceStore(tmp_path)
    with pytest.raises(KeyError):
        store.get(bad)
    with pytest.raises(KeyError):
        store.resid(bad, 0)


def test_derived_cache_is_bounded():
    store = TraceStore(None, max_cache_bytes=100)
    calls = []
    for key in range(3):
        store.derived("t", key, lambda key=key: calls.append(key) or np.zeros(10, np.float64))
    store.derived("t", 2, lambda: calls.append("again") or np.zeros(10))
    assert calls == [0, 1, 2]  # the newest stays cached
    store.derived("t", 0, lambda: calls.append("recomputed") or np.zeros(10))
    assert calls[-1] == "recomputed"
