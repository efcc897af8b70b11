"""An in-memory, size-bounded store of traces (and patterns recomputed for them) for the server."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from lmpeek.capture.trace import Trace


class TraceStore:
    """Least-recently-used traces by id, plus a byte-bounded cache of derived arrays per trace."""

    def __init__(self, max_traces: int = 64, max_cache_bytes: int = 512 * 2**20):
        self.max_traces = max_traces
        self.max_cache_bytes = max_cache_bytes
        self._traces: OrderedDict[str, Trace] = OrderedDict()
        self._cache: OrderedDict[tuple[str, Any], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, trace: Trace) -> str:
        trace_id = uuid.uuid4().hex[:16]
        with self._lock:
            self._traces[trace_id] = trace
            while len(self._traces) > self.max_traces:
                old, _ = self._traces.popitem(last=False)
                for key in [k for k in self._cache if k[0] == old]:
                    del self._cache[key]
        return trace_id

    def get(self, trace_id: str) -> Trace:
        """The trace, or KeyError."""
        with self._lock:
            trace = self._traces[trace_id]
            self._traces.move_to_end(trace_id)
            return trace

    def derived(self, trace_id: str, key: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """A cached array computed from a trace (e.g. one layer's pattern), computed once."""
        with self._lock:
            hit = self._cache.get((trace_id, key))
            if hit is not None:
                self._cache.move_to_end((trace_id, key))
                return hit
        value = compute()
        with self._lock:
            self._cache[(trace_id, key)] = value
            while sum(v.nbytes for v in self._cache.values()) > self.max_cache_bytes and len(self._cache) > 1:
                self._cache.popitem(last=False)
        return value
