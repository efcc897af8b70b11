"""The Attention tab's routes against independent computations: the thumbnail grid against a plain
transformers forward (eager, output_attentions), the q·k terms against the same pattern (scores are
log-weights up to a constant per row) and against their own definition."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fastapi.testclient import TestClient

import lmpeek
from lmpeek.analysis.attention_overview import pool_factor, pool_window
from lmpeek.server.app import create_app
from tests.reference import eager_attentions

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. def f(x): return x * 2"


# gemma3: a sliding window; qwen3: q/k norms before RoPE; gpt_neox: partial rotary; gpt2: no RoPE
MODELS = ["tiny:llama", "tiny:gpt2", "tiny:gemma3", "tiny:qwen3", "tiny:gpt_neox"]


@pytest.fixture(scope="module", params=MODELS)
def client(tmp_path_factory, request):
    store = tmp_path_factory.mktemp("t")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        app = create_app(request.param, background=False, store_dir=store, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def tid(client):
    return client.post("/api/trace", json={"text": TEXT}).json()["id"]


@pytest.fixture(scope="module")
def eager(client, tid):
    """[L][H, T, T] from a plain transformers forward (eager attention), nothing of lmpeek's in between."""
    ids = client.get(f"/api/traces/{tid}").json()["token_ids"]
    return eager_attentions(client.app.state.holder.model.hf, ids)


def grid(client, tid, **params):
    r = client.get(f"/api/traces/{tid}/attention_grid", params=params)
    assert r.status_code == 200, r.text
    shape = tuple(int(n) for n in r.headers["x-shape"].split(","))
    data = np.frombuffer(r.content, dtype="<f2").astype(np.float32).reshape(shape)
    return data, int(r.headers["x-pool"]), r.headers["x-window"]


def test_grid_of_the_whole_text_is_the_models_pattern(client, tid, eager):
    T = eager[0].shape[-1]
    data, pool, window = grid(client, tid, size=128)
    assert pool == 1 and window == f"0,{T}"
    assert data.shape == (len(eager), eager[0].shape[0], T, T)
    for layer, want in enumerate(eager):
        np.testing.assert_allclose(data[layer], want, atol=2e-3)  # float16 transport


def test_window_is_a_slice_of_the_pattern(client, tid, eager):
    data, pool, window = grid(client, tid, start=5, end=17, size=64)
    assert (pool, window) == (1, "5,17")
    want = np.stack([a[:, 5:17, 5:17] for a in eager])
    np.testing.assert_allclose(data, want, atol=2e-3)


