"""The page loads traces as the binary envelope and shows exactly what it shows from JSON."""

from __future__ import annotations

from .conftest import ARTIFACTS, trace_json

ENVELOPE = "application/vnd.lmpeek.trace"
TEXT = "Zürich 🙂 The cat sat on the mat, and the dog sat on the log."


def _run(page, text: str):
    """Run `text` in Explore; (the response, its trace as JSON summary) once every token is shown."""
    page.get_by_test_id("tab-explore").click()
    page.get_by_test_id("explore-text").fill(text)
    with page.expect_response("**/api/trace") as info:
        page.get_by_test_id("explore-run").click()
    data = trace_json(info.value)
    page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(len(data["tokens"]) - 1).wait_for()
    return info.value, data


def _shown(page, n: int) -> dict:
    """What the page shows: each token's exact text, and the predictions panel at tokens 1..n."""
    tokens = page.get_by_test_id("explore-tokens").get_by_test_id("token")
    texts = page.eval_on_selector_all(
        "[data-testid=explore-tokens] [data-testid=token]", "els => els.map(e => e.dataset.text)"
    )
    preds = []
    for i in range(1, n + 1):
        tokens.nth(i).click()
        page.wait_for_function(
            "i => document.querySelectorAll('[data-testid=explore-tokens] [data-testid=token]')[i]"
            ".classList.contains('selected')",
            arg=i,
        )
        rows = page.get_by_test_id("panel-predictions").get_by_test_id("pred-row")
        rows.first.wait_for()
        preds.append(
            [
                (rows.nth(j).get_attribute("data-token"), rows.nth(j).get_attribute("data-prob"))
                for j in range(rows.count())
            ]
        )
    return {"tokens": texts, "predictions": preds}


def test_the_page_reads_the_envelope_and_shows_what_json_shows(page):
    resp, data = _run(page, TEXT)
    assert ENVELOPE in resp.request.headers["accept"]
    assert resp.headers["content-type"] == ENVELOPE
    n = min(6, len(data["tokens"]) - 1)
    via_envelope = _shown(page, n)
    page.screenshot(path=str(ARTIFACTS / "explore-envelope.png"))

    # what the server's JSON says, shown as the page shows it: the same
    assert "".join(via_envelope["tokens"]) == data["text"]
    for i, rows in enumerate(via_envelope["predictions"], start=1):
        # the panel's top 5 (then the actual token, when it is not among them)
        want = list(zip(data["topk_tokens"][i - 1], data["topk_probs"][i - 1], strict=True))[:5]
        got = [(tok, float(p)) for tok, p in rows[: len(want)]]
        assert got == want, i

    # the same text again, the page made to receive JSON (as from an older server): the same display
    def as_json(route):
        route.continue_(headers={**route.request.headers, "accept": "application/json"})

    page.route("**/api/trace", as_json)
    resp, again = _run(page, TEXT)
    page.unroute("**/api/trace")
    assert resp.headers["content-type"] == "application/json"
    assert again["tokens"] == data["tokens"] and again["topk_probs"] == data["topk_probs"]
    assert _shown(page, n) == via_envelope
