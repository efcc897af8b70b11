"""The crosscoder page in Chromium: a real server serving a tiny "chat" llama with a tiny "base" llama
beside it (same tokenizer) and a tiny random dictionary_learning crosscoder. The Features tab opens on
the Crosscoder panel: its class counts and histogram equal the service's, the class filter lists that
class's features, and two picked features run on a text show three rows each (base, chat, joint) whose
values per token equal FeatureService.pair's; a token's tooltip gives its id and the numbers.
Screenshot: /tmp/crosscoder-view.png. Waits are on conditions, never on time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from .conftest import _page, serve_app

TEXT = "The capital of France is Paris. def square(x): return x * x"
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import lmpeek
    from lmpeek.models.tiny import tiny_hf_model
    from lmpeek.server.app import create_app
    from tests.features.test_crosscoder import between_values, dl_tensors, ref_dl, write

    base = lmpeek.load("tiny:llama")
    hf, tok = tiny_hf_model("llama", seed=1)
    chat = lmpeek.wrap(hf, tok, name="tiny-llama-chat")
    t = dl_tensors(seed=4)
    t["decoder.weight"][1, :6] *= 0.02  # base-only features (r < 0.1)
    t["decoder.weight"][0, 6:10] *= 0.02  # chat-only (r > 0.9)
    xb = lmpeek.trace(base, TEXT, keep=[HOOK]).tensors[HOOK]
    xc = lmpeek.trace(chat, TEXT, keep=[HOOK]).tensors[HOOK]
    t["activation_mean"] = np.stack([xb.mean(0), xc.mean(0)]).astype(np.float32)
    t["activation_std"] = np.stack([xb.std(0), xc.std(0)]).astype(np.float32) + 0.1
    t["threshold"] = np.array(between_values(ref_dl(xb, xc, t), 0.3), np.float32)
    files = {"model.safetensors": t, "config.json": {"trainer": {"layer": 1}}}
    folder = write(tmp_path_factory.mktemp("xc") / "cc", files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random crosscoder: the reconstruction guard warns
        app = create_app("chat", loader=lambda _s: chat, base_model=base, feature_sources=[str(folder)],
                         store_dir=tmp_path_factory.mktemp("traces-xc"))  # fmt: skip
        server, thread, url = serve_app(app)
        yield url, app.state.features
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def xpage(browser, served):
    yield from _page(browser, served[0])


def test_crosscoder_panel(xpage, served):
    pg, service = xpage, served[1]
    pg.get_by_test_id("tab-features").click()
    pg.get_by_test_id("crosscoder-panel").wait_for()
    assert pg.get_by_test_id("features-source").input_value() == "cc"
    assert "active" in (pg.get_by_test_id("features-mode-crosscoder").get_attribute("class") or "")

    # the class counts and the histogram are the service's
    summary = service.crosscoder("cc")
    pg.get_by_test_id("xc-class").first.wait_for()
    chips = pg.get_by_test_id("xc-class")
    got = [(chips.nth(i).get_attribute("data-class"), int(chips.nth(i).get_attribute("data-count")))
           for i in range(chips.count())]  # fmt: skip
    assert got == [(c["name"], c["count"]) for c in summary["classes"]]
    assert sum(n for _, n in got) == 80 and got[0][1] >= 6 and got[1][1] > 0 and got[2][1] >= 4
    nonzero = sum(1 for c in summary["histogram"]["counts"] if c > 0)
    assert int(pg.get_by_test_id("xc-hist").get_attribute("data-bars")) == nonzero
    assert pg.get_by_test_id("xc-bar").count() == nonzero

    # the class filter lists that class's features, by relative norm
    chips.nth(1).click()  # shared
    want = sorted((j for j, k in enumerate(summary["class_of"]) if k == 1),
                  key=lambda j: (summary["relative_norm"][j], j))  # fmt: skip
    listed = pg.get_by_test_id("xc-list-feature")
    assert [int(listed.nth(i).get_attribute("data-feature")) for i in range(listed.count())] == want

    # two features on a text: base, chat and joint rows equal the service's pair
    picks = want[:1]
    listed.first.click()
    pg.get_by_test_id("xc-feature-input").fill("7")
    pg.get_by_test_id("xc-feature-input").press("Enter")
    picks.append(7)
    assert pg.get_by_test_id("xc-picked").count() == 2
    pg.get_by_test_id("xc-text").fill(TEXT)
    pg.get_by_test_id("xc-run").click()
    pg.wait_for_function("document.querySelectorAll('[data-testid=xc-feature]').length === 2")
    pair = service.pair("cc", TEXT, picks)
    feats = pg.get_by_test_id("xc-feature")
    for k, f in enumerate(picks):
        block = feats.nth(k)
        assert int(block.get_attribute("data-feature")) == f
        cls = summary["classes"][summary["class_of"][f]]["name"]
        assert block.get_by_test_id("xc-feature-class").inner_text() == cls
        for row, key in (("base", "base"), ("chat", "chat"), ("joint", "activation")):
            toks = block.get_by_test_id(f"xc-tokens-{row}").locator(".tok")
            values = [float(toks.nth(i).get_attribute("data-value")) for i in range(toks.count())]
            np.testing.assert_allclose(values, pair[key][k], rtol=1e-12, atol=0)
    assert 0 < (np.asarray(pair["activation"]) > 0).mean() < 1

    # a token's tooltip: its id, the activation, both contributions, both norms
    i = 3
    feats.nth(1).get_by_test_id("xc-tokens-chat").locator(".tok").nth(i).hover()
    tip = pg.get_by_test_id("features-tooltip")
    tip.wait_for()
    text = tip.inner_text()
    assert f"id {pair['tokens'][i]['id']}" in text and "feature #7" in text
    assert f"chat {float(pair['chat'][1][i]):.4g}" in text  # fmt(v, 4): 4 significant digits
    assert "‖x‖ base" in text
    pg.screenshot(path="/tmp/crosscoder-view.png", full_page=True)
