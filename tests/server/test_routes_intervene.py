"""POST /api/why/intervene (server/routes_intervene.py, attribution/intervene_job.py): the numbers it
streams equal the model run by hand inside `lmpeek.intervene` (Δ log p, KL, top-k, regenerations), a
patch equals patching.patch_one, a zeroed head reads zero at the o_proj input, repeats are cached,
and bad edits answer 4xx before any stream."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sse_client import post_events

import lmpeek
from lmpeek.attribution.intervene import Patch, feature, head, intervene, neuron, token_ids, writable
from lmpeek.attribution.patching import patch_one
from lmpeek.features.sources import FeatureSourceWarning
from lmpeek.server.app import create_app
from tests.features.feature_db import make_sae

TEXT = "The cat sat on the mat and then it slept"
OTHER = "The cat sat on the mat and then it woke"  # as many tokens as TEXT


@pytest.fixture(scope="module")
def model():
    return lmpeek.load("tiny:llama")


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    return make_sae(tmp_path_factory.mktemp("sae") / "sae")


@pytest.fixture(scope="module")
def client(tmp_path_factory, model, sae):
    store = tmp_path_factory.mktemp("s")
    with warnings.catch_warnings():  # a random SAE does not reconstruct the tiny model (it warns)
        warnings.simplefilter("ignore", FeatureSourceWarning)
        app = create_app("tiny:llama", background=False, loader=lambda _s: model, store_dir=store,
                         allowed_hosts=["testserver"], feature_sources=[str(sae)])  # fmt: skip
        c = TestClient(app).__enter__()
    try:
        yield c
    finally:
        c.__exit__(None, None, None)


def _post(client, edits, **body) -> list[tuple[str, dict]]:
    return post_events(client, "/api/why/intervene", {"text": TEXT, "edits": edits, **body})


def _result(client, edits, **body) -> dict:
    events = _post(client, edits, **body)
    kinds = [k for k, _ in events]
    assert kinds[0] == "estimate" and kinds[-1] == "result", events[-1]
    assert set(kinds[1:-1]) <= {"progress"}
    return events[-1][1]


def _logits(model, text=TEXT) -> torch.Tensor:
    ids = torch.as_tensor(token_ids(model, text))[None]
    with torch.no_grad():
        return model.hf(input_ids=ids, use_cache=False).logits[0].double()


def _greedy(model, n: int) -> list[int]:
    ids = torch.as_tensor(token_ids(model, TEXT))[None]
    with torch.no_grad():
        out = model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                do_sample=False, pad_token_id=0)  # fmt: skip
    row = out[0, ids.shape[1] :].tolist()
    eos = model.tokenizer.eos_token_id
    return row[: row.index(eos)] if eos in row else row


def _check(res, model, plain: torch.Tensor, edited: torch.Tensor, top_k: int) -> None:
    """Every number of `res` against logits computed by hand."""
    lp, lq = plain.log_softmax(-1), edited.log_softmax(-1)
    ids = token_ids(model, TEXT)
    want_delta = [(lq[i - 1, ids[i]] - lp[i - 1, ids[i]]).item() for i in range(1, len(ids))]
    assert res["delta_logp"][0] is None
    np.testing.assert_allclose(res["delta_logp"][1:], want_delta, atol=1e-6)
    p = lp.exp()
    want_kl = (p * (lp - lq)).sum(-1).numpy()
    np.testing.assert_allclose(res["kl"], want_kl, atol=1e-6)
    assert max(res["kl"]) > 1e-4  # the edit changed something
    top = lp[-1].topk(top_k).indices.tolist()
    assert [t["id"] for t in res["plain_top"]] == top
    np.testing.assert_allclose([t["prob"] for t in res["plain_top"]], lp[-1].exp()[top].numpy(), atol=1e-7)
    np.testing.assert_allclose([t["other"] for t in res["plain_top"]], lq[-1].exp()[top].numpy(), atol=1e-7)
    etop = lq[-1].topk(top_k).indices.tolist()
    assert [t["id"] for t in res["edited_top"]] == etop
    t1 = top[0]
    assert res["top1"]["id"] == t1
    assert res["top1"]["delta"] == pytest.approx((lq[-1, t1] - lp[-1, t1]).item(), abs=1e-6)


def test_head_ablation_equals_intervene_by_hand(client, model):
    edits = [{"action": "ablate", "hook": "blocks.1.attn.hook_z", "index": 2, "label": "head 1.2"}]
    res = _result(client, edits, max_new_tokens=6, top_k=5)
    plain = _logits(model)
    with intervene(model, ablate=[head(1, 2)]):
        edited = _logits(model)
        gen_edited = _greedy(model, 6)
    _check(res, model, plain, edited, 5)
    assert res["labels"] == ["head 1.2: zero-ablate blocks.1.attn.hook_z [2]"]
    tok = model.tokenizer
    assert res["plain_text"] == tok.decode(_greedy(model, 6)) and res["edited_text"] == tok.decode(gen_edited)
    ops = "".join(d["op"] for d in res["diff"])
    assert set(ops) <= {"=", "-", "+"} and (res["plain_text"] == res["edited_text"]) == (ops in ("", "="))


def test_a_zeroed_head_reads_zero_at_the_o_proj_input(model):
    seen = {}
    point = writable(model.bound, "blocks.0.attn.hook_z")

    def keep(_mod, args, kwargs):  # o_proj's input, read by hand after the edit's own pre-hook
        x = args[0] if args else kwargs["hidden_states"]
        seen["z"] = x[0].unflatten(-1, (model.bound.n_heads, -1)).clone()

    with intervene(model, ablate=[head(0, 1)]):
        handle = point.module.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            _logits(model)
        finally:
            handle.remove()
    z = seen["z"]
    assert torch.count_nonzero(z[:, 1]) == 0 and torch.count_nonzero(z[:, 0]) > 0


def test_neuron_mean_ablation_and_two_edits(client, model):
    edits = [
        {"action": "ablate", "hook": "blocks.0.mlp.hook_post", "index": 7, "mode": "mean"},
        {"action": "ablate", "hook": "blocks.1.hook_mlp_out", "positions": [3, 4]},
    ]
    res = _result(client, edits, max_new_tokens=0, top_k=3)
    from lmpeek.attribution.intervene import Ablation

    plain = _logits(model)
    with intervene(model, ablate=[neuron(0, 7, "mean"), Ablation("blocks.1.hook_mlp_out", positions=(3, 4))],
                   text=TEXT):  # fmt: skip
        edited = _logits(model)
    _check(res, model, plain, edited, 3)
    assert res["plain_text"] == res["edited_text"] == "" and len(res["labels"]) == 2


def test_patch_from_b_equals_patch_one(client, model):
    assert token_ids(model, OTHER).size == token_ids(model, TEXT).size
    hook = "blocks.1.attn.hook_z"
    res = _result(client, [{"action": "patch", "hook": hook, "head": 3, "source": OTHER}], max_new_tokens=0)
    want = patch_one(model, TEXT, OTHER, hook, head=3, target=res["top1"]["id"])
    assert res["top1"]["delta"] == pytest.approx(want, abs=1e-5)
    plain = _logits(model)
    with intervene(model, patch=[Patch(hook, OTHER, None, 3)]):
        edited = _logits(model)
    _check(res, model, plain, edited, 10)


def test_feature_ablation_equals_intervene(client, model, sae):
    from lmpeek import features

    sources = client.get("/api/features").json()["sources"]
    sid = next(s["id"] for s in sources if s["kind"] != "neurons")
    src = features.load(str(sae), model, check=False)
    acts = src.encode({src.hooks[0]: lmpeek.trace(model, TEXT, keep=[src.hooks[0]])[src.hooks[0]]})
    i = int(np.argmax((acts > 0).sum(0)))  # a feature that fires
    res = _result(client, [{"action": "ablate_feature", "source_name": sid, "index": i}], max_new_tokens=0)
    plain = _logits(model)
    with intervene(model, ablate=[feature(src, i)]):
        edited = _logits(model)
    _check(res, model, plain, edited, 10)


def test_direction_ablations_equal_intervene_with_direction(client, model, sae):
    """A residual direction: a neuron's output vector (from the weights), a text's activation at a
    node (lmpeek.trace) and a feature's decoder row (the SAE file), zero / mean / resample."""
    from lmpeek import features
    from lmpeek.attribution.intervene import direction

    w_down = model.hf.model.layers[0].mlp.down_proj.weight.detach().double().numpy()
    node_hook = "blocks.1.hook_mlp_out"
    node = lmpeek.trace(model, OTHER, keep=[node_hook]).tensors[node_hook].astype(np.float64)[-2]
    here = lmpeek.trace(model, TEXT, keep=["blocks.0.hook_attn_out"]).tensors["blocks.0.hook_attn_out"][3]
    sid = next(s["id"] for s in client.get("/api/features").json()["sources"] if s["kind"] != "neurons")
    src = features.load(str(sae), model, check=False)
    row = src.w["W_dec"][4].detach().double().numpy()
    cases = [
        (
            {"action": "ablate", "hook": "blocks.0.hook_resid_post",
             "direction": {"kind": "neuron", "layer": 0, "index": 5}},
            direction("blocks.0.hook_resid_post", w_down[:, 5]),
            "zero-ablate blocks.0.hook_resid_post along neuron 0.5",
        ),
        (
            {"action": "ablate", "hook": "blocks.1.hook_resid_pre", "mode": "mean", "positions": [2, 3, 4],
             "direction": {"kind": "node", "text": OTHER, "hook": node_hook, "position": -2}},
            direction("blocks.1.hook_resid_pre", node, "mean", [2, 3, 4]),
            "mean-ablate blocks.1.hook_resid_pre along node blocks.1.hook_mlp_out @ #-2 of another text"
            " @ 2,3,4",
        ),
        (  # the text's own activation (no text given): its component at every position zeroed
            {"action": "ablate", "hook": "blocks.0.hook_attn_out",
             "direction": {"kind": "node", "hook": "blocks.0.hook_attn_out", "position": 3}},
            direction("blocks.0.hook_attn_out", here.astype(np.float64)),
            "zero-ablate blocks.0.hook_attn_out along node blocks.0.hook_attn_out @ #3",
        ),
        (
            {"action": "ablate", "hook": "blocks.1.hook_resid_post", "mode": "resample", "source": OTHER,
             "direction": {"kind": "feature", "source_name": sid, "index": 4}},
            direction("blocks.1.hook_resid_post", row, "resample", range(token_ids(model, TEXT).size), OTHER),
            f"resample-ablate blocks.1.hook_resid_post along feature {sid}#4",
        ),
    ]  # fmt: skip
    plain = _logits(model)
    for edit, spec, label in cases:
        res = _result(client, [edit], max_new_tokens=4, top_k=5)
        with intervene(model, ablate=[spec], text=TEXT):
            edited = _logits(model)
            gen = _greedy(model, 4)
        _check(res, model, plain, edited, 5)
        assert res["labels"] == [label] and res["edited_text"] == model.tokenizer.decode(gen)


