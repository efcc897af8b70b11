"""POST /api/why/ablate (server/routes_ablation.py, attribution/ablation_job.py): the study the library
computes (lmpeek.ablate_prompt called directly), streamed as events in order with monotone progress,
cached, cancellable without leaving the server stuck, refusing bad input before streaming; and the
library's `progress` callback (counts, identical results, a raise in it unwinds cleanly)."""

from __future__ import annotations

import numpy as np
import pytest
from sse_client import SlowForwards, cancel_at_first_progress, light_request_while_running, post_events

from lmpeek.attribution.prompt_ablation import ablate_prompt, plan_ablation
from lmpeek.server.responses import WhyAblationResult

PROMPT = "The cat sat on the mat. Then it slept all day. The dog"
VARIANTS = [{"text": "The cat sat on the mat. The dog", "label": "no sleep"}, {"text": "A dog"}]
PAIRS = [("no sleep", VARIANTS[0]["text"]), (None, "A dog")]


def _post(client, **body) -> list[tuple[str, dict]]:
    body = {"prompt": PROMPT, "variants": VARIANTS, **body}
    return post_events(client, "/api/why/ablate", body)


@pytest.fixture()
def slow(client):
    hook = SlowForwards(client.app.state.holder.model, 0.03, "lmpeek-ablation")
    yield hook
    hook.remove()


def _same(got: dict, want, tol: float = 1e-6) -> None:
    """A variant's JSON equals the library's VariantResult."""
    assert got["label"] == want.label and got["text"] == want.text
    assert got["token_ids"] == want.token_ids.tolist()
    for k in ("target_logprob", "target_prob", "delta_logprob", "kl"):
        assert got[k] == pytest.approx(getattr(want, k), abs=tol), k
    assert got["topk_ids"] == want.topk_ids.tolist() and got["topk_tokens"] == want.topk_tokens
    np.testing.assert_allclose(got["topk_probs"], want.topk_probs, atol=tol)
    assert got["generated_ids"] == want.generated_ids.tolist() and got["generation"] == want.generation
    assert [tuple(d) for d in got["diff"]] == want.diff
    for k in ("resid_norms", "resid_norm_diff", "resid_delta_norm"):
        np.testing.assert_allclose(got[k], getattr(want, k), rtol=1e-5, atol=1e-4, err_msg=k)


def test_result_equals_the_library_and_events_come_in_order(client, slow):
    model = client.app.state.holder.model
    events = _post(client, auto="sentences", max_new_tokens=8, top_k=5)
    kinds = [k for k, _ in events]
    assert kinds[0] == "estimate" and kinds[-1] == "result" and set(kinds[1:-1]) == {"progress"}, kinds
    assert len(kinds) > 4  # the slow forwards made it pause (and report) several times
    progress = [d for k, d in events if k == "progress"]
    done = [p["done"] for p in progress]
    assert done == sorted(done) and all(p["done"] <= p["total"] for p in progress)
    est, res = events[0][1], events[-1][1]
    plan = plan_ablation(model, PROMPT, PAIRS, auto="sentences", max_new_tokens=8, top_k=5)
    # 3 sentences: the original, 2 written and 3 automatic variants, each scored and 8 steps generated
    assert plan.sequences == 6 and plan.units == 6 * 9
    assert est == {"forwards": plan.units, "seconds": est["seconds"], "cached": False} and est["seconds"] > 0
    assert {p["total"] for p in progress} == {plan.units}

    WhyAblationResult.model_validate(res)  # the documented shape (api types)
    direct = ablate_prompt(model, PROMPT, PAIRS, auto="sentences", top_k=5, max_new_tokens=8,
                           batch_size=res["batch_size"])  # fmt: skip
    assert res["target_id"] == direct.target_id and res["target_token"] == direct.target_token
    assert len(res["variants"]) == len(direct.variants) == 5 and not res["cached"]
    _same(res["original"], direct.original)
    for got, want in zip(res["variants"], direct.variants, strict=True):
        _same(got, want)
    assert [v["label"] for v in res["variants"][:2]] == ["no sleep", "'A dog'"]
    assert res["forwards"] == direct.forwards and res["generate_calls"] == direct.generate_calls
    assert res["resid_hooks"] == direct.resid_hooks and res["auto"] == "sentences"


