"""The Features tab in Chromium against a real server with a feature database built here (tiny model,
the MLP neurons of layer 1): browsing (the list against FeatureDB, search incl. token:X and a refused
one, a feature's page against FeatureDB.feature, an example's context and copied text, a label saved
and found), your text (tokens and template flags, two highlighted features against an independent
lmpeek.features.activations, negative values in the other hue, tooltip, a token's ranking), the URL
keeping the tab and feature, and a server without a model showing only this tab. Screenshots:
test-artifacts/features-*.png. Waits are on conditions, never on time."""

from __future__ import annotations

import re

import numpy as np
import pytest

from .conftest import ARTIFACTS, _page, serve_app

SOURCE = "neurons:1"
TEXTS = {
    "a.txt": "The capital of France is Paris. Paris has museums, cafes and a river that runs through it. "
    "In spring the parks are full of people reading in the sun.",
    "b.md": "# Notes\n\n- def add(a, b): return a + b\n- for i in range(10): print(i * i)\n\n"
    "def mul(a, b):\n    return a * b\n\nDone.",
    "c.txt": "日本語のテキストも少しあります。Emails go to team@example.com; calls on Mondays. " * 2,
    "d.txt": "Once upon a time there was a small model that read every word twice. " * 4,
}
CHAT = "Hi there, can you add 2 and 3?<eot>Sure: 2 + 3 = 5.<eot>Thanks!"
TOKS = "[...document.querySelectorAll('[data-testid=features-tokens] .tok')]"  # the text's token spans


@pytest.fixture(scope="module")
def feature_db(tmp_path_factory):
    import lmpeek
    from lmpeek.features import build

    folder = tmp_path_factory.mktemp("features-corpus")
    for name, text in TEXTS.items():
        (folder / name).write_text(text)
    out = folder / "features.db"
    build(lmpeek.load("tiny:llama"), SOURCE, [folder], out, seq_len=48, batch_size=4, k=6, context=(8, 4),
          quantiles=3, per_bin=2, n_correlated=3, n_logits=5)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def model_server(feature_db, tmp_path_factory):
    """The app with the tiny model and the database."""
    from lmpeek.server.app import create_app

    server, thread, url = serve_app(
        create_app("tiny:llama", store_dir=tmp_path_factory.mktemp("traces-features"), features=[feature_db])
    )
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def db_only_server(feature_db):
    """`lmpeek features serve DB`: no model."""
    from lmpeek.server.app import create_app

    server, thread, url = serve_app(create_app(None, features=[feature_db]))
    yield url
    server.should_exit = True
    thread.join(10)


# conftest's page, with the clipboard readable (the copy button's text is checked)
CLIPBOARD = ["clipboard-read", "clipboard-write"]


@pytest.fixture
def fpage(browser, model_server):
    yield from _page(browser, model_server, permissions=CLIPBOARD)


@pytest.fixture
def db_page(browser, db_only_server):
    yield from _page(browser, db_only_server, permissions=CLIPBOARD)


@pytest.fixture(scope="module")
def db(feature_db):
    from lmpeek.features import FeatureDB

    with FeatureDB(feature_db) as d:
        yield d


def _rgb(style: str) -> tuple[int, int, int]:
    m = re.search(r"background-color:\s*rgb\((\d+),\s*(\d+),\s*(\d+)\)", style or "")
    assert m, f"no background in {style!r}"
    return int(m[1]), int(m[2]), int(m[3])


def _open_browse(pg):
    pg.get_by_test_id("tab-features").click()
    pg.get_by_test_id("features-mode-browse").click()
    pg.get_by_test_id("feature-row").first.wait_for()


def _open_feature(pg, f: int):
    view = pg.get_by_test_id("feature-page")
    pg.locator(f'[data-testid="feature-row"][data-feature="{f}"]').click()
    pg.locator(f'[data-testid="feature-page"][data-feature="{f}"][data-loading="false"]').wait_for()
    return view


