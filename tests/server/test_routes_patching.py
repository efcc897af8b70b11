"""POST /api/why/patch (server/routes_patching.py): the patching grid the library computes (patch_grid,
and one-at-a-time patch_one for some cells), attribution patching with its verified cells equal to real
patching, events in order with monotone progress, cached, cancellable, bad input refused before the
stream, and a light request answered while a grid runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sse_client import SlowForwards, cancel_at_first_progress, light_request_while_running, post_events

from lmpeek.attribution.patching import attribution_patching, patch_grid, patch_one, spearman
from lmpeek.server.responses import WhyPatchResult

A = "The cat sat on the mat and"  # 13 tokens each on tiny:llama; positions 1 and 2 differ
B = "The dog sat on the mat and"
# 43 tokens each: long enough (86 cells a grid) to watch a slowed job run
LONG_A = "When Mary and John went to the store, John gave a drink to"
LONG_B = "When Mary and John went to the store, Mary gave a drink to"


def _post(client, **body) -> list[tuple[str, dict]]:
    return post_events(client, "/api/why/patch", {"text": A, "source": B, **body})


def _top(model, text: str) -> int:
    """A's top next token from a plain transformers forward (the default target)."""
    ids = torch.as_tensor(model.tokenizer(text)["input_ids"])[None]
    with torch.no_grad():
        return int(model.hf(input_ids=ids).logits[0, -1].argmax())


@pytest.fixture()
def model(client):
    return client.app.state.holder.model


@pytest.mark.parametrize("hook", ["resid_pre", "mlp_out"])
def test_position_grid_equals_patch_grid_and_one_at_a_time_patching(client, model, hook):
    events = _post(client, hook=hook)
    kinds = [k for k, _ in events]
    assert kinds[0] == "estimate" and kinds[-1] == "result" and set(kinds[1:-1]) <= {"progress"}, kinds
    est, res = events[0][1], events[-1][1]
    WhyPatchResult.model_validate(res)  # the event's declared shape (and so the TypeScript type's)
    top = _top(model, A)
    direct = patch_grid(model, A, B, hook=hook, target=top)
    assert res["method"] == "patch" and res["by"] == "position" and res["hook"] == hook
    assert res["target"] == top and res["target_token"] == model.tokenizer.decode([top])
    assert res["metric"] == f"log p({json.dumps(res['target_token'], ensure_ascii=False)})"
    np.testing.assert_allclose(res["grid"], direct.values, atol=1e-5)
    assert np.abs(direct.values).max() > 1e-2  # patches matter: not a comparison of zeros
    assert res["base"] == pytest.approx(direct.base, abs=1e-6) and res["full"] == pytest.approx(
        direct.source, abs=1e-6
    )
    assert res["rows"] == direct.hooks == [f"blocks.{i}.hook_{hook}" for i in range(model.n_layers)]
    tokens = [model.tokenizer.decode([i]) for i in model.tokenizer(A)["input_ids"]]
    assert res["columns"] == res["tokens"] == tokens and len(res["source_tokens"]) == len(tokens)
    # a few cells against one patch, one forward each
    for layer, p in [(0, 1), (1, 2), (1, len(tokens) - 1)]:
        one = patch_one(model, A, B, f"blocks.{layer}.hook_{hook}", p, target=top)
        assert res["grid"][layer][p] == pytest.approx(one, abs=1e-5)
    # the estimate counts the sequences run: A's and B's runs, B's capture, one per cell
    assert not est["cached"] and est["forwards"] == 3 + model.n_layers * len(tokens) and est["seconds"] > 0
    assert res["forwards"] >= 1 and res["verified"] is None and res["spearman"] is None and not res["cached"]


def test_head_grid_and_contrast(client, model):
    x, y = 5, 9
    res = _post(client, by="head", target=x, contrast=y)[-1][1]
    direct = patch_grid(model, A, B, by="head", target=(x, y))
    np.testing.assert_allclose(res["grid"], direct.values, atol=1e-5)
    assert res["columns"] == [f"H{h}" for h in range(model.n_heads)] and res["hook"] == "z"
    assert res["rows"] == [f"blocks.{i}.attn.hook_z" for i in range(model.n_layers)]
    one = patch_one(model, A, B, "blocks.1.attn.hook_z", None, 2, target=(x, y))
    assert res["grid"][1][2] == pytest.approx(one, abs=1e-5)
    assert res["contrast"] == y and " − log p(" in res["metric"]


