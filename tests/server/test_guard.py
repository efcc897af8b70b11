"""The server's edge (server.guard): Host names, the token, body limits, CORS, no CDN pages, and how
bad input is answered. Most tests guard a bare FastAPI app; a few check that create_app installs it."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from lmpeek.cli import _edge_settings
from lmpeek.server import guard
from lmpeek.server.app import create_app

JSON = "application/json"


class Echo(BaseModel):
    text: str
    n: int = 0


def guarded(**edge) -> FastAPI:
    app = FastAPI()
    guard.install(app, **edge)

    @app.get("/api/ping")
    def ping() -> dict:
        return {"ok": True}

    @app.post("/api/echo")
    def echo(req: Echo) -> dict:
        return {"chars": len(req.text), "n": req.n}

    return app


# --- Host names (DNS rebinding) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]", "[::1]:8000"]
)
def test_loopback_host_names_are_served(host):
    r = TestClient(guarded()).get("/api/ping", headers={"host": host})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "host",
    ["testserver", "evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
     "localhost.", "[::1].evil", "127.0.0.1:80:80", "", "@localhost", "localhost:port"],
)  # fmt: skip
def test_other_host_names_get_400_with_a_message(host):
    r = TestClient(guarded()).get("/api/ping", headers={"host": host})
    assert r.status_code == 400
    assert "--allow-host" in r.json()["detail"]


def test_allowed_host_names_are_added_to_loopback():
    c = TestClient(guarded(allowed_hosts=["lab.example", "[fd00::1]"]))
    for host in ("lab.example", "LAB.example:9000", "[fd00::1]:8000", "localhost:8000"):
        assert c.get("/api/ping", headers={"host": host}).status_code == 200, host
    assert c.get("/api/ping", headers={"host": "other.example"}).status_code == 400
    any_host = TestClient(guarded(allowed_hosts=["*"]))
    assert any_host.get("/api/ping", headers={"host": "other.example"}).status_code == 200


def test_create_app_serves_only_loopback_by_default(tmp_path):
    app = create_app("tiny:llama", background=False, store_dir=tmp_path)
    assert TestClient(app).get("/api/health").status_code == 400  # Host: testserver
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/health").status_code == 200


# --- token -------------------------------------------------------------------------------------------


def test_a_token_is_required_when_set():
    c = TestClient(guarded(token="s3cret-token", allowed_hosts=["testserver"]))
    r = c.get("/api/ping")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "needs a token" in r.json()["detail"]
    for bad in ({"params": {"token": "wrong"}}, {"headers": {"authorization": "Bearer wrong"}},
                {"params": {"token": "s3cret-tokeN"}}, {"params": {"token": "é\u2028"}},
                {"headers": {"authorization": "Basic s3cret-token"}}):  # fmt: skip
        r = c.get("/api/ping", **bad)
        assert r.status_code == 401, bad
        assert "token" in r.json()["detail"]
    assert c.post("/api/echo", json={"text": "hi"}).status_code == 401
    assert c.get("/api/ping", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    assert c.get("/api/ping", headers={"authorization": "bearer  s3cret-token"}).status_code == 200


def test_the_token_in_the_url_sets_a_strict_http_only_cookie():
    c = TestClient(guarded(token="s3cret-token", allowed_hosts=["testserver"]))
    r = c.get("/api/ping", params={"token": "s3cret-token"})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "s3cret-token" not in cookie  # the cookie holds a digest, not the token
    # the page's own requests carry the cookie and nothing else
    assert c.get("/api/ping").status_code == 200
    assert c.post("/api/echo", json={"text": "hi"}).json() == {"chars": 2, "n": 0}
    # a cookie that is not the server's is refused
    c.cookies.clear()
    c.cookies.set(cookie.split("=", 1)[0], "0" * 64)
    assert c.get("/api/ping").status_code == 401


def test_no_token_no_cookie_when_open():
    r = TestClient(guarded(allowed_hosts=["testserver"])).get("/api/ping", params={"token": "x"})
    assert r.status_code == 200 and "set-cookie" not in r.headers


def test_create_app_with_a_token_guards_every_route(tmp_path):
    app = create_app("tiny:llama", background=False, store_dir=tmp_path, allowed_hosts=["testserver"],
                     token="abc123")  # fmt: skip
    c = TestClient(app)
    for path in ("/api/health", "/openapi.json", "/", "/api/samples"):
        assert c.get(path).status_code == 401, path
    assert c.post("/api/trace", json={"text": "hi"}).status_code == 401
    assert c.get("/", params={"token": "abc123"}).status_code == 200
    assert c.post("/api/trace", json={"text": "hi"}).status_code == 200  # by the cookie


def test_serve_asks_a_token_on_any_non_loopback_bind():
    for host in ("0.0.0.0", "::", "192.168.1.5", "lab.example"):
        edge = _edge_settings(host, None, [], [])
        assert edge["token"] is not None and len(edge["token"]) >= 40, host
    tokens = {_edge_settings("0.0.0.0", None, [], [])["token"] for _ in range(3)}
    assert len(tokens) == 3
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert _edge_settings(host, None, [], [])["token"] is None, host
    assert _edge_settings("127.0.0.1", "mine", [], [])["token"] == "mine"
    assert _edge_settings("0.0.0.0", "mine", [], [])["token"] == "mine"
    # the name it binds to is answered; 0.0.0.0 and :: are not names
    hosts = _edge_settings("192.168.1.5", None, ["a.example"], [])["allowed_hosts"]
    assert hosts == ["a.example", "192.168.1.5"]
    assert _edge_settings("0.0.0.0", None, [], [])["allowed_hosts"] == []


def test_serve_prints_the_url_with_the_token(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    import lmpeek.server.app
    from lmpeek.cli import app as cli

    made, ran = {}, {}
    monkeypatch.setattr(lmpeek.server.app, "create_app", lambda model, **kw: made.update(kw) or "APP")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(kw, app=app))
    monkeypatch.delenv("LMPEEK_TOKEN", raising=False)
    monkeypatch.setattr("lmpeek.cli._check_port", lambda host, port: None)  # 8000 may be in use here
    args = ["serve", "tiny:llama", "--host", "0.0.0.0", "--allow-host", "lab.example",
            "--cors-origin", "http://localhost:5173"]  # fmt: skip
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"http://127.0.0.1:8000/?token={made['token']}" in r.output
    assert made["allowed_hosts"] == ["lab.example"] and made["cors_origins"] == ["http://localhost:5173"]
    assert ran["app"] == "APP" and ran["host"] == "0.0.0.0"
    r = CliRunner().invoke(cli, ["serve", "tiny:llama", "--token", "a b"], catch_exceptions=False)
    assert made["token"] == "a b" and "?token=a%20b" in r.output
    r = CliRunner().invoke(cli, ["serve", "tiny:llama"], catch_exceptions=False)
    assert made["token"] is None and "token" not in r.output and made["allowed_hosts"] == ["127.0.0.1"]


# --- request bodies ----------------------------------------------------------------------------------


def test_a_large_declared_body_gets_413_without_an_echo():
    c = TestClient(guarded(allowed_hosts=["testserver"]))
    body = b'{"text": "' + b"x" * (5 * 2**20) + b'"}'
    r = c.post("/api/echo", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most 4 MiB" in r.json()["detail"]
    assert len(r.content) < 300
    r = c.post("/api/echo", content=body[:1000], headers={"content-length": "999999999999"})
    assert r.status_code == 413
    r = c.post("/api/echo", content=b"{}", headers={"content-length": "two", "content-type": JSON})
    assert r.status_code == 400


def test_a_chunked_body_is_counted():
    c = TestClient(guarded(allowed_hosts=["testserver"], max_body_bytes=10_000))

    def chunks():
        yield b'{"text": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}'

    for content_type in ("application/json", "text/plain"):
        r = c.post("/api/echo", content=chunks(), headers={"content-type": content_type})
        assert r.status_code == 413, content_type
        assert "at most 10000 bytes" in r.json()["detail"]
    ok = c.post("/api/echo", content=iter([b'{"text": "', b"x" * 5000, b'"}']),
                headers={"content-type": "application/json"})  # fmt: skip
    assert ok.json() == {"chars": 5000, "n": 0}


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_reading_stops_at_the_limit(content_type):
    """The guard stops pulling a long chunked body once past the limit (TestClient reads a
    body whole before the app sees it, so this drives the ASGI app directly)."""
    app = guarded(allowed_hosts=["*"], max_body_bytes=64 * 1024)
    pulled, sent = 0, []

    async def receive():  # 40 MB in 4 KiB chunks (ends, so that a broken guard fails instead of hanging)
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 4096, "more_body": pulled < 10_000}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/echo", "raw_path": b"/api/echo", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"localhost"), (b"content-type", content_type.encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert pulled <= 64 * 1024 // 4096 + 1


def test_the_longest_text_fits_the_body_limit(client):
    # 200,001 astral characters as \u escapes: 2.4 MB, refused for its length (422), not its size (413)
    body = json.dumps({"text": "\U0001f600" * 200_001}, ensure_ascii=True)
    assert len(body) > 2_400_000
    r = client.post("/api/trace", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "200000" in r.text


# --- CORS, docs --------------------------------------------------------------------------------------


def _preflight(c, origin="http://evil.example"):
    return c.options("/api/echo", headers={"origin": origin, "access-control-request-method": "POST",
                                           "access-control-request-headers": "content-type"})  # fmt: skip


def test_no_cors_unless_asked(client):
    for c in (client, TestClient(guarded(allowed_hosts=["testserver"]))):
        r = _preflight(c)
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/api/health" if c is client else "/api/ping", headers={"origin": "http://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_for_named_origins_only():
    c = TestClient(guarded(allowed_hosts=["testserver"], token="t0k", cors_origins=["http://localhost:5173"]))
    r = _preflight(c, "http://localhost:5173")  # answered before the token is asked for
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "access-control-allow-credentials" not in r.headers
    assert "access-control-allow-origin" not in _preflight(c).headers
    r = c.get("/api/ping", headers={"origin": "http://localhost:5173", "authorization": "Bearer t0k"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_no_pages_that_load_from_a_cdn(client):
    from lmpeek.server import app

    assert client.get("/docs").status_code in (404, 405)
    assert client.get("/redoc").status_code in (404, 405)
    assert client.get("/docs/oauth2-redirect").status_code in (404, 405)
    assert client.get("/openapi.json").json()["info"]["title"] == "lmpeek"
    assert "/docs" not in app._NOT_BUILT and "/openapi.json" in app._NOT_BUILT
    page = client.get("/")
    assert page.status_code == 200 and "cdn" not in page.text.lower()


# --- how bad input is answered -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ('{"text": "hi", "n": NaN}', "NaN is not a JSON number"),
        ('{"text": "hi", "n": -Infinity}', "-Infinity is not a JSON number"),
        ('{"text": "hi", "n": 1e400}', "too large"),
        ('{"text": "hi", "n": 1' + "0" * 5000 + "}", "5001 digits"),
        ('{"text": "a\\ud800b"}', "lone surrogate"),
        ('{"text": "hi", "\\udfff": 1}', "lone surrogate"),
        ('{"text": ["\\ud83d"]}', "lone surrogate"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_what_json_does_not_allow_gets_422(raw, message):
    r = TestClient(guarded(allowed_hosts=["testserver"])).post(
        "/api/echo", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and message in r.json()["detail"]


def test_json_that_is_fine_passes():
    c = TestClient(guarded(allowed_hosts=["testserver"]))
    # a surrogate pair is one character; 1e300 is a finite number (and no int: 422 from the model)
    r = c.post("/api/echo", content=b'{"text": "\\ud83d\\ude00", "n": 3}', headers={"content-type": JSON})
    assert r.json() == {"chars": 1, "n": 3}
    r = c.post("/api/echo", content=b'{"text": "a", "n": 1e300}', headers={"content-type": JSON})
    assert r.status_code == 422
    r = c.post("/api/echo", content=b'{"text": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["type"] == "json_invalid"
    assert r.json()["detail"].startswith("request body: not valid JSON at character")


def test_validation_errors_never_echo_the_input():
    c = TestClient(guarded(allowed_hosts=["testserver"]))
    big = "y" * 1_000_000
    r = c.post("/api/echo", json={"text": 5, "n": big})  # wrong types: FastAPI would echo `n` whole
    assert r.status_code == 422 and len(r.content) < 2000
    assert all("input" not in e for e in r.json()["errors"])
    assert {tuple(e["loc"]) for e in r.json()["errors"]} == {("body", "text"), ("body", "n")}
    assert r.json()["detail"] == "text: must be text (a JSON string); n: must be a whole number"
    r = c.post("/api/echo", content=("z" * 100_000).encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 422 and len(r.content) < 2000


def test_every_validation_error_is_listed_in_one_message():
    # a form with several bad fields hears about all of them at once, each with its field name
    c = TestClient(guarded(allowed_hosts=["testserver"]))
    r = c.post("/api/echo", json={"n": "x"})
    assert r.status_code == 422
    assert r.json()["detail"] == "text: is required; n: must be a whole number"
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "text"], ["body", "n"]]


@pytest.mark.parametrize(
    "item, said",
    [
        ({"type": "less_than_equal", "loc": ["body", "top_k"], "msg": "x", "ctx": {"le": 100}},
         "top_k: must be ≤ 100"),
        ({"type": "greater_than", "loc": ["query", "p"], "msg": "x", "ctx": {"gt": 0}}, "p: must be > 0"),
        ({"type": "string_too_long", "loc": ["body", "text"], "msg": "x", "ctx": {"max_length": 200000}},
         "text: must be at most 200,000 characters"),
        ({"type": "value_error", "loc": ["body", "text"], "msg": "Value error, must not be empty"},
         "text: must not be empty"),
        ({"type": "less_than_equal", "loc": ["body", "k"], "msg": "Input should be ≤ 5"},
         "k: input should be ≤ 5"),  # no bound in ctx: pydantic's own words
        ({"type": "something_new", "loc": ["body", "a", 0], "msg": "Odd value"}, "a.0: odd value"),
    ],
)  # fmt: skip
def test_each_error_is_said_with_its_field(item, said):
    assert guard.describe_errors([item]) == said


def test_the_same_problem_is_said_once():
    item = {"type": "missing", "loc": ["body", "text"], "msg": "Field required"}
    assert guard.describe_errors([item, dict(item)]) == "text: is required"
