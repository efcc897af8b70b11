"""The model's queue through a real server (uvicorn on loopback): no deadlock, no hang, no lost model.

These are the failures issue 8 found by hand: a streaming generation plus 40 concurrent traces froze
the server for good; an abandoned generation kept the model for minutes; health waited behind the
model; SIGTERM did not stop `lmpeek serve`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from sse_client import events as _events

from lmpeek.server.app import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, app):
        self.app = app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = create_app("tiny:llama", background=False, store_dir=tmp_path_factory.mktemp("q"), max_pending=8)
    with _Server(app) as s:
        yield s


def _health_ms(url: str) -> float:
    t0 = time.perf_counter()
    r = httpx.get(f"{url}/api/health", timeout=10)
    assert r.status_code == 200
    return (time.perf_counter() - t0) * 1000


def test_generation_plus_40_traces_no_deadlock_health_stays_fast(server):
    """The deterministic deadlock of issue 8: one stream + 40 concurrent traces."""
    text = "the quick brown fox jumps over the lazy dog " * 20
    results: dict[str, list] = {"trace": [], "stream": []}

    def stream():
        with httpx.stream("POST", f"{server.url}/api/generate", json={"prompt": "hi", "max_new_tokens": 200},
                          timeout=60) as r:  # fmt: skip
            results["stream"] = _events(r)

    def trace(_):
        r = httpx.post(f"{server.url}/api/trace", json={"text": text}, timeout=60)
        results["trace"].append(r.status_code)
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) > 0 and "busy" in r.json()["detail"]

    streamer = threading.Thread(target=stream)
    streamer.start()
    time.sleep(0.2)
    with ThreadPoolExecutor(40) as pool:
        futures = pool.map(trace, range(40))
        health = [_health_ms(server.url) for _ in range(10)]
        list(futures)
    streamer.join(60)
    assert not streamer.is_alive()
    # answered during the burst, not after it (the p95 < 100 ms target is measured by benchmarks/load.py on a
    # quiet machine; test_a_full_queue_answers_503_with_retry_after checks health while the model is stuck)
    assert max(health) < 5000, health
    assert set(results["trace"]) <= {200, 503} and 200 in results["trace"], results["trace"]
    kinds = [k for k, _ in results["stream"]]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}, kinds


def test_a_closed_stream_frees_the_model_at_once(server):
    worker = server.app.state.holder.worker
    before = worker.counts["cancelled"]
    with httpx.stream("POST", f"{server.url}/api/generate", json={"prompt": "hi", "max_new_tokens": 2000},
                      timeout=30) as r:  # fmt: skip
        lines = r.iter_lines()
        while not next(lines).startswith("event: token"):
            pass
    # the connection is closed: the generation must stop and the model answer the next request
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/api/trace", json={"text": "next"}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while worker.counts["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.counts["cancelled"] == before + 1
    assert worker.pending() == 0


def test_a_full_queue_answers_503_with_retry_after(server):
    worker = server.app.state.holder.worker
    gate = threading.Event()
    blockers = [worker.submit(gate.wait) for _ in range(worker.max_pending)]
    try:
        r = httpx.post(f"{server.url}/api/trace", json={"text": "x"}, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert _health_ms(server.url) < 1000
        h = httpx.get(f"{server.url}/api/health", timeout=5).json()
        assert h["queue"] == {"pending": worker.max_pending, "limit": worker.max_pending}
        r = httpx.post(f"{server.url}/api/generate", json={"prompt": "x"}, timeout=10)
        assert r.status_code == 503
    finally:
        gate.set()
        for b in blockers:
            b.future.result(10)


def test_a_failing_generation_ends_with_an_error_event(server, monkeypatch):
    """Any failure inside a stream ends it with an `error` event (never a cut connection)."""
    from lmpeek.store.traces import TraceStore

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(TraceStore, "put", broken)  # storing the whole text's trace fails
    with httpx.stream("POST", f"{server.url}/api/generate", json={"prompt": "hi", "max_new_tokens": 3},
                      timeout=30) as r:  # fmt: skip
        events = _events(r)
    assert [k for k, _ in events] == ["start", "token", "token", "token", "error"]
    assert "disk on fire" in events[-1][1]["detail"]


def test_sigterm_stops_serve_during_a_generation(tmp_path):
    port = _free_port()
    env = dict(os.environ, LMPEEK_CACHE=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmpeek.cli", "serve", "tiny:llama", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).json()["status"] == "ready":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        got_token = threading.Event()

        def stream():
            try:
                body = {"prompt": "hi", "max_new_tokens": 2000}
                with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=30) as r:
                    for line in r.iter_lines():
                        if line.startswith("event: token"):
                            got_token.set()
            except httpx.HTTPError:
                pass

        threading.Thread(target=stream, daemon=True).start()
        assert got_token.wait(30)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_pattern_too_large_for_json_is_refused_with_the_way_to_get_it(server):
    text = "abcd " * 260  # ~1,040 tokens of the tiny byte-level tokenizer
    r = httpx.post(f"{server.url}/api/trace", json={"text": text}, timeout=60)
    assert r.status_code == 200, r.text
    tid, T = r.json()["id"], len(r.json()["tokens"])
    assert T * T > 1_000_000
    url = f"{server.url}/api/traces/{tid}/attention"
    r = httpx.get(url, params={"layer": 0, "head": 0}, timeout=60)
    assert r.status_code == 422 and "application/octet-stream" in r.json()["detail"], r.text
    binary = {"Accept": "application/octet-stream"}
    r = httpx.get(url, params={"layer": 0, "head": 0}, headers=binary, timeout=60)
    assert r.status_code == 200 and len(r.content) == T * T * 2 and r.headers["x-shape"] == f"{T},{T}"
    r = httpx.get(url, params={"layer": 0, "head": 0, "query": T - 1}, timeout=60)  # one row as JSON is fine
    assert r.status_code == 200 and r.json()["shape"] == [1, T]


def test_stored_summaries_and_cached_slices_answer_while_the_model_is_busy(server):
    r = httpx.post(f"{server.url}/api/trace", json={"text": "cached while busy"}, timeout=30)
    tid = r.json()["id"]
    vec = {"hook": "blocks.1.hook_resid_post", "token": 1}
    first = httpx.get(f"{server.url}/api/traces/{tid}/vector", params=vec, timeout=30).json()
    worker = server.app.state.holder.worker
    gate = threading.Event()
    busy = worker.submit(gate.wait)  # the model is busy until the gate opens
    try:
        t0 = time.monotonic()
        assert httpx.get(f"{server.url}/api/traces/{tid}", timeout=5).json()["id"] == tid
        again = httpx.get(f"{server.url}/api/traces/{tid}/vector", params=vec, timeout=5).json()
        assert again == first and time.monotonic() - t0 < 2
        assert not busy.future.done()
    finally:
        gate.set()
        busy.future.result(10)
