"""An "ablate" action in Chromium against a real server (tiny model): the head view's "ablate" on a head
in the Attention tab switches to the Why tab's "Ablate / patch" section, which runs the trace's text
with that head zeroed and shows the numbers `lmpeek.intervene` gives by hand (the plain top-1's Δ log p,
each token's Δ log p and KL); then the form's own edit list and "patch…" from a prompt B, and a
residual direction ablated from the form (checked against `intervene(ablate=[direction(...)])`).
Screenshots: test-artifacts/why-intervene.png, why-intervene-action.png. Waits are on conditions."""

from __future__ import annotations

import pytest
import torch

import lmpeek
from lmpeek.attribution.intervene import head, intervene, token_ids

from .conftest import ARTIFACTS, run_explore

TEXT = "The cat sat on the mat and then it slept"


def _by_hand(model, layer: int, h: int):
    ids = torch.as_tensor(token_ids(model, TEXT))[None]
    with torch.no_grad():
        plain = model.hf(input_ids=ids, use_cache=False).logits[0].double().log_softmax(-1)
        with intervene(model, ablate=[head(layer, h)]):
            edited = model.hf(input_ids=ids, use_cache=False).logits[0].double().log_softmax(-1)
    ids = ids[0]
    delta = [None] + [float(edited[i - 1, ids[i]] - plain[i - 1, ids[i]]) for i in range(1, len(ids))]
    kl = (plain.exp() * (plain - edited)).sum(-1).tolist()
    t1 = int(plain[-1].argmax())
    return delta, kl, float(edited[-1, t1] - plain[-1, t1])


def test_ablate_a_head_from_the_attention_tab(page):
    page.set_viewport_size({"width": 1280, "height": 800})
    run_explore(page, TEXT)
    page.get_by_test_id("tab-attention").click()
    view = page.get_by_test_id("attention-head-view")
    view.get_by_test_id("attention-lines").wait_for()
    layer = int(page.get_by_test_id("attention-layer").input_value())
    acts = view.get_by_test_id("intervene-actions").first
    label = acts.get_attribute("data-target")  # "head L.h"
    h = int(label.split(".")[-1])
    assert label == f"head {layer}.{h}"
    view.screenshot(path=str(ARTIFACTS / "why-intervene-action.png"))
    acts.get_by_test_id("intervene-ablate").click()

    # the Why tab, its "Ablate / patch" section, the result of that edit on the trace's text
    page.get_by_test_id("why-view").wait_for()
    assert "active" in (page.get_by_test_id("why-tab-intervene").get_attribute("class") or "")
    result = page.get_by_test_id("intervene-result")
    result.wait_for(timeout=60_000)
    assert page.get_by_test_id("intervene-text").input_value() == TEXT
    assert page.get_by_test_id("intervene-edit").count() == 1
    assert (
        page.get_by_test_id("intervene-applied")
        .inner_text()
        .startswith(f"applied: head {layer}.{h}: zero-ablate blocks.{layer}.attn.hook_z [{h}]")
    )
    delta, kl, top1 = _by_hand(lmpeek.load("tiny:llama", progress=False), layer, h)
    shown_top1 = float(page.get_by_test_id("intervene-top1").get_attribute("data-delta"))
    assert shown_top1 == pytest.approx(top1, abs=1e-5)
    cells = page.get_by_test_id("intervene-token").evaluate_all(
        "els => els.map(e => [e.dataset.delta, e.dataset.kl])"
    )
    assert len(cells) == len(delta)
    assert cells[0][0] == ""
    for (d, k), wd, wk in zip(cells, delta, kl, strict=True):
        if wd is not None:
            assert float(d) == pytest.approx(wd, abs=1e-5)
        assert float(k) == pytest.approx(wk, abs=1e-5)
    assert page.get_by_test_id("intervene-top-plain").locator("tbody tr").count() == 10
    assert page.get_by_test_id("intervene-diff").is_visible()
    page.screenshot(path=str(ARTIFACTS / "why-intervene.png"), full_page=True)

    # remove the edit, add a patch of the same head from prompt B by hand: it runs and shows its label
    page.get_by_test_id("intervene-edit-remove").click()
    assert page.get_by_test_id("intervene-edit").count() == 0
    page.get_by_test_id("intervene-kind").select_option("patch")
    page.get_by_test_id("intervene-hook").select_option("attn.hook_z")
    page.get_by_test_id("intervene-layer").fill(str(layer))
    page.get_by_test_id("intervene-index").fill(str(h))
    page.get_by_test_id("intervene-source").fill("The cat sat on the mat and then it woke")
    page.get_by_test_id("intervene-add").click()
    page.get_by_test_id("intervene-run").click()
    page.wait_for_function(
        "() => (document.querySelector('[data-testid=intervene-applied]')?.textContent ?? '')"
        ".includes('from B')",
        timeout=60_000,
    )

    # a bad edit (prompt B of another length, every position) is refused with the server's words
    page.get_by_test_id("intervene-edit-remove").click()
    page.get_by_test_id("intervene-source").fill("Hi")
    page.get_by_test_id("intervene-add").click()
    page.get_by_test_id("intervene-run").click()
    page.get_by_test_id("intervene-error").wait_for(timeout=30_000)
    assert "equal length" in page.get_by_test_id("intervene-error").inner_text()


