"""A refused request leaves the last good result on screen, with one readable error next to the form;
every bad field is named in that one message; and both views read tokens by one convention: each
token shows the prediction that produced it (made at the previous position, the token itself marked).

Explore's loss of a token is checked against -log p(token) from a plain transformers forward of the same
tiny model, computed here.
"""

from __future__ import annotations

import json
import math

import pytest

from .conftest import ARTIFACTS, fill_generate, run_explore, run_generate

TEXT = "The capital of France is Paris. The capital of Germany is Berlin."
PROMPT = "The capital of France is"


def _tokens(page, testid: str = "explore-tokens"):
    return page.get_by_test_id(testid).get_by_test_id("token")


def _texts(page) -> list[str]:
    return page.eval_on_selector_all(
        "[data-testid=explore-tokens] [data-testid=token]", "els => els.map(e => e.textContent)"
    )


def _alert(page, testid: str):
    """The one error banner of a view: it is an alert, and there is exactly one."""
    banner = page.get_by_test_id(testid)
    banner.wait_for(timeout=10_000)
    assert banner.count() == 1 and banner.get_attribute("role") == "alert"
    return banner


def test_a_refused_trace_keeps_the_previous_result(page):
    data = run_explore(page, TEXT)
    before = _texts(page)
    assert len(before) == len(data["tokens"])

    # refused by the server: more tokens than the model takes (400)
    page.get_by_test_id("explore-text").fill("hello " * 4200)
    with page.expect_response("**/api/trace") as info:
        page.get_by_test_id("explore-run").click()
    assert info.value.status == 400
    banner = _alert(page, "explore-error")
    message = banner.get_by_test_id("error-message").inner_text()
    assert "4096" in message and "{" not in message  # the server's detail, not raw JSON
    page.get_by_test_id("explore-run").filter(has_text="Run").wait_for()
    assert _texts(page) == before  # the first result's tokens are still there
    stale = page.get_by_test_id("explore-stale")
    assert stale.is_visible() and "previous text" in stale.inner_text()
    page.screenshot(path=str(ARTIFACTS / "explore-refused.png"))

    # a busy model (503): its detail, and still the same tokens
    busy = "the model is busy: 16 jobs are queued; try again in a few seconds"
    page.route(
        "**/api/trace",
        lambda route: route.fulfill(
            status=503, headers={"retry-after": "2"}, content_type="application/json",
            body=json.dumps({"detail": busy}),
        ),
    )  # fmt: skip
    page.get_by_test_id("explore-text").fill("Another text")
    page.get_by_test_id("explore-run").click()
    page.get_by_test_id("explore-error").filter(has_text="busy").wait_for()
    assert _alert(page, "explore-error").get_by_test_id("error-message").inner_text() == busy
    assert _texts(page) == before
    page.unroute("**/api/trace")

    # dismissable
    page.get_by_test_id("explore-error").get_by_test_id("error-dismiss").click()
    assert page.get_by_test_id("explore-error").count() == 0

    # the form's own check: an empty text is never sent, and says so the way the server would
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/trace") else None)
    page.get_by_test_id("explore-text").fill("  \n ")
    page.get_by_test_id("explore-run").click()
    message = _alert(page, "explore-error").inner_text()
    assert "text: must not be empty" in message and not sent
    assert _texts(page) == before

    # typing the first text back: the shown result is that text's again
    page.get_by_test_id("explore-text").fill(TEXT)
    assert page.get_by_test_id("explore-stale").count() == 0


def test_every_bad_field_in_one_message_and_the_generation_stays(page):
    fill_generate(page, PROMPT, 4, 0)
    run_generate(page)
    chips = page.get_by_test_id("gen-tokens").get_by_test_id("gen-token")
    first = chips.all_inner_texts()
    assert len(first) == 4

    # the server's answer to a request with two bad fields (the form's values patched on the way, so
    # that the page's own checks do not catch them first): one message naming both
    def patch(route):
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "max_new_tokens": 0, "top_p": 2}))

    page.route("**/api/generate", patch)
    with page.expect_response("**/api/generate") as info:
        page.get_by_test_id("gen-submit").click()
    assert info.value.status == 422
    message = _alert(page, "gen-error").get_by_test_id("error-message").inner_text()
    assert message == "max_new_tokens: must be ≥ 1; top_p: must be ≤ 1.0", message
    page.unroute("**/api/generate")
    page.get_by_test_id("gen-submit").filter(has_text="Generate").wait_for()
    assert chips.all_inner_texts() == first  # the last generation is still on screen
    assert page.get_by_test_id("panel-topk").get_by_test_id("topk-row").count() > 0

    # the form's own checks: all problems together, before anything is sent
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/api/generate" in r.url else None)
    fill_generate(page, "   ", 0, -1, top_p=2, seed="x")
    page.get_by_test_id("gen-submit").click()
    message = _alert(page, "gen-error").get_by_test_id("error-message").inner_text()
    for part in ("prompt: must not be empty", "max_new_tokens: must be ≥ 1", "temperature: must be ≥ 0",
                 "top_p: must be ≤ 1", "seed: must be a whole number"):  # fmt: skip
        assert part in message, (part, message)
    assert message.count("; ") == 4 and not sent
    assert chips.all_inner_texts() == first
    stale = page.get_by_test_id("gen-stale")
    assert stale.is_visible() and "previous prompt" in stale.inner_text()
    page.screenshot(path=str(ARTIFACTS / "generate-refused.png"))


