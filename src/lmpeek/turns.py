"""Run a long computation that drives its own loop (Captum's) as a generator job, in turns.

Why: an attribution is Captum calling the model batch after batch; it cannot be cut into generator
steps from outside, yet the model's queue (lmpeek.worker) needs steps so that light requests run
between them. `Turns` runs `fn(pause)` on a helper thread in strict alternation with its caller:
`step()` lets it run until it calls `pause(item)` (then `("item", item)`) or ends (`("done", value)`
or `("error", exception)`). Only one of the two threads runs at any time, so the model is never used
by both; while paused, the helper releases the re-entrant `lock` it holds (lmpeek's model lock), so
the caller's other jobs can take it, and takes it back before it goes on. `close()` cancels: the
paused `pause` raises `Cancelled`, which unwinds the computation on its own thread.

No torch here: tested on plain functions (tests/test_turns.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lmpeek.worker import Cancelled


class Turns:
    def __init__(
        self, fn: Callable[[Callable[[Any], None]], Any], lock: Any = None, name: str = "lmpeek-turns"
    ):
        self._fn, self._lock, self._name = fn, lock, name
        self._go, self._back = threading.Semaphore(0), threading.Semaphore(0)
        self._out: tuple[str, Any] = ("error", RuntimeError("not run"))
        self._stop = False
        self._thread: threading.Thread | None = None

    def _main(self) -> None:
        try:
            self._out = ("done", self._fn(self.pause))
        except BaseException as err:  # handed to the caller, which raises it on its own thread
            self._out = ("error", err)
        finally:
            self._back.release()

    def pause(self, item: Any) -> None:
        """On the helper thread: hand `item` to the caller and wait for the next `step()`."""
        held = 0
        if self._lock is not None:
            while True:  # an RLock held k times: release it fully, take it back k times
                try:
                    self._lock.release()
                except RuntimeError:
                    break
                held += 1
        self._out = ("item", item)
        self._back.release()
        self._go.acquire()
        for _ in range(held):
            self._lock.acquire()
        if self._stop:
            raise Cancelled("the attribution was cancelled")

    def step(self) -> tuple[str, Any]:
        """On the caller's thread: run the computation until its next pause or its end."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()
        elif self._out[0] != "item":  # it ended already
            return self._out
        else:
            self._go.release()
        self._back.acquire()
        return self._out

    def close(self) -> None:
        """Cancel a paused computation and wait for its thread to end (nothing to do once it ended)."""
        if self._thread is not None and self._out[0] == "item":
            self._stop = True
            self._go.release()
            self._thread.join()
