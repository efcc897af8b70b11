"""The stored residual stream: float32 now; traces an earlier lmpeek stored as float16 are still read,
or refused with a clear message where float16 overflowed."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

import lmpeek
from lmpeek.capture.trace import trace_with_resid
from lmpeek.store.traces import RESID_FILE, StoredOverflow, TraceStore


def _as_old_float16(store: TraceStore, tid: str, resid: np.ndarray) -> None:
    """Rewrite a stored stream the way lmpeek stored it before float32."""
    with np.errstate(over="ignore"):
        save_file({"resid": resid.astype(np.float16)}, str(store.root / tid / RESID_FILE))


def test_stored_as_float32(tmp_path):
    model = lmpeek.load("tiny:llama")
    t, resid = trace_with_resid(model, "Hello there")
    store = TraceStore(tmp_path)
    tid = store.put(t, resid)
    from safetensors import safe_open

    with safe_open(str(tmp_path / tid / RESID_FILE), framework="numpy") as f:
        assert f.get_slice("resid").get_dtype() == "F32"
    np.testing.assert_array_equal(store.resid(tid, 1), resid[1])


def test_old_float16_traces_are_still_read(tmp_path):
    model = lmpeek.load("tiny:llama")
    t, resid = trace_with_resid(model, "Hello there")
    store = TraceStore(tmp_path)
    tid = store.put(t, resid)
    _as_old_float16(store, tid, resid)
    row = store.resid(tid, 1)
    assert row.dtype == np.float32
    np.testing.assert_array_equal(row, resid[1].astype(np.float16).astype(np.float32))


def test_old_float16_traces_that_overflowed_are_refused(tmp_path):
    model = lmpeek.load("tiny:llama-big")
    t, resid = trace_with_resid(model, "Hello there")
    store = TraceStore(tmp_path)
    tid = store.put(t, resid)
    _as_old_float16(store, tid, resid)
    with pytest.raises(StoredOverflow, match=r"float16.*layer 1.*Run the text again") as err:
        store.resid(tid, 1)
    assert err.value.status_code == 409
