"""Traces between requests: summaries in memory, the residual stream on disk, derived arrays cached.

Each stored trace may carry its residual stream, resid [L+1, T, D] (the input of every block, then the
last block's output), written once as float32 safetensors under `root/<id>/`. Any layer's internals
are recomputed from one slice of it (`capture.slices.run_block`), so a 4,096-token sample never has to
sit in memory, or go over the wire, whole. A SQLite catalogue lists what is on disk, so traces outlive
the server process.

float32, measured against the alternatives (benchmarks/resid_format.py, default model): hook points
recomputed from a float32 stream equal the full forward's; from float16 they are up to 6e-3 × max|ref|
off (and real models overflow it: Gemma 3's stream reaches 1e5, float16 stops at 65,504); a float16
stream with a per-row scale has the range but not the precision (same 6e-3); bfloat16 is 7e-2 off.
Streams stored as float16 by earlier versions are still read, unless they overflowed (StoredOverflow).

Several processes may share one root (two servers on one cache), and any of them may be killed at any
moment, so:
- a trace is written into `root/.tmp-<id>/`, renamed to `root/<id>/` when complete, and its catalogue
  row is inserted last; only traces with a row are served;
- rename + insert, orphan sweeps and evictions hold an exclusive lock on `root/.lock`; a writer holds a
  lock on `root/.tmp-<id>.lock` while it writes, so a sweep removes only temp folders whose writer died
  (the kernel drops a dead process's locks, `kill -9` included);
- a trace held in memory is served only while its catalogue row exists (another process may have
  evicted it), and only to the model that made it (`get(..., fingerprint=)`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput, LmpeekError, StoreFull, TraceFromAnotherModel
from lmpeek.models.fingerprint import describe, same_model
from lmpeek.schema import Trace

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; temp folders are then swept only when old
    fcntl = None  # type: ignore[assignment]

RESID_FILE = "resid.safetensors"
CATALOGUE_FILE = "catalogue.sqlite"
BUDGET_ENV = "LMPEEK_STORE_BUDGET"
DEFAULT_DISK_BUDGET = 4 * 2**30
DEFAULT_FREE_RESERVE = 2**30
_ROOT_LOCK = ".lock"
_TMP = ".tmp-"  # a trace being written
_TRASH = ".del-"  # an evicted trace being deleted
_ID = re.compile(r"[0-9A-Za-z]{1,64}")  # ids are made here (hex); anything else is refused unread
_UNLOCKED_TMP_MAX_AGE_S = 3600.0  # without fcntl, a temp folder this old is taken for an orphan
_COLUMNS = ("id", "created", "model", "n_tokens", "preview", "bytes", "fingerprint")
RESID_DTYPE = np.float32


class StoredOverflow(LmpeekError):
    """A residual stream stored as float16 by an earlier lmpeek overflowed to inf."""

    status_code = 409


def parse_size(value: str | int) -> int:
    """Bytes from '4G', '500M', '1.5GiB', '2048' (K, M, G, T are powers of 1,024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
        if m is None:
            raise InvalidInput(
                f"cannot read the size {value!r}: give a number of bytes or one with a unit, "
                f"e.g. '4G', '500M', '1.5GiB'"
            )
        size = int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))
    if size < 0:
        raise InvalidInput(f"a size cannot be negative, got {value!r}")
    return size


def disk_budget(value: str | int | None = None) -> int:
    """The store's disk budget: `value` if given, else $LMPEEK_STORE_BUDGET, else 4 GiB."""
    if value is None:
        value = os.environ.get(BUDGET_ENV) or DEFAULT_DISK_BUDGET
        try:
            return parse_size(value)
        except InvalidInput as err:
            raise InvalidInput(f"${BUDGET_ENV}: {err}") from None
    return parse_size(value)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _disk_bytes(path: Path) -> int:
    """Bytes a file or folder really takes on disk (allocated blocks where the OS reports them)."""

    def one(st: os.stat_result) -> int:
        blocks = getattr(st, "st_blocks", None)
        return blocks * 512 if blocks is not None else st.st_size

    try:
        if not path.is_dir():
            return one(path.stat())
        total = 0
        for folder, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += one(os.stat(os.path.join(folder, name)))
                except FileNotFoundError:  # removed meanwhile (another process's eviction)
                    pass
        return total
    except FileNotFoundError:
        return 0


