"""The Attention tab in headless Chromium: the model view has a thumbnail per layer × head, clicking one
opens that head in the head view, whose lines carry the server's attention weights for the selected
token (both directions), and the neuron view's q·k sum × scale is the pre-softmax score whose softmax
is the pattern. An export (no server) says what it lacks instead of failing. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.session import Session
from lmpeek.views.export import export_html

from .conftest import ARTIFACTS, run_explore

TEXT = "The capital of France is Paris. The capital of Germany is Berlin, and Rome is in Italy."
MIN_LINE = 0.005  # lib/attention.ts attentionLines: weaker weights draw no line


def _api(page, base: str, path: str, **params) -> dict:
    r = page.request.get(f"{base}{path}", params=params)
    assert r.ok, r.text()
    return r.json()


def _lines(page, head: int) -> list[dict]:
    return (
        page.get_by_test_id("attention-lines")
        .locator(f"line[data-head='{head}']")
        .evaluate_all(
            "els => els.map(e => ({query: +e.dataset.query, key: +e.dataset.key, weight: +e.dataset.weight}))"
        )
    )


def _wait_lines(page, head: int, attr: str, token: int) -> None:
    page.wait_for_function(
        "([h, a, t]) => { const l = document.querySelectorAll("
        "`[data-testid=attention-lines] line[data-head='${h}']`);"
        " return l.length > 0 && [...l].every(e => e.dataset[a] === String(t)); }",
        arg=[head, attr, token],
    )


def test_attention_tab_matches_the_server(page, server_url):
    data = run_explore(page, TEXT)
    tid, T = data["id"], len(data["tokens"])
    info = _api(page, server_url, "/api/health")["model"]
    L, H = info["n_layers"], info["n_heads"]

    page.get_by_test_id("tab-attention").click()
    grid = page.get_by_test_id("attention-grid")
    grid.wait_for()
    thumbs = grid.get_by_test_id("attention-thumb")
    assert thumbs.count() == L * H
    assert (grid.get_attribute("data-layers"), grid.get_attribute("data-heads")) == (str(L), str(H))

    # a thumbnail opens its head in the head view (that head alone is ticked)
    layer, head = L - 1, 1
    grid.locator(f"[data-layer='{layer}'][data-head='{head}']").click()
    assert page.get_by_test_id("attention-layer").input_value() == str(layer)
    toggles = page.get_by_test_id("attention-head-toggle")
    assert [toggles.nth(h).is_checked() for h in range(H)] == [h == head for h in range(H)]

    # attention from query q: one line per key with a visible weight, each the server's row value
    q = 12
    page.get_by_test_id("attention-query-token").and_(page.locator(f"[data-token='{q}']")).click()
    _wait_lines(page, head, "query", q)
    row = _api(page, server_url, f"/api/traces/{tid}/attention", layer=layer, head=head, query=q)["data"][0]
    lines = _lines(page, head)
    assert {ln["key"]: ln["weight"] for ln in lines} == {
        k: pytest.approx(w, abs=1e-7) for k, w in enumerate(row) if w >= MIN_LINE
    }
    assert all(ln["query"] == q for ln in lines)

    # arrow keys step the selected token (the view's own keys), and back
    page.keyboard.press("ArrowDown")
    _wait_lines(page, head, "query", q + 1)
    page.keyboard.press("ArrowUp")
    _wait_lines(page, head, "query", q)

    # a second head overlaid in its own colour
    toggles.nth(0).check()
    _wait_lines(page, 0, "query", q)
    colours = (
        page.get_by_test_id("attention-lines")
        .locator("line")
        .evaluate_all("els => [...new Set(els.map(e => e.dataset.head + ':' + e.getAttribute('stroke')))]")
    )
    assert len({c.split(":")[1] for c in colours}) == 2, colours
    page.screenshot(path=str(ARTIFACTS / "attention_overview.png"), full_page=True)

    # the neuron view for (q, key 3): Σ q_i·k_i × scale = score, and the scores' softmax is the pattern
    toggles.nth(0).uncheck()
    key = 3
    page.get_by_test_id("attention-key-token").and_(page.locator(f"[data-token='{key}']")).click()
    neuron = page.get_by_test_id("attention-neuron-view")
    neuron.get_by_test_id("qk-score").first.wait_for()
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=attention-neuron-view][data-loading=true]')"
    )
    qk = _api(page, server_url, f"/api/traces/{tid}/qk", layer=layer, head=head, query=q, key=key)
    parts = neuron.get_by_test_id("qk-part")
    assert parts.count() == len(qk["parts"])
    for i, p in enumerate(qk["parts"]):
        shown = parts.nth(i)
        dot = float(shown.get_by_test_id("qk-dot").get_attribute("data-value"))
        score = float(shown.get_by_test_id("qk-score").get_attribute("data-value"))
        assert shown.get_by_test_id("qk-bars").locator("rect").count() == len(p["products"])
        assert dot == pytest.approx(float(np.sum(p["products"])), rel=1e-9)
        assert score == pytest.approx(dot * qk["scale"], rel=1e-6)
        assert score == pytest.approx(p["score"], rel=1e-12)
    rotated = parts.nth(0)
    weight = float(rotated.get_by_test_id("qk-weight").get_attribute("data-value"))
    pattern = float(rotated.get_by_test_id("qk-pattern").get_attribute("data-value"))
    assert pattern == pytest.approx(row[key], abs=1e-7)  # the attention route's own float16 value
    assert weight == pytest.approx(row[key], abs=2e-3)  # float64 softmax against float16 transport
    # the score against every other key: score differences are log-weight differences
    scores = qk["parts"][0]["scores"]
    assert scores[key] - scores[0] == pytest.approx(math.log(row[key] / row[0]), abs=5e-3)
    page.get_by_test_id("attention-neuron-view").screenshot(path=str(ARTIFACTS / "attention_neuron_view.png"))

    # attention to the selected token: lines from each query, the server's column
    page.get_by_test_id("direction-to").check()
    _wait_lines(page, head, "key", q)
    col = _api(page, server_url, f"/api/traces/{tid}/attention", layer=layer, head=head, key=q)["data"][0]
    got = {ln["query"]: ln["weight"] for ln in _lines(page, head)}
    assert got == {i: pytest.approx(w, abs=1e-7) for i, w in enumerate(col) if w >= MIN_LINE}
    assert got and min(got) >= q  # no query before the key attends to it
    assert all(w == 0 for w in col[:q]) and T > q


def test_long_text_window_scrolls(page, server_url):
    text = " ".join(f"word{i}" for i in range(120))
    data = run_explore(page, text)
    T = len(data["tokens"])
    page.get_by_test_id("tab-attention").click()
    win = page.get_by_test_id("attention-window")
    win.wait_for()
    start, end = int(win.get_attribute("data-start")), int(win.get_attribute("data-end"))
    assert end - start == 64 and T > 64
    page.get_by_test_id("attention-grid").wait_for()
    assert page.get_by_test_id("attention-query-token").count() == 64
    page.get_by_test_id("window-forward").click()
    page.wait_for_function(
        f"() => document.querySelector('[data-testid=attention-window]')?.dataset.start !== '{start}'"
    )
    s2 = int(win.get_attribute("data-start"))
    assert s2 == min(start + 32, T - 64)
    page.wait_for_function(
        f"() => +document.querySelector('[data-testid=attention-grid]')?.dataset.pool === 1 && "
        f"document.querySelector('[data-testid=attention-query-token]')?.dataset.token === '{s2}'"
    )
    page.screenshot(path=str(ARTIFACTS / "attention_long_window.png"), full_page=True)


def test_export_says_what_it_lacks(browser, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    with Session(model) as s:
        stored = s.trace(TEXT)
        row = s.attention(stored.id, 1, 0, query=12)[0].astype(np.float64)
        path = tmp_path / "report.html"
        path.write_text(export_html(s, stored.id, "attention=1:0"), encoding="utf-8")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        page.get_by_test_id("explore-tokens").get_by_test_id("token").first.wait_for()
        page.get_by_test_id("tab-attention").click()
        model_view = page.get_by_test_id("attention-model-view")
        model_view.get_by_test_id("panel-error").wait_for()
        said = model_view.get_by_test_id("panel-error").inner_text()
        assert "not in this export" in said and "--include grid=0:" in said  # names what adds it
        # the embedded head (layer 1, head 0) draws its lines from the recorded pattern
        page.get_by_test_id("attention-layer").select_option("1")
        page.get_by_test_id("attention-query-token").and_(page.locator("[data-token='12']")).click()
        _wait_lines(page, 0, "query", 12)
        got = {ln["key"]: ln["weight"] for ln in _lines(page, 0)}
        assert got == {k: pytest.approx(w, abs=1e-7) for k, w in enumerate(row) if w >= MIN_LINE}
        assert page.get_by_test_id("attention-head-view").get_by_test_id("panel-error").count() == 0
        page.screenshot(path=str(ARTIFACTS / "attention_export.png"), full_page=True)
    finally:
        context.close()
    assert not errors, errors
