"""Values beyond float16 (issue 15): a tiny Llama whose residual stream goes far past float16's 65,504,
as Gemma 3's does (1e5). Every slice the server recomputes from the stored residual stream equals the
full float32 forward within 1e-3 × max|ref|; nothing stored or sent is inf."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.capture.trace import Trace
from lmpeek.errors import InvalidInput

MODEL = "tiny:llama-big"  # the server fixture (tests/server/conftest.py) serves it

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. def f(x): return x * 2"
BOUND = 1e-3  # × max|ref|
FLOAT16_MAX = 65504


def strict_json(text: str):
    """JSON as the standard defines it: NaN, Infinity and -Infinity are errors."""

    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def close(got, want, bound: float = BOUND) -> None:
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64), want, rtol=0, atol=bound * np.abs(want).max()
    )


@pytest.fixture(scope="module")
def model(client):
    return client.app.state.holder.model


@pytest.fixture(scope="module")
def full(model):
    return lmpeek.trace(model, TEXT, keep=["*"])


@pytest.fixture(scope="module")
def tid(client):
    r = client.post("/api/trace", json={"text": TEXT})
    assert r.status_code == 200, r.text
    data = strict_json(r.text)
    assert data["nonfinite"] == []  # large is not infinite: nothing to warn about
    return data["id"]


def test_the_model_goes_past_float16(full):
    resid = np.stack(
        [full[f"blocks.{i}.hook_resid_pre"] for i in range(2)] + [full["blocks.1.hook_resid_post"]]
    )
    with np.errstate(over="ignore"):
        assert np.abs(resid).max() > 10 * FLOAT16_MAX and np.isinf(resid.astype(np.float16)).any()
    assert not full.nonfinite


def test_the_stored_stream_is_finite_and_exact(client, model, full, tid):
    traces = client.app.state.traces
    for layer in range(model.n_layers):
        row = traces.resid(tid, layer)
        assert np.isfinite(row).all()
        np.testing.assert_array_equal(row, full[f"blocks.{layer}.hook_resid_pre"])
    np.testing.assert_array_equal(traces.resid(tid, model.n_layers), full["blocks.1.hook_resid_post"])


def _component_hooks(client, model, full) -> list[str]:
    """Every hook point the component selector offers that the full forward also exposes."""
    hooks = []
    for c in client.get("/api/components").json():
        layers = range(model.n_layers) if c["per_layer"] else [None]
        hooks += [c["hook"].replace("{l}", str(layer)) for layer in layers]
    return [h for h in hooks if h in full.kept]


def test_every_vector_equals_the_full_forward(client, model, full, tid):
    hooks = _component_hooks(client, model, full)
    assert len(hooks) >= 20
    H = model.n_heads
    for hook in hooks:
        ref = full[hook]
        heads = [0, H - 1] if ref.ndim == 3 else [None]
        for head in heads:
            for token in (0, len(full) // 2, len(full) - 1):
                params = {"hook": hook, "token": token} | ({"head": head} if head is not None else {})
                r = client.get(f"/api/traces/{tid}/vector", params=params)
                assert r.status_code == 200, (hook, r.text)
                got = strict_json(r.text)["data"]
                want = ref[token] if head is None else ref[token, head * ref.shape[1] // H]
                close(got, want)


def test_attention_rows_columns_and_patterns(client, model, full, tid):
    T = len(full)
    for layer in range(model.n_layers):
        pattern = full[f"blocks.{layer}.attn.hook_pattern"]
        for head in range(model.n_heads):
            url = f"/api/traces/{tid}/attention?layer={layer}&head={head}"
            whole = strict_json(client.get(url).text)
            close(whole["data"], pattern[head])
            r = client.get(url, headers={"accept": "application/octet-stream"})
            assert r.headers["x-nonfinite"] == "0"
            close(np.frombuffer(r.content, dtype="<f2").reshape(T, T), pattern[head])
            close(strict_json(client.get(url + f"&query={T - 1}").text)["data"][0], pattern[head, T - 1])
            close(strict_json(client.get(url + "&key=2").text)["data"][0], pattern[head, :, 2])


def test_logit_lens_equals_an_independent_computation(client, model, full, tid):
    b = model.bound
    norm, unembed = b.module(b.adapter.final_norm), b.module(b.adapter.unembed)
    for token in (0, 7, len(full) - 1):
        r = client.get(f"/api/traces/{tid}/logit_lens", params={"token": token, "k": 5})
        lens = strict_json(r.text)
        for layer in range(model.n_layers):
            x = torch.as_tensor(full[f"blocks.{layer}.hook_resid_post"][token])
            with torch.inference_mode():
                probs = torch.softmax(unembed(norm(x)).double(), -1)
            top = probs.topk(5)
            assert lens["ids"][layer] == top.indices.tolist()
            close(lens["probs"][layer], top.values.numpy())


def test_analysis_routes_match(client, full, tid):
    x = full["blocks.1.hook_resid_post"]
    r = strict_json(
        client.get(f"/api/traces/{tid}/activations", params={"hook": "blocks.1.hook_resid_post"}).text
    )
    close(r["values"], np.linalg.norm(x.astype(np.float64), axis=1))
    r = strict_json(client.get(f"/api/traces/{tid}/scatter", params={"hook": "blocks.0.hook_mlp_out", "x": 1,
                                                                     "y": 2}).text)  # fmt: skip
    close(r["x"], full["blocks.0.hook_mlp_out"][:, 1])


def test_saving_with_keep_stays_finite(tmp_path, model, full):
    t = lmpeek.trace(model, TEXT, keep=["blocks.*.hook_resid_post", "blocks.*.attn.hook_pattern"])
    t.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    for name in t.kept:
        assert np.isfinite(back[name]).all(), name
    # past float16's range: stored as float32, exactly; patterns still fit float16 and halve the disk
    assert back["blocks.1.hook_resid_post"].dtype == np.float32
    np.testing.assert_array_equal(back["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"])
    assert back["blocks.0.attn.hook_pattern"].dtype == np.float16
    with pytest.raises(InvalidInput, match="past float16"):
        t.save(tmp_path / "f16", heavy_dtype="float16")
    with pytest.raises(InvalidInput, match="heavy_dtype"):
        t.save(tmp_path / "x", heavy_dtype="int8")
