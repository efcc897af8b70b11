"""GET /api/traces/{id}/export: the Export button's file, the same as `lmpeek export` records."""

from __future__ import annotations

from lmpeek import schema
from tests.views.test_export import block, body, unpack


def test_export_route_gives_the_file(client):
    trace = client.post("/api/trace", json={"text": "The capital of France is Paris."}).json()
    r = client.get(f"/api/traces/{trace['id']}/export", params={"include": "attention=1:0"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f'filename="lmpeek-{trace["id"]}.html"' in r.headers["content-disposition"]
    header, data = unpack(block(r.text))
    assert list(header["attention"]) == ["1,0"]
    envelope = schema.decode(body(header, data, f"GET /api/traces/{trace['id']}"))
    assert envelope.header["tokens"] == trace["tokens"]


def test_export_route_refuses_bad_input(client):
    trace = client.post("/api/trace", json={"text": "Hello there"}).json()
    bad = client.get(f"/api/traces/{trace['id']}/export", params={"include": "heads"})
    assert bad.status_code == 422 and "include" in bad.json()["detail"]
    out = client.get(f"/api/traces/{trace['id']}/export", params={"include": "attention=9:0"})
    assert out.status_code == 422 and "layer must be <" in out.json()["detail"]
    assert client.get("/api/traces/0123456789abcdef/export").status_code == 404


def test_export_route_takes_the_attention_overview(client):
    trace = client.post("/api/trace", json={"text": "The capital of France is Paris."}).json()
    url = f"/api/traces/{trace['id']}/export"
    r = client.get(url, params={"include": "attention=1:0,grid,qk=1:0:3"})
    assert r.status_code == 200
    header, _ = unpack(block(r.text))
    keys = list(header["responses"])
    assert any("/attention_grid" in k for k in keys)
    assert sum("/qk?" in k and "query=3" in k for k in keys) == 4  # keys 0..3
    out = client.get(url, params={"include": "qk=1:0:999"})
    assert out.status_code == 400 and "the text has" in out.json()["detail"]
