"""The Generate panel shows the distribution each token was drawn from (after temperature, top-k,
top-p), the raw prediction beside it with the filtered-out tokens marked, bars on a 0-100 % scale, and
the seed of a random run, which repeats the run when clicked.

The drawn-from distribution is checked against one computed here independently: the same tiny model
run on prompt + generated tokens, then numpy's softmax((logits - max) / T), top-k, top-p, renormalised.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from .conftest import ARTIFACTS, fill_generate, run_generate

PROMPT = "The capital of France is"
TEMPERATURE, TOP_K, TOP_P = 2.0, 5, 0.8


def _warped(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """What the token is drawn from, written from the definitions (transformers' order)."""
    z = (logits.astype(np.float64) - logits.max()) / temperature
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(p.size, bool)
    keep[order[:top_k]] = True
    p = np.where(keep, p, 0.0)
    p /= p.sum()
    ranked = p[order]
    before = np.cumsum(ranked) - ranked  # mass of the more likely tokens
    nucleus = np.zeros(p.size, bool)
    nucleus[order[before < top_p]] = True  # smallest set reaching top_p (the one crossing it included)
    p = np.where(nucleus & keep, p, 0.0)
    return p / p.sum()


def _same_tiny_model():
    """The server's model, loaded again. Only once the page says the server's model is ready: the
    tiny model's weights come from torch's global generator, so two loads at once would interleave."""
    import lmpeek

    return lmpeek.load("tiny:llama", device="cpu")


def _logits_after(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model.hf(input_ids=torch.tensor([ids]))
    return out.logits[0, -1].float().numpy()


def _rows(page, testid: str) -> list[dict]:
    return page.eval_on_selector_all(
        f"[data-testid=panel-topk] [data-testid={testid}]",
        """els => els.map(e => ({
            id: Number(e.getAttribute('data-id')), prob: Number(e.getAttribute('data-prob')),
            token: e.getAttribute('data-token'), cls: e.className,
            width: e.querySelector('.bar').style.width,
            track: e.querySelector('.track').getBoundingClientRect().width,
            bar: e.querySelector('.bar').getBoundingClientRect().width,
        }))""",
    )


def test_the_panel_shows_the_distribution_the_token_was_drawn_from(page):
    from lmpeek.capture.tokens import tokenize

    model = _same_tiny_model()  # after `page`, which waits for the server's model

    # a random run (no seed): the page must say which seed it drew
    fill_generate(page, PROMPT, 6, TEMPERATURE, top_k=TOP_K, top_p=TOP_P, seed="")
    events = run_generate(page)
    seed = events[0][1]["seed"]
    steps = [d for e, d in events if e == "token"]
    assert len(steps) == 6

    prompt_ids = tokenize(model.tokenizer, PROMPT, None).token_ids.tolist()
    checked_removed = False
    for s in (0, 3, 5):
        page.get_by_test_id("gen-tokens").get_by_test_id("gen-token").nth(s).click()
        page.wait_for_function(
            f"() => document.querySelector('[data-testid=gen-selected-index]').dataset.index === '{s}'"
        )
        step = steps[s]
        want = _warped(
            _logits_after(model, prompt_ids + [x["token_id"] for x in steps[:s]]), TEMPERATURE, TOP_K, TOP_P
        )
        nonzero = np.flatnonzero(want)
        shown = _rows(page, "sampled-row")
        # the shown list is the whole support (top-k 5 < the 10 rows kept), most likely first
        assert sorted(r["id"] for r in shown) == sorted(nonzero.tolist())
        np.testing.assert_allclose([r["prob"] for r in shown], want[[r["id"] for r in shown]], atol=1e-5)
        assert [r["id"] for r in shown] == step["sampled_topk_ids"]
        chosen = [r for r in shown if "chosen" in r["cls"].split()]
        assert [r["id"] for r in chosen] == [step["token_id"]]
        # labels come from the raw list's labels of the same ids
        raw_label = dict(zip(step["topk_ids"], step["topk_tokens"], strict=True))
        assert all(r["token"] == raw_label[r["id"]] for r in shown)

        # the raw T=1 prediction beside it; every raw token the filters dropped is marked
        raw = _rows(page, "topk-row")
        assert [r["id"] for r in raw] == step["topk_ids"]
        assert [r["prob"] for r in raw] == pytest.approx(step["topk_probs"])
        removed = {r["id"] for r in raw if "removed" in r["cls"].split()}
        assert removed == {i for i in step["topk_ids"] if want[i] == 0}
        assert len(removed) >= len(step["topk_ids"]) - TOP_K
        checked_removed |= bool(removed)

        # bars on a fixed 0-100 % scale: width is the probability, not relative to the largest one
        for r in shown + raw:
            percent = float(re.fullmatch(r"([\d.e+-]+)%", r["width"]).group(1))
            assert percent == pytest.approx(r["prob"] * 100, abs=1e-3)
            assert r["bar"] == pytest.approx(r["prob"] * r["track"], abs=1.0)
    assert checked_removed

    page.get_by_test_id("panel-topk").screenshot(path=str(ARTIFACTS / "generate-sampled-panel.png"))
    page.screenshot(path=str(ARTIFACTS / "generate-sampled.png"), full_page=True)

    # the seed the random run used is shown; clicking it fills the seed box and repeats the run
    echo = page.get_by_test_id("gen-seed-echo")
    assert echo.get_attribute("data-seed") == str(seed) and str(seed) in echo.inner_text()
    echo.click()
    assert page.get_by_test_id("gen-seed").input_value() == str(seed)
    again = run_generate(page)
    assert again[0][1]["seed"] == seed
    assert [d["token_id"] for e, d in again if e == "token"] == [d["token_id"] for d in steps]
    chips = page.get_by_test_id("gen-tokens").get_by_test_id("gen-token")
    assert chips.count() == 6


def test_greedy_shows_a_one_hot_and_marks_the_rest_removed(page):
    fill_generate(page, PROMPT, 2, 0)
    events = run_generate(page)
    step = [d for e, d in events if e == "token"][-1]
    shown = _rows(page, "sampled-row")
    assert [(r["id"], r["prob"], r["width"]) for r in shown] == [(step["token_id"], 1.0, "100%")]
    raw = _rows(page, "topk-row")
    assert [("removed" in r["cls"].split()) for r in raw] == [i != step["token_id"] for i in step["topk_ids"]]
    assert page.get_by_test_id("gen-seed-echo").count() == 0  # greedy ignores the seed
    page.get_by_test_id("panel-topk").screenshot(path=str(ARTIFACTS / "generate-greedy-panel.png"))
