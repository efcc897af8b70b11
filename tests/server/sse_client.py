"""What the server tests of streamed routes share: the SSE reader, a POST that reads a whole stream,
and a forward hook that slows a job's own forwards (so a test can watch it run, cancel it, or ask a
light request meanwhile) and counts every forward of the model."""

from __future__ import annotations

import json
import threading
import time


def events(response) -> list[tuple[str, dict]]:
    """[(event, data)] of a text/event-stream answer (httpx response, streamed or read)."""
    out, event = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
    return out


def post_events(client, path: str, body: dict) -> list[tuple[str, dict]]:
    """POST `body`, check 200, read the whole stream."""
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        return events(r)


class SlowForwards:
    """Forwards on the thread named `thread` (a long job's, e.g. "lmpeek-attribution") take `delay`
    seconds; `calls` counts every forward of the model on any thread. `remove()` when done."""

    def __init__(self, model, delay: float, thread: str):
        self.delay, self.thread, self.calls = delay, thread, 0
        self.handle = model.hf.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1
        if threading.current_thread().name == self.thread:
            time.sleep(self.delay)

    def remove(self):
        self.handle.remove()


def cancel_at_first_progress(client, path: str, body: dict, slow: SlowForwards) -> None:
    """Open the stream and close it at its first `progress` event; then the job must be cancelled:
    counted by the worker, its queue empty, no forward after it, its thread (`slow.thread`) gone."""
    worker = client.app.state.holder.worker
    before = worker.counts["cancelled"]
    with client.stream("POST", path, json=body) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("event: progress"):
            pass
    deadline = time.monotonic() + 10
    # the count goes up as the job is cancelled, the queue empties when its worker turn ends: wait for both
    while (worker.counts["cancelled"] == before or worker.pending()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.counts["cancelled"] == before + 1 and worker.pending() == 0
    calls = slow.calls
    time.sleep(0.2)
    assert slow.calls == calls  # the job's thread stopped: no forward after the cancel
    assert not any(t.name == slow.thread for t in threading.enumerate())


def light_request_while_running(client, path: str, body: dict) -> tuple[list[tuple[str, dict]], list[str]]:
    """Stream `body` on a thread; at its first `progress`, POST /api/trace. Returns the stream's events
    and the order in which the trace's answer and the job's result came (["trace", "result"] when the
    light request was answered between the job's turns)."""
    got: list[tuple[str, dict]] = []
    order: list[str] = []
    first_progress = threading.Event()

    def read():
        with client.stream("POST", path, json=body) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    got.append((event, json.loads(line[6:])))
                    if event == "progress":
                        first_progress.set()
                    if event == "result":
                        order.append("result")

    reader = threading.Thread(target=read)
    reader.start()
    assert first_progress.wait(30)
    assert client.post("/api/trace", json={"text": "a light request"}).status_code == 200
    order.append("trace")
    reader.join(120)
    return got, order
