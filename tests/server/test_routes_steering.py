"""POST /api/why/steer (server/routes_steering.py): strength 0 gives the plain generation token for
token; the streamed numbers equal lmpeek.attribution.steering.steer_generate called directly with the
direction computed independently (an SAE's decoder row read from the file written here, a neuron's
output vector from the weights, a mean difference from plain captures); a repeat comes from the cache;
closing the stream cancels the job; bad input is refused before the stream; and the model's other jobs,
run while the job pauses, never see the steering hooks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sse_client import SlowForwards, cancel_at_first_progress, post_events

import lmpeek
from lmpeek.attribution.intervene import Steer, capture_points
from lmpeek.attribution.steering import SWEEP, steer_generate
from lmpeek.attribution.steering_job import steering
from lmpeek.server.app import create_app
from lmpeek.server.routes_steering import result_json
from tests.features.saes import D, random_weights, v6_cfg, write_sae

PROMPT = "The capital of France is"
SAE_HOOK = "blocks.1.hook_resid_post"
F = 32


@pytest.fixture(scope="module")
def weights():
    return random_weights(np.random.default_rng(5), D, F)


@pytest.fixture(scope="module")
def client(tmp_path_factory, weights):
    folder = write_sae(
        tmp_path_factory.mktemp("sae") / "tiny-sae", v6_cfg("standard", D, F, SAE_HOOK), weights
    )
    store = tmp_path_factory.mktemp("store")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a random SAE reconstructs nothing (hook parity)
        app = create_app("tiny:llama", background=False, store_dir=store, allowed_hosts=["testserver"],
                         feature_sources=[str(folder)])  # fmt: skip
        with TestClient(app) as c:
            yield c


@pytest.fixture(scope="module")
def model(client):
    return client.app.state.holder.model


def _steer(client, **body) -> list[tuple[str, dict]]:
    return post_events(client, "/api/why/steer", {"prompt": PROMPT, **body})


def _result(client, **body) -> dict:
    events = _steer(client, **body)
    kinds = [k for k, _ in events]
    assert kinds[0] == "estimate" and kinds[-1] == "result" and set(kinds[1:-1]) <= {"progress"}, events[-1]
    return events[-1][1]


def _same(run: dict, r, tol: float = 1e-9) -> None:
    """A streamed run equals a SteerResult (`tol`: for a direction computed in another precision)."""
    assert (
        run["ids"] == r.steered_ids.tolist()
        and run["tokens"] == r.steered_tokens
        and run["text"] == r.steered_text
    )
    np.testing.assert_allclose(run["delta_logp"], r.delta_logp, rtol=tol, atol=tol)
    np.testing.assert_allclose(run["kl"], r.kl, rtol=tol, atol=tol)
    assert run["strength"] == pytest.approx(r.strength) and run["fluency"] == pytest.approx(r.fluency)
    np.testing.assert_allclose(run["c"], [r.strength * n for n in r.norms], rtol=1e-12)


def _neuron_vector(model, layer: int, index: int) -> np.ndarray:
    """Neuron `index`'s output vector from the weights: column `index` of down_proj (no bias here)."""
    w = model.hf.model.layers[layer].mlp.down_proj.weight.detach().double().numpy()
    return w[:, index]


def test_strength_zero_gives_the_plain_generation_token_for_token(client, model):
    res = _result(client, direction={"kind": "neuron", "layer": 0, "index": 3}, strength=0.0, seed=11,
                  max_new_tokens=12)  # fmt: skip
    run = res["runs"][0]
    assert run["ids"] == res["plain"]["ids"] and run["tokens"] == res["plain"]["tokens"] and run["same"]
    assert run["text"] == res["plain"]["text"] and not any(run["delta_logp"]) and not any(run["kl"])
    plain = [s.token_id for s in lmpeek.generate(model, PROMPT, 12, temperature=1.0, seed=11)]
    assert res["plain"]["ids"] == plain  # lmpeek's own sampler with that seed


