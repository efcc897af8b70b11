"""Explore view's deep analysis in Chromium: component/layer/head selectors, histogram and outliers,
vector download, logit lens, samples as tabs, side-by-side. Values are compared with the API's."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest

from .conftest import ARTIFACTS, run_explore
from .test_views import TEXT, _values


def _api(page, url, path, **params):
    r = page.request.get(f"{url}{path}", params=params)
    assert r.ok, r.text()
    return r.json()


def _wait_values(page, previous=None):
    page.wait_for_function(
        """prev => {
          const els = [...document.querySelectorAll("[data-testid=explore-tokens] [data-testid=token]")];
          const v = els.map(e => e.getAttribute("data-value")).join("|");
          return els.length && !els.every(e => e.getAttribute("data-value") === "") && v !== prev;
        }""",
        arg=previous,
    )
    return _values(page)


def test_component_layer_head_selectors_colour_by_activation(page, server_url):
    data = run_explore(page, TEXT)
    tid = data["id"]
    page.get_by_test_id("metric-select").select_option("act-norm")
    page.get_by_test_id("component-select").select_option("blocks.{l}.hook_mlp_out")
    page.get_by_test_id("layer-input").fill("1")
    page.get_by_test_id("layer-input").press("Enter")
    want = _api(page, server_url, f"/api/traces/{tid}/activations", hook="blocks.1.hook_mlp_out", stat="norm")
    page.wait_for_timeout(300)
    got = [float(v) for v in _wait_values(page)]
    assert got == pytest.approx(want["values"], rel=1e-4)

    # a per-head point: head selector in use
    page.get_by_test_id("component-select").select_option("blocks.{l}.attn.hook_q")
    page.get_by_test_id("head-input").fill("2")
    page.get_by_test_id("head-input").press("Enter")
    page.wait_for_timeout(300)
    want = _api(
        page, server_url, f"/api/traces/{tid}/activations", hook="blocks.1.attn.hook_q", head=2, stat="norm"
    )
    got = [float(v) for v in _wait_values(page, "|".join(map(str, want["values"])) + "x")]
    assert got == pytest.approx(want["values"], rel=1e-4)

    # one dimension, signed
    page.get_by_test_id("metric-select").select_option("act-value")
    page.get_by_test_id("dim-input").fill("5")
    page.get_by_test_id("dim-input").press("Enter")
    page.wait_for_timeout(300)
    want = _api(
        page,
        server_url,
        f"/api/traces/{tid}/activations",
        hook="blocks.1.attn.hook_q",
        head=2,
        stat="value",
        dim=5,
    )
    got = [float(v) for v in _wait_values(page)]
    assert got == pytest.approx(want["values"], rel=1e-4)
    page.screenshot(path=str(ARTIFACTS / "explore-activations.png"), full_page=True)


def test_histogram_outliers_and_download(page, server_url):
    data = run_explore(page, TEXT)
    page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(4).click()
    page.get_by_test_id("component-select").select_option("blocks.{l}.hook_resid_post")
    hist = page.get_by_test_id("panel-histogram")
    hist.scroll_into_view_if_needed()
    hist.locator("svg").first.wait_for()
    want = _api(
        page,
        server_url,
        f"/api/traces/{data['id']}/histogram",
        hook=f"blocks.{_layer(page)}.hook_resid_post",
        token=4,
    )
    dims = [int(b.get_attribute("data-dim")) for b in hist.get_by_test_id("outlier-dim").all()]
    assert dims == want["outliers"]["dims"]
    if dims:
        hist.get_by_test_id("outlier-dim").first.click()
        assert page.get_by_test_id("metric-select").input_value() == "act-value"
        assert page.get_by_test_id("dim-input").input_value() == str(dims[0])
    with page.expect_download() as info:
        page.get_by_test_id("download-vector").click()
    path = info.value.path()
    vec = np.load(io.BytesIO(pathlib.Path(path).read_bytes()))
    want_vec = _api(
        page,
        server_url,
        f"/api/traces/{data['id']}/vector",
        hook=f"blocks.{_layer(page)}.hook_resid_post",
        token=4,
    )["data"]
    assert vec.shape == (64,) and vec == pytest.approx(want_vec, rel=1e-6)
    page.screenshot(path=str(ARTIFACTS / "explore-histogram.png"), full_page=True)


def _layer(page) -> int:
    return int(page.get_by_test_id("layer-input").input_value())


def test_logit_lens_panel(page, server_url):
    data = run_explore(page, TEXT)
    page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(3).click()
    lens = page.get_by_test_id("panel-logit-lens")
    lens.scroll_into_view_if_needed()
    rows = lens.get_by_test_id("lens-row")
    rows.first.wait_for()
    # token 3's prediction formed at position 2: the lens there, following token 3
    want = _api(
        page, server_url, f"/api/traces/{data['id']}/logit_lens", token=2, k=5, target=data["token_ids"][3]
    )
    assert rows.count() == len(want["tokens"]) == 2
    shown = [c.get_attribute("data-token") for c in rows.first.locator("td[data-token]").all()]
    assert shown == want["tokens"][0]
    ranks = [int(c.get_attribute("data-rank")) for c in lens.get_by_test_id("lens-target").all()]
    assert ranks == want["target"]["ranks"]


def test_samples_tabs_and_side_by_side(page, server_url):
    samples = _api(page, server_url, "/api/samples")
    select = page.get_by_test_id("sample-select")
    page.get_by_test_id("tab-explore").click()
    tabs = page.get_by_test_id("sample-tab")
    for n, sample in enumerate(samples[:2], start=1):
        with page.expect_response("**/api/trace"):
            select.select_option(sample["id"])
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=sample-tab]').length >= n", arg=n, timeout=10_000
        )
        page.get_by_test_id("explore-tokens").get_by_test_id("token").first.wait_for()
    assert tabs.count() >= 2
    assert "active" in (tabs.nth(tabs.count() - 1).get_attribute("class") or "")
    page.get_by_test_id("metric-select").select_option("entropy")
    page.get_by_test_id("side-by-side").check()
    other = page.get_by_test_id("explore-tokens-b")
    other.get_by_test_id("token").first.wait_for()
    assert page.get_by_test_id("explore-tokens").get_by_test_id("token").count() > 10
    assert other.get_by_test_id("token").count() > 10
    page.get_by_test_id("panel-compare").wait_for()
    page.screenshot(path=str(ARTIFACTS / "explore-side-by-side.png"), full_page=True)


def test_the_neuron_box_stays_within_the_mlp(page, server_url):
    """An out-of-range neuron index is clamped to the MLP's width before anything is asked for."""
    run_explore(page, TEXT)
    width = page.request.get(f"{server_url}/api/health").json()["model"]["d_mlp"]  # page.url holds view state
    page.get_by_test_id("metric-select").select_option("neuron")
    box = page.get_by_test_id("neuron-input")
    assert box.get_attribute("max") == str(width - 1)
    with page.expect_response(lambda r: "name=neuron" in r.url and f"neuron={width - 1}" in r.url) as info:
        box.fill("99999")
    assert info.value.status == 200
    box.dispatch_event("change")
    assert box.input_value() == str(width - 1)
