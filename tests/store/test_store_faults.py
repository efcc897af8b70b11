"""The trace store under faults: crashes mid-write, a full disk, a budget, orphans left by dead processes."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import warnings

import numpy as np
import pytest
from trace_fakes import make_resid, make_trace

from lmpeek.errors import InvalidInput, StoreFull
from lmpeek.store import traces as traces_module
from lmpeek.store.traces import TraceStore, _flock, disk_budget, parse_size


def _entries(root) -> set[str]:
    """What is in the store's folder besides the catalogue and the lock file."""
    return {p.name for p in root.iterdir()} - {"catalogue.sqlite", ".lock"}


def _rows(root) -> list[str]:
    with sqlite3.connect(root / "catalogue.sqlite") as db:
        return [r[0] for r in db.execute("SELECT id FROM traces")]


# --- orphans -----------------------------------------------------------------------------------------


def test_a_new_store_sweeps_what_crashed_writers_left(tmp_path):
    store = TraceStore(tmp_path)
    kept = store.put(make_trace(), make_resid())
    # a crash mid-write (temp folder), one between rename and catalogue insert (folder, no row),
    # one mid-eviction (folder being deleted), and a row whose folder a user deleted
    shutil.copytree(tmp_path / kept, tmp_path / ".tmp-0123456789abcdef")
    shutil.copytree(tmp_path / kept, tmp_path / "fedcba9876543210")
    shutil.copytree(tmp_path / kept, tmp_path / ".del-00000000000000aa")
    shutil.copytree(tmp_path / kept, tmp_path / "00000000000000bb")
    with sqlite3.connect(tmp_path / "catalogue.sqlite") as db:
        db.execute("INSERT INTO traces (id, created, bytes) VALUES ('00000000000000bb', 0, 10)")
    shutil.rmtree(tmp_path / "00000000000000bb")
    (tmp_path / "notes.txt").write_text("not ours: left alone")

    again = TraceStore(tmp_path)
    assert _entries(tmp_path) == {kept, "notes.txt"}
    assert _rows(tmp_path) == [kept]
    for half_written in ("0123456789abcdef", "fedcba9876543210", "00000000000000bb"):
        with pytest.raises(KeyError):
            again.get(half_written)
    assert again.get(kept).tokens == make_trace().tokens


def test_a_live_writers_temp_folder_is_left_alone(tmp_path):
    TraceStore(tmp_path)
    tmp = tmp_path / ".tmp-0123456789abcdef"
    tmp.mkdir()
    with _flock(tmp_path / ".tmp-0123456789abcdef.lock") as held:  # a writer, still at work
        assert held
        TraceStore(tmp_path)
        assert tmp.is_dir()
    TraceStore(tmp_path)  # its writer is gone now
    assert not tmp.exists() and _entries(tmp_path) == set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("stage", ["writing", "renamed"])
def test_kill_9_during_a_write_leaves_nothing_served_or_counted(tmp_path, stage):
    """A child process is killed with SIGKILL while writing a trace (or just after the rename, before
    the catalogue row); a new store serves nothing of it and nothing of it stays on disk."""
    store = TraceStore(tmp_path)
    kept = store.put(make_trace(), make_resid())
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: the child only writes
        pid = os.fork()
    if pid == 0:  # the child: write a trace, stop at `stage`, wait to be killed
        try:
            os.close(read)

            def stop_here(*_args, **_kw):
                os.write(write, b"x")
                signal.pause()

            if stage == "writing":  # the trace is written, the residual stream half-written
                import safetensors.numpy

                real_save = safetensors.numpy.save_file

                def half_then_stop(tensors, filename, *args, **kw):
                    if filename.endswith("resid.safetensors"):
                        with open(filename, "wb") as f:
                            f.write(b"\0" * 1000)
                        stop_here()
                    return real_save(tensors, filename, *args, **kw)

                safetensors.numpy.save_file = half_then_stop
            else:  # complete and renamed, but no catalogue row yet
                real_rename = os.rename

                def rename_then_stop(src, dst):
                    real_rename(src, dst)
                    if ".tmp-" in str(src):
                        stop_here()

                os.rename = rename_then_stop
            TraceStore(tmp_path, max_disk_bytes=2**30).put(make_trace(50), make_resid(50))
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.close(read)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    left = _entries(tmp_path) - {kept}
    assert left, "the child should have left something behind"
    again = TraceStore(tmp_path)
    assert _entries(tmp_path) == {kept} and _rows(tmp_path) == [kept]
    assert [r["id"] for r in again.catalogue()] == [kept]
    for name in left:
        with pytest.raises(KeyError):
            again.get(name.removeprefix(".tmp-").removesuffix(".lock"))


# --- a full disk and the budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # what safetensors' Rust writer raises on a full disk
        Exception(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'
        ),
    ],
)
def test_a_full_disk_mid_write_leaves_nothing_and_says_so(tmp_path, monkeypatch, failure):
    store = TraceStore(tmp_path)
    kept = store.put(make_trace(), make_resid())
    import safetensors.numpy

    def full(*_args, **_kw):
        raise failure

    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(StoreFull, match="full.*Free space.*--store-budget") as err:
        store.put(make_trace(), make_resid())
    assert err.value.status_code == 507
    assert _entries(tmp_path) == {kept} and _rows(tmp_path) == [kept]


