"""A features export with texts (`lmpeek features export DB -f … --model M --text …`) opened from disk in
Chromium with every network request blocked and counted (none made): "Your text" shows the recorded
texts read-only (a picker), a highlighted exported feature paints the tokens with FeatureService's
values (the token's data-value exactly, its tooltip to the 4 digits shown), copy gives the text back,
rank and exclude_template are answered from the file, and a feature it did not record says "not in this
export". Screenshots: test-artifacts/features-export-text*.png (and /tmp)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.features import FeatureDB, build
from lmpeek.features.service import FeatureService
from lmpeek.views.features_export import export_html
from tests.e2e.conftest import ARTIFACTS, offline_page

SOURCE = "neurons:1"
CORPUS = {
    "a.txt": "The capital of France is Paris. Paris has museums, cafes and a river that runs through it.",
    "b.md": "# Notes\n\n- def add(a, b): return a + b\n\ndef mul(a, b):\n    return a * b\n\nDone.",
}
TEXTS = ["Über den Fluss: Paris 🙂 und 日本.\n\tdef f(x): return x", "A second, shorter text."]
TOKS = "[...document.querySelectorAll('[data-testid=features-tokens] [data-testid=ftok]')]"
COPY = """() => {
  const el = document.querySelector('[data-testid=features-tokens]');
  const range = document.createRange();
  range.selectNodeContents(el);
  getSelection().removeAllRanges();
  getSelection().addRange(range);
  const data = new DataTransfer();
  el.dispatchEvent(new ClipboardEvent('copy', { clipboardData: data, bubbles: true, cancelable: true }));
  return data.getData('text/plain');
}"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features-export-text")
    for name, text in CORPUS.items():
        (folder / name).write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    path = build(model, SOURCE, [folder], folder / "features.db", seq_len=48, batch_size=4, k=6,
                 context=(8, 4), quantiles=3, per_bin=2, n_correlated=3, n_logits=5)  # fmt: skip
    with FeatureDB(path) as db:
        by_max = [r["feature"] for r in db.features(sort="max")]
    chosen, missing = by_max[:2], by_max[2]
    html = folder / "features.html"
    html.write_text(export_html(path, chosen, model=model, texts=TEXTS), encoding="utf-8")
    with FeatureService([path], model=model) as service:
        refs = [service.activations(SOURCE, t, chosen) for t in TEXTS]
    return html, chosen, missing, refs


def _highlight(pg, slot: str, feature: int) -> None:
    box = pg.get_by_test_id(f"slot-{slot}-input")
    box.fill(str(feature))
    box.blur()  # the browser's own change event, once (another would toggle the feature off again)


def test_recorded_texts_offline(browser, exported):
    path, chosen, missing, refs = exported
    first = chosen[0]
    with offline_page(browser, path, viewport={"width": 1400, "height": 900}) as pg:
        pg.get_by_test_id("features-mode-text").click()
        text_box = pg.get_by_test_id("features-text")
        text_box.wait_for()
        assert text_box.input_value() == TEXTS[0] and not text_box.is_editable()
        assert pg.get_by_test_id("features-run").count() == 0
        assert not pg.get_by_test_id("features-generate").is_visible()
        toks = pg.get_by_test_id("features-tokens").get_by_test_id("ftok")
        toks.first.wait_for()
        ref = refs[0]
        assert toks.count() == len(ref["tokens"])

        # highlight an exported feature: the recorded values, exactly; the tooltip as the page rounds them
        _highlight(pg, "A", first)
        pg.wait_for_function(f"() => {TOKS}.every(s => s.dataset.value !== undefined)")
        drawn = pg.evaluate(f"() => {TOKS}.map(s => Number(s.dataset.value))")
        values = ref["values"][0]
        assert drawn == [float(v) for v in values]
        i = int(np.argmax(values))
        assert values[i] > 0
        toks.nth(i).hover()
        tip = pg.get_by_test_id("features-tooltip")
        tip.wait_for()
        line = next(x for x in tip.inner_text().splitlines() if x.startswith(f"A #{first}:"))
        assert float(line.split(":", 1)[1].split("·")[0]) == pytest.approx(float(values[i]), rel=5e-4)
        assert f"id {ref['tokens'][i]['id']}" in tip.inner_text()
        pg.screenshot(path=str(ARTIFACTS / "features-export-text.png"))
        shutil.copy(ARTIFACTS / "features-export-text.png", "/tmp/features-export-text.png")
        assert pg.evaluate(COPY) == TEXTS[0]
        pg.evaluate("() => getSelection().removeAllRanges()")

        # the other options the file holds: rank by quantile, template tokens left out; no error
        pg.get_by_test_id("features-rank").select_option("quantile")
        pg.get_by_test_id("features-exclude-template").check()
        toks.nth(i).click()
        rows = pg.get_by_test_id("rank-row")
        rows.first.wait_for()
        assert pg.get_by_test_id("features-error").count() == 0
        assert pg.get_by_test_id("slot-A-input").input_value() == str(first)

        # the other text, from the picker
        pg.get_by_test_id("features-recorded-pick").select_option("1")
        pg.wait_for_function(f"() => {TOKS}.length === {len(refs[1]['tokens'])}")
        assert text_box.input_value() == TEXTS[1]
        assert pg.evaluate(COPY) == TEXTS[1]

        # a feature the file did not record: said, and the tokens stay
        _highlight(pg, "B", missing)
        err = pg.get_by_test_id("features-error")
        err.wait_for()
        said = f"not in this export: feature #{missing} on this text (--feature {missing})"
        assert said in err.inner_text()
        assert toks.count() == len(refs[1]["tokens"])
        drawn = pg.evaluate(f"() => {TOKS}.map(s => Number(s.dataset.value))")
        assert drawn == [float(v) for v in refs[1]["values"][0]]  # A still painted from the file
        pg.screenshot(path=str(ARTIFACTS / "features-export-text-missing.png"))
        shutil.copy(ARTIFACTS / "features-export-text-missing.png", "/tmp/features-export-text-missing.png")