def _estimate_bytes(trace: Trace, resid: np.ndarray | None) -> int:
    """About what `trace` (and `resid`) will take on disk, before writing it (kept tensors counted as
    float32, the most Trace.save stores them as)."""
    arrays = sum(
        a.nbytes
        for a in (trace.token_ids, trace.offsets, trace.topk_ids, trace.topk_probs, trace.entropy)
        + (trace.loss, trace.true_prob, trace.attn_entropy)
    )
    arrays += sum(a.nbytes for a in trace.norms.values())
    arrays += sum(a.size * 4 for a in trace.tensors.values())
    text = len(trace.text.encode("utf-8", "replace")) + sum(len(t) + 4 for t in trace.tokens)
    text += sum(len(t) + 4 for row in trace.topk_tokens for t in row)
    resid_bytes = resid.size * np.dtype(RESID_DTYPE).itemsize if resid is not None else 0
    return arrays + 2 * text + resid_bytes + 16 * 2**10


def _memory_bytes(trace: Trace) -> int:
    """About what `trace` holds in memory: its arrays, plus ~60 bytes per Python string."""
    arrays = sum(
        a.nbytes
        for a in (trace.token_ids, trace.offsets, trace.topk_ids, trace.topk_probs, trace.entropy)
        + (trace.loss, trace.true_prob, trace.attn_entropy)
    )
    arrays += sum(a.nbytes for a in trace.norms.values()) + sum(a.nbytes for a in trace.tensors.values())
    strings = len(trace.tokens) + sum(len(row) for row in trace.topk_tokens)
    return arrays + 60 * strings + len(trace.text) + 2 * sum(len(t) for t in trace.tokens)


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # safetensors (Rust) and SQLite report a full disk in their own exception types
    text = str(err)
    return any(s in text for s in ("No space left", "StorageFull", "code: 28", "disk is full", "Disk quota"))


@contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on file `path` (created if missing); yields False if `blocking` is False
    and someone else holds it. The kernel drops the lock when its process dies, however it dies.
    Whoever holds it may unlink the file; a waiter then retries on the new file, so two processes
    never both believe they hold the lock."""
    if fcntl is None:
        yield True
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # unlinked by the holder before we got it: lock the current file instead
    try:
        yield True
    finally:
        os.close(fd)


class TraceStore:
    """Traces by id. `root=None` keeps everything in memory (and refuses residual streams).

    max_traces, max_memory_bytes: bounds of the traces kept in memory (a disk store reloads the others
    from disk; a memory store forgets them). max_cache_bytes: bound of the derived arrays.
    max_disk_bytes: the disk budget (bytes or '4G'; default $LMPEEK_STORE_BUDGET, else 4 GiB); the
    oldest traces are evicted to stay within it. min_free_bytes: a trace is refused (StoreFull) when
    writing it would leave less free space on the disk than this or than the trace's own size.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        max_traces: int = 64,
        max_cache_bytes: int = 512 * 2**20,
        max_disk_bytes: int | str | None = None,
        min_free_bytes: int = DEFAULT_FREE_RESERVE,
        max_memory_bytes: int = 256 * 2**20,
    ):
        self.root = Path(root) if root is not None else None
        self.max_traces = max_traces
        self.max_cache_bytes = max_cache_bytes
        self.max_disk_bytes = disk_budget(max_disk_bytes)
        self.min_free_bytes = min_free_bytes
        self.max_memory_bytes = max_memory_bytes
        self._traces: OrderedDict[str, tuple[Trace, int]] = OrderedDict()  # id -> (trace, bytes)
        self._traces_bytes = 0
        self._cache: OrderedDict[tuple[str, Any], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._root_lock():
                with self._db() as db:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS traces (id TEXT PRIMARY KEY, created REAL, model TEXT, "
                        "n_tokens INTEGER, preview TEXT, bytes INTEGER)"
                    )
                    present = {r[1] for r in db.execute("PRAGMA table_info(traces)")}
                    if "fingerprint" not in present:  # a catalogue from before fingerprints
                        db.execute("ALTER TABLE traces ADD COLUMN fingerprint TEXT")
                self._sweep()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A catalogue connection that commits (or rolls back) and closes at exit."""
        assert self.root is not None
        db = sqlite3.connect(self.root / CATALOGUE_FILE, timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    def _root_lock(self):
        assert self.root is not None
        return _flock(self.root / _ROOT_LOCK)

    # --- writing ------------------------------------------------------------------------------------

    def put(self, trace: Trace, resid: np.ndarray | None = None) -> str:
        """Store a trace (and its residual stream [L+1, T, D], if given); returns its id. A store with
        a folder writes it to disk (StoreFull if the budget or the disk cannot take it)."""
        trace_id = uuid.uuid4().hex[:16]
        if self.root is not None:
            self._write(trace_id, trace, resid)
        elif resid is not None:
            raise ValueError("this store keeps no residual streams (it has no folder)")
        self._remember(trace_id, trace)
        return trace_id

    def _write(self, trace_id: str, trace: Trace, resid: np.ndarray | None) -> None:
        from safetensors.numpy import save_file

        assert self.root is not None
        estimate = _estimate_bytes(trace, resid)
        self._check_room(estimate)
        self._evict_disk(room=estimate)  # make room first, so the budget holds while writing too
        tmp = self.root / f"{_TMP}{trace_id}"
        final = self.root / trace_id
        fingerprint = trace.model.get("fingerprint")
        owner = self.root / f"{_TMP}{trace_id}.lock"
        with _flock(owner):
            try:
                tmp.mkdir()
                # a model that really produced inf/NaN is stored as it is (trace.nonfinite says where),
                # so that its trace can be looked at
                trace.save(tmp, allow_nonfinite=bool(trace.nonfinite))
                if resid is not None:
                    save_file(
                        {"resid": np.ascontiguousarray(resid, dtype=RESID_DTYPE)}, str(tmp / RESID_FILE)
                    )
                size = _disk_bytes(tmp)
                with self._root_lock():
                    os.rename(tmp, final)
                    try:
                        with self._db() as db:
                            db.execute(
                                f"INSERT INTO traces ({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (
                                    trace_id,
                                    time.time(),
                                    trace.model.get("name", ""),
                                    len(trace),
                                    trace.text[:200],
                                    size,
                                    json.dumps(fingerprint) if fingerprint else None,
                                ),
                            )
                    except BaseException:
                        shutil.rmtree(final, ignore_errors=True)
                        raise
            except BaseException as err:
                shutil.rmtree(tmp, ignore_errors=True)
                if _is_disk_full(err):
                    raise StoreFull(
                        f"the disk holding the trace store ({self.root}) is full: {err}. "
                        + self._how_to_free()
                    ) from None
                raise
            finally:
                owner.unlink(missing_ok=True)
        self._evict_disk(keep=trace_id)

    def _how_to_free(self) -> str:
        return (
            f"Free space on that disk, or delete old traces (remove {self.root} while no lmpeek server "
            f"uses it), or put the store on another disk (LMPEEK_CACHE), or lower the store's budget "
            f"(lmpeek serve --store-budget 2G, or ${BUDGET_ENV})."
        )

    def _check_room(self, estimate: int) -> None:
        """Refuse, before writing anything, a trace that the budget or the disk cannot take."""
        assert self.root is not None
        if estimate > self.max_disk_bytes:
            raise StoreFull(
                f"this trace needs about {_gib(estimate)} on disk, more than the trace store's whole "
                f"budget ({_gib(self.max_disk_bytes)}). Raise the budget (lmpeek serve --store-budget 8G, "
                f"or ${BUDGET_ENV}=8G), or trace a shorter text."
            )
        free = shutil.disk_usage(self.root).free
        reserve = max(self.min_free_bytes, estimate)
        if free - estimate < reserve:
            raise StoreFull(
                f"only {_gib(free)} is free on the disk holding the trace store ({self.root}); this trace "
                f"needs about {_gib(estimate)} and lmpeek keeps at least {_gib(reserve)} free. "
                + self._how_to_free()
            )

    def _evict_disk(self, keep: str | None = None, room: int = 0) -> None:
        """Sweep orphans, then delete the oldest traces (never `keep`) until what the store takes on
        disk, plus `room`, fits the budget. Counts real bytes on disk, orphans of other processes too."""
        assert self.root is not None
        trash: list[Path] = []
        with self._root_lock():
            self._sweep()
            used = _disk_bytes(self.root)
            victims: list[str] = []
            with self._db() as db:
                for trace_id, size in db.execute("SELECT id, bytes FROM traces ORDER BY created ASC"):
                    if used + room <= self.max_disk_bytes:
                        break
                    if trace_id != keep:
                        victims.append(trace_id)
                        used -= size or 0
                db.executemany("DELETE FROM traces WHERE id = ?", [(v,) for v in victims])
            for trace_id in victims:  # gone from the catalogue first: no reader starts on them now
                dst = self.root / f"{_TRASH}{trace_id}"
                try:
                    os.rename(self.root / trace_id, dst)
                    trash.append(dst)
                except FileNotFoundError:
                    pass
        for trace_id in victims:
            self._forget(trace_id)
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove what a killed writer or evictor left (call with the root lock held): temp folders
        whose writer is gone, folders being deleted, folders with no catalogue row, rows with no folder."""
        assert self.root is not None
        folders: set[str] = set()
        for entry in os.scandir(self.root):
            name = entry.name
            if name.startswith(_TRASH):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif name.startswith(_TMP):
                base = name.removesuffix(".lock")
                self._sweep_tmp(self.root / base, self.root / f"{base}.lock")
            elif _ID.fullmatch(name) and entry.is_dir():
                folders.add(name)
        with self._db() as db:
            rows = {r[0] for r in db.execute("SELECT id FROM traces")}
            db.executemany("DELETE FROM traces WHERE id = ?", [(i,) for i in rows - folders])
        for name in folders - rows:
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in rows - folders:
            self._forget(name)

    @staticmethod
    def _sweep_tmp(folder: Path, owner: Path) -> None:
        if fcntl is None:
            try:
                if time.time() - folder.stat().st_mtime < _UNLOCKED_TMP_MAX_AGE_S:
                    return
            except FileNotFoundError:
                pass
        with _flock(owner, blocking=False) as writer_is_gone:
            if writer_is_gone:
                shutil.rmtree(folder, ignore_errors=True)
                owner.unlink(missing_ok=True)

    # --- memory -------------------------------------------------------------------------------------

    def _remember(self, trace_id: str, trace: Trace) -> None:
        size = _memory_bytes(trace)
        with self._lock:
            old = self._traces.pop(trace_id, None)
            if old is not None:
                self._traces_bytes -= old[1]
            self._traces[trace_id] = (trace, size)
            self._traces_bytes += size
            while len(self._traces) > 1 and (
                len(self._traces) > self.max_traces or self._traces_bytes > self.max_memory_bytes
            ):
                gone, (_, gone_size) = self._traces.popitem(last=False)
                self._traces_bytes -= gone_size
                self._drop_cache(gone)

    def _forget(self, trace_id: str) -> None:
        with self._lock:
            old = self._traces.pop(trace_id, None)
            if old is not None:
                self._traces_bytes -= old[1]
            self._drop_cache(trace_id)

    def _drop_cache(self, trace_id: str) -> None:
        for key in [k for k in self._cache if k[0] == trace_id]:
            self._cache_bytes -= self._cache.pop(key).nbytes

    # --- reading ------------------------------------------------------------------------------------

    def get(self, trace_id: str, fingerprint: dict[str, Any] | None = None) -> Trace:
        """The trace, or KeyError. With `fingerprint` (the reading model's, `LoadedModel.fingerprint`),
        a trace made by another model raises TraceFromAnotherModel instead of being returned."""
        if not isinstance(trace_id, str) or not _ID.fullmatch(trace_id):
            raise KeyError(trace_id)
        if self.root is None:
            with self._lock:
                hit = self._traces.get(trace_id)
                if hit is None:
                    raise KeyError(trace_id)
                self._traces.move_to_end(trace_id)
            if fingerprint is not None:
                self._check_model(trace_id, hit[0].model.get("fingerprint"), fingerprint)
            return hit[0]
        made_by = self._row_fingerprint(trace_id)  # KeyError once evicted, by any process
        if fingerprint is not None:
            self._check_model(trace_id, made_by, fingerprint)
        with self._lock:
            hit = self._traces.get(trace_id)
            if hit is not None:
                self._traces.move_to_end(trace_id)
                return hit[0]
        from safetensors import SafetensorError

        try:
            trace = Trace.load(self.root / trace_id)
        except (OSError, ValueError, InvalidInput, SafetensorError) as err:  # evicted meanwhile, or damaged
            raise KeyError(trace_id) from err
        self._remember(trace_id, trace)
        return trace

    def _row_fingerprint(self, trace_id: str) -> dict[str, Any] | None:
        """The catalogue's fingerprint of a trace (None for traces from before fingerprints); KeyError
        if the catalogue has no such trace."""
        with self._db() as db:
            row = db.execute("SELECT fingerprint FROM traces WHERE id = ?", (trace_id,)).fetchone()
        if row is None:
            self._forget(trace_id)
            raise KeyError(trace_id)
        return json.loads(row[0]) if row[0] else None

    @staticmethod
    def _check_model(trace_id: str, made_by: dict[str, Any] | None, loaded: dict[str, Any]) -> None:
        if not same_model(made_by, loaded):
            raise TraceFromAnotherModel(
                f"trace '{trace_id}' was made by {describe(made_by)}, but this server runs "
                f"{describe(loaded)}; its stored numbers only make sense with the model that made them. "
                f"Run the text again with this model, or load that model to read the trace."
            )

    def _folder(self, trace_id: str) -> Path | None:
        if self.root is None or not isinstance(trace_id, str) or not _ID.fullmatch(trace_id):
            return None
        folder = self.root / trace_id
        return folder if (folder / "trace.json").is_file() else None

    def has_resid(self, trace_id: str) -> bool:
        folder = self._folder(trace_id)
        return folder is not None and (folder / RESID_FILE).is_file()

    def resid(self, trace_id: str, layer: int) -> np.ndarray:
        """Row `layer` of the stored residual stream: the input of block `layer` [T, D] (float32);
        layer == n_layers gives the last block's output. KeyError if the trace has none; StoredOverflow
        for a row that an earlier lmpeek stored as float16 and that overflowed."""
        from safetensors import safe_open

        folder = self._folder(trace_id)
        if folder is None or not (folder / RESID_FILE).is_file():
            raise KeyError(trace_id)
        try:
            with safe_open(str(folder / RESID_FILE), framework="numpy") as f:
                row = f.get_slice("resid")[layer]
        except FileNotFoundError:  # evicted by another process meanwhile
            raise KeyError(trace_id) from None
        if row.dtype == np.float16 and not np.isfinite(row).all():
            raise StoredOverflow(
                f"trace '{trace_id}' was stored by an earlier lmpeek as float16, and its residual stream "
                f"went past float16's 65,504 at layer {layer} (now inf): those values are lost. Run the "
                f"text again: lmpeek now stores the stream as float32"
            )
        return row.astype(np.float32, copy=False)

    def catalogue(self) -> list[dict[str, Any]]:
        """What is on disk, newest first."""
        if self.root is None:
            return []
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM traces ORDER BY created DESC").fetchall()
        out = [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
        for row in out:
            row["fingerprint"] = json.loads(row["fingerprint"]) if row["fingerprint"] else None
        return out

    def disk_bytes(self) -> int:
        """What the store's folder takes on disk now, catalogue and unfinished writes included."""
        return 0 if self.root is None else _disk_bytes(self.root)

    def derived(self, trace_id: str, key: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """A cached array computed from a trace (e.g. one layer's pattern), computed once."""
        with self._lock:
            hit = self._cache.get((trace_id, key))
            if hit is not None:
                self._cache.move_to_end((trace_id, key))
                return hit
        value = compute()
        with self._lock:
            old = self._cache.pop((trace_id, key), None)
            if old is not None:
                self._cache_bytes -= old.nbytes
            self._cache[(trace_id, key)] = value
            self._cache_bytes += value.nbytes
            while self._cache_bytes > self.max_cache_bytes and len(self._cache) > 1:
                self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return value
