"""The Why tab's patching grid in Chromium against a real server (tiny model): the token counts shown
live, a layer × position grid whose every cell carries the route's value (and patch_grid's, computed
here directly), the readout on hover, the fraction display, attribution patching with its verified cells
outlined and ρ shown as the route sent them, and prompts of different lengths refused before running.
Screenshot at 1280 × 800: test-artifacts/why-patching.png. Waits are on conditions, never on time."""

from __future__ import annotations

import numpy as np
import torch

import lmpeek
from lmpeek.attribution.patching import patch_grid

from .conftest import ARTIFACTS, parse_sse

A = "The cat sat on the mat and"  # 13 tokens each on tiny:llama; positions 1 and 2 differ
B = "The dog sat on the mat and"


def _open(page) -> None:
    page.get_by_test_id("tab-why").click()
    page.get_by_test_id("why-tab-patching").click()
    page.get_by_test_id("patch-form").wait_for()


def _run(page) -> dict:
    """Press Run; the route's `result` once the page shows it."""
    with page.expect_response("**/api/why/patch", timeout=60_000) as info:
        page.get_by_test_id("patch-run").click()
    events = parse_sse(info.value.text())
    assert events[0][0] == "estimate" and events[-1][0] == "result", [e for e, _ in events]
    page.get_by_test_id("patch-run").wait_for(timeout=60_000)  # back from Cancel: the run ended
    page.get_by_test_id("patch-result").wait_for(timeout=60_000)
    return events[-1][1]


def _cells(page) -> list[tuple[int, int, float, str]]:
    return page.get_by_test_id("patch-cell").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.column, +e.dataset.value, e.title])"
    )


def test_patching_grid_shows_the_routes_values(page):
    _open(page)
    page.get_by_test_id("patch-text-a").fill(A)
    page.get_by_test_id("patch-text-b").fill(B)
    page.get_by_test_id("patch-count-a").filter(has_text="13 tokens").wait_for(timeout=30_000)
    page.get_by_test_id("patch-count-b").filter(has_text="13 tokens").wait_for(timeout=30_000)
    res = _run(page)

    # every cell carries the route's value, and the route's values are patch_grid's
    cells = _cells(page)
    grid = np.array(res["grid"])
    assert len(cells) == grid.size == 2 * 13
    for layer, col, value, _title in cells:
        assert value == grid[layer, col]
    model = lmpeek.load("tiny:llama", progress=False)
    with torch.no_grad():
        top = int(
            model.hf(input_ids=torch.as_tensor(model.tokenizer(A)["input_ids"])[None]).logits[0, -1].argmax()
        )
    np.testing.assert_allclose(grid, patch_grid(model, A, B, target=top).values, atol=1e-5)
    # the titles show the value to 3 decimals, with the layer and the token
    layer, col, value, title = max(cells, key=lambda c: abs(c[2]))
    assert title.startswith(f"layer {layer} · position {col} ") and f"{value:+.3f}" in title
    heads = page.get_by_test_id("patch-colhead")
    assert heads.count() == 13
    assert page.locator("[data-testid=patch-colhead].changed").count() == 2  # cat -> dog: two tokens
    assert res["metric"] in page.get_by_test_id("patch-meta").inner_text()
    assert float(page.get_by_test_id("patch-legend-max").inner_text()) == round(float(np.abs(grid).max()), 3)

    # hover: the readout says the cell's value
    page.locator(f"[data-testid=patch-cell][data-layer='{layer}'][data-column='{col}']").hover()
    assert page.get_by_test_id("patch-readout").inner_text() == title

    # as a fraction of the whole B − A difference
    page.get_by_test_id("patch-fraction").check()
    d = res["full"] - res["base"]
    frac = [c for c in _cells(page) if c[0] == layer and c[1] == col][0]
    assert f"{100 * value / d:+.1f}%" in frac[3]
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(ARTIFACTS / "why-patching.png"), full_page=True)
    page.get_by_test_id("patch-fraction").uncheck()


def test_attribution_patching_outlines_its_verified_cells(page):
    _open(page)
    page.get_by_test_id("patch-text-a").fill(A)
    page.get_by_test_id("patch-text-b").fill(B)
    page.get_by_test_id("patch-count-b").filter(has_text="13 tokens").wait_for(timeout=30_000)
    page.get_by_test_id("patch-method").select_option("attribution")
    page.get_by_test_id("patch-verify").fill("4")
    res = _run(page)
    assert res["method"] == "attribution" and len(res["verified"]) == 4
    outlined = page.locator("[data-testid=patch-cell].verified").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.column])"
    )
    assert sorted(map(tuple, outlined)) == sorted((c["layer"], c["column"]) for c in res["verified"])
    rows = page.get_by_test_id("patch-verified-row").evaluate_all(
        "els => els.map(e => [+e.dataset.layer, +e.dataset.column, +e.dataset.estimate, +e.dataset.real])"
    )
    assert rows == [[c["layer"], c["column"], c["estimate"], c["real"]] for c in res["verified"]]
    assert page.get_by_test_id("patch-rho").inner_text() == f"{res['spearman']:.3f}"
    assert page.get_by_test_id("patch-point").count() == 4
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(ARTIFACTS / "why-patching-atp.png"), full_page=True)


def test_prompts_of_different_lengths_are_refused_before_running(page):
    _open(page)
    page.get_by_test_id("patch-text-a").fill(A)
    page.get_by_test_id("patch-text-b").fill("The capital of France is Paris")
    warning = page.get_by_test_id("patch-length")
    warning.wait_for(timeout=30_000)
    assert "A has 13 tokens and B 8" in warning.inner_text()
    assert page.get_by_test_id("patch-run").is_disabled()
