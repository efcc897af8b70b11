"""lmpeek.turns.Turns: a computation on its own thread, run in strict turns with its caller."""

from __future__ import annotations

import threading

import pytest

from lmpeek.turns import Turns
from lmpeek.worker import Cancelled


def test_steps_alternate_and_return_the_value():
    log: list[str] = []

    def fn(pause):
        for i in range(3):
            log.append(f"run {i}")
            pause(i)
        return "end"

    t = Turns(fn)
    for i in range(3):
        assert t.step() == ("item", i)
        log.append(f"caller {i}")
    assert t.step() == ("done", "end")
    assert t.step() == ("done", "end")  # it ended: asking again does not block
    assert log == ["run 0", "caller 0", "run 1", "caller 1", "run 2", "caller 2"]


def test_an_error_is_handed_to_the_caller():
    def fn(pause):
        pause(1)
        raise ValueError("boom")

    t = Turns(fn)
    assert t.step() == ("item", 1)
    kind, err = t.step()
    assert kind == "error" and isinstance(err, ValueError)


def test_close_cancels_a_paused_computation():
    after: list[int] = []
    seen: list[BaseException] = []

    def fn(pause):
        try:
            pause(0)
            after.append(1)
        except Cancelled as err:
            seen.append(err)
            raise

    t = Turns(fn, name="turns-test")
    assert t.step() == ("item", 0)
    t.close()
    assert after == [] and len(seen) == 1
    assert not any(th.name == "turns-test" for th in threading.enumerate())


def test_the_lock_is_free_while_paused_and_held_again_after():
    lock = threading.RLock()
    held_after: list[bool] = []

    def fn(pause):
        with lock, lock:  # held twice (re-entrant), as nested lmpeek code does
            pause(0)
            held_after.append(lock._is_owned())
        return 0

    t = Turns(fn, lock)
    t.step()
    assert lock.acquire(blocking=False)  # the caller's other work can take it between turns
    lock.release()
    assert t.step() == ("done", 0) and held_after == [True]
    assert lock.acquire(blocking=False)  # and it was released fully at the end
    lock.release()


@pytest.mark.parametrize("n", [0, 5])
def test_close_before_or_after_running_is_a_no_op(n):
    t = Turns(lambda pause: n)
    t.close()
    assert t.step() == ("done", n)
    t.close()
