"""The model's queue (lmpeek.worker) on its own: plain callables and generators, no model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lmpeek.worker import Busy, Cancelled, ModelWorker


@pytest.fixture
def worker():
    w = ModelWorker(max_pending=4, max_wait=5.0, stall_timeout=0.5, time_slice=0.0)  # turns every step
    yield w
    w.close()


def test_jobs_run_in_order_on_one_thread(worker):
    seen = []
    jobs = [
        worker.submit(lambda i=i: seen.append((i, threading.current_thread().name)) or i) for i in range(4)
    ]
    assert [j.future.result(5) for j in jobs] == [0, 1, 2, 3]
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert {name for _, name in seen} == {worker.name}


def test_full_queue_refuses_at_once(worker):
    gate = threading.Event()
    jobs = [worker.submit(gate.wait) for _ in range(worker.max_pending)]
    t0 = time.monotonic()
    with pytest.raises(Busy) as err:
        worker.submit(lambda: None)
    assert time.monotonic() - t0 < 0.1 and err.value.retry_after > 0 and err.value.status_code == 503
    gate.set()
    for j in jobs:
        j.future.result(5)
    assert worker.submit(lambda: 7).future.result(5) == 7  # room again
    assert worker.counts["refused"] == 1


def test_a_cancelled_queued_job_never_runs(worker):
    gate, ran = threading.Event(), []
    first = worker.submit(gate.wait)
    second = worker.submit(lambda: ran.append(1))
    second.cancel("client gone")
    gate.set()
    first.future.result(5)
    with pytest.raises(Cancelled, match="client gone"):
        second.future.result(5)
    assert ran == []


def test_a_generator_job_lets_short_jobs_in_between(worker):
    order = []

    def long_job():
        for i in range(6):
            order.append(f"step{i}")
            time.sleep(0.02)
            yield i
        return "finished"

    long = worker.submit(long_job)
    time.sleep(0.05)  # a few steps in
    short = worker.submit(lambda: order.append("short") or "short")
    assert short.future.result(5) == "short"
    assert long.future.result(5) == "finished"
    assert order.index("short") < order.index("step5"), order  # not stuck behind the long job


def test_cancel_stops_a_running_generator_between_steps(worker):
    steps, closed = [], threading.Event()

    def endless():
        try:
            while True:
                steps.append(1)
                time.sleep(0.01)
                yield
        finally:
            closed.set()

    job = worker.submit(endless)
    time.sleep(0.1)
    job.cancel("stop pressed")
    with pytest.raises(Cancelled):
        job.future.result(5)
    assert closed.wait(5)
    n = len(steps)
    time.sleep(0.05)
    assert len(steps) == n  # no more steps after the cancel
    assert worker.submit(lambda: "free").future.result(5) == "free"


def test_waiting_too_long_is_refused_not_run():
    w = ModelWorker(max_pending=4, max_wait=0.2)
    try:
        gate = threading.Event()
        first = w.submit(gate.wait)
        late = w.submit(lambda: "ran")
        time.sleep(0.8)
        gate.set()
        first.future.result(5)
        with pytest.raises(Busy, match="busy"):
            late.future.result(5)
        assert w.counts["expired"] == 1
    finally:
        w.close()


def test_call_from_the_worker_thread_does_not_deadlock(worker):
    assert worker.submit(lambda: worker.call(lambda: 41) + 1).future.result(5) == 42


def test_errors_reach_the_caller(worker):
    def boom():
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        worker.submit(boom).future.result(5)
    assert worker.submit(lambda: "still works").future.result(5) == "still works"


def test_a_time_slice_keeps_a_generator_running_for_that_long():
    w = ModelWorker(time_slice=30.0)
    try:
        order = []

        def long_job():
            for i in range(6):
                order.append(i)
                time.sleep(0.02)
                yield i

        long = w.submit(long_job)
        time.sleep(0.05)
        w.submit(lambda: order.append("short")).future.result(5)
        long.future.result(5)
        assert order == [0, 1, 2, 3, 4, 5, "short"]  # the slice had not ended
    finally:
        w.close()


def test_close_cancels_everything_and_stops_the_thread():
    w = ModelWorker(time_slice=0.0)

    def endless():
        while True:
            time.sleep(0.01)
            yield

    running = w.submit(endless)
    time.sleep(0.05)
    gate = threading.Event()
    blocking = w.submit(lambda: gate.wait(0.3))  # gets its turn between two steps, then holds the thread
    queued = w.submit(lambda: "never")
    time.sleep(0.05)
    w.close()
    assert blocking.future.result(5) is False  # a plain job in progress finishes
    for job in (running, queued):
        with pytest.raises(Cancelled):
            job.future.result(5)
    assert not w._thread.is_alive()
    with pytest.raises(Busy, match="shutting down"):
        w.submit(lambda: None)


# --- asyncio side ---------------------------------------------------------------------------------


def test_stream_delivers_items_in_order_then_the_result(worker):
    async def main():
        def gen():
            yield from range(20)
            return "done"

        job, sink = worker.stream(gen, maxsize=3)
        got = []
        while True:
            kind, item = await sink.get()
            if kind != "item":
                return got, kind, item
            got.append(item)

    got, kind, result = asyncio.run(main())
    assert got == list(range(20)) and (kind, result) == ("end", "done")


def test_a_stalled_reader_is_cancelled_and_frees_the_model(worker):
    produced = []

    async def main():
        def gen():
            for i in range(1000):
                produced.append(i)
                yield i

        job, sink = worker.stream(gen, maxsize=2)
        await asyncio.sleep(1.5)  # never read: the job must park, then be cancelled
        with pytest.raises(Cancelled, match="stopped reading"):
            job.future.result(1)
        return await asyncio.wrap_future(worker.submit(lambda: "next job runs").future)

    assert asyncio.run(main()) == "next job runs"
    assert len(produced) <= 3  # never ran ahead of its reader


def test_run_leaves_the_queue_when_the_client_disconnects(worker):
    gate, ran = threading.Event(), []

    async def main():
        blocker = worker.submit(gate.wait)

        async def gone():
            return True

        task = asyncio.ensure_future(worker.run(lambda: ran.append(1), disconnected=gone))
        await asyncio.sleep(0.5)
        gate.set()
        await asyncio.wrap_future(blocker.future)
        with pytest.raises(Cancelled):
            await task

    asyncio.run(main())
    assert ran == []


def test_a_follow_up_goes_first_and_is_never_refused(worker):
    gate, order = threading.Event(), []
    first = worker.submit(gate.wait)
    queued = [worker.submit(lambda i=i: order.append(i)) for i in range(worker.max_pending - 1)]
    with pytest.raises(Busy):
        worker.submit(lambda: None)
    follow = worker.submit(lambda: order.append("follow-up"), follow_up=True)  # full queue: still taken
    gate.set()
    for j in [first, *queued, follow]:
        j.future.result(5)
    assert order[0] == "follow-up"
