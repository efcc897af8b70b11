"""Traces between requests: summaries in memory, the residual stream on disk, derived arrays cached.

Each stored trace may carry its residual stream, resid [L+1, T, D] (the input of every block, then the
last block's output), written once as float16 safetensors under `root/<id>/`. Any layer's internals
are recomputed from one slice of it (`capture.slices.run_block`), so a 4,096-token sample never has to
sit in memory, or go over the wire, whole. A SQLite catalogue lists what is on disk, so traces outlive
the server process.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek.capture.trace import Trace

RESID_FILE = "resid.safetensors"


class TraceStore:
    """Traces by id. `root=None` keeps everything in memory (and refuses residual streams)."""

    def __init__(
        self,
        root: str | Path | None = None,
        max_traces: int = 64,
        max_cache_bytes: int = 512 * 2**20,
        max_disk_bytes: int = 4 * 2**30,
    ):
        self.root = Path(root) if root is not None else None
        self.max_traces = max_traces
        self.max_cache_bytes = max_cache_bytes
        self.max_disk_bytes = max_disk_bytes
        self._traces: OrderedDict[str, Trace] = OrderedDict()
        self._cache: OrderedDict[tuple[str, Any], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._db() as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS traces (id TEXT PRIMARY KEY, created REAL, model TEXT, "
                    "n_tokens INTEGER, preview TEXT, bytes INTEGER)"
                )

    def _db(self) -> sqlite3.Connection:
        assert self.root is not None
        return sqlite3.connect(self.root / "catalogue.sqlite")

    # --- writing ------------------------------------------------------------------------------------

    def put(self, trace: Trace, resid: np.ndarray | None = None) -> str:
        """Store a trace (and its residual stream [L+1, T, D], if given); returns its id."""
        trace_id = uuid.uuid4().hex[:16]
        if resid is not None:
            if self.root is None:
                raise ValueError("this store keeps no residual streams (it has no folder)")
            self._write(trace_id, trace, resid)
        with self._lock:
            self._traces[trace_id] = trace
            while len(self._traces) > self.max_traces:
                old, _ = self._traces.popitem(last=False)
                self._drop_cache(old)
        return trace_id

    def _write(self, trace_id: str, trace: Trace, resid: np.ndarray) -> None:
        from safetensors.numpy import save_file

        folder = self.root / trace_id  # type: ignore[operator]
        trace.save(folder)
        save_file({"resid": np.ascontiguousarray(resid, dtype=np.float16)}, str(folder / RESID_FILE))
        size = sum(f.stat().st_size for f in folder.iterdir())
        with self._db() as db:
            db.execute(
                "INSERT INTO traces VALUES (?, ?, ?, ?, ?, ?)",
                (trace_id, time.time(), trace.model.get("name", ""), len(trace), trace.text[:200], size),
            )
        self._evict_disk()

    def _evict_disk(self) -> None:
        with self._db() as db:
            rows = db.execute("SELECT id, bytes FROM traces ORDER BY created DESC").fetchall()
            total = 0
            for i, (trace_id, size) in enumerate(rows):
                total += size
                if total > self.max_disk_bytes and i > 0:  # the newest always stays
                    db.execute("DELETE FROM traces WHERE id = ?", (trace_id,))
                    shutil.rmtree(self.root / trace_id, ignore_errors=True)  # type: ignore[operator]
                    with self._lock:
                        self._traces.pop(trace_id, None)
                        self._drop_cache(trace_id)

    def _drop_cache(self, trace_id: str) -> None:
        for key in [k for k in self._cache if k[0] == trace_id]:
            del self._cache[key]

    # --- reading ------------------------------------------------------------------------------------

    def get(self, trace_id: str) -> Trace:
        """The trace, or KeyError."""
        with self._lock:
            trace = self._traces.get(trace_id)
            if trace is not None:
                self._traces.move_to_end(trace_id)
                return trace
        folder = self._folder(trace_id)
        if folder is None:
            raise KeyError(trace_id)
        trace = Trace.load(folder)
        with self._lock:
            self._traces[trace_id] = trace
        return trace

    def _folder(self, trace_id: str) -> Path | None:
        if self.root is None or not trace_id.isalnum():
            return None
        folder = self.root / trace_id
        return folder if (folder / "trace.json").is_file() else None

    def has_resid(self, trace_id: str) -> bool:
        folder = self._folder(trace_id)
        return folder is not None and (folder / RESID_FILE).is_file()

    def resid(self, trace_id: str, layer: int) -> np.ndarray:
        """Row `layer` of the stored residual stream: the input of block `layer` [T, D] (float32);
        layer == n_layers gives the last block's output. KeyError if the trace has none."""
        from safetensors import safe_open

        folder = self._folder(trace_id)
        if folder is None or not (folder / RESID_FILE).is_file():
            raise KeyError(trace_id)
        with safe_open(str(folder / RESID_FILE), framework="numpy") as f:
            return f.get_slice("resid")[layer].astype(np.float32)

    def catalogue(self) -> list[dict[str, Any]]:
        """What is on disk, newest first."""
        if self.root is None:
            return []
        with self._db() as db:
            rows = db.execute(
                "SELECT id, created, model, n_tokens, preview, bytes FROM traces ORDER BY created DESC"
            )
            return [
                dict(zip(("id", "created", "model", "n_tokens", "preview", "bytes"), r, strict=True))
                for r in rows
            ]

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
