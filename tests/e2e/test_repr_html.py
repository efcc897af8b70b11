"""Trace._repr_html_ in a page as a notebook output holds it (Chromium, network blocked): the iframe's
box starts at 640 px and then follows the height of the page inside it, growing and shrinking with
it (the Explore tab, then the Attention tab, shorter for a Trace alone, then back)."""

from __future__ import annotations

import warnings

import lmpeek


def test_inline_export_follows_its_content(browser):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:gpt2")
    frame = lmpeek.trace(model, "Hello there, a short text.")._repr_html_()
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    asked: list[str] = []
    context.route("**/*", lambda r: (asked.append(r.request.url), r.abort()))
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.set_content(f"<!doctype html><html><body><p>an output:</p>{frame}<p>next cell</p></body></html>")
        box = page.locator("div[id^=lmpeek-]")
        inner = page.frame_locator("iframe")
        inner.get_by_test_id("explore-tokens").get_by_test_id("token").first.wait_for()
        child = page.frames[1]

        content = "Math.ceil(document.body.getBoundingClientRect().height)"

        def follows() -> int:
            """Wait until the box is as tall as the inner page (which may still lay out); that height."""
            for _ in range(100):
                h = child.evaluate(content)
                if box.evaluate("e => e.style.height") == f"{min(1600, h)}px":
                    return h
                page.wait_for_timeout(100)
            raise AssertionError(f"the box stays {box.evaluate('e => e.style.height')}, the page is {h} px")

        explore = follows()
        assert explore != 640 and box.bounding_box()["height"] == min(1600, explore) + 2  # + its border
        assert child.evaluate("document.documentElement.scrollHeight") <= explore + 1  # nothing cut off
        inner.get_by_test_id("tab-attention").click()
        inner.get_by_test_id("attention-view").wait_for()
        attention = follows()
        assert attention != explore
        inner.get_by_test_id("tab-explore").click()
        assert follows() == explore  # it shrinks back: the box is never only ever growing
    finally:
        context.close()
    assert not asked, asked
    assert not errors, errors