def test_browse_list_and_page(fpage, db, feature_db):
    pg = fpage
    _open_browse(pg)
    # the list: densest first, as the database sorts them
    want = [r["feature"] for r in db.features(sort="density", source=SOURCE, limit=50)]
    rows = pg.get_by_test_id("feature-row")
    assert [int(r.get_attribute("data-feature")) for r in rows.all()] == want
    n_features = db.sources[0]["n_features"]
    assert pg.get_by_test_id("feature-list-count").inner_text() == f"1–{min(50, n_features)} of {n_features}"
    # sorted by max: the database's order by max
    with pg.expect_response(re.compile(r"/list\?.*sort=max")):
        pg.get_by_test_id("feature-sort").select_option("max")
    pg.wait_for_function("() => document.querySelector('[data-testid=feature-list] .rows:not(.stale)')")
    by_max = [r["feature"] for r in db.features(sort="max", source=SOURCE, limit=50)]
    assert [int(r.get_attribute("data-feature")) for r in rows.all()] == by_max

    # the page of the feature with the largest activation, against FeatureDB.feature
    f = by_max[0]
    _open_feature(pg, f)
    ref = db.feature(f, SOURCE)
    top = pg.get_by_test_id("feature-top-examples").get_by_test_id("feature-example")
    assert top.count() == len(ref["examples"]["top"]) > 0
    for k, ex in enumerate(ref["examples"]["top"]):
        row = top.nth(k)
        assert float(row.get_attribute("data-score")) == ex["score"]
        assert int(row.get_attribute("data-doc")) == ex["doc"]
        toks = row.get_by_test_id("example-tokens").get_by_test_id("ftok")
        assert toks.count() == len(ex["tokens"])
        mark = row.locator(".tok.mark")
        assert int(mark.get_attribute("data-index")) == ex["index"]
        assert float(mark.get_attribute("data-value")) == ex["acts"][ex["index"]]
        if ex["score"] > 0:  # the activating token is coloured red (positive)
            r, g, b = _rgb(mark.get_attribute("style"))
            assert r > b and r > g
    assert pg.get_by_test_id("feature-quantile-examples").get_by_test_id("feature-example").count() == len(
        ref["examples"]["quantile"]
    )
    assert pg.get_by_test_id("quantile-bins").locator("tbody tr").count() == len(ref["quantile_bins"])
    bars = int(pg.get_by_test_id("feature-hist").get_attribute("data-bars"))
    assert bars == sum(c > 0 for c in ref["histogram"]["counts"])
    if ref["logits"]:
        assert pg.get_by_test_id("logit-top").count() == len(ref["logits"]["top"])
        assert pg.get_by_test_id("logit-bottom").count() == len(ref["logits"]["bottom"])

    # an example's whole document, and its exact text copied
    first = top.first
    first.get_by_test_id("example-context").click()
    doc = first.get_by_test_id("document-tokens")
    doc.wait_for()
    ex0 = ref["examples"]["top"][0]
    assert doc.get_by_test_id("ftok").count() == len(db.document(ex0["doc"]))
    assert int(doc.locator(".tok.mark").get_attribute("data-index")) == ex0["pos"]
    pg.screenshot(path=str(ARTIFACTS / "features-browse.png"))
    first.get_by_test_id("example-context").click()  # back to the window
    first.get_by_test_id("example-copy").click()
    first.get_by_test_id("example-copy").filter(has_text="copied").wait_for()
    import lmpeek
    from lmpeek.capture.tokens import token_bytes_fn

    to_bytes = token_bytes_fn(lmpeek.load("tiny:llama").tokenizer)
    window_text = b"".join(to_bytes(i) for i in ex0["token_ids"]).decode("utf-8", errors="ignore")
    assert pg.evaluate("navigator.clipboard.readText()") == window_text

    # correlated features open on click
    corr = pg.get_by_test_id("correlated-feature")
    assert corr.count() == len(ref["correlated"])
    if ref["correlated"]:
        other = ref["correlated"][0]["feature"]
        corr.first.click()
        pg.locator(f'[data-testid="feature-page"][data-feature="{other}"][data-loading="false"]').wait_for()


