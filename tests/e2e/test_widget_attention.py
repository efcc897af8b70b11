"""`lmpeek.show(text, model=…, view="attention")` opens the Attention tab: the bundle's anywidget entry in
Chromium, its requests answered by the kernel side's Widget over the Session (the stand-in of
tests/e2e/test_three_ways.py, no JupyterLab). Its thumbnails are the colours of the Session's model
view and its neuron view the Session's q·k numbers."""

from __future__ import annotations

import warnings

import pytest

import lmpeek
from lmpeek.session import Session
from lmpeek.session_attention import attention_grid, qk
from lmpeek.views.widget import show
from tests.e2e.test_export_attention import _check_grid
from tests.e2e.test_three_ways import widget_page

TEXT = "The capital of France is Paris, and the capital of Italy is Rome."


def test_show_opens_the_attention_tab(browser, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        session = Session(lmpeek.load("tiny:llama"))
    widget = show(TEXT, model=session, view="attention")
    try:
        with widget_page(browser, tmp_path, widget) as page:
            page.get_by_test_id("attention-grid").wait_for()
            assert "active" in (page.get_by_test_id("tab-attention").get_attribute("class") or "")
            T = len(session.get(widget.trace_id))
            _check_grid(page, attention_grid(session, widget.trace_id, 0, T, 64))
            # the neuron view starts on layer 0 head 0, query 0 against key 0
            neuron = page.get_by_test_id("attention-neuron-view")
            neuron.get_by_test_id("qk-dot").first.wait_for()
            want = qk(session, widget.trace_id, 0, 0, 0, 0)
            shown = float(neuron.get_by_test_id("qk-dot").first.get_attribute("data-value"))
            assert shown == pytest.approx(float(want.parts[0].terms.dot), rel=1e-12)
    finally:
        session.close()