def test_neuron_sweep_equals_steer_generate_called_directly(client, model):
    body = {"direction": {"kind": "neuron", "layer": 0, "index": 7}, "strength": -1.0, "sweep": True,
            "seed": 3, "max_new_tokens": 8, "positions": "from", "start": 2}  # fmt: skip
    events = _steer(client, **body)
    done = [d["done"] for k, d in events if k == "progress"]
    assert done == sorted(done) and all(d["done"] <= d["total"] for k, d in events if k == "progress")
    res = events[-1][1]
    hook = "blocks.0.hook_resid_post"  # a neuron's own layer, after the block (where it writes)
    assert res["hooks"] == [hook] and res["sweep"] and res["positions"][0] == 2 and not res["cached"]
    n0 = len(res["prompt_tokens"])
    assert res["positions"] == list(range(2, n0 + 8))
    steer = Steer(hook, _neuron_vector(model, 0, 7), -1.0, "add", tuple(range(2, n0 + 8)))
    direct = steer_generate(model, PROMPT, steer, seed=3, max_new_tokens=8, strengths=[-s for s in SWEEP])
    assert [r["strength"] for r in res["runs"]] == [-s for s in SWEEP]
    for run, r in zip(res["runs"], direct, strict=True):
        _same(run, r)
    assert res["plain"]["ids"] == direct[0].plain_ids.tolist()
    norm = float(np.linalg.norm(capture_points(model, PROMPT, [hook])[hook].double().numpy(), axis=-1).mean())
    assert res["norms"][0] == pytest.approx(norm, rel=1e-5)  # the hook's mean norm over the prompt
    assert res["runs"][-1]["mean_kl"] == pytest.approx(float(np.mean(direct[-1].kl)))


def test_a_neurons_source_feature_is_that_neuron(client):
    body = {"strength": 1.5, "seed": 4, "max_new_tokens": 6}
    by_feature = _result(client, direction={"kind": "feature", "source": "neurons:0", "index": 9}, **body)
    by_neuron = _result(client, direction={"kind": "neuron", "layer": 0, "index": 9}, **body)
    assert by_feature["hooks"] == by_neuron["hooks"] == ["blocks.0.hook_resid_post"]
    assert by_feature["runs"] == by_neuron["runs"]


def test_feature_direction_is_the_sources_decoder_row(client, model, weights):
    sources = client.get("/api/features").json()["sources"]
    assert "tiny-sae" in [s["id"] for s in sources]
    res = _result(client, direction={"kind": "feature", "source": "tiny-sae", "index": 5}, strength=2.0,
                  mode="project", seed=1, max_new_tokens=6, temperature=0.0)  # fmt: skip
    assert res["hooks"] == [SAE_HOOK] and res["mode"] == "project"  # default: where the SAE writes
    assert res["direction"]["vector_norms"][0] == pytest.approx(
        float(np.linalg.norm(weights["W_dec"][5])), rel=1e-6
    )
    direct = steer_generate(model, PROMPT, Steer(SAE_HOOK, weights["W_dec"][5], 2.0, "project"), seed=1,
                            max_new_tokens=6, temperature=0.0)  # fmt: skip
    _same(res["runs"][0], direct)
    # another layer, the prompt's positions only, cap
    res = _result(client, direction={"kind": "feature", "source": "tiny-sae", "index": 5}, layers=[0],
                  point="hook_resid_pre", positions="prompt", mode="cap", strength=0.1,
                  max_new_tokens=5)  # fmt: skip
    n0 = len(res["prompt_tokens"])
    direct = steer_generate(model, PROMPT, Steer("blocks.0.hook_resid_pre", weights["W_dec"][5], 0.1, "cap",
                            tuple(range(n0))), seed=0, max_new_tokens=5)  # fmt: skip
    assert res["hooks"] == ["blocks.0.hook_resid_pre"] and res["positions"] == list(range(n0))
    _same(res["runs"][0], direct)


