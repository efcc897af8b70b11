"""Honest colour scales in the Explore view: one-signed metrics are drawn sequential from the limits the
server returned (no "negative" colour), signed metrics diverging around exactly 0, and a first token
left out of the limits is marked while the others spread over the colours."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, run_explore

TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "The capital of France is Paris, and the capital of Italy is Rome."
)  # the Explore view's default text


def _metric(page, select: str, value: str, name: str | None = None) -> dict:
    """Select a metric (or another control's value, for metric `name`) and return the /metric answer
    the page coloured by."""
    name = name or value
    with page.expect_response(lambda r: "/metric?" in r.url and f"name={name}&" in r.url and r.ok) as info:
        page.get_by_test_id(select).select_option(value)
    data = info.value.json()
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=explore-tokens] [data-testid=token]')]"
        ".filter(e => e.dataset.value !== '').length >= n",
        arg=sum(v is not None for v in data["values"]),
    )
    return data


def _legend(page) -> dict:
    legend = page.get_by_test_id("scale-legend")
    return {k: legend.get_attribute(f"data-{k}") for k in ("kind", "min", "divider", "max")}


def _tokens(page) -> list[dict]:
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=explore-tokens] [data-testid=token]')].map(e => {
             const m = getComputedStyle(e).backgroundColor.match(/\\d+/g) || [];
             return {value: e.dataset.value, rgb: m.slice(0, 3).map(Number),
                     clipped: e.dataset.clipped || null, leftOut: e.dataset.leftOut === 'true',
                     marker: getComputedStyle(e, '::before').content};
           })"""
    )


def test_norm_is_sequential_with_the_servers_limits(page):
    run_explore(page, TEXT)
    page.get_by_test_id("opacity-slider").fill("1")
    page.get_by_test_id("skip-first").set_checked(False)
    data = _metric(page, "metric-select", "norm")
    s = data["scale"]
    assert s["kind"] == "sequential" and s["min"] == 0.0  # raw: from a norm's floor
    legend = _legend(page)
    assert legend["kind"] == "sequential"
    assert [float(legend[k]) for k in ("min", "divider", "max")] == [s["min"], s["divider"], s["max"]]
    assert (
        page.get_by_test_id("scale-min").inner_text().strip()
        and page.get_by_test_id("scale-max").inner_text()
    )
    toks = _tokens(page)
    coloured = [t for t in toks if t["value"] != ""]
    assert len(coloured) == len(toks)
    # the orange map has no "negative" (blue) side: red always dominates blue
    assert all(t["rgb"][0] >= t["rgb"][2] for t in coloured), [t["rgb"] for t in coloured]
    # min-max: the lightest colour at the smallest value
    data = _metric(page, "scale-select", "minmax", "norm")
    s = data["scale"]
    assert s["min"] == pytest.approx(min(v for v in data["values"] if v is not None))
    assert float(_legend(page)["min"]) == s["min"]
    toks = _tokens(page)
    i_min = data["values"].index(min(data["values"]))
    assert toks[i_min]["rgb"] == max((t["rgb"] for t in toks), key=sum)  # the palest


def test_signed_metrics_diverge_around_zero(page):
    run_explore(page, TEXT)
    page.get_by_test_id("opacity-slider").fill("1")
    page.get_by_test_id("component-select").select_option("blocks.{l}.hook_resid_post")
    page.get_by_test_id("dim-input").fill("3")
    data = _metric(page, "metric-select", "act-value")
    s = data["scale"]
    assert s["kind"] == "diverging" and s["divider"] == 0.0 and s["min"] == -s["max"]
    legend = _legend(page)
    assert legend["kind"] == "diverging" and float(legend["divider"]) == 0.0
    assert (float(legend["min"]), float(legend["max"])) == (s["min"], s["max"])
    toks = _tokens(page)
    signs = {"neg": 0, "pos": 0}
    for t, v in zip(toks, data["values"], strict=True):
        if v is None or abs(v) < 0.05 * s["max"]:
            continue
        r, _, b = t["rgb"]
        if v < 0:
            assert b > r, (v, t["rgb"])  # negative: the blue side
            signs["neg"] += 1
        else:
            assert r > b, (v, t["rgb"])  # positive: the red side
            signs["pos"] += 1
    assert signs["neg"] and signs["pos"], signs  # the check saw both sides
    # cosines: the natural range -1..1, white at 0 (not at the data's middle)
    page.get_by_test_id("layer-input").fill("1")  # 'previous' needs a layer before it
    data = _metric(page, "metric-select", "cos-previous")
    assert (data["scale"]["min"], data["scale"]["divider"], data["scale"]["max"]) == (-1.0, 0.0, 1.0)
    assert [float(_legend(page)[k]) for k in ("min", "divider", "max")] == [-1.0, 0.0, 1.0]