def test_pooled_window_means_queries_and_sums_keys(client, tid, eager):
    T = eager[0].shape[-1]
    data, pool, _ = grid(client, tid, start=3, end=T, size=8)
    w = T - 3
    assert pool == -(-w // 8) and data.shape[-1] == -(-w // pool)
    last = eager[-1][1, 3:, 3:]  # one head by hand, independently of pool_window
    n = data.shape[-1]
    for i in range(n):
        for j in range(n):
            block = last[i * pool : (i + 1) * pool, j * pool : (j + 1) * pool]
            assert data[-1, 1, i, j] == pytest.approx(block.sum(1).mean(), abs=2e-3)


def test_grid_refuses_bad_windows(client, tid):
    T = len(client.get(f"/api/traces/{tid}").json()["tokens"])
    for params in ({"start": 5, "end": 5}, {"start": 0, "end": T + 1}, {"start": T}):
        r = client.get(f"/api/traces/{tid}/attention_grid", params=params)
        assert r.status_code == 422 and "start" in r.json()["detail"], r.text
    r = client.get(f"/api/traces/{tid}/attention_grid", params={"size": 0})
    assert r.status_code == 422


def test_pool_window_helper():
    p = np.arange(25, dtype=np.float32).reshape(5, 5)
    got = pool_window(p, pool_factor(5, 2))  # 3 tokens per cell: blocks of rows 0-2 and 3-4
    assert got.shape == (2, 2)
    assert got[1, 0] == pytest.approx(p[3:5, 0:3].sum(1).mean())
    assert got[0, 1] == pytest.approx(p[0:3, 3:5].sum(1).mean())
    np.testing.assert_array_equal(pool_window(p, 1), p)


def qk(client, tid, **params):
    r = client.get(f"/api/traces/{tid}/qk", params=params)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(("layer", "head", "query", "key"), [(0, 0, 9, 4), (1, 1, 20, 20), (1, 3, 14, 0)])
def test_qk_products_make_the_score(client, tid, eager, layer, head, query, key):
    a = qk(client, tid, layer=layer, head=head, query=query, key=key)
    model = client.app.state.holder.model
    assert a["scale"] == pytest.approx(model.bound.attention_params(layer).scale)
    names = [p["name"] for p in a["parts"]]
    assert names == (["rotated", "unrotated"] if model.bound.rotary_dims else ["plain"])
    want_row = eager[layer][head, query, : query + 1]
    np.testing.assert_allclose(a["pattern_row"], want_row, atol=2e-3)
    for p in a["parts"]:
        products = np.asarray(p["products"])
        np.testing.assert_allclose(products, np.asarray(p["q"]) * np.asarray(p["k"]), rtol=1e-6, atol=1e-6)
        assert p["score"] == pytest.approx(products.sum() * a["scale"], rel=1e-6, abs=1e-6)
        assert p["scores"][key] == pytest.approx(p["score"], rel=1e-9, abs=1e-9)
        scores = np.asarray([-np.inf if v is None else v for v in p["scores"]])  # null: masked
        w = np.exp(scores - scores.max())
        np.testing.assert_allclose(p["weights"], w / w.sum(), rtol=1e-6, atol=1e-9)
    scored = a["parts"][0]  # what the model scores with: its softmax is the model's own pattern row
    np.testing.assert_allclose(scored["weights"], want_row, atol=1e-5)
    # and, independently of any softmax: score differences are log-weight differences in transformers
    # (against the query's own key, never masked; keys a sliding window hides have weight 0 and null)
    seen = want_row > 0
    s = np.asarray([np.nan if v is None else v for v in scored["scores"]])
    assert np.array_equal(seen, ~np.isnan(s))
    log_w = np.log(want_row[seen])
    np.testing.assert_allclose(s[seen] - s[query], log_w - np.log(want_row[query]), atol=1e-3)


def test_unrotated_part_uses_pre_rope_vectors(client, tid):
    model = client.app.state.holder.model
    if not model.bound.rotary_dims:
        pytest.skip("no RoPE")
    a = qk(client, tid, layer=1, head=2, query=12, key=5)
    rot, pre = a["parts"]
    assert rot["q_hook"].endswith("hook_rot_q") and pre["q_hook"].endswith(("hook_q", "hook_q_normed"))
    v = client.get(f"/api/traces/{tid}/vector", params={"hook": pre["q_hook"], "head": 2, "token": 12}).json()
    np.testing.assert_allclose(pre["q"], v["data"], rtol=1e-6)
    k = client.get(f"/api/traces/{tid}/vector", params={"hook": rot["k_hook"], "head": 2, "token": 5}).json()
    np.testing.assert_allclose(rot["k"], k["data"], rtol=1e-6)
    assert rot["score"] != pytest.approx(pre["score"])  # RoPE changes the score between different positions


def test_qk_refuses_a_future_key(client, tid):
    r = client.get(f"/api/traces/{tid}/qk", params={"layer": 0, "head": 0, "query": 3, "key": 4})
    assert r.status_code == 422 and "key must be in 0..3" in r.json()["detail"]


def test_app_over_a_session_serves_the_grid():
    """The notebook widget's path: an app made over a Session (create_app(session=…)) answers from that
    Session's store, the same numbers as its attention slices."""
    from lmpeek.session import Session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    with Session(model) as s:
        stored = s.trace(TEXT)
        app = create_app(session=s, allowed_hosts=["testserver"])
        with TestClient(app) as c:
            data, pool, _ = grid(c, stored.id, start=2, end=12)
        assert pool == 1
        for layer, head in ((0, 0), (1, 3)):
            want = s.attention(stored.id, layer, head).astype(np.float32)[2:12, 2:12]
            np.testing.assert_allclose(data[layer, head], want, atol=2e-3)
