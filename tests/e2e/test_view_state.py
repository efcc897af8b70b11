"""What survives a reload and what the page says while it waits: the view state in the URL (tabs,
selection, controls) restored on reload; the stored-trace list reopening a trace; a link to a trace that
is gone explained; the header showing a busy model (and a full queue's 503) while a job holds the worker;
panels saying "loading" rather than showing the previous token's rows; the histogram marking a chosen
dimension that lies off its scale. Waits are on conditions, never on time."""

from __future__ import annotations

import re
import threading

import pytest

from .conftest import ARTIFACTS, _page, _serve, run_explore

TEXT_A = "The capital of France is Paris. The capital of Italy is Rome."
TEXT_B = "Numbers: 1234567, 0.000123 and -98765.4321, then more words to read."
HIST_HOOK = "blocks.0.hook_resid_post"  # what the histogram shows by default (layer 0, the residual stream)


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of this module's own (tiny model), whose worker the tests may hold up."""
    server, thread, url = _serve("tiny:llama", tmp_path_factory.mktemp("traces-viewstate"))
    yield server.config.app, url
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def own_page(browser, own_server):
    yield from _page(browser, own_server[1])


class HeldWorker:
    """Holds the model's worker thread with a job that waits for release(): every model request queues
    behind it (and, with limit=1, is refused with 503) until then."""

    def __init__(self, app, limit: int | None = None):
        self.worker = app.state.holder.worker
        self.limit = limit
        self.gate = threading.Event()

    def __enter__(self):
        self.saved = self.worker.max_pending
        self.worker.submit(lambda: self.gate.wait(120), "test-hold")
        if self.limit is not None:
            self.worker.max_pending = self.limit
        return self

    def release(self):
        self.worker.max_pending = self.saved
        self.gate.set()

    def __exit__(self, *exc):
        self.release()


def _token(page, i, pane="explore-tokens"):
    return page.get_by_test_id(pane).get_by_test_id("token").nth(i)


def _selected_index(page) -> int:
    sel = page.get_by_test_id("explore-tokens").locator(".tok.selected")
    sel.wait_for()
    return int(sel.get_attribute("data-index"))


def test_reload_restores_tabs_selection_and_controls(page, server_url):
    a = run_explore(page, TEXT_A)
    page.get_by_test_id("explore-text").fill(TEXT_B)
    with page.expect_response("**/api/trace"):
        page.get_by_test_id("explore-run-new").click()
    _token(page, 5).wait_for()
    page.get_by_test_id("sample-tab").nth(1).get_by_role("button").first.wait_for()
    _token(page, 4).click()
    page.get_by_test_id("metric-select").select_option("act-value")
    page.get_by_test_id("component-select").select_option("blocks.{l}.hook_mlp_out")
    page.get_by_test_id("layer-input").fill("1")
    page.get_by_test_id("dim-input").fill("7")
    page.wait_for_function("() => /dim=7/.test(location.hash) && /layer=1/.test(location.hash)")
    assert a["id"] in page.url

    page.reload()
    page.get_by_test_id("model-status").filter(has_text="ready").wait_for(timeout=60_000)
    tabs = page.get_by_test_id("sample-tab")
    tabs.nth(1).wait_for()
    assert tabs.count() == 2
    assert "active" in (tabs.nth(1).get_attribute("class") or "")  # the tab that was active
    _token(page, 5).wait_for()
    assert _selected_index(page) == 4
    assert page.get_by_test_id("metric-select").input_value() == "act-value"
    assert page.get_by_test_id("component-select").input_value() == "blocks.{l}.hook_mlp_out"
    assert page.get_by_test_id("layer-input").input_value() == "1"
    assert page.get_by_test_id("dim-input").input_value() == "7"
    assert page.get_by_test_id("explore-text").input_value() == TEXT_B
    # the first tab is the first text, reopened from the store
    tabs.nth(0).get_by_role("button").first.click()
    assert page.get_by_test_id("explore-text").input_value() == TEXT_A
    page.screenshot(path=str(ARTIFACTS / "viewstate-restored.png"))


