"""The app in headless Chromium: generate and step through tokens; explore a text token by token.

Each test checks that what the page shows is what the API returned, and saves a screenshot under
test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json

import pytest

from .conftest import ARTIFACTS, fill_generate, parse_sse, run_explore


def _selected(page) -> int:
    return int(page.get_by_test_id("gen-selected-index").get_attribute("data-index"))


def _check_panels(page, step: dict) -> None:
    rows = page.get_by_test_id("panel-topk").get_by_test_id("topk-row")
    shown = [(rows.nth(i).get_attribute("data-token"), float(rows.nth(i).get_attribute("data-prob")))
             for i in range(rows.count())]  # fmt: skip
    want = list(zip(step["topk_tokens"], step["topk_probs"], strict=True))
    assert shown[: len(want)] == want[: len(shown)] and len(shown) >= 5
    chosen = page.get_by_test_id("panel-topk").locator("[data-testid=topk-row].chosen")
    assert chosen.count() == 1 and chosen.get_attribute("data-token") == step["token"]
    assert json.loads(page.get_by_test_id("panel-layers").get_attribute("data-values")) == step["norms"]
    assert (
        json.loads(page.get_by_test_id("panel-attn-entropy").get_attribute("data-values"))
        == step["attn_entropy"]
    )


def test_generate_and_step_with_the_keyboard(page):
    # greedy: the drawn token is always in the panel's lists (a sampled one may lie outside the top 10)
    fill_generate(page, "The capital of France is", 6, 0)
    with page.expect_response("**/api/generate") as info:
        page.get_by_test_id("gen-submit").click()
    events = parse_sse(info.value.text())
    steps = [d for e, d in events if e == "token"]
    assert len(steps) == 6 and events[-1][0] == "done"
    chips = page.get_by_test_id("gen-tokens").get_by_test_id("gen-token")
    chips.nth(5).wait_for()
    assert chips.count() == 6
    assert [chips.nth(i).get_attribute("data-index") for i in range(6)] == [str(i) for i in range(6)]
    page.wait_for_function(
        "() => document.querySelector('[data-testid=gen-selected-index]').dataset.index === '5'"
    )
    _check_panels(page, steps[5])
    # shown 1-based, as "token N of M": the sixth of six
    assert page.get_by_test_id("gen-selected-index").inner_text().strip() == "6"
    assert "/ 6" in page.locator(".pos").inner_text()

    # keys belong to the view with the focus (bound to its element, not the window): clicking a token
    # gives it the focus, and out of the text fields
    chips.nth(5).click()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert _selected(page) == 3
    assert chips.nth(3).get_attribute("class") and "selected" in chips.nth(3).get_attribute("class")
    _check_panels(page, steps[3])
    page.keyboard.press("ArrowRight")
    assert _selected(page) == 4
    page.get_by_test_id("gen-prev").click()
    assert _selected(page) == 3
    page.get_by_test_id("gen-next").click()
    page.get_by_test_id("gen-next").click()
    assert _selected(page) == 5
    assert page.get_by_test_id("gen-next").get_attribute("aria-disabled") == "true"  # at the last token
    page.keyboard.press("ArrowRight")
    assert _selected(page) == 5
    page.screenshot(path=str(ARTIFACTS / "generate.png"), full_page=True)


def _values(page) -> list[str]:
    return page.eval_on_selector_all(
        "[data-testid=explore-tokens] [data-testid=token]",
        "els => els.map(e => e.getAttribute('data-value'))",
    )


TEXT = "The capital of France is Paris.\nThe capital of Germany is Berlin.\ndef f(x):\n    return x"


def test_explore_metrics_tooltip_and_predictions(page, server_url):
    data = run_explore(page, TEXT)
    T = len(data["tokens"])
    tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
    assert tokens.count() == T

    # each token shows the prediction that produced it: token t the summary's position t-1, none at 0
    for metric, key in (("entropy", "entropy"), ("loss", "loss")):
        page.get_by_test_id("metric-select").select_option(metric)
        want = data[key][0]  # token 1 shows position 0's value (the values arrive from the server)
        page.wait_for_function(
            "w => Math.abs(Number(document.querySelectorAll("
            "'[data-testid=explore-tokens] [data-testid=token]')[1].getAttribute('data-value')) - w)"
            " < 1e-6 * Math.max(1, Math.abs(w))",
            arg=want,
        )
        values = _values(page)
        assert [float(v) for v in values[1:]] == pytest.approx(data[key][:-1], rel=1e-6) and values[0] == ""

    tokens.nth(3).hover()
    tooltip = page.get_by_test_id("tooltip")
    tooltip.wait_for(state="visible")
    assert "#3" in tooltip.inner_text() and f"{data['loss'][2]:.3f}"[:4] in tooltip.inner_text()

    tokens.nth(3).click()
    rows = page.get_by_test_id("panel-predictions").get_by_test_id("pred-row")
    top5 = list(zip(data["topk_tokens"][2][:5], data["topk_probs"][2][:5], strict=True))  # made at #2
    shown = [(rows.nth(i).get_attribute("data-token"), float(rows.nth(i).get_attribute("data-prob")))
             for i in range(5)]  # fmt: skip
    assert shown == top5
    actual = page.get_by_test_id("panel-predictions").locator("[data-testid=pred-row].actual")
    assert actual.count() == 1 and actual.get_attribute("data-token") == data["tokens"][3]
    assert f"{data['loss'][2]:.2f}" in page.get_by_test_id("explore-loss").inner_text()
    tokens.nth(2).click()

    # attention from the selected token: the row the API serves for that layer/head/query
    page.get_by_test_id("layer-input").fill("1")
    page.get_by_test_id("layer-input").press("Enter")
    page.get_by_test_id("head-input").fill("2")
    page.get_by_test_id("head-input").press("Enter")
    with page.expect_response("**/metric?*") as info:
        page.get_by_test_id("metric-select").select_option("attn-from")
    row = page.request.get(f"{server_url}/api/traces/{data['id']}/attention?layer=1&head=2&query=2").json()
    page.wait_for_function("() => document.querySelector('[data-testid=explore-tokens] [data-testid=token]')"
                           ".getAttribute('data-value') !== ''")  # fmt: skip
    got = [float(v) if v else 0.0 for v in _values(page)]
    assert got[:3] == pytest.approx(row["data"][0][:3], abs=1e-3)
    assert info.value.ok

    # opposite attention: how much later tokens attend to the selected one
    with page.expect_response("**/metric?*"):
        page.get_by_test_id("metric-select").select_option("attn-to")
    col = page.request.get(f"{server_url}/api/traces/{data['id']}/attention?layer=1&head=2&key=2").json()
    page.wait_for_timeout(200)
    got = [float(v) if v else 0.0 for v in _values(page)]
    assert got[2:] == pytest.approx(col["data"][0][2:], abs=1e-3)

    # ArrowUp in the layer box steps it, bounded by the model's layers
    page.get_by_test_id("layer-input").press("ArrowUp")
    assert page.get_by_test_id("layer-input").input_value() == "1"  # tiny model has layers 0..1
    page.get_by_test_id("layer-input").press("ArrowDown")
    assert page.get_by_test_id("layer-input").input_value() == "0"
    page.screenshot(path=str(ARTIFACTS / "explore.png"), full_page=True)


def test_explore_opacity_and_newlines(page):
    run_explore(page, TEXT)
    container = page.get_by_test_id("explore-tokens")
    with_glyph = container.inner_text()
    page.get_by_test_id("show-newlines").set_checked(not page.get_by_test_id("show-newlines").is_checked())
    assert container.inner_text() != with_glyph
    slider = page.get_by_test_id("opacity-slider")
    before = container.get_by_test_id("token").nth(1).evaluate("e => getComputedStyle(e).backgroundColor")
    slider.fill(slider.get_attribute("min") or "0")
    after = container.get_by_test_id("token").nth(1).evaluate("e => getComputedStyle(e).backgroundColor")
    assert before != after
    assert (
        page.get_by_test_id("scale-min").inner_text().strip()
        and page.get_by_test_id("scale-max").inner_text()
    )


def test_bad_input_shows_the_servers_message(page):
    page.get_by_test_id("tab-explore").click()
    page.get_by_test_id("explore-text").fill("   ")
    page.get_by_test_id("explore-run").click()
    page.get_by_test_id("explore-error").filter(has_text="empty").wait_for(timeout=5000)


LONGEST_TASK = """() => {
  window.__longest = 0;
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
  }).observe({type: "longtask", buffered: true});
}"""


@pytest.mark.parametrize("lines, at_least", [(48, 2048), (95, 4085)])  # 43 tiny-model tokens a line
def test_a_long_text_stays_responsive(page, lines, at_least):
    page.evaluate(LONGEST_TASK)
    words = "alpha beta gamma delta, the capital of France is Paris. def f(x): return x + 1\n"
    data = run_explore(page, words * lines)
    n = len(data["tokens"])
    assert n >= at_least, n
    tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
    tokens.nth(n // 2).hover()
    page.get_by_test_id("tooltip").wait_for(state="visible", timeout=3000)
    page.get_by_test_id("metric-select").select_option("entropy")
    tokens.nth(n - 1).click()
    page.get_by_test_id("panel-predictions").get_by_test_id("pred-row").first.wait_for()
    longest = page.evaluate("window.__longest")
    assert longest < 1500, f"the main thread was blocked for {longest:.0f} ms"
    page.screenshot(path=str(ARTIFACTS / f"explore-{n}-tokens.png"))
