"""The Features tab shows a text with characters split over byte tokens (🙂, an emoji ZWJ sequence, 日本語,
ü), tabs, newlines and leading spaces exactly as Explore shows it: token by token the same spans (a
split character once, on its first piece; ↵ and ⇥ visible; never U+FFFD), both for your text and for
a database example's whole document, whose copied text is the corpus text byte for byte.
Screenshot: test-artifacts/features-tokens.png."""

from __future__ import annotations

import pytest

from .conftest import ARTIFACTS, _page, run_explore, serve_app

SOURCE = "neurons:1"
TEXT = "  a 🙂 b 👩\u200d👩\u200d👧 ok\n\n日本語\tend über\n\tdef f(x):\n    return x"
SPANS = "el => [...el.querySelectorAll('.tok')].map(s => s.textContent)"  # each token's shown text


def shown_text(spans: list[str]) -> str:
    """The text the spans show, with the view's markers read back (↵ is followed by the line break)."""
    out = "".join(spans).replace("↵\n", "\n").replace("↵", "\n").replace("⇥", "\t")
    return out.replace("\\u{200d}", "\u200d")  # the zero-width joiner, escaped as Explore escapes it


def check_spans(spans: list[str]) -> None:
    joined = "".join(spans)
    assert "\ufffd" not in joined and "<0x" not in joined  # every split character is whole in TEXT
    assert "⇥" in joined and joined.count("↵") == TEXT.count("\n")
    for ch in ("🙂", "👧", "日", "本", "語", "ü"):
        assert joined.count(ch) == TEXT.count(ch), ch
    assert shown_text(spans) == TEXT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import lmpeek
    from lmpeek.features import build
    from lmpeek.server.app import create_app

    folder = tmp_path_factory.mktemp("ftok-corpus")
    (folder / "corpus").mkdir()
    (folder / "corpus" / "a.txt").write_text(TEXT, encoding="utf-8")
    out = folder / "features.db"
    build(lmpeek.load("tiny:llama"), SOURCE, [folder / "corpus"], out, seq_len=128, batch_size=2, k=4,
          context=(6, 3), quantiles=3, per_bin=2)  # fmt: skip
    server, thread, url = serve_app(create_app("tiny:llama", store_dir=folder / "store", features=[out]))
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def pg(browser, server):
    yield from _page(browser, server, permissions=["clipboard-read", "clipboard-write"])


def test_features_tab_shows_tokens_as_explore(pg):
    explore = run_explore(pg, TEXT)
    explore_spans = pg.get_by_test_id("explore-tokens").evaluate(SPANS)
    assert len(explore_spans) == len(explore["tokens"])
    check_spans(explore_spans)

    # your text: the same spans as Explore's
    pg.get_by_test_id("tab-features").click()
    pg.get_by_test_id("features-mode-text").click()
    pg.get_by_test_id("features-text").fill(TEXT)
    with pg.expect_response("**/activations") as info:
        pg.get_by_test_id("features-run").click()
    n = len(info.value.json()["tokens"])
    text_view = pg.get_by_test_id("features-tokens")
    text_view.get_by_test_id("ftok").nth(n - 1).wait_for()
    assert text_view.evaluate(SPANS) == explore_spans

    # the database: an example's whole document (the corpus text), then its copied text
    pg.get_by_test_id("features-mode-browse").click()
    pg.get_by_test_id("feature-row").first.click()
    example = pg.get_by_test_id("feature-top-examples").get_by_test_id("feature-example").first
    example.wait_for()
    window = example.get_by_test_id("example-tokens").evaluate(SPANS)
    assert "\ufffd" not in "".join(window)
    example.get_by_test_id("example-context").click()
    doc = example.get_by_test_id("document-tokens")
    doc.wait_for()
    assert doc.evaluate(SPANS) == explore_spans  # the corpus document is TEXT, tokenized the same way
    doc.scroll_into_view_if_needed()
    pg.screenshot(path=str(ARTIFACTS / "features-tokens.png"))
    example.get_by_test_id("example-copy").click()
    example.get_by_test_id("example-copy").filter(has_text="copied").wait_for()
    assert pg.evaluate("navigator.clipboard.readText()") == TEXT