def _plain_forward(text_ids_of):
    """The tiny model loaded again (the server's seeded weights) and a plain transformers forward:
    (token ids of the generated text, log softmax of the logits at every position)."""
    import torch

    import lmpeek
    from lmpeek.capture.tokens import tokenize

    model = lmpeek.load("tiny:llama", device="cpu")
    ids = tokenize(model.tokenizer, PROMPT, None).token_ids.tolist() + text_ids_of
    with torch.inference_mode():
        logits = model.hf(input_ids=torch.tensor([ids])).logits[0].double()
    return ids, torch.log_softmax(logits, dim=-1).numpy()


def test_one_convention_in_both_views(page):
    fill_generate(page, PROMPT, 5, 0)
    events = run_generate(page)
    steps = [d for e, d in events if e == "token"]
    k = 2
    step = steps[k]
    t = step["position"]  # the token's index in the whole text (what Explore numbers it)

    # Generate: the token, under the prediction that produced it, marked in that distribution
    page.get_by_test_id("gen-tokens").get_by_test_id("gen-token").nth(k).click()
    topk = page.get_by_test_id("panel-topk")
    gen_heading = topk.get_by_test_id("prediction-heading").text_content()
    assert gen_heading.startswith("Prediction of this token") and "previous position" in gen_heading
    assert topk.get_by_test_id("prediction-token").inner_text() == step["token"]
    chosen = topk.locator("[data-testid=topk-row].chosen")
    assert chosen.count() == 1 and chosen.get_attribute("data-token") == step["token"]
    assert chosen.locator(".note").inner_text() == "this token"  # named as in Explore
    gen_rows = [(r.get_attribute("data-token"), float(r.get_attribute("data-prob")))
                for r in topk.get_by_test_id("topk-row").all()[:5]]  # fmt: skip
    assert "Inside this position" in page.locator(".gen").get_by_test_id("inside-heading").text_content()
    page.screenshot(path=str(ARTIFACTS / "convention-generate.png"))

    # Explore, the same text, the same token: the same heading, distribution and mark
    page.get_by_test_id("gen-explore").click()
    ids, logp = _plain_forward([s["token_id"] for s in steps])  # after the page: the server's model is loaded
    tokens = _tokens(page)
    tokens.nth(len(ids) - 1).wait_for()
    assert tokens.count() == len(ids)
    assert page.get_by_test_id("explore-stale").count() == 0  # the box holds the text that was run
    tokens.nth(t).click()
    panel = page.get_by_test_id("panel-predictions")
    assert panel.get_by_test_id("prediction-heading").text_content() == gen_heading
    assert panel.get_by_test_id("prediction-token").inner_text() == step["token"]
    rows = panel.get_by_test_id("pred-row")
    explore_rows = [
        (r.get_attribute("data-token"), float(r.get_attribute("data-prob"))) for r in rows.all()[:5]
    ]
    assert [a for a, _ in explore_rows] == [a for a, _ in gen_rows]
    assert [b for _, b in explore_rows] == pytest.approx([b for _, b in gen_rows], abs=1e-4)
    actual = panel.locator("[data-testid=pred-row].actual")
    assert actual.count() == 1 and actual.get_attribute("data-token") == step["token"]
    assert actual.locator(".note").inner_text() == "this token"
    inside = page.get_by_test_id("explore-body").get_by_test_id("inside-heading")
    assert "Inside this position" in inside.text_content() and f"#{t}" in inside.text_content()

    # Explore's loss at token t is -log p(token t), p from position t-1 of a plain forward
    want = -logp[t - 1, ids[t]]
    loss = float(panel.get_by_test_id("explore-loss").get_attribute("data-value"))
    assert loss == pytest.approx(want, abs=1e-4)
    assert step["prob"] == pytest.approx(math.exp(-want), abs=1e-4)  # Generate's p of the same token
    # the colour-by-loss value of token t is the same number (tooltip/metric, not position t's own)
    page.get_by_test_id("metric-select").select_option("loss")
    page.wait_for_function(
        "t => document.querySelectorAll('[data-testid=explore-tokens] [data-testid=token]')[t]"
        ".getAttribute('data-value') !== ''",
        arg=t,
    )
    value = float(tokens.nth(t).get_attribute("data-value"))
    assert value == pytest.approx(want, abs=1e-3)
    assert tokens.nth(0).get_attribute("data-value") in ("", None)  # nothing predicts the first token

    # the logit lens of token t: how its prediction formed at position t-1; the last layer is the
    # model's own p(token t)
    lens = page.get_by_test_id("panel-logit-lens")
    lens.scroll_into_view_if_needed()
    cells = lens.get_by_test_id("lens-target")
    cells.first.wait_for()
    last = cells.nth(cells.count() - 1)
    assert float(last.get_attribute("data-prob")) == pytest.approx(math.exp(-want), abs=1e-3)
    rank = int(last.get_attribute("data-rank"))
    assert rank == 1 + int((logp[t - 1] > logp[t - 1, ids[t]] + 1e-9).sum())
    page.screenshot(path=str(ARTIFACTS / "convention-explore.png"))

    # the first token: no prediction produced it, and the page says so
    tokens.nth(0).click()
    assert page.get_by_test_id("prediction-none").is_visible()
    assert panel.get_by_test_id("pred-row").count() == 0 and panel.get_by_test_id("explore-loss").count() == 0
    lens.get_by_test_id("lens-none").wait_for()
