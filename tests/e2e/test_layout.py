"""Layout at common window widths: every toolbar control is on screen and has a size, and no number is
cut off (a value cell whose text is wider than its box), in Explore and Generate. Screenshots of each
width go to test-artifacts/ (layout-<view>-<width>.png)."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, fill_generate, run_explore

WIDTHS = [800, 1024, 1280, 1366, 1400, 1920]
TEXT = "The capital of France is Paris. Numbers: 1234567, 0.000123, -98765.4321 and more."

# the toolbars of the visible view: header, Explore's text box row, tabs and control bar, Generate's form
# and its token navigation
TOOLBARS = "header, .explore .top, .explore .tabs, .explore .controls, .gen .params, .gen .nav"

PROBLEMS_JS = """(toolbars) => {
  const W = document.documentElement.clientWidth;
  const shown = (el) => !el.closest(".hidden") && getComputedStyle(el).display !== "none"
    && getComputedStyle(el).visibility !== "hidden";
  const name = (el) => (el.getAttribute("data-testid")
      || el.tagName.toLowerCase() + "." + [...el.classList].join("."))
    + " '" + (el.innerText || el.value || "").slice(0, 30) + "'";
  const px = (v) => Math.round(v);
  const offscreen = [];
  for (const bar of document.querySelectorAll(toolbars)) {
    if (!shown(bar)) continue;
    for (const el of bar.querySelectorAll("button, input, select, textarea")) {
      if (!shown(el) || el.type === "hidden") continue;
      const r = el.getBoundingClientRect();
      if (r.width < 1 || r.height < 1 || r.left < -0.5 || r.right > W + 0.5 || r.top < -0.5) {
        offscreen.push(`${name(el)} at ${px(r.left)}..${px(r.right)} of ${W}, `
          + `${px(r.width)}x${px(r.height)}`);
        continue;
      }
      // on screen but under something else (a panel laid over it)
      const cx = (r.left + r.right) / 2, cy = (r.top + r.bottom) / 2;
      if (cy > window.innerHeight) continue;
      const top = document.elementFromPoint(cx, cy);
      const inLabel = el.labels && [...el.labels].some((l) => l.contains(top));
      if (top && !el.contains(top) && !top.contains(el) && !inLabel)
        offscreen.push(`${name(el)} is covered by ${name(top)}`);
    }
  }
  // a value cell: a leaf element that shows only a number (1,234 · -0.5 · 1.2e-4 · 77.3% · ∞)
  const NUM = /^[-−+≤≥]?(\\d[\\d,]*(\\.\\d+)?|\\.\\d+)(e[-+]?\\d+)?\\s?%?$|^-?∞$/;
  const clipped = [];
  let cells = 0;
  for (const el of document.querySelectorAll(".lmpeek *")) {
    if (el.children.length || !shown(el) || el.closest("svg")) continue;
    const text = (el.textContent || "").trim();
    if (!NUM.test(text)) continue;
    if (getComputedStyle(el).display === "inline" || el.clientWidth === 0) continue;
    cells++;
    if (el.scrollWidth > el.clientWidth + 1)
      clipped.push(`${name(el)} shows ${el.scrollWidth}px in ${el.clientWidth}px`);
  }
  return { offscreen, clipped, cells, scrollX: document.documentElement.scrollWidth > W + 1 };
}"""


def _check(page, where):
    page.mouse.move(1, 1)  # no hover tooltip over what is measured
    got = page.evaluate(PROBLEMS_JS, TOOLBARS)
    assert not got["offscreen"], f"{where}: controls off screen or zero-size: {got['offscreen']}"
    assert not got["clipped"], f"{where}: numbers cut off: {got['clipped']}"
    assert not got["scrollX"], f"{where}: the page scrolls sideways"
    return got["cells"]


def _settled(page):
    """Every panel has its answer (none loading), so what is measured is what a user reads."""
    page.wait_for_function(
        """() => document.querySelectorAll('[data-loading="true"]').length === 0
             && !document.querySelector('[data-testid=explore-body][data-busy="true"]')"""
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_explore_and_generate_fit_the_window(browser, server_url, width):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(server_url)
        page.get_by_test_id("model-status").filter(has_text="ready").wait_for(timeout=60_000)

        data = run_explore(page, TEXT)
        page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(len(data["tokens"]) // 2).click()
        page.get_by_test_id("panel-neurons").get_by_test_id("neuron-row").first.wait_for()
        page.get_by_test_id("hist-chart").wait_for()
        _settled(page)
        cells = _check(page, f"Explore at {width}px")
        assert cells >= 10, "the check found too few value cells to mean anything"
        page.screenshot(path=str(ARTIFACTS / f"layout-explore-{width}.png"))

        fill_generate(page, "The capital of France is", 8, 0)
        page.get_by_test_id("gen-submit").click()
        page.get_by_test_id("gen-explore").wait_for(timeout=60_000)
        page.get_by_test_id("gen-token").nth(2).click()
        page.get_by_test_id("topk-row").first.wait_for()
        _check(page, f"Generate at {width}px")
        page.screenshot(path=str(ARTIFACTS / f"layout-generate-{width}.png"))
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_the_check_catches_a_cut_number_and_a_control_off_screen(page):
    """The layout check itself: a number squeezed into a narrow box and a button pushed past the right
    edge are both reported (else the test above would pass on any layout)."""
    page.evaluate(
        """() => {
          const cell = document.createElement("div");
          cell.style.cssText = "width: 12px; overflow: hidden; white-space: nowrap";
          cell.textContent = "1,234,567.89";
          document.querySelector(".lmpeek").append(cell);
          const b = document.createElement("button");
          b.textContent = "lost";
          b.style.cssText = "position: fixed; left: calc(100vw + 20px)";
          document.querySelector("header").append(b);
          const hidden = document.querySelector("[data-testid=tab-generate]");
          const r = hidden.getBoundingClientRect();
          const cover = document.createElement("div");
          cover.style.cssText = `position: fixed; z-index: 99; background: #fff; left: ${r.left}px; `
            + `top: ${r.top}px; width: ${r.width}px; height: ${r.height}px`;
          document.body.append(cover);
        }"""
    )
    got = page.evaluate(PROBLEMS_JS, TOOLBARS)
    assert any("1,234,567.89" in c for c in got["clipped"]), got
    assert any("lost" in c for c in got["offscreen"]), got
    assert any(c.startswith("tab-generate") and "covered" in c for c in got["offscreen"]), got