def test_first_token_left_out_is_marked_and_the_rest_spread(page):
    run_explore(page, TEXT)
    page.get_by_test_id("opacity-slider").fill("1")
    assert page.get_by_test_id("skip-first").is_checked()  # on by default
    data = _metric(page, "metric-select", "norm")
    s = data["scale"]
    assert s["left_out"] == [0]
    toks = _tokens(page)
    assert toks[0]["leftOut"] and not any(t["leftOut"] for t in toks[1:])
    first = page.get_by_test_id("explore-tokens").get_by_test_id("token").first
    assert "repeating-linear-gradient" in first.evaluate(
        "e => getComputedStyle(e).backgroundImage"
    )  # hatched
    assert len({tuple(t["rgb"]) for t in toks[1:]}) >= 3  # the others spread over the colour range
    # clipping: the marks are the server's list, each with its ▲/▼
    data = _metric(page, "scale-select", "outliers", "norm")
    toks = _tokens(page)
    marked = [i for i, t in enumerate(toks) if t["clipped"]]
    assert marked == data["scale"]["clipped"]
    for i in marked:
        assert toks[i]["marker"] in ('"▲"', '"▼"')
    if marked:
        page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(marked[0]).hover()
        page.get_by_test_id("tooltip-clipped").filter(has_text="outside the colour limits").wait_for()


def test_compared_texts_share_the_servers_limits(page):
    run_explore(page, TEXT)
    page.get_by_test_id("explore-text").fill("Short text, huge differences.")
    with page.expect_response("**/api/trace"):
        page.get_by_test_id("explore-run-new").click()
    page.get_by_test_id("explore-tokens").get_by_test_id("token").first.wait_for()
    page.get_by_test_id("metric-select").select_option("act-norm")
    with page.expect_response(lambda r: "/metric?" in r.url and "with=" in r.url and r.ok) as info:
        page.get_by_test_id("side-by-side").check()
    data = info.value.json()
    s, sw = data["scale"], data["scale_with"]
    assert (s["min"], s["max"]) == (sw["min"], sw["max"])
    both = [v for v in data["values"][1:] + data["values_with"][1:] if v is not None]
    assert s["max"] == pytest.approx(max(both))  # raw, first tokens left out: 0..max over both texts
    b = page.get_by_test_id("explore-tokens-b").get_by_test_id("token")
    b.nth(len(data["values_with"]) - 1).wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=explore-tokens-b] [data-testid=token]')]"
        ".every(e => e.dataset.value !== '')"
    )
    got = [float(b.nth(i).get_attribute("data-value")) for i in range(b.count())]
    assert got == pytest.approx(data["values_with"])
    assert [float(_legend(page)[k]) for k in ("min", "max")] == [s["min"], s["max"]]


@pytest.mark.slow
def test_default_model_first_token_norm_does_not_wash_out_the_rest(default_page):
    """SmolLM2's first residual norm is ~100x the others: left out, the rest use the whole map."""
    page = default_page
    run_explore(page, TEXT)
    page.get_by_test_id("opacity-slider").fill("1")
    page.get_by_test_id("layer-input").fill("15")  # from layer ~11 on: ~22,600 against 150-250
    data = _metric(page, "metric-select", "norm")
    v, s = data["values"], data["scale"]
    assert v[0] > 20 * max(v[1:])  # the outlier is there
    assert s["left_out"] == [0] and s["clipped"] == [0] and s["max"] == pytest.approx(max(v[1:]))
    toks = _tokens(page)
    assert toks[0]["clipped"] == "high" and toks[0]["marker"] == '"▲"'
    assert len({tuple(t["rgb"]) for t in toks[1:]}) >= 10
    page.screenshot(path=str(ARTIFACTS / "explore-norm-default.png"))
    page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(4).click()
    data = _metric(page, "scale-select", "minmax", "norm")
    assert data["scale"]["min"] == pytest.approx(min(data["values"][1:]))
    page.get_by_test_id("explore-tokens").screenshot(path=str(ARTIFACTS / "explore-norm-default-minmax.png"))
