"""The model's queue: one thread owns the model; everything that runs it is a job on a bounded queue.

Why not a lock: request handlers that wait for a lock sit in the server's thread pool, so a burst of
traces fills the pool and even health checks stall; a streaming generation that holds the lock
between tokens needs a pool thread for each next token while the waiting handlers hold every thread,
and the server deadlocks. Here handlers only *submit* work and await a future (no thread held), and
the one worker thread runs the jobs in turn:

- the queue is bounded: a full queue refuses at once (`Busy`, HTTP 503 with Retry-After), and a job
  that waited longer than `max_wait` is refused instead of run, so every request gets an answer;
- a job may be a generator (a generation, later an attribution sweep): the worker runs its steps for
  up to `time_slice` seconds, then puts the job back behind anything that arrived meanwhile, so short
  requests are never stuck behind a long one; each yielded item goes to the job's `Sink`;
- a job can be cancelled at any time (the client went away, pressed Stop, or the server stops): a
  queued job is dropped, a running generator is closed before its next step;
- a streaming job whose reader stops reading is parked (never run ahead of its reader) and
  cancelled once the reader has stalled for `stall_timeout` seconds.

No torch and no model code here: jobs are plain callables, so this is tested on its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from lmpeek.errors import LmpeekError


class Busy(LmpeekError):
    """The model's queue is full (or the server is stopping): try again in `retry_after` seconds."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 2):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(LmpeekError):
    """The job was cancelled before it finished (client gone, Stop pressed, stalled reader, shutdown)."""

    status_code = 499


_END = object()


class Sink:
    """Items a streaming job yields, handed from the worker thread to one asyncio reader, in order.

    `pending` counts items pushed but not yet read: the worker does not run a job whose sink holds
    `maxsize` unread items, so a slow reader slows its own job, never the server.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 8):
        self.loop = loop
        self.maxsize = maxsize
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.on_read: Callable[[], None] = lambda: None

    def full(self) -> bool:
        with self._lock:
            return self._pending >= self.maxsize

    def _push(self, kind: str, item: Any) -> None:
        with self._lock:
            self._pending += 1
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, (kind, item))
        except RuntimeError:  # the reader's event loop is closed: nobody is listening any more
            pass

    async def get(self) -> tuple[str, Any]:
        """("item", value) for each yielded value, then ("end", return value) or ("error", exception)."""
        kind, item = await self._queue.get()
        with self._lock:
            self._pending -= 1
        self.on_read()
        return kind, item


@dataclass(eq=False)
class Job:
    fn: Callable[[], Any]
    kind: str
    sink: Sink | None = None
    future: Future = field(default_factory=Future)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    stalled_since: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _steps: Iterator[Any] | None = None
    _wake: Callable[[], None] = lambda: None

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop this job as soon as possible (idempotent); its future fails with `Cancelled`."""
        if not self._cancel.is_set():
            self.reason = reason
            self._cancel.set()
            self._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


def _malloc_trim() -> Callable[[], None]:
    # glibc keeps freed memory of big temporary tensors in its arenas: a burst of long traces leaves
    # RSS gigabytes above idle although nothing is allocated. malloc_trim hands it back to the OS.
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    return (lambda: trim(0)) if trim is not None else (lambda: None)


