"""The Attention tab's "Information flow" section in headless Chromium: the drawn edges are the
route's (GET /api/traces/{id}/flow, itself lmpeek.flow's graph: tests/server/test_routes_flow.py),
a hovered edge says the route's layer, head, token and flow, the threshold slider and the contrast
picker re-ask the server. Screenshots go to test-artifacts/ (and /tmp/h7 when it exists)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, run_explore

TEXT = "The capital of France is Paris. The capital of Germany is Berlin"


def _flow(page, base: str, tid: str, **params) -> dict:
    r = page.request.get(f"{base}/api/traces/{tid}/flow", params=params)
    assert r.ok, r.text()
    return r.json()


def _drawn(page) -> list[dict]:
    return page.get_by_test_id("flow-edge").evaluate_all(
        "els => els.map(e => ({source: e.dataset.source, target: e.dataset.target, kind: e.dataset.kind,"
        " head: e.dataset.head, flow: +e.dataset.flow, stroke: e.getAttribute('stroke')}))"
    )


def _wait_edges(page, n: int) -> None:
    page.wait_for_function(
        "n => { const s = document.querySelector('[data-testid=flow-svg]');"
        " return s && +s.dataset.edges === n"
        " && document.querySelectorAll('[data-testid=flow-edge]').length === n"
        " && document.querySelector('[data-testid=flow-view]').dataset.loading === 'false'; }",
        arg=n,
    )


def _key(e: dict) -> tuple:
    return (e["source"], e["target"], e["kind"], "" if e["head"] is None else str(e["head"]))


def check_drawn(page, want: dict) -> None:
    """The page draws exactly `want`'s edges (a flow graph's JSON), each with its flow."""
    assert want["edges"], "a graph with no edge tests nothing"
    _wait_edges(page, len(want["edges"]))
    drawn = _drawn(page)
    assert sorted(_key(e) for e in drawn) == sorted(_key(e) for e in want["edges"])
    flows = {_key(e): e["flow"] for e in want["edges"]}
    assert all(d["flow"] == pytest.approx(flows[_key(d)], rel=1e-12) for d in drawn)


def _check_view(page, base: str, tid: str, tokens: list[str], token: int, shot: str) -> dict:
    page.get_by_test_id("flow-token").select_option(str(token))
    want = _flow(page, base, tid, token=token, threshold=0.04)
    check_drawn(page, want)
    assert page.get_by_test_id("flow-node").count() == len(want["nodes"])

    # hovering the widest head edge says its layer, head, token and flow (3 significant digits)
    e = max((e for e in want["edges"] if e["kind"] == "head"), key=lambda e: e["flow"])
    layer = int(re.match(r"A(\d+)_", e["target"]).group(1))
    dst = int(e["target"].split("_")[1])
    sel = f"[data-testid=flow-edge][data-source='{e['source']}'][data-target='{e['target']}']"
    sel += f"[data-head='{e['head']}']"
    page.locator(sel).dispatch_event("mouseenter")
    text = page.get_by_test_id("flow-hover").inner_text()
    assert text.startswith(f"L{layer} H{e['head']} → token '{tokens[dst]}', flow "), text
    shown = float(re.search(r"flow ([0-9.e-]+)", text).group(1))
    assert shown == pytest.approx(e["flow"], rel=5e-3)
    for d in (ARTIFACTS, Path("/tmp/h7")):
        if d.is_dir():
            page.get_by_test_id("flow-view").screenshot(path=str(d / shot))
    return want


def test_flow_view_draws_the_route_graph(page, server_url):
    data = run_explore(page, TEXT)
    tid, tokens = data["id"], data["tokens"]
    page.get_by_test_id("tab-attention").click()
    page.get_by_test_id("flow-view").wait_for()
    token = len(tokens) - 2
    _check_view(page, server_url, tid, tokens, token, "flow-view.png")

    # the slider's last stop (0.10) re-asks the server: fewer edges, the route's
    page.get_by_test_id("flow-threshold").fill("7")
    high = _flow(page, server_url, tid, token=token, threshold=0.1)
    _wait_edges(page, len(high["edges"]))
    assert page.get_by_test_id("flow-threshold-value").inner_text() == "0.10"
    assert sorted(_key(e) for e in _drawn(page)) == sorted(_key(e) for e in high["edges"])

    # a contrast token B from the top-k: edges pushing toward B are drawn in their own colour
    option = page.get_by_test_id("flow-contrast").locator("option").nth(1)
    b = int(option.get_attribute("value"))
    page.get_by_test_id("flow-contrast").select_option(str(b))
    contra = _flow(page, server_url, tid, token=token, threshold=0.1, contrast=b)
    _wait_edges(page, len(contra["edges"]))
    page.wait_for_function(
        "() => document.querySelector('[data-testid=flow-view] .sub')?.textContent.includes('rather than')"
    )
    negative = sorted(_key(e) for e in contra["edges"] if e["contrast"] < 0)
    assert sorted(_key(e) for e in _drawn(page) if e["stroke"] == "#e11d48") == negative


@pytest.mark.slow
def test_flow_view_on_the_default_model(default_page, default_server_url):
    data = run_explore(default_page, "The Eiffel Tower is in the city of")
    default_page.get_by_test_id("tab-attention").click()
    default_page.get_by_test_id("flow-view").wait_for()
    _check_view(
        default_page,
        default_server_url,
        data["id"],
        data["tokens"],
        len(data["tokens"]) - 1,
        "flow-view-default.png",
    )


def test_export_shows_the_recorded_flow_and_says_what_it_lacks(browser, tmp_path):
    import warnings

    import lmpeek
    from lmpeek.session import Session
    from lmpeek.views.export import export_html

    from .conftest import offline_page

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    with Session(model) as s:
        stored = s.trace(TEXT)
        T = len(stored.trace)
        path = tmp_path / "flow.html"
        path.write_text(export_html(s, stored.id, "flow", view="attention"), encoding="utf-8")
        want = {t: s.flow(stored.id, T - 1, t).to_json() for t in (0.04, 0.1)}
    with offline_page(browser, path, viewport={"width": 1400, "height": 1000}) as page:
        page.get_by_test_id("flow-view").wait_for()
        page.get_by_test_id("flow-token").select_option(str(T - 1))
        _wait_edges(page, len(want[0.04]["edges"]))
        assert sorted(_key(e) for e in _drawn(page)) == sorted(_key(e) for e in want[0.04]["edges"])
        page.get_by_test_id("flow-threshold").fill("7")  # 0.10: recorded
        _wait_edges(page, len(want[0.1]["edges"]))
        page.get_by_test_id("flow-threshold").fill("0")  # 0.01: not recorded, and it says so
        err = page.get_by_test_id("flow-view").get_by_test_id("panel-error")
        err.wait_for()
        assert "not in this export" in err.inner_text() and "threshold 0.01" in err.inner_text()
        page.get_by_test_id("flow-token").select_option("2")  # another token: names the include
        page.wait_for_function(
            "() => document.querySelector('[data-testid=flow-view] [data-testid=panel-error]')"
            "?.textContent.includes('--include flow=2')"
        )


def test_a_long_text_asks_for_its_graph_only_once_opened(page, server_url):
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/flow?" in r.url else None)
    data = run_explore(page, " ".join(f"w{i}" for i in range(600)))
    assert len(data["tokens"]) > 512
    page.get_by_test_id("tab-attention").click()
    view = page.get_by_test_id("flow-view")
    view.wait_for()
    assert "open to compute" in view.inner_text() and view.get_by_test_id("flow-svg").count() == 0
    page.wait_for_timeout(300)  # the loader's delay is 40 ms: a request would have gone by now
    assert asked == []
    view.locator("button.toggle").click()
    page.get_by_test_id("flow-svg").wait_for()
    assert len(asked) == 1