def test_mean_difference_and_vector_directions(client, model):
    pos, neg = ["I love this", "What a joy"], ["I hate this", "What a pain"]
    hook = "blocks.1.hook_resid_pre"
    res = _result(client, direction={"kind": "mean_difference", "positive": pos, "negative": neg}, layers=[1],
                  strength=4.0, seed=2, max_new_tokens=6)  # fmt: skip

    def last(texts):  # each prompt's last token at the hook, in float64
        return np.mean([capture_points(model, t, [hook])[hook][-1].double().numpy() for t in texts], 0)

    v = last(pos) - last(neg)
    direct = steer_generate(model, PROMPT, Steer(hook, v, 4.0), seed=2, max_new_tokens=6)
    _same(res["runs"][0], direct, 1e-5)  # v in float64 here, float32 captures in the library
    assert res["direction"]["vector_norms"][0] == pytest.approx(float(np.linalg.norm(v)), rel=1e-5)
    u = np.random.default_rng(0).standard_normal(model.d_model)
    res = _result(client, direction={"kind": "vector", "values": u.tolist()}, layers=[0, 1], strength=1.5,
                  max_new_tokens=5)  # fmt: skip
    steers = [Steer(f"blocks.{layer}.hook_resid_pre", u, 1.5) for layer in (0, 1)]
    direct = steer_generate(model, PROMPT, steers, seed=0, max_new_tokens=5)
    _same(res["runs"][0], direct)
    assert res["hooks"] == [s.hook for s in steers] and len(res["runs"][0]["c"]) == 2


@pytest.mark.parametrize(
    ("hook", "position"),
    [("blocks.1.hook_mlp_out", 2), ("blocks.0.hook_attn_out", -1), ("blocks.1.hook_resid_post", 0)],
)
def test_node_direction_is_the_traced_activation_and_steers_as_steer_generate(client, model, hook, position):
    """A flow node's direction: lmpeek.trace's activation at (hook, position), steered at that hook."""
    other = "Paris is a city in"
    res = _result(client, direction={"kind": "node", "text": other, "hook": hook, "position": position},
                  strength=3.0, seed=5, max_new_tokens=6)  # fmt: skip
    kept = lmpeek.trace(model, other, keep=[hook]).tensors[hook].astype(np.float64)
    v = kept[position]
    at = position % kept.shape[0]
    assert res["hooks"] == [hook] and res["direction"]["label"] == f"node {hook} @ #{at}"
    assert res["direction"]["vector_norms"][0] == pytest.approx(float(np.linalg.norm(v)), rel=1e-5)
    direct = steer_generate(model, PROMPT, Steer(hook, v / np.linalg.norm(v), 3.0), seed=5, max_new_tokens=6)
    _same(res["runs"][0], direct, 1e-5)  # v from the trace's float32 copy
    # the unit direction the job used is the traced one (independent of scale)
    from lmpeek.attribution.steering_job import node_vector

    u, _ = node_vector(model, other, hook, position)
    np.testing.assert_allclose(u / np.linalg.norm(u), v / np.linalg.norm(v), rtol=1e-5, atol=1e-6)


def test_node_direction_defaults_to_the_prompt_and_other_layers(client, model):
    hook = "blocks.0.hook_mlp_out"
    res = _result(client, direction={"kind": "node", "hook": hook, "position": 1}, layers=[1],
                  point="hook_resid_pre", strength=2.0, max_new_tokens=5)  # fmt: skip
    v = lmpeek.trace(model, PROMPT, keep=[hook]).tensors[hook].astype(np.float64)[1]
    direct = steer_generate(model, PROMPT, Steer("blocks.1.hook_resid_pre", v, 2.0), seed=0, max_new_tokens=5)
    assert res["hooks"] == ["blocks.1.hook_resid_pre"]
    _same(res["runs"][0], direct, 1e-5)


def test_a_repeat_is_answered_from_the_cache_without_a_forward(client, model):
    body = {"direction": {"kind": "neuron", "layer": 1, "index": 1}, "strength": 3.0, "max_new_tokens": 5}
    first = _result(client, **body)
    calls = [0]
    handle = model.hf.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        again = _steer(client, **body)
    finally:
        handle.remove()
    assert calls[0] == 0 and [k for k, _ in again] == ["estimate", "result"]
    assert again[0][1] == {"forwards": 0, "seconds": 0.0, "cached": True} and again[1][1]["cached"]
    assert again[1][1]["runs"] == first["runs"]
    # the notebook's way: the same job run to its end on the session's queue, the same (cached) answer
    direct = steering(
        client.app.state.holder.session(), PROMPT, body["direction"], strength=3.0, max_new_tokens=5
    )
    assert direct.cached and result_json(direct)["runs"] == first["runs"]


