"""The Why tab in Chromium against a real server (tiny model): occlusion over words, every shown
segment's score equal to lmpeek.attribute's to the shown digits, the estimate and δ shown, the
faithfulness curves and AOPC table drawn, a repeat answered from the cache, and the display options.
Screenshot: test-artifacts/why-occlusion.png. Waits are on conditions, never on time."""

from __future__ import annotations

import lmpeek

from .conftest import ARTIFACTS, run_explore

TEXT = "The quick brown fox jumps over the lazy dog and then"


def _run(page) -> None:
    page.get_by_test_id("why-run").click()
    page.get_by_test_id("why-run").wait_for(timeout=60_000)  # back from Cancel: the run ended
    page.get_by_test_id("why-result").wait_for(timeout=60_000)


def test_why_occlusion_scores_equal_the_library(page):
    page.get_by_test_id("tab-why").click()
    page.get_by_test_id("why-view").wait_for()
    page.get_by_test_id("why-text").fill(TEXT)
    page.get_by_test_id("why-method").select_option("occlusion")
    page.get_by_test_id("why-features").select_option("words")
    page.get_by_test_id("why-run").wait_for()
    _run(page)

    direct = lmpeek.attribute(
        lmpeek.load("tiny:llama", progress=False), TEXT, method="occlusion", features="words"
    )
    shown = page.get_by_test_id("why-segment").evaluate_all(
        "els => els.map(e => [e.textContent, e.dataset.score])"
    )
    assert len(shown) == len(direct.segments) > 3
    for (_label, score), want in zip(shown, direct.total, strict=True):
        assert abs(float(score) - want) <= 0.0005 + 1e-9, (score, want)
    bars = page.get_by_test_id("why-bar-score").all_text_contents()
    assert [float(b) for b in bars] == [float(s) for _, s in shown]
    assert "occlusion" in page.get_by_test_id("why-meta").inner_text()
    assert page.get_by_test_id("why-delta").inner_text().startswith("δ")
    assert "forwards" in page.get_by_test_id("why-estimate").inner_text()
    assert page.get_by_test_id("why-curve-line").count() == 2
    assert "comprehensiveness" in page.get_by_test_id("why-aopc").inner_text()
    assert page.get_by_test_id("why-result").get_attribute("data-cached") == "false"
    page.screenshot(path=str(ARTIFACTS / "why-occlusion.png"), full_page=True)

    # normalised: the largest |score| shows as ±1.000
    page.get_by_test_id("why-normalise").check()
    normed = [
        abs(float(s))
        for s in page.get_by_test_id("why-segment").evaluate_all("els => els.map(e => e.dataset.score)")
    ]
    assert max(normed) == 1.0

    # the same request again comes from the server's cache
    _run(page)
    page.locator("[data-testid=why-result][data-cached=true]").wait_for(timeout=30_000)
    assert "cached" in page.get_by_test_id("why-estimate").inner_text()


def test_why_starts_from_the_explore_tabs_text(page):
    text = "Paris is the capital of France, and Rome is the capital of"
    run_explore(page, text)
    page.get_by_test_id("tab-why").click()
    page.wait_for_function(
        "t => document.querySelector('[data-testid=why-text]').value === t", arg=text, timeout=30_000
    )