def test_label_search_and_refused_search(fpage, db, feature_db):
    pg = fpage
    _open_browse(pg)
    f = int(pg.get_by_test_id("feature-row").nth(1).get_attribute("data-feature"))
    _open_feature(pg, f)
    pg.get_by_test_id("feature-label-input").fill("zebra crossing")
    pg.get_by_test_id("feature-notes-input").fill("found by the e2e test")
    with pg.expect_response(lambda r: r.request.method == "PUT" and r.url.endswith(f"/{f}/label")) as put:
        pg.get_by_test_id("feature-label-save").click()
    assert put.value.status == 204
    pg.get_by_test_id("feature-page-label").filter(has_text="zebra crossing").wait_for()
    from lmpeek.features import FeatureDB

    with FeatureDB(feature_db) as fresh:
        assert fresh.label(f, SOURCE) == {"label": "zebra crossing", "notes": "found by the e2e test"}
    # found by a word of its label and one of its notes
    for q in ("zebra", "e2e"):
        with pg.expect_response(re.compile(r"/list\?q=")):
            pg.get_by_test_id("feature-search").fill(q)
        pg.wait_for_function("() => document.querySelector('[data-testid=feature-list] .rows:not(.stale)')")
        rows = pg.get_by_test_id("feature-row")
        assert [int(r.get_attribute("data-feature")) for r in rows.all()] == [f]
    # token:X: the features whose top examples peak on that token, as the database finds them
    peaks = db.top_tokens([r["feature"] for r in db.features(source=SOURCE)], SOURCE)
    peak = next(t.strip() for ts in peaks.values() for t in ts if t.strip().isalpha())
    total, _ = db.query(SOURCE, f"token:{peak}", "density")
    with pg.expect_response(re.compile(r"/list\?q=token")):
        pg.get_by_test_id("feature-search").fill(f"token:{peak}")
    pg.get_by_test_id("feature-list-count").filter(has_text=f"of {total}").wait_for()
    # bad FTS syntax: the server's reason, the last rows kept
    with pg.expect_response(re.compile(r"/list\?q=")) as bad:
        pg.get_by_test_id("feature-search").fill('"unclosed')
    assert bad.value.status == 400
    err = pg.get_by_test_id("feature-list-error")
    err.wait_for()
    assert err.inner_text().strip()
    assert pg.get_by_test_id("feature-row").count() > 0