def test_stored_trace_list_reopens_a_trace(page, server_url):
    data = run_explore(page, TEXT_B)
    page.get_by_test_id("tab-generate").click()
    page.get_by_test_id("stored-traces-button").click()
    row = page.get_by_test_id("stored-traces").locator(f"[data-id='{data['id']}']")
    row.wait_for()
    assert TEXT_B[:40] in row.inner_text()
    assert f"{len(data['tokens'])} tok" in row.inner_text()
    page.screenshot(path=str(ARTIFACTS / "stored-traces.png"))
    n_tabs = page.get_by_test_id("sample-tab").count()
    row.click()
    page.get_by_test_id("sample-tab").nth(n_tabs).wait_for()  # opened in a new tab, in Explore
    assert "active" in (page.get_by_test_id("tab-explore").get_attribute("class") or "")
    _token(page, len(data["tokens"]) - 1).wait_for()
    assert page.get_by_test_id("explore-text").input_value() == TEXT_B


def test_a_link_to_a_trace_that_is_gone_says_so(browser, server_url):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    try:
        pg.goto(f"{server_url}/#view=explore&traces=0123456789abcdef&token=3")
        err = pg.get_by_test_id("explore-error")
        err.wait_for(timeout=60_000)
        text = err.inner_text()
        assert "0123456789abcdef" in text and "no longer stored" in text
        assert "active" in (pg.get_by_test_id("tab-explore").get_attribute("class") or "")
        assert pg.get_by_test_id("explore-run").is_visible()  # the page works: one can run a text
    finally:
        context.close()


def test_header_shows_a_busy_model_and_a_full_queue(own_page, own_server):
    page, app = own_page, own_server[0]
    status = page.get_by_test_id("model-status")
    page.get_by_test_id("tab-explore").click()
    page.get_by_test_id("explore-text").fill(TEXT_A)
    with HeldWorker(app) as held:
        page.get_by_test_id("explore-run").click()  # queues behind the held job
        status.filter(has_text=re.compile(r"busy: 1 running, 1 waiting")).wait_for()
        assert status.get_attribute("data-kind") == "busy"
        page.screenshot(path=str(ARTIFACTS / "header-busy.png"))
        held.release()
        status.filter(has_text=re.compile(r"^\s*ready\s*$")).wait_for()
    _token(page, 3).wait_for()

    with HeldWorker(app, limit=1):
        page.get_by_test_id("explore-run").click()  # refused at once: 503, Retry-After
        status.filter(has_text=re.compile(r"model busy, retry in \d+ s")).wait_for()
        page.screenshot(path=str(ARTIFACTS / "header-retry.png"))
    status.filter(has_text=re.compile(r"^\s*ready\s*$")).wait_for()


# the side panels' requests (histogram, its vector, top neurons, logit lens)
PANEL_REQUESTS = re.compile(r"/api/traces/[0-9a-f]+/(histogram|vector|neurons|logit_lens)\?")


def test_panels_show_loading_not_the_previous_tokens_rows(page, server_url):
    """While token 6's answers are held back (at the network, so no cache can answer early), the panels
    say "loading #6" instead of showing token 2's rows as token 6's; token 6's late answers, once the
    selection has moved on to token 8, never replace token 8's."""
    data = run_explore(page, TEXT_A)
    _token(page, 2).click()
    neurons = page.get_by_test_id("panel-neurons")
    hist = page.get_by_test_id("panel-histogram")
    lens = page.get_by_test_id("panel-logit-lens")
    neurons.get_by_test_id("neuron-row").first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('[data-loading=\"true\"]').length === 0")

    held = []

    def hold(route):
        held.append(route)

    page.route(PANEL_REQUESTS, hold)
    _token(page, 6).click()
    for panel in (neurons, hist, lens):
        panel.and_(page.locator("[data-loading='true']")).wait_for()
        assert "#6" in panel.get_by_test_id("panel-loading").inner_text()
    page.screenshot(path=str(ARTIFACTS / "panels-loading.png"))

    # move on to token 8 (answered at once), then let token 6's held requests go
    page.unroute(PANEL_REQUESTS)
    _token(page, 8).click()
    for panel in (neurons, hist, lens):
        panel.and_(page.locator("[data-loading='false']")).wait_for()
    for route in held:
        try:
            route.continue_()
        except Exception:  # the page already gave up on it (aborted): exactly what should happen
            pass
    page.wait_for_load_state("networkidle")
    want = page.request.get(
        f"{server_url}/api/traces/{data['id']}/neurons", params={"layer": 0, "token": 8, "k": 10}
    ).json()
    rows = neurons.get_by_test_id("neuron-row")
    assert [int(rows.nth(i).get_attribute("data-index")) for i in range(rows.count())] == want["indices"]
    assert "#8" in hist.inner_text() and "#8" in neurons.inner_text()
    assert neurons.get_attribute("data-loading") == "false"


