"""The Why tab's Steering section in Chromium against a real server (tiny model): a neuron steered at
strength 0 shows the plain text twice; a sweep shows the route's texts, per-token Δ log-p and KL (to
the shown digits) and one table row per strength with the route's mean KL; a mean difference runs; a
repeat is answered from the cache; "steer…" on a flow-graph node fills the form with its direction.
Screenshots: test-artifacts/why-steering.png, why-steering-node.png (1280×800). Waits are on
conditions, never on time."""

from __future__ import annotations

from .conftest import ARTIFACTS, parse_sse, run_explore

PROMPT = "The cat sat on the"


def _open(page) -> None:
    page.set_viewport_size({"width": 1280, "height": 800})
    page.get_by_test_id("tab-why").click()
    page.get_by_test_id("why-tab-steering").click()
    page.get_by_test_id("steer-form").wait_for()
    page.get_by_test_id("steer-prompt").fill(PROMPT)


def _run(page) -> dict:
    """Press Run; the route's `result` once the page shows it."""
    with page.expect_response("**/api/why/steer", timeout=60_000) as info:
        page.get_by_test_id("steer-run").click()
    events = parse_sse(info.value.text())
    assert events[0][0] == "estimate" and events[-1][0] == "result", events[-1]
    page.get_by_test_id("steer-run").wait_for(timeout=60_000)  # back from Cancel: the run ended
    page.get_by_test_id("steer-result").wait_for()
    return events[-1][1]


def _shown(page) -> list[list[str]]:
    return page.get_by_test_id("steer-token").evaluate_all(
        "els => els.map(e => [e.firstChild.textContent, e.dataset.delta, e.dataset.kl])"
    )


def _same_as_route(page, run: dict) -> None:
    shown = _shown(page)
    assert len(shown) == len(run["tokens"])
    for (_text, delta, kl), d, k in zip(shown, run["delta_logp"], run["kl"], strict=True):
        assert abs(float(delta) - d) <= 0.0005 + 1e-9 and abs(float(kl) - k) <= 0.00005 + 1e-9, (
            delta,
            d,
            kl,
            k,
        )


def test_strength_zero_shows_the_plain_text_twice(page):
    _open(page)
    page.get_by_test_id("steer-neuron-layer").fill("1")
    page.get_by_test_id("steer-neuron-layer").dispatch_event("change")
    page.get_by_test_id("steer-strength").fill("0")
    page.get_by_test_id("steer-strength").dispatch_event("change")
    page.get_by_test_id("steer-tokens").fill("10")
    page.get_by_test_id("steer-tokens").dispatch_event("change")
    res = _run(page)
    run = res["runs"][0]
    assert run["same"] and run["ids"] == res["plain"]["ids"] and res["hooks"] == ["blocks.1.hook_resid_post"]
    plain = page.get_by_test_id("steer-plain-token").all_text_contents()
    steered = [t for t, _, _ in _shown(page)]
    assert plain == steered and len(plain) == len(res["plain"]["tokens"])
    assert all(d == "+0.000" and k == "0.0000" for _, d, k in _shown(page))
    assert "the same tokens" in page.get_by_test_id("steer-steered").inner_text()


def test_sweep_shows_the_routes_numbers_and_a_repeat_is_cached(page):
    _open(page)
    page.get_by_test_id("steer-strength").fill("2")
    page.get_by_test_id("steer-strength").dispatch_event("change")
    page.get_by_test_id("steer-tokens").fill("12")
    page.get_by_test_id("steer-tokens").dispatch_event("change")
    page.get_by_test_id("steer-sweep").check()
    res = _run(page)
    assert [r["strength"] for r in res["runs"]] == [0.25, 0.5, 1.0, 2.0, 4.0]
    _same_as_route(page, res["runs"][-1])  # the strongest is shown side by side first
    text = page.get_by_test_id("steer-steered").inner_text()
    assert "strength 4" in text
    rows = page.get_by_test_id("steer-sweep-row")
    assert rows.count() == 5
    kls = page.get_by_test_id("steer-sweep-kl").all_text_contents()
    assert [
        abs(float(k) - r["mean_kl"]) <= 0.00005 + 1e-9 for k, r in zip(kls, res["runs"], strict=True)
    ] == [True] * 5
    rows.nth(1).click()  # another strength side by side
    _same_as_route(page, res["runs"][1])
    shown = lambda v: str(float(f"{v:.3f}")).removesuffix(".0")  # noqa: E731  (lib/steering fmtNum)
    c_text = f"c = 2 × {shown(res['norms'][0])} = {shown(2 * res['norms'][0])}"  # the norm the run measured
    assert page.get_by_test_id("steer-c").inner_text() == c_text
    page.screenshot(path=str(ARTIFACTS / "why-steering.png"), full_page=True)

    again = _run(page)
    page.locator("[data-testid=steer-result][data-cached=true]").wait_for(timeout=30_000)
    assert "cached" in page.get_by_test_id("steer-estimate").inner_text()
    assert again["runs"] == res["runs"]


