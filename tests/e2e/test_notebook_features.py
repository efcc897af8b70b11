"""lmpeek.show(db, feature=…) in Jupyter: a notebook executed with nbclient, then opened in JupyterLab
under Chromium, where the widget asks its kernel's database-only app and opens the Features tab on
that feature with FeatureDB's numbers; another feature opens from the list. Screenshot:
test-artifacts/notebook-features.png."""

from __future__ import annotations

import warnings

import pytest

import lmpeek
from lmpeek.features import FeatureDB, build
from tests.e2e._jupyter import lab, lab_page, run_notebook  # noqa: F401 - lab: over this module's notebook
from tests.e2e.conftest import ARTIFACTS

SOURCE = "neurons:1"
TEXTS = [
    "The capital of France is Paris. Paris has museums, cafes and a river that runs through it.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i))\n",
    "Once upon a time there was a small model that read every word twice. " * 3,
]


@pytest.fixture(scope="module")
def feature_db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nb-features")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    path = build(model, SOURCE, TEXTS, folder / "features.db", seq_len=48, batch_size=4, k=6, context=(8, 4),
                 quantiles=3, per_bin=2, n_correlated=3, n_logits=5)  # fmt: skip
    with FeatureDB(path) as db:
        by_max = [r["feature"] for r in db.features(sort="max")]
        refs = {f: db.feature(f, SOURCE) for f in by_max[:2]}
    return path, by_max[:2], refs


@pytest.fixture(scope="module")
def notebook(tmp_path_factory, feature_db):
    path, (first, _), _ = feature_db
    folder = tmp_path_factory.mktemp("nbf")
    cell = f"import lmpeek\nw = lmpeek.show({str(path)!r}, feature={first})\nw"
    return folder, run_notebook(folder, [cell])


def test_the_notebook_executes(notebook):
    out = notebook[1].cells[0].outputs[0]
    assert "application/vnd.jupyter.widget-view+json" in out["data"]


def _check_page(widget, f: int, ref: dict) -> None:
    page = widget.locator(f"[data-testid=feature-page][data-feature='{f}'][data-loading=false]")
    page.wait_for(timeout=120_000)
    assert float(page.get_by_test_id("stat-max").inner_text()) == pytest.approx(ref["max"], rel=5e-4)
    top = page.get_by_test_id("feature-top-examples").get_by_test_id("feature-example")
    assert top.count() == len(ref["examples"]["top"]) > 0
    scores = [float(s) for s in top.evaluate_all("els => els.map(e => e.getAttribute('data-score'))")]
    assert scores == [ex["score"] for ex in ref["examples"]["top"]]


def test_feature_widget_in_jupyterlab(browser, lab, feature_db):  # noqa: F811 - the imported fixture
    _, (first, second), refs = feature_db
    with lab_page(browser, lab, "notebook-features-failed.png") as pg:
        widget = pg.locator(".jp-OutputArea-output .lmpeek").first
        _check_page(widget, first, refs[first])
        assert widget.get_by_test_id("no-model").is_visible()  # browsing a database, no model
        pg.screenshot(path=str(ARTIFACTS / "notebook-features.png"))
        # the whole database's list is there (the kernel answers): another feature opens from it
        widget.locator(f"[data-testid=feature-row][data-feature='{second}']").click()
        _check_page(widget, second, refs[second])
