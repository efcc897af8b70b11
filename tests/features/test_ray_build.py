"""The sharded feature build: shards merged exactly equal one build, bit for bit.

- SourceState: batches run into one state (closed every S batches) equal fresh per-shard states merged in
  order: every array, ties included, and the counts and top-k against plain numpy.
- build(..., ray="inline") (the Ray code path without Ray: shards packed, unpacked, merged) writes the
  same database as a local build, also when either is interrupted and resumed by the other.
- a real local Ray cluster (`ray start --head` on 127.0.0.1 with 2 CPUs, started here and always stopped):
  build(..., ray=address) and `lmpeek features build --ray` write the same database as the local build.
- the one-line errors: no Ray extra, no cluster, a bad address, a model without a source, a worker whose
  model differs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lmpeek
from lmpeek import features
from lmpeek.errors import InvalidInput
from lmpeek.features import builder
from lmpeek.features.builder import SourceState, build
from tests.features.saes import D, random_weights, v6_cfg, write_sae
from tests.features.test_builder import OPTS, all_rows, write_corpus

SHARDED = {**OPTS, "shard_batches": 2}  # the test corpus is 10 batches of 3 sequences: 5 shards


# --- SourceState.merge against one state -------------------------------------------------------------------


def _batches(rng, n_batches, F):
    """Random batches of activations, rounded to quarters so that equal values (ties) are common."""
    doc = 0
    for _ in range(n_batches):
        lengths = [int(n) for n in rng.integers(2, 9, size=3)]
        acts = (np.round(rng.standard_normal((sum(lengths), F)) * 4) / 4).astype(np.float32)
        yield doc, lengths, acts
        doc += len(lengths)


@pytest.mark.parametrize("shard", [1, 2, 3])
def test_merged_shards_equal_one_state(shard):
    F, k, m, ctx, first, seed = 5, 4, 6, (2, 1), 1, 7
    batches = list(_batches(np.random.default_rng(shard), 8, F))
    one = SourceState(F, k, m, ctx, corr=True)
    for b, (doc, lengths, acts) in enumerate(batches, 1):
        one.update(acts, builder._rows(doc, lengths, first, seed), first)
        if b % shard == 0:
            one.close_shard()
    one.close_shard()
    merged = SourceState(F, k, m, ctx, corr=True)
    for a in range(0, len(batches), shard):
        part = SourceState(F, k, m, ctx, corr=True)
        if a:
            part.shift = one.shift.copy()  # the build's shift (the first batch's means), as workers get it
        for doc, lengths, acts in batches[a : a + shard]:
            part.update(acts, builder._rows(doc, lengths, first, seed), first)
        part.close_shard()
        merged.merge(part)
    got, want = merged.arrays(), one.arrays()
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # exact, NaN windows included
    # and against plain numpy: counts, and the top k with ties to the earlier (doc, pos)
    rows = [(doc + s, p, acts[sum(lengths[:s]) + p]) for doc, lengths, acts in batches
            for s in range(len(lengths)) for p in range(first, lengths[s])]  # fmt: skip
    x = np.array([r[2] for r in rows])
    np.testing.assert_array_equal(merged.count, (x > 0).sum(0))
    for f in range(F):
        best = sorted((-float(v[f]), d, p) for d, p, v in rows if v[f] > 0)[:k]
        assert [(d, p) for _, d, p in best] == list(zip(merged.top.doc[f], merged.top.pos[f], strict=True))[
            : len(best)
        ]
    assert len({v for v in x.ravel().tolist()}) < 60  # quarters: many ties were there to break


# --- the sharded build without Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def sae(tmp_path_factory, llama):
    w = random_weights(np.random.default_rng(3), D, 24)
    w["b_enc"] = w["b_enc"] - 0.2
    folder = write_sae(
        tmp_path_factory.mktemp("sae") / "sae", v6_cfg("standard", D, 24, "blocks.0.hook_resid_post"), w
    )
    return features.load(folder, llama, check=False)


@pytest.fixture(scope="module")
def local(tmp_path_factory, llama, corpus, sae):
    out = tmp_path_factory.mktemp("local") / "local.db"
    build(llama, ["neurons:1", sae], [corpus], out, **SHARDED)
    return out


@pytest.fixture(scope="module")
def local_one_thread(tmp_path_factory, corpus, sae):
    """The local build in a fresh process with OMP_NUM_THREADS=1, as the cluster's workers run (its head
    has that environment): torch's and OpenBLAS's float32/64 sums round differently on 1 and 2 threads on
    some CPUs (AVX2-only ones), and the cluster build is compared on equal bits."""
    out = tmp_path_factory.mktemp("local1") / "local.db"
    script = (
        "import lmpeek\nfrom lmpeek import features\nfrom lmpeek.features.builder import build\n"
        "model = lmpeek.load('tiny:llama')\n"
        f"sae = features.load({str(sae.folder)!r}, model, check=False)\n"
        f"build(model, ['neurons:1', sae], [{str(corpus)!r}], {str(out)!r}, **{SHARDED!r})\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return out


class Stop(Exception):
    pass


def _stop_at(n):
    def report(p):
        if p.batches >= n:
            raise Stop

    return report


def test_inline_shards_equal_the_local_build(tmp_path, llama, corpus, sae, local):
    out = tmp_path / "inline.db"
    build(llama, ["neurons:1", sae], [corpus], out, ray="inline", **SHARDED)
    rows = all_rows(local)
    assert all_rows(out) == rows
    assert len(rows["documents"]) == 28 and len(rows["correlations"]) > 0  # 10 batches: 5 shards
    # one shard per batch, or one for everything: other numbers (float64 sums added in another
    # grouping) but the same examples and counts
    other = tmp_path / "one.db"
    build(llama, ["neurons:1", sae], [corpus], other, **{**SHARDED, "shard_batches": 64})
    assert all_rows(other)["examples"] == rows["examples"]


def test_resume_across_local_and_sharded(tmp_path, llama, corpus, sae, local):
    """Interrupted at a checkpoint inside a shard (local) or after a shard (sharded), resumed the other
    way: the same database."""
    a = tmp_path / "a.db"
    with pytest.raises(Stop):  # local: checkpoint at batch 2... the shard (batches 3-4) half run at 3
        build(
            llama, ["neurons:1", sae], [corpus], a, progress=_stop_at(3), **{**SHARDED, "checkpoint_every": 1}
        )
    build(llama, ["neurons:1", sae], [corpus], a, ray="inline", **{**SHARDED, "checkpoint_every": 1})
    assert all_rows(a) == all_rows(local)
    b = tmp_path / "b.db"
    with pytest.raises(Stop):  # sharded: a checkpoint after every shard; stopped after the second
        build(llama, ["neurons:1", sae], [corpus], b, ray="inline", progress=_stop_at(4), **SHARDED)
    build(llama, ["neurons:1", sae], [corpus], b, **SHARDED)
    assert all_rows(b) == all_rows(local)


# --- errors ------------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(err):
    assert "\n" not in str(err.value)
    return str(err.value)


def test_errors_are_one_line(tmp_path, llama, monkeypatch):
    out = tmp_path / "x.db"
    t0 = time.perf_counter()
    with pytest.raises(InvalidInput, match="no Ray cluster answers at 127.0.0.1") as err:
        build(llama, "neurons:0", ["some text"], out, ray=f"127.0.0.1:{_free_port()}")
    _one_line(err)
    assert time.perf_counter() - t0 < 30 and not out.exists()  # refused before anything was run
    with pytest.raises(InvalidInput, match="host:port") as err:
        build(llama, "neurons:0", ["some text"], out, ray="nowhere")
    _one_line(err)
    wrapped = lmpeek.wrap(llama.hf, llama.tokenizer)
    with pytest.raises(InvalidInput, match="lmpeek.load") as err:
        build(wrapped, "neurons:0", ["some text"], out, ray="127.0.0.1:1")
    _one_line(err)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(InvalidInput, match=r"pip install 'lmpeek\[ray\]'") as err:
        build(llama, "neurons:0", ["some text"], out, ray="127.0.0.1:1")
    _one_line(err)


def test_worker_refuses_another_model(llama):
    from lmpeek.features.ray_build import ShardWorker

    job = builder.ShardJob((128,), (True,), 2, 3, (1, 1), 1, 0, 2)
    with pytest.raises(InvalidInput, match="not the driver's") as err:
        ShardWorker(job, "tiny:llama", {"dtype": "float16", "progress": False}, llama.fingerprint, [])
    _one_line(err)


# --- a real Ray cluster on this machine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs in its own process group, which is killed at
    the end whatever happens (the driver side disconnects inside each build)."""
    temp = tmp_path_factory.mktemp("ray")
    port = _free_port()
    log = (temp / "head.log").open("w")
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
           "--object-store-memory=100000000"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (temp / "head.log").read_text():
            assert proc.poll() is None, (temp / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "ray start took over 60 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        _kill_group(proc.pid, signal.SIGTERM)  # our own group: the head and every process it started
        try:
            proc.wait(5)  # its graceful stop takes ~30 s here; nothing in it needs keeping
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        time.sleep(1)
        # anything of this cluster still alive (in the group or not: its command line names our temp
        # dir), by pid
        import psutil

        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if p.pid != os.getpid() and any(str(temp) in part for part in p.info["cmdline"] or ()):
                    p.kill()


def _kill_group(pgid, sig):
    with contextlib.suppress(ProcessLookupError):  # the whole group has already gone
        os.killpg(pgid, sig)


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # its own defaults warn
def test_ray_cluster_build_equals_the_local_build(
    ray_cluster, tmp_path, llama, corpus, sae, local_one_thread
):
    import ray

    out = tmp_path / "ray.db"
    build(llama, ["neurons:1", sae], [corpus], out, ray=ray_cluster, **SHARDED)
    assert not ray.is_initialized()  # the build left the cluster
    assert all_rows(out) == all_rows(local_one_thread)


def test_cli_ray_flag_errors_are_one_line(tmp_path, corpus):
    from typer.testing import CliRunner

    from lmpeek.cli import app

    args = [
        "features",
        "build",
        "-m",
        "tiny:llama",
        "-s",
        "neurons:1",
        "-c",
        str(corpus),
        "-o",
        str(tmp_path / "x.db"),
    ]
    r = CliRunner().invoke(app, [*args, "--ray", f"127.0.0.1:{_free_port()}"])
    assert r.exit_code == 2 and "no Ray cluster answers" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.db").exists()


def test_a_worker_error_through_ray_is_one_line():
    """What Ray raises for an error in an actor (a RayTaskError, also an instance of the cause's class,
    whose text is a traceback; for an actor that failed to start, an ActorDiedError that keeps only that
    text) comes out as the worker's own one-line error."""
    from ray.exceptions import ActorDiedError, RayTaskError

    from lmpeek.features.ray_build import _reraise

    message = "a Ray worker loaded 'tiny:llama' as another model"
    trace = (
        f'Traceback (most recent call last):\n  File "x.py", line 1\nlmpeek.errors.InvalidInput: {message}'
    )
    wrapped = RayTaskError("MapWorker.__init__", trace, InvalidInput(message))
    outer = RuntimeError("the dataset's execution failed")
    outer.__cause__ = wrapped  # as Ray Data raises it from a task
    died = ActorDiedError(RayTaskError("MapWorker.__init__", trace, InvalidInput(message)))
    for err in (outer, wrapped.as_instanceof_cause(), died):
        with pytest.raises(InvalidInput, match=f"^{message}$") as got:
            _reraise(err)
        _one_line(got)
    _reraise(RuntimeError("not ours"))  # anything else is left to raise as it is