def test_mean_difference(page):
    _open(page)
    page.get_by_test_id("steer-kind").select_option("mean_difference")
    page.get_by_test_id("steer-positive").fill("I love it\nSo happy")
    page.get_by_test_id("steer-negative").fill("I hate it\nSo sad")
    page.get_by_test_id("steer-mode").select_option("project")
    page.get_by_test_id("steer-positions").select_option("prompt")
    res = _run(page)
    assert res["direction"]["kind"] == "mean_difference" and res["mode"] == "project"
    assert res["positions"] == list(range(len(res["prompt_tokens"])))
    _same_as_route(page, res["runs"][0])
    assert "mean difference (2 vs 2 prompts)" in page.get_by_test_id("steer-meta").inner_text()
    page.get_by_test_id("steer-negative").fill("\n")
    assert page.get_by_test_id("steer-run").is_disabled()
    assert "each side" in page.get_by_test_id("steer-problem").inner_text()


def test_steer_from_a_flow_node_lands_in_the_steering_section_with_the_node_direction(page):
    """ "steer…" on a flow graph's MLP node fills the Steering form with that node's direction (the
    trace's text, blocks.L.hook_mlp_out, its token) without running; Run steers at that hook with the
    route's numbers shown."""
    text = "The capital of France is Paris"
    page.set_viewport_size({"width": 1280, "height": 800})
    run_explore(page, text)
    page.get_by_test_id("tab-attention").click()
    page.get_by_test_id("flow-svg").wait_for(timeout=60_000)
    node = page.locator("[data-testid=flow-node][data-id^='M']").first
    node_id = node.get_attribute("data-id")  # M{layer}_{token}
    layer, token = (int(x) for x in node_id[1:].split("_"))
    node.dispatch_event("click")
    page.get_by_test_id("flow-picked").screenshot(path=str(ARTIFACTS / "flow-steer-action.png"))
    page.get_by_test_id("flow-steer").click()

    page.get_by_test_id("why-view").wait_for()
    assert "active" in (page.get_by_test_id("why-tab-steering").get_attribute("class") or "")
    page.get_by_test_id("steer-form").wait_for()
    assert page.get_by_test_id("steer-prompt").input_value() == text
    assert page.get_by_test_id("steer-kind").input_value() == "node"
    assert page.get_by_test_id("steer-node-point").input_value() == "hook_mlp_out"
    assert page.get_by_test_id("steer-node-layer").input_value() == str(layer)
    assert page.get_by_test_id("steer-node-position").input_value() == str(token)
    chosen = page.locator("[data-testid=steer-node-token].on")
    chosen.wait_for(timeout=30_000)  # the token picker shows the text's tokens, the node's one picked
    assert chosen.get_attribute("data-index") == str(token)
    assert page.get_by_test_id("steer-result").count() == 0  # not run by itself

    page.get_by_test_id("steer-tokens").fill("8")
    page.get_by_test_id("steer-tokens").dispatch_event("change")
    res = _run(page)
    hook = f"blocks.{layer}.hook_mlp_out"
    assert res["direction"]["kind"] == "node" and res["direction"]["hook"] == hook
    assert res["direction"]["position"] == token and res["hooks"] == [hook]
    assert f"node {hook} @ #{token}" in page.get_by_test_id("steer-meta").inner_text()
    _same_as_route(page, res["runs"][0])
    page.screenshot(path=str(ARTIFACTS / "why-steering-node.png"), full_page=True)
