"""An exported page (host "static") lays out like a notebook output: the app is as tall as its content,
so the document grows and scrolls rather than the panels inside a fixed box; the hover tooltip is placed
inside the app's root even when the page is scrolled and an ancestor is transformed (position: fixed
would then be relative to that ancestor, not the window). Screenshots: test-artifacts/embedded-*.png."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import ARTIFACTS

TEXT = " ".join(["The capital of France is Paris, and the capital of Italy is Rome."] * 6)

ROOT_AND_TIP = """() => {
  const r = (el) => {
    const b = el.getBoundingClientRect();
    return {left: b.left, top: b.top, right: b.right, bottom: b.bottom};
  };
  const tip = document.querySelector('[data-testid=tooltip]');
  return { root: r(document.querySelector('.lmpeek')), explore: r(document.querySelector('.explore')),
           tip: tip ? r(tip) : null };
}"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("embedded") / "report.html"
    cmd = [sys.executable, "-m", "lmpeek.cli", "export", TEXT, "-m", "tiny:llama", "-o", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return path


def _inside(inner, outer, slack=0.5):
    across = inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
    down = inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack
    return across and down


def test_export_grows_with_its_content_and_keeps_the_tooltip_inside(browser, exported):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1200, "height": 600})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # what lmpeek's bundle (loaded from a blob: URL) listens for on the window; Playwright's own listeners
    # are left out by their stack, Svelte's delegated handlers go on the document
    page.add_init_script("""(() => {
      window.__windowListeners = [];
      const add = window.addEventListener.bind(window);
      window.addEventListener = (type, ...rest) => {
        if ((new Error().stack || "").includes("blob:")) window.__windowListeners.push(type);
        return add(type, ...rest);
      };
    })()""")
    try:
        page.goto(exported.as_uri())
        tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
        tokens.first.wait_for()
        tokens.nth(5).click()
        page.get_by_test_id("panel-predictions").get_by_test_id("pred-row").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "embedded-export.png"), full_page=True)

        got = page.evaluate("""() => {
          const aside = document.querySelector('.explore aside');
          const app = document.querySelector('.lmpeek');
          return { doc: document.documentElement.scrollHeight, view: innerHeight,
                   app: app.getBoundingClientRect().height, content: app.scrollHeight,
                   asideScrolls: aside.scrollHeight > aside.clientHeight + 1,
                   viewPosition: getComputedStyle(document.querySelector('.view:not(.hidden)')).position };
        }""")
        # the side panels are taller than the window: the document grows, not a scroll box inside it
        assert got["content"] > got["view"], got
        assert got["doc"] >= got["app"] - 1 and got["app"] >= got["content"] - 1, got
        assert not got["asideScrolls"], got
        assert got["viewPosition"] == "static", got

        # as in a notebook: the app below other output, the page scrolled, an ancestor transformed
        page.evaluate("""() => {
          const spacer = document.createElement('div');
          spacer.style.height = '300px';
          document.body.prepend(spacer);
          document.body.style.transform = 'translateX(0)';
          window.scrollTo(0, 250);
        }""")
        for k in (1, -1):  # a token in the pane's first line, and one at its end (right and low)
            box = tokens.nth(k if k > 0 else tokens.count() - 1).bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.get_by_test_id("tooltip").wait_for()
            page.wait_for_function("() => document.querySelector('[data-testid=tooltip]').offsetWidth > 0")
            where = page.evaluate(ROOT_AND_TIP)
            assert _inside(where["tip"], where["explore"]), where
            assert _inside(where["tip"], where["root"]), where
            # next to the pointer, not offset by the spacer or the scroll
            near_x = where["tip"]["left"] - 40 <= x <= where["tip"]["right"] + 40
            near_y = where["tip"]["top"] - 120 <= y <= where["tip"]["bottom"] + 120
            assert near_x and near_y, (x, y, where)
            page.screenshot(path=str(ARTIFACTS / f"embedded-tooltip-{'first' if k > 0 else 'last'}.png"))
        page.mouse.move(1, 1)
        page.keyboard.press("ArrowRight")
        assert page.evaluate("window.__windowListeners") == []
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_the_stored_traces_menu_closes_on_a_click_elsewhere_in_the_app(page):
    """The menu listens on the app's root while open (not the window): a click elsewhere in the app or
    Escape closes it; a click inside it does not."""
    button = page.get_by_test_id("stored-traces-button")
    menu = page.get_by_test_id("stored-traces")
    button.click()
    menu.wait_for()
    # a click on the menu itself (its rows are buttons that open a trace: earlier tests stored some)
    menu.dispatch_event("click")
    assert menu.is_visible()
    page.get_by_test_id("model-status").click()
    menu.wait_for(state="detached")
    button.click()
    menu.wait_for()
    page.keyboard.press("Escape")
    menu.wait_for(state="detached")