def test_a_repeat_is_answered_from_the_cache_without_a_forward(client):
    first = _post(client, max_new_tokens=3, target=" mat")
    hook = SlowForwards(client.app.state.holder.model, 0.0, "lmpeek-ablation")
    try:
        again = _post(client, max_new_tokens=3, target=" mat")
    finally:
        hook.remove()
    assert hook.calls == 0
    assert [k for k, _ in again] == ["estimate", "result"]
    assert again[0][1] == {"forwards": 0, "seconds": 0.0, "cached": True} and again[1][1]["cached"]
    assert again[1][1]["variants"] == first[-1][1]["variants"]
    # another parameter is another study
    other = _post(client, max_new_tokens=4, target=" mat")
    assert not other[0][1]["cached"]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ""},
        {"prompt": "   "},
        {"variants": []},  # and no auto
        {"variants": [{"text": "x"}] * 65},
        {"variants": [{"text": " "}]},
        {"max_new_tokens": 65},
        {"max_new_tokens": -1},
        {"top_k": 0},
        {"auto": "lines"},
        {"auto": "replace", "replace_with": "zero"},
        {"target": ""},
        {"target": 10**9},
        {"target": -1},
        {"seed": -1},
        {"prompt": "word " * 300, "auto": "words"},  # 300 automatic variants: too many
        {"prompt": "One.", "variants": [], "auto": "sentences"},  # nothing left to drop
    ],
)
def test_bad_input_is_refused_before_streaming(client, body):
    r = client.post("/api/why/ablate", json={"prompt": PROMPT, "variants": VARIANTS, **body})
    assert 400 <= r.status_code < 500 and r.json()["detail"], (body, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")


def test_closing_the_stream_cancels_the_study(client, slow):
    model = client.app.state.holder.model
    body = {"prompt": PROMPT + " again", "auto": "words", "max_new_tokens": 30}
    cancel_at_first_progress(client, "/api/why/ablate", body, slow)
    # the server goes on serving, and the model is as it was (no hook left): the same study runs to
    # the library's answer
    assert client.post("/api/trace", json={"text": "next"}).status_code == 200
    events = _post(client, variants=[{"text": "A cat"}], max_new_tokens=2)
    res = events[-1][1]
    direct = ablate_prompt(model, PROMPT, ["A cat"], max_new_tokens=2, batch_size=res["batch_size"])
    _same(res["variants"][0], direct.variants[0])


def test_a_light_request_is_answered_while_a_study_runs(client, slow):
    body = {"prompt": PROMPT + " twice", "variants": VARIANTS, "max_new_tokens": 20}
    _, order = light_request_while_running(client, "/api/why/ablate", body)
    assert order == ["trace", "result"]  # answered between the study's turns, not after it


# --- the library's progress callback ----------------------------------------------------------------


def test_progress_counts_the_plan_and_leaves_the_result_unchanged(client):
    model = client.app.state.holder.model
    seen: list[tuple[int, int]] = []
    kw = dict(auto="replace", replace_with="plausible", top_k=3, max_new_tokens=5, seed=1, batch_size=3)
    r = ablate_prompt(model, PROMPT, PAIRS, **kw, progress=lambda d, t: seen.append((d, t)))
    plain = ablate_prompt(model, PROMPT, PAIRS, **kw)
    plan = plan_ablation(model, PROMPT, PAIRS, **kw)
    assert plan.prompt_forward and plan.sequences == 1 + len(r.variants)
    assert {t for _, t in seen} == {plan.units} and seen[-1] == (plan.units, plan.units)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[0] == 1  # the plausible replacement's forward of the prompt
    batches = -(-plan.sequences // 3)
    assert len(seen) >= 1 + batches + batches * 5  # every forward, and every decoding step of every batch
    for a, b in zip([r.original, *r.variants], [plain.original, *plain.variants], strict=True):
        assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("at", [2, 20])  # in the scoring forwards; in the generation
def test_a_raise_in_progress_unwinds_cleanly(client, at):
    model = client.app.state.holder.model

    class Stop(Exception):
        pass

    def progress(done, total):
        if done >= at:
            raise Stop

    hooks_before = _hook_count(model.hf)
    with pytest.raises(Stop):
        ablate_prompt(model, PROMPT, PAIRS, max_new_tokens=10, batch_size=1, progress=progress)
    assert _hook_count(model.hf) == hooks_before
    again = ablate_prompt(model, PROMPT, PAIRS, max_new_tokens=10, batch_size=1)
    ref = ablate_prompt(model, PROMPT, PAIRS, max_new_tokens=10, batch_size=1, progress=lambda d, t: None)
    assert [v.to_dict() for v in again.variants] == [v.to_dict() for v in ref.variants]


def _hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
