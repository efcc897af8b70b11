"""GET /api/traces: the store's catalogue as the page lists it (newest first, previews cut at 80
characters, traces of another model marked)."""

from __future__ import annotations

import dataclasses
import time

import lmpeek

TEXT = "Stored traces are listed newest first."


def test_lists_stored_traces_newest_first_with_preview(client):
    long_text = "x" * 50 + " and then quite a lot more text that goes past eighty characters " * 2
    first = client.post("/api/trace", json={"text": TEXT}).json()
    time.sleep(0.01)  # distinct created times
    second = client.post("/api/trace", json={"text": long_text}).json()

    rows = client.get("/api/traces").json()
    ids = [r["id"] for r in rows]
    assert ids.index(second["id"]) < ids.index(first["id"])
    row = next(r for r in rows if r["id"] == second["id"])
    assert row["preview"] == long_text[:80] and row["truncated"] is True
    assert row["n_tokens"] == len(second["tokens"])
    assert row["model"] == client.get("/api/health").json()["model"]["name"]
    assert row["other_model"] is False and row["created"] <= time.time()
    short = next(r for r in rows if r["id"] == first["id"])
    assert short["preview"] == TEXT and short["truncated"] is False


def test_marks_and_filters_traces_of_another_model(client):
    holder = client.app.state.holder
    t = lmpeek.trace(holder.model, TEXT)
    fp = dict(t.model.get("fingerprint") or {}, id="somebody-else")
    foreign = client.app.state.traces.put(
        dataclasses.replace(t, model={**t.model, "name": "other", "fingerprint": fp})
    )
    rows = {r["id"]: r for r in client.get("/api/traces").json()}
    assert rows[foreign]["other_model"] is True and rows[foreign]["model"] == "other"
    assert foreign not in {r["id"] for r in client.get("/api/traces?model=loaded").json()}
    # and the page's reopen of it is refused with a reason, not a blank
    assert client.get(f"/api/traces/{foreign}").status_code == 409


def test_limit_and_bad_arguments(client):
    client.post("/api/trace", json={"text": TEXT})
    client.post("/api/trace", json={"text": TEXT + " again"})
    assert len(client.get("/api/traces?limit=1").json()) == 1
    assert client.get("/api/traces?limit=0").status_code == 422
    assert client.get("/api/traces?model=nope").status_code == 422
