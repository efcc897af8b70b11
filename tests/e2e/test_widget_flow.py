"""Information flow in a notebook: `lmpeek.show(text, model=…, view="attention")`'s Attention tab draws
the flow graph that `Session.flow` computes (the bundle's anywidget entry in Chromium, its requests
answered by the kernel side's Widget over the Session: the stand-in of tests/e2e/test_three_ways.py)."""

from __future__ import annotations

import warnings

import lmpeek
from lmpeek.session import Session
from lmpeek.views.widget import show
from tests.e2e.test_flow_view import check_drawn
from tests.e2e.test_three_ways import widget_page

TEXT = "The capital of France is Paris. The capital of Germany is Berlin"


def test_the_widget_draws_the_sessions_flow_graph(browser, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = Session(lmpeek.load("tiny:llama"))
    widget = show(TEXT, model=session, view="attention")
    try:
        with widget_page(browser, tmp_path, widget) as page:
            page.get_by_test_id("flow-view").wait_for()
            T = len(session.get(widget.trace_id))
            token = T - 2
            page.get_by_test_id("flow-token").select_option(str(token))
            check_drawn(page, session.flow(widget.trace_id, token, 0.04, None).to_json())
    finally:
        session.close()


def test_the_widgets_why_tab_runs_an_attribution(browser, tmp_path):
    """`lmpeek.show(text, model=…, view="why")`: the Why tab runs an attribution through the kernel
    (the stream of estimate, progress and result over the widget's messages), its scores the library's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = Session(lmpeek.load("tiny:llama"))
    text = "The quick brown fox jumps over the lazy dog and then"
    widget = show(text, model=session, view="why")
    try:
        with widget_page(browser, tmp_path, widget) as page:
            page.get_by_test_id("why-view").wait_for()
            page.get_by_test_id("why-text").fill(text)
            page.get_by_test_id("why-method").select_option("occlusion")
            page.get_by_test_id("why-features").select_option("words")
            page.get_by_test_id("why-run").click()
            page.get_by_test_id("why-result").wait_for(timeout=60_000)
            direct = lmpeek.attribute(session.model, text, method="occlusion", features="words")
            shown = page.get_by_test_id("why-segment").evaluate_all("els => els.map(e => +e.dataset.score)")
            assert len(shown) == len(direct.segments) > 3
            assert all(abs(s - w) <= 0.0005 + 1e-9 for s, w in zip(shown, direct.total, strict=True))
    finally:
        session.close()