class ModelWorker:
    """One thread that runs jobs in turn. `submit` from any thread; `run`/`stream` from asyncio."""

    def __init__(
        self,
        max_pending: int = 16,
        max_wait: float = 25.0,
        stall_timeout: float = 30.0,
        time_slice: float = 0.25,
        name: str = "lmpeek-model",
    ):
        # max_wait: a job that waited this long is refused (503) rather than run, so that waiting plus
        # running stays within a client's patience (60 s) even for a long job at the end of the wait
        self.max_pending = max_pending
        self.max_wait = max_wait
        self.time_slice = time_slice
        self.stall_timeout = stall_timeout
        self.name = name
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._running: Job | None = None
        self._trim = _malloc_trim()
        self.counts = {"done": 0, "failed": 0, "cancelled": 0, "refused": 0, "expired": 0}

    # --- submitting ---------------------------------------------------------------------------------

    def submit(
        self, fn: Callable[[], Any], kind: str = "job", sink: Sink | None = None, follow_up: bool = False
    ) -> Job:
        """Queue `fn` (called on the worker thread). If `fn()` returns a generator, it is advanced one
        step per turn, each yielded item going to `sink`; its return value is the job's result.
        Raises `Busy` at once when `max_pending` jobs are already queued or running.

        `follow_up`: the next part of a request whose earlier job just ran (e.g. a generation after
        its prompt was checked): it goes to the front of the queue and is never refused for a full
        queue, so an admitted request does not wait its turn twice."""
        job = Job(fn=fn, kind=kind, sink=sink)
        job._wake = self._notify
        if sink is not None:
            sink.on_read = self._notify
        with self._cv:
            if self._closed:
                raise Busy("the server is shutting down", retry_after=5)
            if self.pending() >= self.max_pending and not follow_up:
                self.counts["refused"] += 1
                raise Busy(
                    f"the model is busy ({self.pending()} requests queued or running); try again shortly"
                )
            if follow_up:
                self._jobs.appendleft(job)
            else:
                self._jobs.append(job)
            self._start()
            self._cv.notify_all()
        return job

    def pending(self) -> int:
        """Jobs queued or running."""
        return len(self._jobs) + (self._running is not None)

    def call(self, fn: Callable[[], Any], kind: str = "job") -> Any:
        """Run `fn` on the worker and wait for its result (for synchronous callers). On the worker
        thread itself (a job calling a helper that calls `call`), `fn` just runs."""
        if threading.current_thread() is self._thread:
            return fn()
        return self.submit(fn, kind).future.result()

    async def run(self, fn: Callable[[], Any], kind: str = "job", disconnected=None) -> Any:
        """Await `fn`'s result without holding a thread. `disconnected` (e.g. Starlette's
        `request.is_disconnected`) is polled while waiting: a client that goes away leaves the queue."""
        job = self.submit(fn, kind)
        fut = asyncio.wrap_future(job.future)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.25)
                if done:
                    return fut.result()
                if disconnected is not None and await disconnected():
                    job.cancel("the client went away")
        except asyncio.CancelledError:
            job.cancel("the request was cancelled")
            raise

    def stream(
        self, fn: Callable[[], Iterator[Any]], kind: str = "stream", maxsize: int = 8, follow_up: bool = False
    ) -> tuple[Job, Sink]:
        """Submit a generator job; read its items with `await sink.get()` and cancel the job when the
        reader stops (e.g. in a `finally`)."""
        sink = Sink(asyncio.get_running_loop(), maxsize)
        return self.submit(fn, kind, sink, follow_up), sink

    # --- stopping -----------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every job, refuse new ones, and stop the thread (waits up to `timeout` seconds for
        a running step to end)."""
        with self._cv:
            self._closed = True
            jobs = list(self._jobs) + ([self._running] if self._running else [])
        for job in jobs:
            job.cancel("the server is shutting down")
        self._notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # --- the worker thread --------------------------------------------------------------------------

    def _notify(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                job = self._next()
                if job is None:
                    return
                self._running = job
            try:
                self._turn(job)
            finally:
                with self._cv:
                    self._running = None
                    idle = not self._jobs
                if idle:
                    self._trim()

    def _next(self) -> Job | None:
        """The next runnable job (waits for one); None once closed and empty. Holds `_cv`."""
        while True:
            now = time.monotonic()
            for job in list(self._jobs):
                if job.cancelled:
                    self._jobs.remove(job)
                    self._finish(job, error=Cancelled(getattr(job, "reason", "cancelled")), count="cancelled")
                elif job.started is None and now - job.created > self.max_wait:
                    self._jobs.remove(job)
                    self._finish(job, error=Busy(f"the model was busy for {self.max_wait:.0f} s; try again"),
                                 count="expired")  # fmt: skip
                elif job.sink is not None and job.sink.full():
                    job.stalled_since = job.stalled_since or now
                    if now - job.stalled_since > self.stall_timeout:
                        job.cancel("the reader stopped reading")
                        continue
                else:
                    job.stalled_since = None
                    self._jobs.remove(job)
                    return job
            if self._closed and not self._jobs:
                return None
            self._cv.wait(timeout=0.5)  # also wakes to expire waiting and stalled jobs

    def _turn(self, job: Job) -> None:
        """Run `job` to completion, or (a generator) for steps until someone else is waiting."""
        try:
            if job.started is None:
                job.started = time.monotonic()
                if job.cancelled:
                    raise Cancelled(getattr(job, "reason", "cancelled"))
                result = job.fn()
                if not inspect.isgenerator(result):
                    self._finish(job, result=result, count="done")
                    return
                job._steps = result
            assert job._steps is not None
            turn_ends = time.monotonic() + self.time_slice
            while True:
                if job.cancelled:
                    raise Cancelled(getattr(job, "reason", "cancelled"))
                item = next(job._steps)
                if job.sink is not None:
                    job.sink._push("item", item)
                with self._cv:
                    others = self._jobs and time.monotonic() > turn_ends
                    if others or (job.sink is not None and job.sink.full()):
                        self._jobs.append(job)  # back of the queue: others get a turn first
                        self._cv.notify_all()
                        return
        except StopIteration as stop:
            self._finish(job, result=stop.value, count="done")
        except Exception as err:
            self._finish(job, error=err, count="cancelled" if isinstance(err, Cancelled) else "failed")

    def _finish(
        self, job: Job, *, result: Any = None, error: BaseException | None = None, count: str
    ) -> None:
        self.counts[count] += 1
        if job._steps is not None and error is not None:
            job._steps.close()  # runs the generator's `finally` blocks now, on this thread
        if not job.future.done():  # (an awaiting coroutine may have cancelled it already)
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)
        if job.sink is not None:
            job.sink._push("end", result) if error is None else job.sink._push("error", error)
