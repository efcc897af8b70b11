"""One stored trace, shown three ways, shows the same: the web app (HTTP to the server), the notebook
widget (`lmpeek.show`: the bundle's anywidget entry, its requests answered by the kernel side's Widget
over the Session) and the HTML export (the recorded responses, opened from disk with the network
blocked). For several tokens the prediction panel, the logit lens and every token's colour are read
off each page and compared with each other, the prediction rows with the Trace itself, and the loss
and top-5 with what the CLI prints (`lmpeek trace --json`, its own process).

The widget runs here without JupyterLab (tests/e2e/test_notebook.py covers that): a stand-in for
anywidget's model passes the page's messages to `lmpeek.views.widget.Widget._on_msg` on an asyncio
loop, as the kernel's comm would, and hands the Widget's answers back to the page."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import queue
import subprocess
import sys
import threading
import warnings

import pytest

import lmpeek
from lmpeek.session import Session
from lmpeek.store.traces import TraceStore
from lmpeek.views.bundle import bundle_js
from lmpeek.views.export import export_html
from lmpeek.views.widget import show
from tests.e2e.conftest import ARTIFACTS, _serve

TEXT = "The capital of France is Paris, and the capital of Italy is Rome."
TOKENS = (1, 4, 9)  # the tokens clicked on each page

# the page's side of the stand-in: anywidget's model API over two functions exposed by the test
HARNESS = """async ({code, traits}) => {
  const mod = await import(URL.createObjectURL(new Blob([code], {type: "text/javascript"})));
  const listeners = new Set();
  const b64 = (v) => {
    const u = v instanceof Uint8Array ? v : new Uint8Array(v.buffer ?? v, v.byteOffset ?? 0, v.byteLength);
    let s = ""; for (const x of u) s += String.fromCharCode(x); return btoa(s);
  };
  const model = {
    get: (k) => traits[k],
    on: (ev, fn) => { if (ev === "msg:custom") listeners.add(fn); },
    off: (ev, fn) => listeners.delete(fn),
    send: (content, _cb, buffers) => window.kernelSend(JSON.stringify(content), (buffers || []).map(b64)),
  };
  const poll = async () => {
    for (const [content, bufs] of await window.kernelPoll()) {
      const views = bufs.map((s) => new DataView(Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer));
      for (const fn of [...listeners]) fn(content, views);
    }
    setTimeout(poll, 10);
  };
  poll();
  mod.default.render({model, el: document.getElementById("root")});
}"""


class Kernel:
    """The kernel's half of the stand-in: an asyncio loop in a thread runs the Widget's handlers."""

    def __init__(self, widget):
        self.widget = widget
        self.outbox: queue.Queue = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        widget.send = self._send  # type: ignore[method-assign]

    def _send(self, content, buffers=None):
        self.outbox.put((content, [base64.b64encode(bytes(b)).decode() for b in buffers or []]))

    def receive(self, content: str, buffers: list[str]) -> None:
        bufs = [base64.b64decode(b) for b in buffers]
        self.loop.call_soon_threadsafe(self.widget._on_msg, self.widget, json.loads(content), bufs)

    def poll(self) -> list:
        out = []
        while True:
            try:
                out.append(self.outbox.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextlib.contextmanager
def widget_page(browser, folder, widget, name: str = "widget"):
    """A Chromium page showing `widget` as JupyterLab would (the bundle's anywidget entry over HARNESS),
    its messages answered by the kernel's half (Kernel); yields the page. Errors the page raised fail
    the test after the block."""
    kernel = Kernel(widget)
    context, page, errors, _ = _new_page(browser, name)
    try:
        page.expose_function("kernelSend", kernel.receive)
        page.expose_function("kernelPoll", kernel.poll)
        host = folder / "widget.html"
        host.write_text("<!doctype html><meta charset=utf-8><body><div id=root></div></body>")
        page.goto(host.as_uri())
        traits = {k: getattr(widget, k) for k in ("view", "trace_id", "live", "prompt", "height")}
        page.evaluate(HARNESS, {"code": bundle_js(), "traits": traits})
        yield page
    finally:
        context.close()
        kernel.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One trace stored where the server will look, and the Session that stored it."""
    folder = tmp_path_factory.mktemp("three-ways")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = Session(lmpeek.load("tiny:llama"), store=TraceStore(folder / "store"))
    trace_id = session.trace(TEXT).id
    return folder, session, trace_id


def _displayed(root, trace_ids) -> dict:
    """What a page shows of the trace: every token's text and colour, and for each clicked token the
    prediction panel's text and rows and the logit lens rows."""
    n_tokens = len(trace_ids)
    tokens = root.get_by_test_id("explore-tokens").get_by_test_id("token")
    tokens.nth(n_tokens - 1).wait_for(timeout=60_000)
    assert tokens.count() == n_tokens
    shown: dict = {"tokens": tokens.all_inner_texts()}
    panel = root.get_by_test_id("panel-predictions")
    for t in TOKENS:
        tokens.nth(t).click()
        panel.get_by_text(f"#{t} · id {trace_ids[t]}").wait_for()
        rows = panel.get_by_test_id("pred-row")
        rows.first.wait_for()
        section = root.locator(f'[data-testid=panel-logit-lens][data-loading=false]:has-text("#{t} · from")')
        section.get_by_test_id("lens-row").first.wait_for()
        lens = section.get_by_test_id("lens-row")
        shown[t] = {
            "panel": panel.inner_text(),
            "rows": [(r.get_attribute("data-token"), r.get_attribute("data-prob")) for r in rows.all()],
            "lens": lens.all_inner_texts(),
            "loss": panel.get_by_test_id("explore-loss").get_attribute("data-value"),
        }
    # the colours come with the metric's answer: read them once every token but the first is coloured
    colours = "els => els.map(e => getComputedStyle(e).backgroundColor)"
    root.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid=explore-tokens] [data-testid=token]')].slice(1)
                  .every(e => getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)')"""
    )
    shown["colours"] = tokens.evaluate_all(colours)
    return shown