def test_other_write_errors_are_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    store = TraceStore(tmp_path)
    import safetensors.numpy

    def broken(*_args, **_kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    with pytest.raises(PermissionError):
        store.put(make_trace(), make_resid())
    assert _entries(tmp_path) == set() and _rows(tmp_path) == []


def test_low_free_space_is_refused_before_writing(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    # keeping twice what is free now leaves no room, even if other processes free some space meanwhile
    store = TraceStore(tmp_path, min_free_bytes=2 * free + 2**30)
    with pytest.raises(StoreFull, match="is free on the disk.*keeps at least") as err:
        store.put(make_trace(), make_resid())
    assert err.value.status_code == 507
    assert _entries(tmp_path) == set() and _rows(tmp_path) == []
    assert TraceStore(tmp_path, min_free_bytes=0).put(make_trace(), make_resid())


def test_a_trace_larger_than_the_whole_budget_is_refused(tmp_path):
    store = TraceStore(tmp_path, max_disk_bytes="1K")
    with pytest.raises(StoreFull, match=r"more than the trace store's whole budget.*--store-budget"):
        store.put(make_trace(), make_resid())
    assert _entries(tmp_path) == set()


def test_the_budget_counts_real_bytes_orphans_included(tmp_path):
    probe = TraceStore(tmp_path / "probe")
    probe.put(make_trace(200), make_resid(200, d_model=256))
    one = probe.disk_bytes()
    store = TraceStore(tmp_path / "s", max_disk_bytes=int(one * 2.5))
    a = store.put(make_trace(200), make_resid(200, d_model=256))
    # a live writer's unfinished folder (not in the catalogue) takes real space: it counts
    with _flock(tmp_path / "s" / ".tmp-0123456789abcdef.lock"):
        shutil.copytree(tmp_path / "s" / a, tmp_path / "s" / ".tmp-0123456789abcdef")
        b = store.put(make_trace(200), make_resid(200, d_model=256))
        assert [r["id"] for r in store.catalogue()] == [b]  # `a` made room
    assert store.disk_bytes() <= store.max_disk_bytes + one


def test_parse_size():
    assert parse_size("4G") == 4 * 2**30
    assert parse_size("500M") == 500 * 2**20
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size(" 2 kb ") == 2048
    assert parse_size("2048") == parse_size(2048) == 2048
    for bad in ("four gigs", "4X", "-1G", ""):
        with pytest.raises(InvalidInput, match="e.g. '4G'"):
            parse_size(bad)


def test_budget_from_argument_environment_or_default(monkeypatch, tmp_path):
    monkeypatch.delenv("LMPEEK_STORE_BUDGET", raising=False)
    assert disk_budget() == 4 * 2**30
    monkeypatch.setenv("LMPEEK_STORE_BUDGET", "500M")
    assert disk_budget() == TraceStore(tmp_path).max_disk_bytes == 500 * 2**20
    assert TraceStore(tmp_path, max_disk_bytes="1G").max_disk_bytes == 2**30  # the argument wins
    monkeypatch.setenv("LMPEEK_STORE_BUDGET", "lots")
    with pytest.raises(InvalidInput, match="LMPEEK_STORE_BUDGET"):
        TraceStore(tmp_path)


def test_cli_serve_passes_the_budget(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    import lmpeek.server.app as app_module
    from lmpeek.cli import app

    seen = {}
    monkeypatch.setattr(app_module, "create_app", lambda model, **kw: seen.update(kw, model=model))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    monkeypatch.setattr("lmpeek.cli._check_port", lambda host, port: None)  # 8000 may be in use here
    result = CliRunner().invoke(app, ["serve", "tiny:llama", "--store-budget", "3G"])
    assert result.exit_code == 0, result.output
    assert seen["store_budget"] == "3G" and seen["model"] == "tiny:llama"


def test_memory_cache_is_bounded_by_bytes():
    big = make_trace(1000)
    store = TraceStore(None, max_memory_bytes=int(traces_module._memory_bytes(big) * 2.5))
    ids = [store.put(big) for _ in range(4)]
    for gone in ids[:2]:
        with pytest.raises(KeyError):
            store.get(gone)
    assert store.get(ids[3]) is big and store.get(ids[2]) is big
    assert traces_module._memory_bytes(big) > 200_000  # strings counted, not only arrays


def test_disk_store_keeps_traces_without_residual_streams_too(tmp_path):
    store = TraceStore(tmp_path)
    tid = store.put(make_trace())
    assert not store.has_resid(tid)
    assert TraceStore(tmp_path).get(tid).tokens == make_trace().tokens
    np.testing.assert_array_equal(TraceStore(tmp_path).get(tid).entropy, make_trace().entropy)
