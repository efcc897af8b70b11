"""The feature builder on Ray Data: `build(..., ray="host:port")`, `lmpeek features build --ray ADDRESS`.

Needs the optional extra `pip install 'lmpeek[ray]'` (Ray Data); Ray is imported only here, only when
asked for. The driver (this process) reads and tokenizes the corpus, cuts the sequence stream into
shards of `shard_batches` batches (disjoint ranges, in the corpus order of corpus.py) and sends each
as one row of a Ray Dataset. `map_batches` runs them on a pool of actors, each holding one copy of the
model (loaded with `lmpeek.load` from the model's source, and refused unless its fingerprint is the
driver's) and of the feature sources (sent as they are loaded here). An actor runs a shard on fresh
states (builder.run_shard: the same batches, forward and updates as a local build) and returns the
closed states as one .npz blob; the driver merges the blobs in shard order (SourceState.merge) and
writes the database as the local build does: the same file, bit for bit (see builder's docstring).

Limits: the driver holds the tokenized remainder of the corpus (4 bytes a token) and the partials
that arrive before an earlier shard does; the model must load on every worker from the same source
(a default install, a shared folder or the hub cache); a shard's blob goes through Arrow, so it must
stay under 2 GiB (F × (k + sample_size) × window floats, plus F² for correlations).

Costs seen on a 2-core CPU machine (Ray 2.60): `ray start --head` took 19-26 s and holds ~0.5 GiB RSS in
6 processes; a driver joins in 4-8 s; each build starts its actors (import torch and lmpeek, load the
model) in ~20 s, so a tiny build takes ~21 s on Ray against ~1 s locally: Ray pays off for corpora
that take minutes per shard.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from lmpeek import errors
from lmpeek.errors import InvalidInput, LmpeekError
from lmpeek.features import builder

INSTALL = "pip install 'lmpeek[ray]'"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings Ray Data's own dependencies)
    except ImportError as err:
        raise InvalidInput(
            f"a Ray build needs Ray Data ({err.name or 'ray'} is missing): {INSTALL}"
        ) from None
    return ray


def check_address(address: str) -> None:
    """Refuse, in one line and within seconds, an address where nothing listens ("auto" is left to Ray)."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInput(f"a Ray address is host:port (e.g. 127.0.0.1:6379) or 'auto', got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InvalidInput(
            f"no Ray cluster answers at {address} ({reason}); start one with `ray start --head`"
        ) from None


def _model_source(model: Any, load: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Where each worker loads the model from, and how."""
    if model.source is None:
        raise InvalidInput(
            "a Ray build loads the model on every worker from its source: load it with lmpeek.load "
            "(a model wrapped from memory has none)"
        )
    kwargs = dict(load or {})
    if "dtype" not in kwargs:
        kwargs["dtype"] = str(next(model.hf.parameters()).dtype).removeprefix("torch.")
    return model.source, {"progress": False, **kwargs}


class ShardWorker:
    """A Ray Data actor: loads the model once, then runs shard after shard (builder.run_shard)."""

    def __init__(self, job: builder.ShardJob, source: str, load: dict[str, Any], fingerprint: dict[str, str],
                 sources: list[Any]):  # fmt: skip
        import lmpeek

        self.model = lmpeek.load(source, **load)
        got = self.model.fingerprint
        if got.get("id") != fingerprint.get("id"):
            from lmpeek.models.fingerprint import describe

            raise InvalidInput(
                f"a Ray worker loaded {source!r} as {describe(got)}, not the driver's "
                f"{describe(fingerprint)}: every worker needs the same model files"
            )
        self.job, self.sources = job, sources
        self.shift = None

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if self.shift is None:
            self.shift = builder.first_shift(self.model, self.sources, self.job) or ()
        blobs = []
        for i in range(len(batch["shard"])):
            item = {key: batch[key][i] for key in ("shard", "first_doc", "ids", "lengths")}
            blobs.append(builder.run_shard(self.model, self.sources, self.job, item, self.shift or None))
        return {"shard": np.asarray(batch["shard"], np.int64), "partial": np.array(blobs, dtype=object)}


_ERROR_LINE = re.compile(r"^lmpeek\.errors\.(\w+): (.+)$", re.MULTILINE)


def _reraise(err: BaseException) -> None:
    """A worker's LmpeekError as its own one line, out of Ray's wrappers: the exception itself where Ray
    keeps it (a RayTaskError's cause), else its last line in their text (an actor that failed to start
    comes back as an ActorDiedError that keeps only the traceback's text)."""
    seen, todo, text = set(), [err], []
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
        if isinstance(e, LmpeekError) and type(e).__module__ == "lmpeek.errors":  # not Ray's dual class
            raise type(e)((str(e).strip().splitlines() or [type(e).__name__])[0]) from None
        text += _ERROR_LINE.findall(str(e))
    if text:
        name, message = text[-1]
        cls = getattr(errors, name, None)
        cls = cls if isinstance(cls, type) and issubclass(cls, LmpeekError) else InvalidInput
        raise cls(message.strip()) from None


def run(
    address: str,
    job: builder.ShardJob,
    items: list[dict[str, Any]],
    model: Any,
    sources: list[Any],
    *,
    workers: int | None = None,
    load: Mapping[str, Any] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Run every shard item on the Ray cluster at `address`; yields (shard, packed states) in shard order.
    Connects (and disconnects at the end) unless this process is already connected to Ray."""
    ray = _import_ray()
    source, load_kwargs = _model_source(model, load)
    own = not ray.is_initialized()
    if own:
        check_address(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as err:  # noqa: BLE001  (Ray's own types for a cluster it cannot join)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InvalidInput(f"cannot join the Ray cluster at {address}: {first}") from None
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.CRITICAL)  # its errors reach the caller as exceptions
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        n = min(workers or gpus or cpus, len(items))
        per = {"num_gpus": 1} if gpus else {"num_cpus": max(1, cpus // n)}  # threads: the CPUs it holds
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        out = ds.map_batches(
            ShardWorker,
            fn_constructor_kwargs={
                "job": job,
                "source": source,
                "load": load_kwargs,
                "fingerprint": model.fingerprint,
                "sources": sources,
            },  # fmt: skip
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n),
            **per,
        )
        waiting: dict[int, bytes] = {}
        want = 0
        try:
            for row in out.iter_rows():
                waiting[int(row["shard"])] = row["partial"]
                while want in waiting:  # Ray returns shards as they finish: merge them in order
                    yield want, waiting.pop(want)
                    want += 1
        except Exception as err:  # noqa: BLE001
            _reraise(err)
            raise
        if want != len(items):
            raise InvalidInput(f"the Ray build returned {want} of {len(items)} shards")
    finally:
        ctx.enable_progress_bars = bars
        data_log.setLevel(level)
        if own:
            ray.shutdown()


def preflight(address: str, model: Any) -> None:
    """What can be refused before the corpus is read: a crosscoder's model pair, no Ray, a model without a
    source, no cluster."""
    if isinstance(model, tuple):  # workers load one model each (ShardWorker)
        raise InvalidInput("a Ray build runs one model: build a crosscoder over (base, chat) without --ray")
    ray = _import_ray()
    _model_source(model, None)
    if not ray.is_initialized():
        check_address(address)