def _new_page(browser, name: str, block_network: bool = False):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{name}: {e}"))
    if block_network:

        def refuse(route):
            requests.append(route.request.url)
            route.abort()

        context.route("http*://**/*", refuse)
    return context, page, errors, requests


def test_app_widget_and_export_show_the_same_numbers(browser, stored):
    folder, session, trace_id = stored
    trace = session.get(trace_id)
    ids = [int(i) for i in trace.token_ids]
    ARTIFACTS.mkdir(exist_ok=True)
    seen: dict[str, dict] = {}
    errors: list[str] = []

    # 1. the web app, opening the stored trace from its URL
    server, thread, url = _serve("tiny:llama", folder / "store")
    context, page, errs, _ = _new_page(browser, "app")
    try:
        page.goto(f"{url}/#view=explore&traces={trace_id}")
        seen["app"] = _displayed(page, ids)
        page.screenshot(path=str(ARTIFACTS / "three-ways-app.png"))
    finally:
        context.close()
        server.should_exit = True
        thread.join(10)
    errors += errs

    # 2. lmpeek.show(trace id, model=session): the widget asking the kernel's Session
    widget = show(trace_id, model=session)
    with widget_page(browser, folder, widget) as page:
        seen["widget"] = _displayed(page, ids)
        page.screenshot(path=str(ARTIFACTS / "three-ways-widget.png"))

    # 3. the export, from disk, with every network request refused and counted
    path = folder / "report.html"
    path.write_text(export_html(session, trace_id, include="lens"), encoding="utf-8")
    context, page, errs, requests = _new_page(browser, "export", block_network=True)
    try:
        page.goto(path.as_uri())
        seen["export"] = _displayed(page, ids)
        page.screenshot(path=str(ARTIFACTS / "three-ways-export.png"), full_page=True)
    finally:
        context.close()
    errors += errs
    assert requests == []

    assert not errors, errors
    app = seen["app"]
    assert app["tokens"] and len(set(app["colours"])) > 3  # coloured, not blank
    for name in ("widget", "export"):
        for key in ("tokens", "colours", *TOKENS):
            assert seen[name][key] == app[key], f"{name} differs from the app in {key}"
    # and the rows are the Trace's own prediction (made at the previous position): its top 5, then the
    # token itself when it is not among them
    for t in TOKENS:
        rows = [(tok, float(p)) for tok, p in app[t]["rows"]]
        want = list(zip(trace.topk_tokens[t - 1][:5], map(float, trace.topk_probs[t - 1][:5]), strict=True))
        if int(trace.token_ids[t]) not in [int(i) for i in trace.topk_ids[t - 1][:5]]:
            want.append((trace.tokens[t], float(trace.true_prob[t - 1])))
        assert [tok for tok, _ in rows] == [tok for tok, _ in want]
        assert [p for _, p in rows] == pytest.approx([p for _, p in want], abs=1e-6)

    # 4. the CLI (`lmpeek trace TEXT --json`, its own process and model load) gives the same numbers
    cmd = [sys.executable, "-m", "lmpeek.cli", "trace", TEXT, "-m", "tiny:llama", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cli = json.loads(done.stdout)
    assert cli["tokens"] == list(trace.tokens)
    for t in TOKENS:
        assert cli["loss"][t - 1] == pytest.approx(float(app[t]["loss"]), rel=1e-5)
        shown = [(tok, float(p)) for tok, p in app[t]["rows"][:5]]
        assert cli["topk_tokens"][t - 1][:5] == [tok for tok, _ in shown]
        assert cli["topk_probs"][t - 1][:5] == pytest.approx([p for _, p in shown], abs=1e-6)
