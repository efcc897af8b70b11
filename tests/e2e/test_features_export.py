"""A features export opened from disk in Chromium with every network request blocked and counted: it
makes none, opens on its first feature's page showing FeatureDB's numbers (max, examples, scores, the
label read-only), lists just the exported features, opens the other one, and says "not in this
export" for a feature and a document it does not hold. Screenshots: test-artifacts/features-export*.png."""

from __future__ import annotations

import warnings

import pytest

import lmpeek
from lmpeek.features import FeatureDB, build
from lmpeek.views.features_export import export_html
from tests.e2e.conftest import ARTIFACTS, offline_page

SOURCE = "neurons:1"
TEXTS = {
    "a.txt": "The capital of France is Paris. Paris has museums, cafes and a river that runs through it.",
    "b.md": "# Notes\n\n- def add(a, b): return a + b\n\ndef mul(a, b):\n    return a * b\n\nDone.",
    "c.txt": "Once upon a time there was a small model that read every word twice. " * 4,
}
LABEL = "an exported label"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features-export")
    for name, text in TEXTS.items():
        (folder / name).write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    path = build(model, SOURCE, [folder], folder / "features.db", seq_len=48, batch_size=4, k=6,
                 context=(8, 4), quantiles=3, per_bin=2, n_correlated=3, n_logits=5)  # fmt: skip
    with FeatureDB(path) as db:
        by_max = [r["feature"] for r in db.features(sort="max")]
        first = by_max[0]
        db.set_label(first, LABEL, "", SOURCE)
        page = db.feature(first, SOURCE)
        missing = page["correlated"][0]["feature"]  # a link the file cannot follow
        second = next(f for f in by_max[1:] if f != missing)
        refs = {f: db.feature(f, SOURCE) for f in (first, second)}
        density = [r["feature"] for r in db.features(sort="density") if r["feature"] in (first, second)]
    html = folder / "features.html"
    html.write_text(export_html(path, [first, second]), encoding="utf-8")
    return html, first, second, missing, refs, density


def _check_page(pg, f: int, ref: dict) -> None:
    page = pg.locator(f"[data-testid=feature-page][data-feature='{f}'][data-loading=false]")
    page.wait_for()
    assert page.get_by_test_id("feature-page-index").inner_text() == f"#{f}"
    assert float(page.get_by_test_id("stat-max").inner_text()) == pytest.approx(ref["max"], rel=5e-4)
    top = page.get_by_test_id("feature-top-examples").get_by_test_id("feature-example")
    assert top.count() == len(ref["examples"]["top"]) > 0
    scores = [float(s) for s in top.evaluate_all("els => els.map(e => e.getAttribute('data-score'))")]
    assert scores == [ex["score"] for ex in ref["examples"]["top"]]
    quant = page.get_by_test_id("feature-quantile-examples").get_by_test_id("feature-example")
    assert quant.count() == len(ref["examples"]["quantile"])


def test_the_export_opens_offline_on_its_features(browser, exported):
    path, first, second, missing, refs, density = exported
    with offline_page(browser, path, viewport={"width": 1400, "height": 900}) as pg:
        _check_page(pg, first, refs[first])
        # only the Features tab, only browsing; the label shown, not editable (nothing is saved in a file)
        assert pg.get_by_test_id("tab-features").is_visible()
        for tab in ("tab-explore", "tab-attention", "tab-generate"):
            assert pg.get_by_test_id(tab).count() == 0
        assert not pg.get_by_test_id("features-mode-text").is_visible()
        assert pg.get_by_test_id("feature-label-shown").inner_text().strip() == LABEL
        assert pg.get_by_test_id("feature-label-input").count() == 0
        # the list holds the exported features alone, by density as the page sorts it first
        rows = pg.get_by_test_id("feature-row").evaluate_all("els => els.map(e => Number(e.dataset.feature))")
        assert rows == density
        assert pg.get_by_test_id("feature-list-count").inner_text() == "1–2 of 2"
        pg.screenshot(path=str(ARTIFACTS / "features-export.png"))

        # the other exported feature opens from the list
        pg.locator(f"[data-testid=feature-row][data-feature='{second}']").click()
        _check_page(pg, second, refs[second])
        assert pg.get_by_test_id("feature-label").count() == 0  # no label: no section

        # back to the first: an example's whole document is not in the file
        pg.locator(f"[data-testid=feature-row][data-feature='{first}']").click()
        _check_page(pg, first, refs[first])
        example = pg.get_by_test_id("feature-top-examples").get_by_test_id("feature-example").first
        example.get_by_test_id("example-context").click()
        said = example.get_by_test_id("example-error")
        said.wait_for()
        assert said.inner_text().startswith("not in this export: document ")
        assert example.get_by_test_id("document-tokens").count() == 0
        # nor is a correlated feature it did not export: the page says so, and what adds it
        pg.locator(f"[data-testid=correlated-feature][data-feature='{missing}']").click()
        err = pg.get_by_test_id("feature-page-error")
        err.wait_for()
        assert f"not in this export: feature #{missing} (--feature {missing})" in err.inner_text()
        pg.screenshot(path=str(ARTIFACTS / "features-export-missing.png"))
        # and the exported ones still open
        pg.locator(f"[data-testid=feature-row][data-feature='{second}']").click()
        _check_page(pg, second, refs[second])
