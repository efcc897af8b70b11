"""lmpeek in Jupyter: a notebook executed with nbclient, then opened in JupyterLab under Chromium, where
the widget (lmpeek.show) asks its kernel's Session, and a Trace shows itself (_repr_html_). The shown
numbers are compared with a Trace computed here; screenshots go to test-artifacts/."""

from __future__ import annotations

import warnings

import pytest

import lmpeek
from tests.e2e._jupyter import lab, lab_page, run_notebook  # noqa: F401 - lab: the JupyterLab fixture
from tests.e2e.conftest import ARTIFACTS

TEXT = "The capital of France is Paris."
CELLS = [
    "import warnings\nwarnings.simplefilter('ignore')\nimport lmpeek\nm = lmpeek.load('tiny:llama')",
    f"w = lmpeek.show({TEXT!r}, model=m)\nw",
    "t = lmpeek.trace(m, 'Hello there')\nt",
    "g = lmpeek.show('Once upon a time', model=m, view='generate')\ng",
]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nb")
    return folder, run_notebook(folder, CELLS)


def test_the_notebook_executes(notebook):
    _, nb = notebook
    widget_out = nb.cells[1].outputs[0]
    assert "application/vnd.jupyter.widget-view+json" in widget_out["data"]
    html = nb.cells[2].outputs[0]["data"]["text/html"]
    assert "<iframe srcdoc=" in html  # shows without a kernel extension (nbconvert, VS Code)


@pytest.fixture(scope="module")
def trace():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.trace(lmpeek.load("tiny:llama"), TEXT)


def _rows(panel) -> list[tuple[str, float]]:
    rows = panel.get_by_test_id("pred-row")
    rows.first.wait_for()
    return [(r.get_attribute("data-token"), float(r.get_attribute("data-prob"))) for r in rows.all()[:5]]


def test_widget_in_jupyterlab(browser, lab, trace):  # noqa: F811 - the imported fixture
    with lab_page(browser, lab, "notebook-failed.png") as pg:
        widget = pg.locator(".jp-OutputArea-output .lmpeek").first  # the live widget (cell 2)
        tokens = widget.get_by_test_id("explore-tokens").get_by_test_id("token")
        tokens.nth(len(trace) - 1).wait_for(timeout=120_000)
        assert tokens.count() == len(trace)

        # click a token: the prediction that produced it, from the kernel's Session, equals the Trace's
        t = 3
        tokens.nth(t).click()
        panel = widget.get_by_test_id("panel-predictions")
        want = list(zip(trace.topk_tokens[t - 1][:5], trace.topk_probs[t - 1][:5], strict=True))
        got = _rows(panel)
        assert [a for a, _ in got] == [a for a, _ in want]
        assert [b for _, b in got] == pytest.approx([float(b) for _, b in want], abs=1e-4)
        pg.screenshot(path=str(ARTIFACTS / "notebook-widget.png"))

        # step with the keys: the selection moves inside the widget
        pg.keyboard.press("ArrowRight")
        shown = panel.get_by_test_id("prediction-token")
        shown.filter(has_text=trace.tokens[t + 1].strip() or " ").wait_for()
        got = _rows(panel)
        assert [a for a, _ in got] == list(trace.topk_tokens[t][:5])

        # Jupyter's own shortcuts still work once the notebook has the focus (command mode: ↓ moves
        # to the next cell), and the widget's selection stays where it was
        pg.locator(".jp-Cell").nth(0).locator(".jp-InputPrompt").click()
        pg.keyboard.press("Escape")
        before = pg.evaluate("window.jupyterapp.shell.currentWidget.content.activeCellIndex")
        pg.keyboard.press("ArrowDown")
        after = pg.evaluate("window.jupyterapp.shell.currentWidget.content.activeCellIndex")
        assert after == before + 1
        assert trace.tokens[t + 1].strip() in panel.get_by_test_id("prediction-token").inner_text()

        # the Trace's own output (_repr_html_: the static page in an iframe) shows its tokens
        frame = pg.locator(".jp-OutputArea-output iframe").first.content_frame
        shown = frame.get_by_test_id("explore-tokens").get_by_test_id("token")
        shown.first.wait_for(timeout=60_000)
        assert shown.count() == len(lmpeek.trace(lmpeek.load("tiny:llama"), "Hello there"))
        pg.locator(".jp-OutputArea-output iframe").first.scroll_into_view_if_needed()
        pg.screenshot(path=str(ARTIFACTS / "notebook-trace.png"))

        # lmpeek.show(prompt, view="generate") streams a generation into its widget at once
        gen = pg.locator(".jp-OutputArea-output .lmpeek").nth(1)
        chips = gen.get_by_test_id("gen-tokens").get_by_test_id("gen-token")
        chips.nth(3).wait_for(timeout=60_000)
        gen.scroll_into_view_if_needed()
        pg.screenshot(path=str(ARTIFACTS / "notebook-generate.png"))
