"""A real lmpeek server on a free port (tiny model) and Debian's Chromium driven by Playwright.

`make test` builds the front end and installs Chromium first; run alone, these tests fail with a
message saying so rather than skipping.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import socket
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(source: str, store_dir):
    from lmpeek.server.app import _static_dir, create_app

    if _static_dir() is None:
        pytest.fail(
            "the front end is not built: run `make test` (or `cd web && npm install && npm run build`)"
        )
    return serve_app(create_app(source, store_dir=store_dir))


def serve_app(app):
    """Run `app` with uvicorn on a free port in a daemon thread; (server, thread, url) once started."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    """The app with a tiny random model."""
    server, thread, url = _serve("tiny:llama", tmp_path_factory.mktemp("traces"))
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
def default_server_url(tmp_path_factory):
    """The app with the real default model (slow tests only)."""
    server, thread, url = _serve("default", tmp_path_factory.mktemp("traces-default"))
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not pathlib.Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make test` installs it (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def _page(browser, url, **context_options):
    """A page on `url` once its model is ready; `context_options` go to browser.new_context (e.g.
    permissions); JavaScript errors on the page fail the test at teardown."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 900}, **context_options)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.get_by_test_id("model-status").filter(has_text="ready").wait_for(timeout=60_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def offline_context(browser, **context_options):
    """A browser context for a file opened from disk: every request that is not file: is aborted, and
    it and any other network request (http, https, ws, wss) is recorded in the returned list, which
    an offline page must leave empty. (context, asked)."""
    context = browser.new_context(**context_options)
    asked: list[str] = []

    def block(route):
        asked.append(route.request.url)
        route.abort()

    context.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else block(r))
    network = ("http", "https", "ws", "wss")
    context.on("request", lambda r: asked.append(r.url) if r.url.split(":", 1)[0] in network else None)
    return context, asked


@contextlib.contextmanager
def offline_page(browser, path: pathlib.Path, **context_options):
    """The file at `path` opened in an offline_context; on leaving, it must have asked for nothing on the
    network and had no JavaScript errors."""
    ARTIFACTS.mkdir(exist_ok=True)
    context, asked = offline_context(browser, **context_options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        yield page
    finally:
        context.close()
    assert not asked, f"the export made network requests: {asked}"
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser, server_url):
    yield from _page(browser, server_url)


@pytest.fixture
def default_page(browser, default_server_url):
    yield from _page(browser, default_server_url)


def parse_sse(body: str) -> list[tuple[str, dict]]:
    """(event, data) of each frame of a server-sent-events body."""
    out = []
    for frame in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def trace_json(response) -> dict:
    """What a trace response carried, as the JSON summary: the page asks for the binary envelope
    (application/vnd.lmpeek.trace), read here with lmpeek's own reader."""
    if not response.headers.get("content-type", "").startswith("application/vnd.lmpeek.trace"):
        return response.json()
    from lmpeek import schema
    from lmpeek.capture.trace import Trace

    body = response.body()
    return {"id": schema.decode(body).header["id"], **Trace.from_bytes(body).summary()}


def run_explore(page, text: str) -> dict:
    """Run `text` in the Explore view; returns the trace the page got, once all its tokens are shown."""
    page.get_by_test_id("tab-explore").click()
    page.get_by_test_id("explore-text").fill(text)
    with page.expect_response("**/api/trace") as info:
        page.get_by_test_id("explore-run").click()
    data = trace_json(info.value)
    tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
    tokens.nth(len(data["tokens"]) - 1).wait_for()
    return data


def fill_generate(page, prompt: str, max_new_tokens: int, temperature: float, **more) -> None:
    """Open the Generate view and fill its form; `more`: top_p, top_k, seed ("" = random)."""
    page.get_by_test_id("tab-generate").click()
    fields = {"prompt": prompt, "max-new-tokens": max_new_tokens, "temperature": temperature}
    fields.update({k.replace("_", "-"): v for k, v in more.items()})
    for name, value in fields.items():
        page.get_by_test_id(f"gen-{name}").fill(str(value))


def run_generate(page) -> list[tuple[str, dict]]:
    """Press Generate (the form filled) and wait until every generated token is shown; returns the
    stream's (event, data) frames."""
    with page.expect_response("**/api/generate") as info:
        page.get_by_test_id("gen-submit").click()
    events = parse_sse(info.value.text())
    n = sum(e == "token" for e, _ in events)
    page.get_by_test_id("gen-tokens").get_by_test_id("gen-token").nth(n - 1).wait_for()
    page.get_by_test_id("gen-submit").filter(has_text="Generate").wait_for()
    return events
