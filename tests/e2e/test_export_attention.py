"""The Attention tab of an HTML export opened from disk in Chromium, every network request blocked and
counted (none are made): it opens on the tab (view="attention"); the model view's thumbnails are the
embedded grid (`--include grid`, `grid=START:END`), pixel for pixel the colours of what the Session
computes; the neuron view of an embedded query (`qk=L:H:Q`) shows the Session's q·k numbers; the
head view of an embedded head (`attention=L:H`) draws the Session's pattern; whatever was not
embedded says so, naming the include that adds it. Screenshot: test-artifacts/export-attention-tab.png."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.session import Session
from lmpeek.session_attention import attention_grid, qk
from lmpeek.views.export import export_html, window_around
from tests.e2e.conftest import ARTIFACTS, offline_page

TEXT = " ".join(f"word{i}" for i in range(45))
LAYER, HEAD, QUERY, KEY = 1, 2, 9, 4
MIN_LINE = 0.005  # lib/attention.ts attentionLines: weaker weights draw no line


def thumb_colours(w: np.ndarray) -> np.ndarray:
    """web/src/lib/attention.ts thumbColour, written again: white to blue by the square root."""
    x = np.sqrt(np.clip(w.astype(np.float64), 0, 1))
    return np.floor(np.stack([255 - x * 218, 255 - x * 156, 255 - x * 20], axis=-1) + 0.5).astype(int)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    with Session(model) as s:
        stored = s.trace(TEXT)
        T = len(stored.trace)
        assert T > 96  # three windows of 64: the first, the next (embedded), the one after (not)
        first = window_around(T, 0, 64)
        second = (first[0] + 32, first[1] + 32)
        include = f"grid,grid={second[0]}:{second[1]},qk={LAYER}:{HEAD}:{QUERY},attention={LAYER}:{HEAD}"
        path = tmp_path_factory.mktemp("export") / "attention.html"
        path.write_text(export_html(s, stored.id, include, view="attention"), encoding="utf-8")
        want = {
            "T": T,
            "tokens": stored.trace.tokens,
            "grids": [attention_grid(s, stored.id, *w, 64) for w in (first, second)],
            "qk": qk(s, stored.id, LAYER, HEAD, QUERY, KEY),
            "row": s.attention(stored.id, LAYER, HEAD, query=QUERY)[0].astype(np.float64),
        }
    return path, want


def _thumbs(page) -> dict[tuple[int, int], np.ndarray]:
    """Every thumbnail's pixels (RGB) as the page painted them."""
    got = page.get_by_test_id("attention-thumb").evaluate_all(
        "els => els.map(e => { const c = e.querySelector('canvas');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);"
        " return [+e.dataset.layer, +e.dataset.head, c.width, Array.from(d.data)]; })"
    )
    return {(lay, h): np.array(px).reshape(n, n, 4)[..., :3] for lay, h, n, px in got}


def _check_grid(page, grid) -> None:
    L, H, n, _ = grid.patterns.shape
    shown = _thumbs(page)
    assert len(shown) == L * H
    for (lay, h), px in shown.items():
        np.testing.assert_array_equal(px, thumb_colours(grid.patterns[lay, h]), err_msg=f"L{lay} H{h}")


def _error(page, panel: str) -> str:
    err = page.get_by_test_id(panel).get_by_test_id("panel-error")
    err.wait_for()
    return err.inner_text()