def _off_range_outlier(page, url, trace_id, n_tokens):
    """A (token, dim, value, lo, hi) whose value lies outside the histogram's range, from the API."""
    for t in range(n_tokens):
        r = page.request.get(
            f"{url}/api/traces/{trace_id}/histogram", params={"hook": HIST_HOOK, "token": t, "bins": 64}
        )
        assert r.ok, r.text()
        h = r.json()
        lo, hi = h["edges"][0], h["edges"][-1]
        for d, v in zip(h["outliers"]["dims"], h["outliers"]["values"], strict=True):
            if v is not None and (v < lo or v > hi):
                return t, d, v, lo, hi
    pytest.fail("no token of the text has an outlier outside the histogram's range")


def test_histogram_marks_an_off_scale_dimension_at_the_edge(page, server_url):
    data = run_explore(page, TEXT_B)
    t, d, v, lo, hi = _off_range_outlier(page, server_url, data["id"], len(data["tokens"]))
    _token(page, t).click()
    hist = page.get_by_test_id("panel-histogram")
    hist.locator(f"[data-testid=outlier-dim][data-dim='{d}']").click()
    marker = hist.get_by_test_id("hist-dim-marker")
    marker.wait_for()
    side = "high" if v > hi else "low"
    assert marker.get_attribute("data-side") == side
    label = hist.get_by_test_id("hist-dim-offscale")
    assert label.is_visible()
    text = label.text_content()
    assert ("▶" if side == "high" else "◀") in text and "off scale" in text and f"dim {d}" in text
    shown = float(re.search(r"[◀▶] (-?[\d,]+(?:\.\d+)?)", text).group(1).replace(",", ""))
    assert shown == pytest.approx(v, rel=1e-3, abs=0.6)  # rounded to whole numbers past 1,000
    # the marker and its label lie inside the chart, at the edge the value is past
    chart = hist.get_by_test_id("hist-chart").bounding_box()
    for box in (label.bounding_box(), marker.bounding_box()):
        assert chart["x"] - 0.5 <= box["x"] and box["x"] + box["width"] <= chart["x"] + chart["width"] + 0.5
    edge = marker.locator("line").bounding_box()  # the dashed line at the edge
    assert (edge["x"] > chart["x"] + chart["width"] * 0.9) == (side == "high")
    assert (edge["x"] < chart["x"] + chart["width"] * 0.2) == (side == "low")
    hist.screenshot(path=str(ARTIFACTS / "histogram-off-scale.png"))

    # a dimension inside the range is a plain line, no off-scale label
    r = page.request.get(
        f"{server_url}/api/traces/{data['id']}/vector", params={"hook": HIST_HOOK, "token": t}
    )
    values = r.json()["data"]
    inside = next(i for i, x in enumerate(values) if lo < x < hi)
    page.get_by_test_id("metric-select").select_option("act-value")
    page.get_by_test_id("dim-input").fill(str(inside))
    hist.locator("[data-testid=hist-dim-marker][data-side=in]").wait_for(state="attached")
    assert float(marker.get_attribute("data-value")) == pytest.approx(values[inside], rel=1e-4)
    assert hist.get_by_test_id("hist-dim-line").count() == 1
    assert hist.get_by_test_id("hist-dim-offscale").count() == 0


def test_a_link_pasted_into_an_open_page_opens_its_trace(page, server_url):
    data = run_explore(page, TEXT_A)
    n_tabs = page.get_by_test_id("sample-tab").count()
    page.get_by_test_id("tab-generate").click()
    # only the hash changes (as when a link is pasted into the address bar of an open page): no reload
    page.evaluate("id => { location.hash = `view=explore&traces=${id}&token=3`; }", data["id"])
    page.get_by_test_id("sample-tab").nth(n_tabs).wait_for()
    assert "active" in (page.get_by_test_id("sample-tab").nth(n_tabs).get_attribute("class") or "")
    assert "active" in (page.get_by_test_id("tab-explore").get_attribute("class") or "")
    assert _selected_index(page) == 3