def test_your_text_two_features(fpage, db):
    import lmpeek
    from lmpeek import features

    pg = fpage
    pg.get_by_test_id("tab-features").click()
    pg.get_by_test_id("features-mode-text").click()
    pg.get_by_test_id("features-text").fill(CHAT)
    with pg.expect_response("**/activations") as info:
        pg.get_by_test_id("features-run").click()
    ans = info.value.json()
    toks = pg.get_by_test_id("features-tokens").get_by_test_id("ftok")
    toks.nth(len(ans["tokens"]) - 1).wait_for()
    assert toks.count() == len(ans["tokens"])
    flags = [t["template"] for t in ans["tokens"]]
    assert any(flags) and not all(flags)  # the chat template's tokens, and the user's
    shown = pg.evaluate(f"() => {TOKS}.map(s => s.classList.contains('tmpl'))")
    assert shown == flags
    top = pg.get_by_test_id("top-feature")
    assert [int(r.get_attribute("data-feature")) for r in top.all()] == [
        t["feature"] for t in ans["top_features"]
    ]

    # highlight the text's top two features: A and B, from one more request
    fa, fb = ans["top_features"][0]["feature"], ans["top_features"][1]["feature"]
    with pg.expect_response("**/activations") as info:
        top.nth(0).get_by_test_id("top-feature-A").click()
    with pg.expect_response("**/activations") as info:
        top.nth(1).get_by_test_id("top-feature-B").click()
    ans2 = info.value.json()
    assert ans2["features"] == [fa, fb]
    pg.wait_for_function(f"() => {TOKS}.some(s => s.dataset.valueB !== undefined)")
    # the values drawn are the ones an independent call computes on the same token ids
    model = lmpeek.load("tiny:llama")
    ids = [t["id"] for t in ans2["tokens"]]
    ref = np.asarray(features.activations(model, features.load(SOURCE, model), ids))
    drawn_a = pg.evaluate(f"() => {TOKS}.map(s => Number(s.dataset.value))")
    drawn_b = pg.evaluate(f"() => {TOKS}.map(s => Number(s.dataset.valueB))")
    np.testing.assert_allclose(drawn_a, ref[:, fa], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(drawn_b, ref[:, fb], rtol=1e-5, atol=1e-6)
    styles = pg.evaluate(f"() => {TOKS}.map(s => s.getAttribute('style') || '')")
    # red above zero, blue below, each side scaled to the text's extreme (a quarter of it: clearly coloured)
    lo, hi = min(ref[:, fa].min(), 0), max(ref[:, fa].max(), 0)
    assert lo < 0  # the SiLU neurons of the tiny model go negative: the case this checks
    for v, style in zip(ref[:, fa], styles, strict=True):
        if v >= hi / 4 and v > 0:
            r, g, b = _rgb(style)
            assert r > b + 10, (v, style)
        elif v <= lo / 4 and v < 0:
            r, g, b = _rgb(style)
            assert b > r + 10, (v, style)
    for v, style in zip(ref[:, fb], styles, strict=True):
        assert ("-3px" in style) == (v != 0), (v, style)  # B: the bar under the token

    # a token's ranking (the server's, in order) and its tooltip (id, both values)
    i = int(np.argmax(ref[:, fa]))
    toks.nth(i).click()
    rank = pg.get_by_test_id("rank-row")
    rank.first.wait_for()
    assert [int(r.get_attribute("data-feature")) for r in rank.all()] == [
        e["feature"] for e in ans2["ranking"][i]
    ]
    toks.nth(i).hover()
    tip = pg.get_by_test_id("features-tooltip")
    tip.wait_for()
    text = tip.inner_text()
    assert f"id {ids[i]}" in text and f"A #{fa}" in text and f"B #{fb}" in text
    pg.screenshot(path=str(ARTIFACTS / "features-text.png"))


def test_url_keeps_tab_and_feature(fpage):
    pg = fpage
    _open_browse(pg)
    f = int(pg.get_by_test_id("feature-row").nth(2).get_attribute("data-feature"))
    _open_feature(pg, f)
    pg.wait_for_function(
        f"() => location.hash.includes('f.feature={f}') && location.hash.includes('view=features')"
    )
    pg.reload()
    pg.locator(f'[data-testid="feature-page"][data-feature="{f}"][data-loading="false"]').wait_for()
    assert "active" in pg.get_by_test_id("tab-features").get_attribute("class")


def test_no_model_only_features(db_page, db):
    pg = db_page
    pg.get_by_test_id("no-model").wait_for()
    assert pg.get_by_test_id("tab-explore").count() == 0 and pg.get_by_test_id("tab-generate").count() == 0
    pg.get_by_test_id("feature-row").first.wait_for()
    assert pg.get_by_test_id("features-mode-text").is_disabled()
    f = int(pg.get_by_test_id("feature-row").first.get_attribute("data-feature"))
    _open_feature(pg, f)
    pg.get_by_test_id("feature-top-examples").get_by_test_id("feature-example").first.wait_for()
    pg.screenshot(path=str(ARTIFACTS / "features-db-only.png"))