def test_export_attention_tab_shows_what_was_embedded(browser, exported):
    path, want = exported
    with offline_page(browser, path, viewport={"width": 1400, "height": 1000}) as page:
        # it opens on the Attention tab, on the first window, whose thumbnails are the embedded grid
        page.get_by_test_id("attention-grid").wait_for()
        assert "active" in (page.get_by_test_id("tab-attention").get_attribute("class") or "")
        win = page.get_by_test_id("attention-window")
        assert (int(win.get_attribute("data-start")), int(win.get_attribute("data-end"))) == (0, 64)
        _check_grid(page, want["grids"][0])
        # the neuron view starts on layer 0 head 0, query 0: not embedded, and it says what adds it
        assert "not in this export" in _error(page, "attention-neuron-view")
        assert "--include qk=0:0:0" in _error(page, "attention-neuron-view")

        # the embedded head: its thumbnail opens it; lines from the query are the Session's pattern row
        page.get_by_test_id("attention-thumb").and_(
            page.locator(f"[data-layer='{LAYER}'][data-head='{HEAD}']")
        ).click()
        page.get_by_test_id("attention-query-token").and_(page.locator(f"[data-token='{QUERY}']")).click()
        page.wait_for_function(
            "([h, q]) => { const l = document.querySelectorAll("
            "`[data-testid=attention-lines] line[data-head='${h}']`);"
            " return l.length > 0 && [...l].every(e => e.dataset.query === String(q)); }",
            arg=[HEAD, QUERY],
        )
        lines = (
            page.get_by_test_id("attention-lines")
            .locator(f"line[data-head='{HEAD}']")
            .evaluate_all("els => els.map(e => [+e.dataset.key, +e.dataset.weight])")
        )
        row = want["row"]
        assert dict(lines) == {k: pytest.approx(w, abs=1e-7) for k, w in enumerate(row) if w >= MIN_LINE}

        # the neuron view of the embedded query against key KEY: the Session's numbers
        page.get_by_test_id("attention-key-token").and_(page.locator(f"[data-token='{KEY}']")).click()
        neuron = page.get_by_test_id("attention-neuron-view")
        page.wait_for_function(
            "k => { const v = document.querySelector('[data-testid=attention-neuron-view]');"
            " return v.dataset.loading === 'false' && v.querySelector('[data-testid=qk-score]') &&"
            " v.textContent.includes('key #' + k); }",
            arg=KEY,
        )
        a = want["qk"]
        parts = neuron.get_by_test_id("qk-part")
        assert parts.count() == len(a.parts)
        for i, p in enumerate(a.parts):
            shown = parts.nth(i)
            assert shown.get_attribute("data-name") == p.name
            assert float(shown.get_by_test_id("qk-dot").get_attribute("data-value")) == pytest.approx(
                float(p.terms.dot), rel=1e-12
            )
            assert float(shown.get_by_test_id("qk-score").get_attribute("data-value")) == pytest.approx(
                float(p.terms.score), rel=1e-12
            )
            assert float(shown.get_by_test_id("qk-weight").get_attribute("data-value")) == pytest.approx(
                float(p.terms.weights[KEY]), rel=1e-12
            )
            assert (
                shown.get_by_test_id("qk-bars").locator("rect").count() == np.isfinite(p.terms.products).sum()
            )
        pattern = float(parts.nth(0).get_by_test_id("qk-pattern").get_attribute("data-value"))
        assert pattern == pytest.approx(float(a.pattern_row[KEY]), rel=1e-12)
        page.screenshot(path=str(ARTIFACTS / "export-attention-tab.png"), full_page=True)
        page.screenshot(path="/tmp/export-attention-tab.png", full_page=True)

        # another query: not embedded, named
        page.get_by_test_id("attention-query-token").and_(page.locator(f"[data-token='{QUERY + 1}']")).click()
        assert f"--include qk={LAYER}:{HEAD}:{QUERY + 1}" in _error(page, "attention-neuron-view")

        # the next window (▶) was embedded with grid=START:END; the one after it was not
        page.get_by_test_id("window-forward").click()
        page.wait_for_function(
            "() => document.querySelector('[data-testid=attention-window]').dataset.start === '32'"
        )
        page.wait_for_function(
            "() => document.querySelector('[data-testid=attention-model-view]').dataset.loading === 'false'"
        )
        assert page.get_by_test_id("attention-model-view").get_by_test_id("panel-error").count() == 0
        _check_grid(page, want["grids"][1])
        page.get_by_test_id("window-forward").click()
        s3 = min(64, want["T"] - 64)
        assert f"--include grid={s3}:{s3 + 64}" in _error(page, "attention-model-view")

        # and the Explore tab of the same file still works
        page.get_by_test_id("tab-explore").click()
        page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(want["T"] - 1).wait_for()
