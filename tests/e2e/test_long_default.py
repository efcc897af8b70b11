"""A 4,096-token sample of the real default model in the browser: responsive, slices only."""

from __future__ import annotations

import pathlib

import pytest

from .conftest import ARTIFACTS
from .test_views import LONGEST_TASK

pytestmark = pytest.mark.slow
SAMPLE = (pathlib.Path(__file__).parents[2] / "benchmarks" / "sample.txt").read_text()


def test_4096_tokens_of_the_default_model(default_page):
    page = default_page
    page.evaluate(LONGEST_TASK)
    sizes: list[int] = []
    page.on("response", lambda r: sizes.append(len(r.body())) if "name=attn-from" in r.url else None)
    page.get_by_test_id("tab-explore").click()
    text = SAMPLE * 10 + SAMPLE[: len(SAMPLE) * 3 // 4]  # about 4,000 tokens
    page.get_by_test_id("explore-text").fill(text)
    # the 32 MB summary is too big for the inspector's response cache: count what the page shows
    with page.expect_response("**/api/trace", timeout=120_000):
        page.get_by_test_id("explore-run").click()
    tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
    tokens.nth(3499).wait_for(timeout=30_000)
    n = tokens.count()
    assert 3800 <= n <= 4096, n
    tokens.nth(n - 1).scroll_into_view_if_needed()
    tokens.nth(n - 2).click()
    page.get_by_test_id("panel-predictions").get_by_test_id("pred-row").first.wait_for()
    with page.expect_response("**/metric?*", timeout=60_000):
        page.get_by_test_id("metric-select").select_option("attn-from")
    page.wait_for_timeout(500)
    longest = page.evaluate("window.__longest")
    assert longest < 1500, f"the main thread was blocked for {longest:.0f} ms"
    assert sizes and max(sizes) <= 32 * 4096 + 1024  # one row of JSON numbers, never a T x T matrix
    page.screenshot(path=str(ARTIFACTS / "explore-4096-default.png"))
