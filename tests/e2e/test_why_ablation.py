"""The Why tab's prompt ablation in Chromium against a real server (tiny model): written variants (one
labelled) and automatic ones (drop each word); every row's numbers as shown equal the route's own JSON
(the page's POST /api/why/ablate stream) to the shown digits, the regeneration's diff and the per-layer
sparkline drawn from it, sorting by KL, a repeat answered from the cache. Screenshot at 1280×800:
test-artifacts/why-ablation.png. Waits are on conditions, never on time."""

from __future__ import annotations

from .conftest import ARTIFACTS, parse_sse

PROMPT = "The cat sat on the mat. It was warm and the dog"
LABELLED = ("no cat", "It was warm and the dog")
PLAIN = "The cat sat on the rug. It was cold and the dog"


def _close_prob(shown: str, want: float) -> bool:
    if shown.endswith("%"):  # one decimal of a percentage
        return abs(float(shown[:-1]) - want * 100) <= 0.05 + 1e-9
    return abs(float(shown) - want) <= 0.051 * abs(want)  # 2 significant digits


def _open(page) -> None:
    page.set_viewport_size({"width": 1280, "height": 800})
    page.get_by_test_id("tab-why").click()
    page.get_by_test_id("why-tab-ablation").click()
    page.get_by_test_id("abl-form").wait_for()


def _run(page) -> list[tuple[str, dict]]:
    with page.expect_response("**/api/why/ablate") as info:
        page.get_by_test_id("abl-run").click()
    events = parse_sse(info.value.text())
    page.get_by_test_id("abl-run").wait_for(timeout=60_000)  # back from Cancel: the run ended
    page.get_by_test_id("abl-result").wait_for(timeout=60_000)
    return events


def test_ablation_table_equals_the_routes_json(page):
    _open(page)
    page.get_by_test_id("abl-prompt").fill(PROMPT)
    page.get_by_test_id("abl-variant-label").first.fill(LABELLED[0])
    page.get_by_test_id("abl-variant-text").first.fill(LABELLED[1])
    page.get_by_test_id("abl-add").click()
    page.get_by_test_id("abl-variant-text").nth(1).fill(PLAIN)
    page.get_by_test_id("abl-auto").select_option("words")
    page.get_by_test_id("abl-new-tokens").fill("6")
    events = _run(page)
    kinds = [k for k, _ in events]
    assert kinds[0] == "estimate" and kinds[-1] == "result", kinds
    res = events[-1][1]
    every = [res["original"], *res["variants"]]
    assert len(res["variants"]) == 2 + len(PROMPT.split())
    assert [v["label"] for v in res["variants"][:2]] == [LABELLED[0], repr(PLAIN)]

    rows = page.get_by_test_id("abl-row")
    assert rows.count() == len(every)
    assert rows.evaluate_all("els => els.map(e => e.dataset.label)") == [v["label"] for v in every]
    probs = page.get_by_test_id("abl-prob").all_text_contents()
    deltas = page.get_by_test_id("abl-delta").all_text_contents()
    kls = page.get_by_test_id("abl-kl").all_text_contents()
    for i, v in enumerate(every):
        assert _close_prob(probs[i], v["target_prob"]), (i, probs[i], v["target_prob"])
        if i == 0:
            assert deltas[0] == "" and kls[0] == ""  # the original: no change to show
            continue
        assert abs(float(deltas[i]) - v["delta_logprob"]) <= 0.0005 + 1e-9, (i, deltas[i], v)
        assert abs(float(kls[i]) - v["kl"]) <= 0.0005 + 1e-9, (i, kls[i], v["kl"])
        row = rows.nth(i)
        top = row.get_by_test_id("abl-top-prob").all_text_contents()
        assert len(top) == 3 and all(_close_prob(s, p) for s, p in zip(top, v["topk_probs"], strict=False))
        # the regeneration's diff: the same runs of kept / removed / added words, in order
        ops = (
            row.get_by_test_id("abl-regen").locator("span").evaluate_all("els => els.map(e => e.dataset.op)")
        )
        assert ops == [op for op, words in v["diff"] if words], (ops, v["diff"])
        # the sparkline: one bar per hook, each the row's ‖h‖ − ‖h_original‖
        bars = (
            row.get_by_test_id("abl-spark").locator("rect").evaluate_all("els => els.map(e => e.dataset.v)")
        )
        assert len(bars) == len(res["resid_hooks"]) == len(v["resid_norm_diff"])
        for shown, want in zip(bars, v["resid_norm_diff"], strict=True):
            assert abs(float(shown) - want) <= 1e-9 * max(1.0, abs(want)), (shown, want)
    assert page.get_by_test_id("abl-result").get_attribute("data-cached") == "false"
    assert res["target_id"] == res["original"]["topk_ids"][0]  # the default: the model's top prediction
    # deleted words are drawn struck through, added ones marked
    dels = page.locator("[data-testid=abl-regen] span[data-op='-']")
    if dels.count():
        assert "line-through" in dels.first.evaluate("e => getComputedStyle(e).textDecorationLine")
    page.screenshot(path=str(ARTIFACTS / "why-ablation.png"))
    page.screenshot(path=str(ARTIFACTS / "why-ablation-full.png"), full_page=True)

    # sorted by KL: the original first, then the variants by KL, largest first
    page.get_by_test_id("abl-sort").select_option("kl")
    order = sorted(range(len(res["variants"])), key=lambda j: (-res["variants"][j]["kl"], j))
    want = ["original", *(res["variants"][j]["label"] for j in order)]
    assert rows.evaluate_all("els => els.map(e => e.dataset.label)") == want
    page.get_by_test_id("abl-sort").select_option("order")

    # the same study again comes from the server's cache, with the same numbers
    again = _run(page)
    page.locator("[data-testid=abl-result][data-cached=true]").wait_for(timeout=30_000)
    assert [k for k, _ in again] == ["estimate", "result"] and again[0][1]["cached"]
    assert again[-1][1]["variants"] == res["variants"]
    assert "cached" in page.get_by_test_id("abl-estimate").inner_text()


def test_ablation_form_refuses_nothing_to_run_and_starts_from_the_text(page):
    _open(page)
    page.get_by_test_id("abl-auto").select_option("none")
    assert page.get_by_test_id("abl-run").is_disabled()
    assert "variant" in page.get_by_test_id("abl-problem").inner_text()
    page.get_by_test_id("abl-add-copy").click()  # a row holding the prompt, to edit
    texts = page.get_by_test_id("abl-variant-text")
    assert texts.nth(1).input_value() == page.get_by_test_id("abl-prompt").input_value()
    assert page.get_by_test_id("abl-run").is_enabled()
    page.get_by_test_id("abl-remove").nth(1).click()
    assert texts.count() == 1 and page.get_by_test_id("abl-run").is_disabled()
