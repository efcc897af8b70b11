"""Two servers on one trace store: a trace is served only by a server running the model that made it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lmpeek.errors import StoreFull
from lmpeek.server.app import create_app

# a value for every required query parameter of the routes that read a stored trace
_VALUES = {"layer": 0, "head": 0, "token": 0, "index": 0, "hook": "blocks.0.hook_resid_post", "k": 3,
           "name": "loss", "query": 1, "key": 0}  # fmt: skip


def _client(source: str, store_dir, **kw) -> TestClient:
    return TestClient(
        create_app(source, background=False, store_dir=store_dir, allowed_hosts=["testserver"], **kw)
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("shared-store")
    with _client("tiny:llama", store_dir) as llama, _client("tiny:gpt2", store_dir) as gpt2:
        yield llama, gpt2


@pytest.fixture(scope="module")
def llama_trace(shared):
    llama, _ = shared
    r = llama.post("/api/trace", json={"text": "The capital of France is Paris."})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _trace_routes(client) -> list[tuple[str, dict]]:
    """Every GET route that reads a stored trace, with its required query parameters filled in."""
    out = []
    for path, ops in client.get("/openapi.json").json()["paths"].items():
        op = ops.get("get")
        if op is None:
            continue
        params = op.get("parameters", [])
        takes_trace = "{trace_id}" in path or any(
            p["name"] in ("a", "b") for p in params if p["in"] == "query"
        )
        if takes_trace:
            query = {
                p["name"]: _VALUES.get(p["name"]) for p in params if p["in"] == "query" and p["required"]
            }
            out.append((path, query))
    return out


def test_every_route_refuses_a_trace_of_another_model(shared, llama_trace):
    llama, gpt2 = shared
    routes = _trace_routes(gpt2)
    assert len(routes) >= 10  # summaries, attention, vector, the analysis routes, compare
    for path, query in routes:
        url = path.replace("{trace_id}", llama_trace)
        if {"a", "b"} <= set(query):
            query |= {"a": llama_trace, "b": llama_trace}
        r = gpt2.get(url, params=query)
        assert r.status_code == 409, (path, r.status_code, r.text)
        detail = r.json()["detail"]
        assert "made by tiny:llama" in detail and "runs tiny:gpt2" in detail, detail
    # the model that made it still reads it, through the same routes
    r = llama.get(f"/api/traces/{llama_trace}/attention", params={"layer": 0, "head": 0})
    assert r.status_code == 200, r.text
    assert llama.get(f"/api/traces/{llama_trace}").status_code == 200


def test_unknown_ids_are_still_404(shared):
    _, gpt2 = shared
    r = gpt2.get("/api/traces/0123456789abcdef")
    assert r.status_code == 404 and "--store-budget" in r.json()["detail"]


def test_a_full_store_answers_507_and_says_what_to_do(tmp_path):
    with _client("tiny:llama", tmp_path, store_budget="1K") as client:
        assert client.app.state.traces.max_disk_bytes == 1024
        r = client.post("/api/trace", json={"text": "Hello"})
        assert r.status_code == 507, r.text
        assert "--store-budget" in r.json()["detail"]
    assert StoreFull.status_code == 507
    assert {p.name for p in tmp_path.iterdir()} <= {"catalogue.sqlite", ".lock"}