def test_closing_the_stream_cancels_the_job(client, model):
    slow = SlowForwards(model, 0.03, "lmpeek-steering")
    try:
        body = {"prompt": PROMPT + " and", "direction": {"kind": "neuron", "layer": 0, "index": 2},
                "sweep": True, "max_new_tokens": 64}  # fmt: skip
        cancel_at_first_progress(client, "/api/why/steer", body, slow)
    finally:
        slow.remove()
    # the hooks are gone: the model computes what it did before
    ids = torch.as_tensor(model.tokenizer(PROMPT)["input_ids"])[None]
    with torch.no_grad():
        a = model.hf(ids).logits
    assert client.post("/api/trace", json={"text": "next"}).status_code == 200
    with torch.no_grad():
        assert torch.equal(model.hf(ids).logits, a)


def test_other_jobs_between_the_turns_see_the_plain_model(model):
    """progress (where a job pauses and the queue's other jobs run) is never called with hooks on."""
    ids = torch.as_tensor(model.tokenizer(PROMPT)["input_ids"])[None]
    with torch.no_grad():
        clean = model.hf(ids).logits.clone()
    seen = []

    def progress(done: int, total: int) -> None:
        with torch.no_grad():
            seen.append(torch.equal(model.hf(ids).logits, clean))
        assert 0 < done <= total

    u = np.ones(model.d_model)
    steer = Steer("blocks.0.hook_resid_pre", u, 5.0)
    steer_generate(model, PROMPT, steer, max_new_tokens=4, strengths=[1, 2], progress=progress)
    assert len(seen) >= 4 * 3 + 4 and all(seen)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"direction": {"kind": "feature", "source": "nope", "index": 0}}, 404),
        ({"direction": {"kind": "feature", "source": "tiny-sae", "index": F}}, 400),
        ({"direction": {"kind": "neuron", "layer": 9, "index": 0}}, 400),
        ({"direction": {"kind": "neuron", "layer": 0, "index": 10**6}}, 400),
        ({"direction": {"kind": "vector", "values": [1.0, 2.0]}}, 400),
        ({"direction": {"kind": "vector", "values": [0.0] * D}}, 400),
        ({"direction": {"kind": "mean_difference", "positive": [], "negative": ["a"]}}, 400),
        ({"direction": {"kind": "mean_difference", "positive": ["a"], "negative": [""]}}, 422),
        ({"direction": {"kind": "neuron", "layer": 0, "index": 0}, "layers": [7]}, 400),
        ({"direction": {"kind": "neuron", "layer": 0, "index": 0}, "prompt": ""}, 422),
        ({"direction": {"kind": "neuron", "layer": 0, "index": 0}, "mode": "multiply"}, 422),
        ({"direction": {"kind": "neuron", "layer": 0, "index": 0}, "max_new_tokens": 129}, 422),
        ({"direction": {"kind": "bogus"}}, 422),
        ({"direction": {"kind": "node", "hook": "blocks.9.hook_mlp_out", "position": 0}}, 400),
        ({"direction": {"kind": "node", "hook": "blocks.0.mlp.hook_post", "position": 0}}, 422),
        ({"direction": {"kind": "node", "hook": "hook_embed", "position": 0}}, 422),
        ({"direction": {"kind": "node", "hook": "blocks.0.hook_mlp_out", "position": 99}}, 400),
        ({"direction": {"kind": "node", "hook": "blocks.0.hook_mlp_out", "position": -99}}, 400),
        ({"direction": {"kind": "node", "text": "", "hook": "blocks.0.hook_mlp_out", "position": 0}}, 422),
        ({"direction": {"kind": "node", "hook": "blocks.0.hook_mlp_out"}}, 422),
    ],
)
def test_bad_input_is_refused_before_streaming(client, body, status):
    r = client.post("/api/why/steer", json={"prompt": PROMPT, **body})
    assert r.status_code == status and r.json()["detail"], (body, r.status_code, r.text)
