"""Text shown as typed: byte pieces merged into characters, invisible characters as escapes, and the
exact text through the token view, copy, and "Explore this text" (issue 9, items 1 and 4).

Chromium here has no CJK/emoji fonts (boxes in screenshots), so the checks read text, not pixels.
"""

from __future__ import annotations

from .conftest import ARTIFACTS, fill_generate, parse_sse, run_explore

TEXT = "Grüße aus München 🙂 日本語 a\u202eb\tc\u200bd\ufeffe end"
TOKENS = "[data-testid=explore-tokens] [data-testid=token]"


def _spans(page) -> list[dict]:
    return page.eval_on_selector_all(
        TOKENS,
        "els => els.map(e => ({shown: e.textContent, text: e.dataset.text, cls: e.className,"
        " title: e.title}))",
    )


def test_token_view_shows_each_character_once_and_escapes_invisible_ones(page):
    data = run_explore(page, TEXT)
    assert any(data["partial"]), "the tiny tokenizer must split a character for this test to mean anything"
    spans = _spans(page)
    assert len(spans) == len(data["tokens"])  # one span per token: the page indexes spans by token
    assert "".join(s["text"] for s in spans) == TEXT  # the merged text, joined, is the input exactly
    shown = "".join(s["shown"] for s in spans)
    assert "\ufffd" not in shown and "<0x" not in shown
    for word in ["Grüße", "München", "🙂", "日本語"]:
        assert word in shown, (word, shown)
    # U+202E, the tab and U+200B are escapes: nothing after them is reordered or hidden
    assert "a\\u{202e}b⇥c\\u{200b}d\\u{feff}e end" in shown
    assert not any(ch in shown for ch in "\u202e\u200b\ufeff\t")
    for s, partial, hexa in zip(spans, data["partial"], data["token_bytes"], strict=True):
        assert ("byte" in s["cls"].split()) == partial
        if partial:  # every byte piece says it is one and gives its bytes
            assert s["title"].startswith("byte piece: ") and hexa.upper()[:2] in s["title"].replace(" ", "")
    # "ü" (C3 BC) is shown on its first piece; the second piece shows only a marker
    conts = [s for s in spans if "cont" in s["cls"].split()]
    assert conts and all(s["shown"] == "" and s["text"] == "" for s in conts)
    # the RTL override did not reverse what follows: 'end' is laid out after 'a' (left to right)
    xs = page.eval_on_selector_all(TOKENS, "els => els.map(e => e.getBoundingClientRect().left)")
    last_a = max(i for i, s in enumerate(spans) if s["shown"].startswith(" a") or s["shown"] == "a")
    assert xs[-1] > xs[last_a]
    page.get_by_test_id("explore-tokens").screenshot(path=str(ARTIFACTS / "text-faithful-tokens.png"))


SELECT = """([first, last]) => {
    const spans = [...document.querySelectorAll('[data-testid=explore-tokens] [data-testid=token]')];
    const end = spans.at(last);
    const range = document.createRange();
    range.setStart(spans.at(first), 0);
    range.setEnd(end, end.childNodes.length);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    return spans.slice(first, last === -1 ? undefined : last + 1).map(s => s.dataset.text).join('');
}"""


def _copy(page, first: int, last: int) -> tuple[str, str]:
    """Select tokens first..last in the view, press Ctrl+C; (what the clipboard got, the tokens' text)."""
    want = page.evaluate(SELECT, [first, last])
    page.keyboard.press("Control+c")
    return page.evaluate("navigator.clipboard.readText()"), want


def test_copying_the_token_view_copies_the_exact_text(page, server_url):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server_url)
    run_explore(page, TEXT)
    got, _ = _copy(page, 0, -1)
    assert got == TEXT  # not the escapes (U+202E as an escape, ⇥) nor the byte-piece markers shown
    spans = _spans(page)
    m = next(i for i, s in enumerate(spans) if "M" in s["shown"])
    got, want = _copy(page, m, m + 4)  # a part: "M" and the pieces of "ü" after it
    assert got == want and got.startswith("M") and "ü" in got and got in TEXT


def test_generated_characters_merge_and_explore_gets_the_exact_text(page):
    # with the tiny model, this seed draws a two-byte character (D6 9E) as two byte pieces
    fill_generate(page, "日本", 6, 1, top_p=1, top_k=0, seed=5)
    with page.expect_response("**/api/generate") as info:
        page.get_by_test_id("gen-submit").click()
    events = parse_sse(info.value.text())
    start = events[0][1]
    steps = [d for e, d in events if e == "token"]
    generated = b"".join(bytes.fromhex(s["token_bytes"]) for s in steps).decode("utf-8")  # strict
    prompt = b"".join(bytes.fromhex(h) for h in start["prompt_token_bytes"]).decode("utf-8")
    assert prompt == "日本"
    assert any(s["token"].startswith("<0x") for s in steps), "the case must contain a byte piece"
    chips = page.get_by_test_id("gen-tokens").get_by_test_id("gen-token")
    chips.nth(len(steps) - 1).wait_for()
    texts = [chips.nth(i).get_attribute("data-text") for i in range(len(steps))]
    assert "".join(texts) == generated
    shown = page.get_by_test_id("gen-tokens").inner_text()
    assert "<0x" not in shown and "\ufffd" not in shown and "日本" in shown
    page.get_by_test_id("gen-tokens").screenshot(path=str(ARTIFACTS / "text-faithful-generate.png"))

    page.get_by_test_id("gen-explore").click()
    box = page.get_by_test_id("explore-text")
    page.wait_for_function(
        "want => document.querySelector('[data-testid=explore-text]').value === want", arg=prompt + generated
    )
    assert "\ufffd" not in box.input_value()


def test_explore_gets_no_replacement_character_for_bytes_of_no_character(page):
    fill_generate(page, "日本", 12, 0)  # greedy: the tiny model emits lone bytes 9E BF
    with page.expect_response("**/api/generate") as info:
        page.get_by_test_id("gen-submit").click()
    steps = [d for e, d in parse_sse(info.value.text()) if e == "token"]
    data = b"".join(bytes.fromhex(s["token_bytes"]) for s in steps)
    assert data.decode("utf-8", "replace").count("\ufffd"), "the case needs bytes of no whole character"
    chips = page.get_by_test_id("gen-tokens").get_by_test_id("gen-token")
    chips.nth(len(steps) - 1).wait_for()
    assert "\ufffd" not in page.get_by_test_id("gen-tokens").inner_text()  # shown as <0x9E>
    page.get_by_test_id("gen-explore").click()
    want = "日本" + data.decode("utf-8", "ignore")
    page.wait_for_function(
        "want => document.querySelector('[data-testid=explore-text]').value === want", arg=want
    )
    # the token view shows the generation's exact tokens, the lone bytes as labels
    shown = page.get_by_test_id("explore-tokens").inner_text()
    assert "<0x" in shown and "\ufffd" not in shown