def test_ablate_a_direction_from_the_form(page):
    """ "ablate a direction": blocks.1.hook_resid_pre's component along neuron 0.5's output vector (read
    from the weights here) zeroed; the page shows what `intervene(ablate=[direction(...)])` gives."""
    from lmpeek.attribution.intervene import direction

    page.set_viewport_size({"width": 1280, "height": 800})
    page.get_by_test_id("tab-why").click()
    page.get_by_test_id("why-tab-intervene").click()
    page.get_by_test_id("intervene-text").fill(TEXT)
    page.get_by_test_id("intervene-kind").select_option("direction")
    page.get_by_test_id("intervene-layer").fill("1")
    page.get_by_test_id("intervene-dir-point").select_option("hook_resid_pre")
    page.get_by_test_id("intervene-dir-kind").select_option("neuron")
    page.get_by_test_id("intervene-dir-layer").fill("0")
    page.get_by_test_id("intervene-dir-index").fill("5")
    page.get_by_test_id("intervene-add").click()
    label = "zero-ablate blocks.1.hook_resid_pre along neuron 0.5"
    assert page.get_by_test_id("intervene-edit").inner_text().startswith(label)
    page.get_by_test_id("intervene-run").click()
    page.wait_for_function(
        "l => (document.querySelector('[data-testid=intervene-applied]')?.textContent ?? '').includes(l)",
        arg=label,
        timeout=60_000,
    )
    model = lmpeek.load("tiny:llama", progress=False)
    w = model.hf.model.layers[0].mlp.down_proj.weight.detach().double()[:, 5].numpy()
    ids = torch.as_tensor(token_ids(model, TEXT))[None]
    with torch.no_grad():
        plain = model.hf(input_ids=ids, use_cache=False).logits[0].double().log_softmax(-1)
        with intervene(model, ablate=[direction("blocks.1.hook_resid_pre", w)]):
            edited = model.hf(input_ids=ids, use_cache=False).logits[0].double().log_softmax(-1)
    t1 = int(plain[-1].argmax())
    shown_top1 = float(page.get_by_test_id("intervene-top1").get_attribute("data-delta"))
    assert shown_top1 == pytest.approx(float(edited[-1, t1] - plain[-1, t1]), abs=1e-5)
    kl = (plain.exp() * (plain - edited)).sum(-1).tolist()
    shown_kl = page.get_by_test_id("intervene-token").evaluate_all("els => els.map(e => +e.dataset.kl)")
    assert shown_kl == pytest.approx(kl, abs=1e-5) and max(kl) > 1e-4
    page.screenshot(path=str(ARTIFACTS / "why-intervene-direction.png"), full_page=True)