def test_a_repeat_is_cached(client):
    edits = [{"action": "ablate", "hook": "blocks.0.attn.hook_z", "index": 0}]
    first = _result(client, edits, max_new_tokens=3)
    events = _post(client, edits, max_new_tokens=3)
    assert [k for k, _ in events] == ["estimate", "result"] and events[0][1]["cached"]
    again = events[1][1]
    assert again["cached"] and not first["cached"]
    assert {**again, "cached": False} == first


@pytest.mark.parametrize(
    ("edit", "status", "words"),
    [
        ({"action": "ablate", "hook": "blocks.7.attn.hook_z", "index": 0}, 400, "cannot intervene"),
        ({"action": "ablate", "hook": "blocks.0.hook_nonsense"}, 422, "must be a writable hook point"),
        ({"action": "ablate", "hook": "blocks.0.attn.hook_z", "index": 4}, 400, "head 4 is out of range"),
        ({"action": "ablate", "hook": "blocks.0.mlp.hook_post", "index": 10**6}, 400, "out of range"),
        ({"action": "ablate", "hook": "blocks.0.hook_resid_pre", "mode": "resample"}, 400, "needs prompt B"),
        ({"action": "patch", "hook": "blocks.0.hook_resid_pre"}, 400, "needs prompt B"),
        ({"action": "patch", "hook": "blocks.0.hook_resid_pre", "source": "Hi"}, 400, "equal length"),
        (
            {"action": "patch", "hook": "blocks.0.hook_resid_pre", "source": "Hi", "positions": [5]},
            400,
            "beyond",
        ),
        ({"action": "ablate", "hook": "blocks.0.hook_resid_pre", "positions": [999]}, 400, "positions"),
        ({"action": "ablate_feature", "source_name": "nope", "index": 0}, 404, "no feature source"),
        ({"action": "ablate_feature", "source_name": "sae", "index": 10**6}, 400, "out of range"),
        ({"action": "ablate", "hook": "blocks.0.attn.hook_z", "index": -1}, 422, "index"),
        ({"action": "explode", "hook": "blocks.0.attn.hook_z"}, 422, "action"),
        (
            {
                "action": "ablate",
                "hook": "blocks.0.attn.hook_z",
                "direction": {"kind": "neuron", "layer": 0, "index": 1},
            },
            400,
            "residual-sized",
        ),
        (
            {
                "action": "ablate",
                "hook": "blocks.0.hook_resid_pre",
                "index": 2,
                "direction": {"kind": "neuron", "layer": 0, "index": 1},
            },
            400,
            "residual-sized",
        ),
        (
            {
                "action": "ablate",
                "hook": "blocks.0.hook_resid_pre",
                "direction": {"kind": "neuron", "layer": 9, "index": 1},
            },
            400,
            "out of range",
        ),
        (
            {
                "action": "ablate",
                "hook": "blocks.0.hook_resid_pre",
                "direction": {"kind": "feature", "source_name": "nope", "index": 1},
            },
            404,
            "no feature source",
        ),
        (
            {
                "action": "ablate",
                "hook": "blocks.0.hook_resid_pre",
                "direction": {"kind": "feature", "source_name": "sae", "index": 999},
            },
            400,
            "out of range",
        ),
        (
            {
                "action": "ablate",
                "hook": "blocks.0.hook_resid_pre",
                "direction": {"kind": "node", "hook": "blocks.0.hook_mlp_out", "position": 99},
            },
            400,
            "position",
        ),
        (
            {
                "action": "ablate",
                "hook": "blocks.0.hook_resid_pre",
                "direction": {"kind": "node", "hook": "blocks.0.mlp.hook_post", "position": 0},
            },
            422,
            "hook",
        ),
        (
            {"action": "ablate", "hook": "blocks.0.hook_resid_pre", "direction": {"kind": "vector"}},
            422,
            "kind",
        ),
    ],
)
def test_bad_edits_answer_4xx_before_streaming(client, edit, status, words):
    r = client.post("/api/why/intervene", json={"text": TEXT, "edits": [edit]})
    assert r.status_code == status, r.text
    assert words in json.dumps(r.json()["detail"]), r.text


def test_bad_numbers_are_422(client):
    edit = {"action": "ablate", "hook": "blocks.0.attn.hook_z", "index": 0}
    for body in ({"max_new_tokens": 65}, {"top_k": 0}, {"edits": []}, {"text": ""}):
        r = client.post("/api/why/intervene", json={"text": TEXT, "edits": [edit], **body})
        assert r.status_code == 422, (body, r.text)
