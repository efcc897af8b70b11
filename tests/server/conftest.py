"""An app with a tiny model per test module (its MODEL, default tiny:llama), a trace of the module's
TEXT through it, and the same text's full forward (every hook kept) to compare against."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import lmpeek
from lmpeek.server.app import create_app


@pytest.fixture(scope="module")
def client(tmp_path_factory, request):
    """The app with the module's MODEL (default tiny:llama), its own trace store."""
    store = tmp_path_factory.mktemp("t")
    source = getattr(request.module, "MODEL", "tiny:llama")
    # TestClient sends Host "testserver"; the app serves only loopback names unless told otherwise
    with TestClient(create_app(source, background=False, store_dir=store, allowed_hosts=["testserver"])) as c:
        yield c


@pytest.fixture(scope="module")
def full(client, request):
    return lmpeek.trace(client.app.state.holder.model, request.module.TEXT, keep=["*"])


@pytest.fixture(scope="module")
def tid(client, request):
    return client.post("/api/trace", json={"text": request.module.TEXT}).json()["id"]
