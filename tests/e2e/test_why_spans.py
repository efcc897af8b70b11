"""The Why tab's span targets, user-drawn spans, bar actions and exported attribution in Chromium
(tiny model): the token × input matrix of a continuation equals lmpeek.attribute's to the shown
digits, spans dragged over the token chips are the library's user spans, a bar's "ablate" opens the
Ablate / patch section, and an export with `--include why` shows its recorded attribution offline
(no network request). Screenshots at 1280×800: test-artifacts/why-span-matrix.png, why-user-spans.png,
why-export.png. Waits are on conditions, never on time."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.session import Session
from lmpeek.views.export import export_html

from .conftest import ARTIFACTS, offline_page

TEXT = "The quick brown fox jumps over the lazy dog and then"
SPAN = " it ran away into the woods"
SIZE = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load("tiny:llama", progress=False)


def _open_why(page, text: str) -> None:
    page.set_viewport_size(SIZE)
    page.get_by_test_id("tab-why").click()
    page.get_by_test_id("why-view").wait_for()
    page.get_by_test_id("why-text").fill(text)
    page.get_by_test_id("why-text").press("Tab")  # read the text: its tokens and top-k
    page.get_by_test_id("why-run").wait_for()


def _run(page) -> None:
    page.get_by_test_id("why-run").click()
    page.get_by_test_id("why-run").wait_for(timeout=60_000)  # back from Cancel: the run ended
    page.get_by_test_id("why-result").wait_for(timeout=60_000)


def _scores(locator) -> list[float]:
    return [float(s) for s in locator.evaluate_all("els => els.map(e => e.dataset.score)")]


def test_a_continuation_shows_the_token_by_input_matrix(page, model):
    _open_why(page, TEXT)
    page.get_by_test_id("why-target-kind").select_option("span")
    page.get_by_test_id("why-span").fill(SPAN)
    page.get_by_test_id("why-method").select_option("occlusion")
    page.get_by_test_id("why-features").select_option("words")
    page.get_by_test_id("why-faith-toggle").uncheck()
    _run(page)
    page.get_by_test_id("why-matrix").wait_for()

    direct = lmpeek.attribute(model, TEXT, method="occlusion", features="words", span=SPAN)
    rows, cols = direct.scores.shape
    assert rows == len(direct.target_labels) > 3 and page.get_by_test_id("why-matrix-row").count() == rows
    cells = np.array(_scores(page.get_by_test_id("why-cell"))).reshape(rows, cols)
    np.testing.assert_allclose(cells, direct.scores, atol=0.0005 + 1e-9)
    row_totals = [float(t) for t in page.get_by_test_id("why-row-total").all_text_contents()]
    np.testing.assert_allclose(row_totals, direct.scores.sum(1), atol=0.0005 + 1e-9)
    # the bars are the span's total per segment (the column sums)
    bars = [float(b) for b in page.get_by_test_id("why-bar-score").all_text_contents()]
    np.testing.assert_allclose(bars, direct.total, atol=0.0005 + 1e-9)
    np.testing.assert_allclose(
        _scores(page.get_by_test_id("why-col-total")), direct.total, atol=0.0005 + 1e-9
    )
    assert "span" in page.get_by_test_id("why-target-label").inner_text()
    # one teacher-forced pass per perturbation for the whole span
    assert f"{cols + 3} forwards" in page.get_by_test_id("why-meta").inner_text()
    page.screenshot(path=str(ARTIFACTS / "why-span-matrix.png"))


def test_spans_dragged_over_the_tokens_are_the_features(page, model):
    _open_why(page, TEXT)
    page.get_by_test_id("why-features").select_option("spans")
    chips = page.get_by_test_id("why-chip")
    chips.nth(3).wait_for()
    tok = model.tokenizer
    enc = tok(TEXT, return_offsets_mapping=True)
    assert chips.count() == len(enc["input_ids"])

    def drag(a: int, b: int) -> None:
        chips.nth(a).hover()
        page.mouse.down()
        chips.nth(b).hover()
        page.mouse.up()

    drag(2, 4)  # tokens 2..4
    drag(8, 7)  # tokens 7..8, dragged backwards
    drag(10, 10)  # one token
    chips.nth(10).click()  # a click on a span removes it
    assert page.get_by_test_id("why-spans-count").inner_text().startswith("2 spans")
    spans = page.get_by_test_id("why-chip").evaluate_all("els => els.map(e => Number(e.dataset.span))")
    assert [t for t, k in enumerate(spans) if k >= 0] == [2, 3, 4, 7, 8]

    page.get_by_test_id("why-method").select_option("shapley")
    page.get_by_test_id("why-faith-toggle").uncheck()
    _run(page)
    off = enc["offset_mapping"]
    chars = [(off[2][0], off[4][1]), (off[7][0], off[8][1])]
    direct = lmpeek.attribute(model, TEXT, method="shapley", features=chars)
    shown = _scores(page.get_by_test_id("why-segment"))
    assert len(shown) == 2
    np.testing.assert_allclose(shown, direct.total, atol=0.0005 + 1e-9)
    page.screenshot(path=str(ARTIFACTS / "why-user-spans.png"))

    # a bar's "ablate" goes to the Ablate / patch section (its positions: tests in web/test/why-spans.test.ts)
    page.get_by_test_id("why-bar-ablate").first.click()
    page.locator("[data-testid=why-tab-intervene].active").wait_for(timeout=10_000)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model):
    with Session(model) as s:
        stored = s.trace(TEXT)
        path = tmp_path_factory.mktemp("export") / "why.html"
        path.write_text(export_html(s, stored.id, "why=occlusion", view="why"), encoding="utf-8")
    return path


def test_an_export_shows_its_recorded_attribution_offline(browser, exported, model):
    from tests.views.test_export import block, body, unpack

    header, data = unpack(block(exported.read_text(encoding="utf-8")))
    key = next(k for k in header["responses"] if k.startswith("POST /api/why/attribute "))
    recorded = [json.loads(line[6:]) for line in body(header, data, key).decode().splitlines()
                if line.startswith("data: ")][-1]  # fmt: skip
    with offline_page(browser, exported, viewport=SIZE) as page:
        page.get_by_test_id("why-result").wait_for(timeout=30_000)
        shown = _scores(page.get_by_test_id("why-segment"))
        want = np.asarray(recorded["scores"]).sum(0)
        assert len(shown) == len(want) > 3
        np.testing.assert_allclose(shown, want, atol=0.0005 + 1e-9)
        assert "occlusion" in page.get_by_test_id("why-meta").inner_text()
        assert page.get_by_test_id("why-recorded").is_visible()
        assert page.get_by_test_id("why-run").is_disabled()  # nothing else runs in a file
        assert page.get_by_test_id("why-bar-ablate").count() == 0
        assert page.get_by_test_id("why-curve-line").count() == 2  # its faithfulness too
        page.screenshot(path=str(ARTIFACTS / "why-export.png"))
        # another section of the Why tab: not in this export
        page.get_by_test_id("why-tab-ablation").click()
    direct = lmpeek.attribute(model, TEXT, method="occlusion", features="words")
    np.testing.assert_allclose(recorded["scores"], direct.scores, atol=1e-6)


def test_show_of_an_attribution_draws_its_scores_offline(browser, model, tmp_path):
    """lmpeek.show(attribution, model=…): the app's page on its Why tab, the object's own numbers."""
    a = lmpeek.attribute(model, TEXT, method="occlusion", features="words", span=SPAN)
    path = tmp_path / "show.html"
    path.write_text(lmpeek.show(a, model=model).page, encoding="utf-8")
    with offline_page(browser, path, viewport=SIZE) as page:
        page.get_by_test_id("why-matrix").wait_for(timeout=30_000)
        cells = np.array(_scores(page.get_by_test_id("why-cell"))).reshape(a.scores.shape)
        np.testing.assert_allclose(cells, a.scores, atol=0.0005 + 1e-9)
        np.testing.assert_allclose(_scores(page.get_by_test_id("why-segment")), a.total, atol=0.0005 + 1e-9)
