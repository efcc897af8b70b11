"""The app's routes ask one Session: built once the model is loaded (503 before), over the app's model,
queue and store; an app made for a Session (the notebook widget) asks that Session itself."""

from __future__ import annotations

import threading
import warnings

import pytest
from fastapi.testclient import TestClient

import lmpeek
from lmpeek.server.app import create_app
from lmpeek.session import Session


def _tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:llama")


def test_routes_wait_for_the_session_then_share_it(tmp_path):
    model, release = _tiny(), threading.Event()

    def slow_loader(_source):
        release.wait(30)
        return model

    app = create_app("tiny", loader=slow_loader, store_dir=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        r = c.get("/api/traces/0123456789abcdef/metric", params={"name": "loss"})
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and "loading" in r.json()["detail"]
        release.set()
        for _ in range(300):
            if c.get("/api/health").json()["status"] == "ready":
                break
            threading.Event().wait(0.05)
        holder = app.state.holder
        session = holder.session()
        assert isinstance(session, Session) and holder.session() is session
        assert session.model is model and session.worker is holder.worker
        assert session.store is app.state.traces
        tid = c.post("/api/trace", json={"text": "Hello there, world."}).json()["id"]
        assert session.get(tid).text == "Hello there, world."  # the route stored it through the Session


def test_an_app_for_a_session_asks_that_session(tmp_path):
    with Session(_tiny()) as s:
        app = create_app(session=s, allowed_hosts=["testserver"])
        with TestClient(app) as c:
            assert app.state.holder.session() is s and app.state.holder.worker is s.worker
            stored = s.trace("Made in the notebook.")
            r = c.get(f"/api/traces/{stored.id}/metric", params={"name": "entropy"})
            assert r.status_code == 200 and len(r.json()["values"]) == len(stored.trace)


@pytest.mark.parametrize("status", ["loading", "error"])
def test_no_session_before_the_model(tmp_path, status):
    from fastapi import HTTPException

    from lmpeek.errors import LmpeekError

    release = threading.Event()

    def fail(_source):
        release.wait(30 if status == "loading" else 0)
        raise LmpeekError("no such model")

    app = create_app("x", loader=fail, background=status == "loading", store_dir=tmp_path)
    with pytest.raises(HTTPException) as err:
        app.state.holder.session()
    assert err.value.status_code == (400 if status == "error" else 503)
    release.set()


def test_health_of_an_in_memory_model(tmp_path):
    """A wrapped model has no source label: /api/health still answers (its response model allows it)."""
    m = _tiny()
    wrapped = lmpeek.wrap(m.hf, m.tokenizer)
    app = create_app("memory", loader=lambda _s: wrapped, background=False, store_dir=tmp_path,
                     allowed_hosts=["testserver"])  # fmt: skip
    with TestClient(app) as c:
        r = c.get("/api/health")
        assert r.status_code == 200, r.text
        info = r.json()["model"]
        assert info["source"] is None and info["origin"] == "memory" and info == wrapped.info()
