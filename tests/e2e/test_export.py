"""The HTML export opened from disk in Chromium with every network request blocked and counted: it
makes none, and shows the tokens, the predictions and an embedded attention head as the Trace and the
Session have them; a head that was not embedded says so."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.session import Session
from lmpeek.views.export import export_html
from tests.e2e.conftest import ARTIFACTS, offline_context, offline_page

TEXT = "The capital of France is Paris. Über 😀 and then some more words to look at."
LAYER, HEAD = 1, 2


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    with Session(model) as s:
        stored = s.trace(TEXT)
        pattern = s.attention(stored.id, LAYER, HEAD).astype(np.float32)
        path = tmp_path_factory.mktemp("export") / "report.html"
        path.write_text(export_html(s, stored.id, f"attention={LAYER}:{HEAD}"), encoding="utf-8")
    return path, stored.trace, pattern


def _values(page) -> list[float | None]:
    cells = page.get_by_test_id("explore-tokens").get_by_test_id("token")
    out = []
    for v in cells.evaluate_all("els => els.map(e => e.getAttribute('data-value'))"):
        out.append(None if v in (None, "") else float(v))
    return out


def test_export_opens_offline_and_shows_the_traces_numbers(browser, exported):
    path, trace, pattern = exported
    with offline_page(browser, path, viewport={"width": 1366, "height": 900}) as page:
        tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
        tokens.nth(len(trace) - 1).wait_for()
        assert tokens.count() == len(trace)
        assert page.get_by_test_id("tab-generate").count() == 0  # nothing to run in a file
        assert page.get_by_test_id("explore-readonly").is_visible()

        # the prediction that produced token t, as the Trace has it (made at t - 1)
        t = 4
        tokens.nth(t).click()
        panel = page.get_by_test_id("panel-predictions")
        rows = panel.get_by_test_id("pred-row")
        rows.first.wait_for()
        got = [(r.get_attribute("data-token"), float(r.get_attribute("data-prob"))) for r in rows.all()[:5]]
        assert [a for a, _ in got] == list(trace.topk_tokens[t - 1][:5])
        assert [b for _, b in got] == pytest.approx([float(p) for p in trace.topk_probs[t - 1][:5]], abs=1e-6)
        # the loss colours: -log p(token t) from position t - 1
        assert _values(page)[t] == pytest.approx(-math.log(float(trace.true_prob[t - 1])), rel=1e-4)

        # the embedded head: attention from the selected token equals the Session's pattern row
        page.get_by_test_id("metric-select").select_option("attn-from")
        for box, value in (("layer-input", LAYER), ("head-input", HEAD)):
            page.get_by_test_id(box).fill(str(value))
            page.get_by_test_id(box).press("Enter")
        page.wait_for_function(
            "t => { const v = [...document.querySelectorAll("
            "'[data-testid=explore-tokens] [data-testid=token]')].map(e => e.getAttribute('data-value'));"
            " return v[0] !== '' && v[0] !== null && v[t + 1] === ''; }",
            arg=t,
        )
        shown = _values(page)
        np.testing.assert_allclose([shown[k] for k in range(t + 1)], pattern[t, : t + 1], atol=1e-6)
        assert all(v is None for v in shown[t + 1 :])  # keys after the query: not attended
        page.screenshot(path=str(ARTIFACTS / "export-attention.png"))

        # a head that was not embedded: the page says what to include, and keeps working
        page.get_by_test_id("head-input").fill("0")
        page.get_by_test_id("head-input").press("Enter")
        err = page.get_by_test_id("metric-error")
        err.wait_for()
        assert "not in this export" in err.inner_text() and "--include" in err.inner_text()
        tokens.nth(2).click()
        rows.first.wait_for()
        assert rows.first.get_attribute("data-token") == trace.topk_tokens[1][0]


def test_export_button_downloads_the_active_trace(browser, page, tmp_path):
    from tests.e2e.conftest import run_explore

    data = run_explore(page, "Exported from the app, with its attention head.")
    with page.expect_download() as info:
        page.get_by_test_id("export-button").click()
    path = tmp_path / "from-app.html"
    info.value.save_as(path)
    context, blocked = offline_context(browser)
    try:
        offline = context.new_page()
        offline.goto(path.as_uri())
        tokens = offline.get_by_test_id("explore-tokens").get_by_test_id("token")
        tokens.nth(len(data["tokens"]) - 1).wait_for()
        assert tokens.count() == len(data["tokens"])
        # the button's file also holds the Attention tab: every layer x head and the q·k terms of the
        # selected token (token 0 of head 0:0 here: the page's starting selection)
        offline.get_by_test_id("tab-attention").click()
        grid = offline.get_by_test_id("attention-grid")
        grid.wait_for()
        n = int(grid.get_attribute("data-layers")) * int(grid.get_attribute("data-heads"))
        assert offline.get_by_test_id("attention-thumb").count() == n
        offline.get_by_test_id("qk-part").first.wait_for()
    finally:
        context.close()
    assert not blocked