def test_attribution_patching_is_verified_by_real_patching(client, model):
    res = _post(client, method="attribution", verify=6)[-1][1]
    WhyPatchResult.model_validate(res)
    top = _top(model, A)
    direct = attribution_patching(model, A, B, target=top, verify=6)
    np.testing.assert_allclose(res["grid"], direct.values, rtol=1e-5, atol=1e-6)
    cells = res["verified"]
    assert [(c["layer"], c["column"]) for c in cells] == direct.verified and len(cells) == 6
    for c in cells:  # each verified value is one real patch
        real = patch_one(model, A, B, f"blocks.{c['layer']}.hook_resid_pre", c["column"], target=top)
        assert c["real"] == pytest.approx(real, abs=1e-5)
        assert c["estimate"] == pytest.approx(res["grid"][c["layer"]][c["column"]], abs=1e-12)
    rho = spearman([c["estimate"] for c in cells], [c["real"] for c in cells])
    assert res["spearman"] == pytest.approx(rho) and -1 <= rho <= 1


def test_a_repeat_is_answered_from_the_cache_without_a_forward(client, model):
    first = _post(client, hook="attn_out")
    hook = SlowForwards(model, 0.0, "lmpeek-patching")
    try:
        again = _post(client, hook="attn_out")
    finally:
        hook.remove()
    assert hook.calls == 0
    assert [k for k, _ in again] == ["estimate", "result"]
    assert again[0][1] == {"forwards": 0, "seconds": 0.0, "cached": True} and again[1][1]["cached"]
    assert again[1][1]["grid"] == first[-1][1]["grid"]


def test_progress_is_monotone_and_a_light_request_runs_between_batches(client, model):
    slow = SlowForwards(model, 0.05, "lmpeek-patching")
    try:
        got, order = light_request_while_running(client, "/api/why/patch", {"text": LONG_A, "source": LONG_B})
    finally:
        slow.remove()
    assert order == ["trace", "result"]  # answered while the grid was still running
    kinds = [k for k, _ in got]
    assert kinds[0] == "estimate" and kinds[-1] == "result" and kinds.count("progress") >= 2, kinds
    done = [d["done"] for k, d in got if k == "progress"]
    assert done == sorted(done) and all(d["done"] <= d["total"] for k, d in got if k == "progress")
    assert got[-1][1]["grid"] and len(got[-1][1]["tokens"]) == 43


def test_closing_the_stream_cancels_the_grid(client, model):
    slow = SlowForwards(model, 0.2, "lmpeek-patching")
    try:
        body = {"text": LONG_A, "source": LONG_B, "hook": "attn_out"}
        cancel_at_first_progress(client, "/api/why/patch", body, slow)
    finally:
        slow.remove()
    # the model is clean: no patching hook left behind, a plain grid still equals the library's
    res = _post(client, hook="resid_post")[-1][1]
    direct = patch_grid(model, A, B, hook="resid_post", target=_top(model, A))
    np.testing.assert_allclose(res["grid"], direct.values, atol=1e-5)


@pytest.mark.parametrize(
    "body,said",
    [
        ({"source": "The capital of France is Paris"}, ["13", "8"]),  # lengths differ: both said
        ({"source": "The capital of France is Paris", "by": "head"}, ["13", "8"]),
        ({"hook": "pattern"}, ["hook must be"]),
        ({"by": "neuron"}, ["by must be"]),
        ({"method": "exact"}, ["method must be"]),
        ({"text": ""}, []),
        ({"source": "   "}, ["empty"]),
        ({"verify": -1}, []),
        ({"verify": True}, []),
        ({"target": ""}, ["empty"]),
        ({"target": 10**9}, ["target"]),
        ({"target": 5, "contrast": 5}, ["same token"]),
        ({"text": "ab " * 400, "source": "ab " * 400}, ["at most 512"]),
    ],
)
def test_bad_input_is_refused_before_streaming(client, body, said):
    r = client.post("/api/why/patch", json={"text": A, "source": B, **body})
    detail = r.json()["detail"]
    assert 400 <= r.status_code < 500 and detail, (body, r.status_code, r.text)
    for s in said:
        assert s in str(detail), (s, detail)


def test_undefined_spearman_is_null(client):
    res = _post(client, method="attribution", verify=1)[-1][1]
    assert len(res["verified"]) == 1 and res["spearman"] is None  # ρ of one cell: undefined, sent as null
    assert not math.isnan(res["verified"][0]["real"])
