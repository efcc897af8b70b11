"""The HTTP API on a tiny model through an in-process client, bad input included."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

import lmpeek
from lmpeek.server.app import create_app


@pytest.fixture(scope="module")
def model(client):
    return client.app.state.holder.model


def _trace(client, text="The capital of France is Paris.", **kw):
    r = client.post("/api/trace", json={"text": text, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def _events(response) -> list[tuple[str, dict]]:
    out = []
    for frame in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_health(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ready"
    assert (
        h["model"]["n_layers"] == 2 and h["model"]["n_heads"] == 4 and h["model"]["architecture"] == "llama"
    )


def test_openapi_describes_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/health", "/api/trace", "/api/generate", "/api/traces/{trace_id}",
              "/api/traces/{trace_id}/attention"):  # fmt: skip
        assert p in paths


def test_trace_matches_the_python_api(client, model):
    data = _trace(client, top_k=4)
    t = lmpeek.trace(model, "The capital of France is Paris.", top_k=4)
    assert data["tokens"] == t.tokens and len(data["topk_probs"][0]) == 4
    np.testing.assert_allclose(data["entropy"], t.entropy, rtol=1e-6)
    assert data["loss"][-1] is None
    assert client.get(f"/api/traces/{data['id']}").json()["tokens"] == t.tokens


def test_attention_slices_equal_the_full_pattern(client, model):
    data = _trace(client)
    T = len(data["tokens"])
    kept = lmpeek.trace(model, "The capital of France is Paris.", keep=["blocks.1.attn.hook_pattern"])
    full = kept["blocks.1.attn.hook_pattern"][2]
    url = f"/api/traces/{data['id']}/attention?layer=1&head=2"
    j = client.get(url).json()
    assert j["shape"] == [T, T]
    np.testing.assert_allclose(np.array(j["data"]), full, atol=1e-3)  # float16 on the wire
    r = client.get(url, headers={"accept": "application/octet-stream"})
    assert r.headers["content-type"] == "application/octet-stream" and r.headers["x-shape"] == f"{T},{T}"
    binary = np.frombuffer(r.content, dtype="<f2").reshape(T, T)
    np.testing.assert_array_equal(binary, np.array(j["data"], dtype=np.float16))
    row = client.get(url + "&query=3", headers={"accept": "application/octet-stream"})
    assert row.headers["x-shape"] == f"1,{T}"
    np.testing.assert_array_equal(np.frombuffer(row.content, dtype="<f2"), binary[3])
    col = client.get(url + "&key=1").json()
    assert col["shape"] == [1, T]
    np.testing.assert_array_equal(np.array(col["data"][0], dtype=np.float16), binary[:, 1])


def test_generate_streams_tokens_then_a_trace(client, model):
    r = client.post("/api/generate", json={"prompt": "Hello", "max_new_tokens": 5})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r)
    kinds = [e for e, _ in events]
    assert kinds == ["start"] + ["token"] * len(kinds[1:-1]) + ["done"]
    tokens = [d for e, d in events if e == "token"]
    want = [s.token_id for s in lmpeek.generate(model, "Hello", max_new_tokens=5)]
    assert [d["token_id"] for d in tokens] == want
    step = tokens[0]
    assert len(step["norms"]["resid_post"]) == 2 and np.array(step["attn_entropy"]).shape == (2, 4)
    assert 0 < step["prob"] <= 1 and len(step["topk_probs"]) == 10
    trace = client.get(f"/api/traces/{events[-1][1]['trace_id']}").json()
    assert trace["token_ids"][-len(want) :] == want
    assert trace["tokens"][: len(events[0][1]["prompt_tokens"])] == events[0][1]["prompt_tokens"]


def test_sampling_with_a_seed_is_reproducible(client):
    body = {"prompt": "Hello", "max_new_tokens": 6, "temperature": 1.2, "top_p": 0.9, "top_k": 40, "seed": 3}
    a = [d["token_id"] for e, d in _events(client.post("/api/generate", json=body)) if e == "token"]
    b = [d["token_id"] for e, d in _events(client.post("/api/generate", json=body)) if e == "token"]
    assert a == b and len(a) == 6


def test_stream_carries_the_sampled_distribution_and_the_seed(client, model):
    body = {"prompt": "Hello", "max_new_tokens": 4, "temperature": 100.0, "top_k": 7}
    events = _events(client.post("/api/generate", json=body))
    seed = events[0][1]["seed"]  # none given: the drawn one is echoed
    assert isinstance(seed, int)
    tokens = [d for e, d in events if e == "token"]
    want = list(lmpeek.generate(model, "Hello", max_new_tokens=4, temperature=100.0, top_k=7, seed=seed))
    assert [d["token_id"] for d in tokens] == [s.token_id for s in want]  # the echoed seed repeats it
    for d, s in zip(tokens, want, strict=True):
        assert d["sampled_topk_ids"] == s.sampled_topk_ids.tolist() and len(d["sampled_topk_ids"]) == 7
        np.testing.assert_allclose(d["sampled_topk_probs"], s.sampled_topk_probs, rtol=1e-12)
        assert sum(d["sampled_topk_probs"]) == pytest.approx(1.0)  # top-7 at T=100: ~1/7 each
        assert max(d["sampled_topk_probs"]) < 0.2 and d["sampled_prob"] == pytest.approx(s.sampled_prob)
        assert d["topk_ids"] == s.topk_ids.tolist()  # the raw T=1 prediction, unchanged
    greedy = _events(client.post("/api/generate", json={"prompt": "Hello", "max_new_tokens": 2, "seed": 5}))
    assert greedy[0][1]["seed"] == 5
    for d in (d for e, d in greedy if e == "token"):
        assert d["sampled_topk_ids"] == [d["token_id"]] and d["sampled_topk_probs"] == [1.0]


@pytest.mark.parametrize(
    "method, url, body, status, message",
    [
        ("post", "/api/trace", {"text": ""}, 422, "text: must not be empty"),
        ("post", "/api/trace", {"text": "   "}, 422, "text: must not be empty"),
        ("post", "/api/trace", {"text": "hello " * 4200}, 400, "at most 4096"),
        ("post", "/api/trace", {"text": "x" * 300_000}, 422, "at most"),
        ("post", "/api/trace", {"text": "hi", "top_k": 0}, 422, "top_k: must be ≥ 1"),
        ("post", "/api/trace", {}, 422, "text: is required"),
        ("get", "/api/traces/nope", None, 404, "no trace"),
        ("get", "/api/traces/nope/attention?layer=0&head=0", None, 404, "no trace"),
        ("post", "/api/generate", {"prompt": "hi", "top_p": 2}, 422, "top_p: must be ≤ 1"),
        ("post", "/api/generate", {"prompt": "hi", "max_new_tokens": 0}, 422, "max_new_tokens: must be ≥ 1"),
        ("post", "/api/generate", {"prompt": ""}, 422, "prompt: must not be empty"),
        ("post", "/api/generate", {"prompt": "hello " * 1500, "max_new_tokens": 2048}, 400, "4096"),
    ],
)
def test_bad_input_gets_a_clear_4xx(client, method, url, body, status, message):
    r = getattr(client, method)(url, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]  # one readable string, whatever went wrong


def test_every_bad_field_is_named_in_one_answer(client):
    r = client.post("/api/trace", json={"text": " ", "top_k": 500})
    assert r.status_code == 422
    want = "text: must not be empty: give some text to run the model on; top_k: must be ≤ 100"
    assert r.json()["detail"] == want


@pytest.mark.parametrize("query, status, message", [
    ("layer=2&head=0", 422, "layer must be < 2"),
    ("layer=0&head=4", 422, "head < 4"),
    ("layer=0&head=0&query=1&key=1", 422, "not both"),
    ("layer=0&head=0&query=999", 422, "query must be <"),
    ("layer=-1&head=0", 422, "layer: must be ≥ 0"),
    ("head=0", 422, "layer: is required"),
])  # fmt: skip
def test_bad_attention_parameters(client, query, status, message):
    tid = _trace(client)["id"]
    r = client.get(f"/api/traces/{tid}/attention?{query}")
    assert r.status_code == status and message in r.text, r.text


def test_loading_state_then_ready(tmp_path):
    gate = threading.Event()

    def slow_loader(source):
        gate.wait(10)
        return lmpeek.load("tiny:gpt2")

    app = create_app("tiny:gpt2", loader=slow_loader, store_dir=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        assert c.get("/api/health").json()["status"] == "loading"
        r = c.post("/api/trace", json={"text": "hi"})
        assert r.status_code == 503 and "loading" in r.json()["detail"]
        gate.set()
        for _ in range(100):
            if c.get("/api/health").json()["status"] == "ready":
                break
            time.sleep(0.05)
        assert c.post("/api/trace", json={"text": "hi"}).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    app = create_app("/no/such/model", background=False, store_dir=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        h = c.get("/api/health").json()
        assert h["status"] == "error" and "No such file" in h["message"]
        r = c.post("/api/trace", json={"text": "hi"})
        assert r.status_code == 400 and "No such file" in r.json()["detail"]  # a user's error: no retry


def test_concurrent_requests_wait_their_turn(client, model):
    active, overlaps, results = [0], [0], []
    original = model.hf.forward

    def counting_forward(*args, **kwargs):
        active[0] += 1
        overlaps[0] = max(overlaps[0], active[0])
        time.sleep(0.02)
        try:
            return original(*args, **kwargs)
        finally:
            active[0] -= 1

    model.hf.forward = counting_forward
    try:

        def trace():
            results.append(client.post("/api/trace", json={"text": "Hi there"}))

        def generate():
            results.append(client.post("/api/generate", json={"prompt": "Hi", "max_new_tokens": 3}))

        threads = [threading.Thread(target=trace) for _ in range(4)] + [threading.Thread(target=generate)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        model.hf.forward = original
    assert [r.status_code for r in results] == [200] * 5
    assert overlaps[0] == 1


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "lmpeek" in r.text
