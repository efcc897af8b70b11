"""A model that really produces inf/NaN, served: every route answers strict JSON (null where the model
lost a value, never NaN/Infinity or HTTP 500), and the trace's JSON says where it happened."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lmpeek.server.app import create_app

# the server logs the model's NonFiniteWarning (on the worker thread); the tests read the JSON instead
pytestmark = pytest.mark.filterwarnings("ignore::lmpeek.capture.trace.NonFiniteWarning")

MODEL = "tiny:llama-inf"  # the server fixture (tests/server/conftest.py) serves it

TEXT = "The capital of France is Paris."


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def trace_json(client):
    r = client.post("/api/trace", json={"text": TEXT})
    assert r.status_code == 200, r.text
    return strict_json(r.text)


def test_the_trace_says_where(client, trace_json):
    assert trace_json["nonfinite"][0] == "blocks.0.hook_mlp_out" and "logits" in trace_json["nonfinite"]
    assert trace_json["norms"]["blocks.0.hook_mlp_out"][0] is None  # null, not NaN
    again = strict_json(client.get(f"/api/traces/{trace_json['id']}").text)
    assert again["nonfinite"] == trace_json["nonfinite"]


def _routes(tid: str, other: str) -> list[tuple[str, dict]]:
    u = f"/api/traces/{tid}"
    out = [(u, {}), ("/api/compare", {"a": tid, "b": other}), ("/api/health", {}), ("/api/components", {})]
    # every Explore metric with its colour scale (limits from the finite values only), also joint
    for mode in ("raw", "minmax", "outliers"):
        for name, q in [
            ("loss", {}),
            ("entropy", {}),
            ("prob", {}),
            ("norm", {"hook": "blocks.0.hook_mlp_out"}),
            ("act-value", {"hook": "blocks.1.hook_resid_post", "dim": 0}),
            ("cos-tokens", {"hook": "blocks.1.hook_resid_post", "token": 1}),
            ("neuron", {"layer": 1, "neuron": 3}),
            ("attn-from", {"layer": 1, "head": 1, "token": 3}),
        ]:
            out.append(
                (f"{u}/metric", {"name": name, "mode": mode, "skip_first": "true", "with": other, **q})
            )
    for layer in (0, 1):
        out += [
            (f"{u}/attention", {"layer": layer, "head": 1}),
            (f"{u}/attention", {"layer": layer, "head": 1, "query": 3}),
            (f"{u}/attention", {"layer": layer, "head": 1, "key": 0}),
            (f"{u}/attention", {"layer": layer, "head": 1, "rope": "applied"}),
            (f"{u}/attention", {"layer": layer, "head": 1, "rope": "not_applied"}),
            (f"{u}/neurons", {"layer": layer, "token": 2}),
            (f"{u}/neuron", {"layer": layer, "index": 3}),
        ]
        for point in ("hook_resid_pre", "hook_mlp_out", "hook_resid_post", "mlp.hook_post"):
            hook = f"blocks.{layer}.{point}"
            out += [
                (f"{u}/vector", {"hook": hook, "token": 2}),
                (f"{u}/activations", {"hook": hook}),
                (f"{u}/activations", {"hook": hook, "scale": "minmax"}),
                (f"{u}/activations", {"hook": hook, "stat": "value", "dim": 0}),
                (f"{u}/similarity", {"hook": hook, "token": 1}),
                (f"{u}/histogram", {"hook": hook, "token": 1}),
                (f"{u}/scatter", {"hook": hook, "x": 0, "y": 1}),
                (f"{u}/scatter", {"hook": hook, "a": 0, "b": 1}),
            ]
        out += [(f"{u}/vector", {"hook": f"blocks.{layer}.attn.hook_q", "token": 2, "head": 0})]
        out += [(f"{u}/vector", {"hook": f"blocks.{layer}.attn.hook_result", "token": 2, "head": 0})]
    out += [
        (f"{u}/similarity", {"hook": "blocks.1.hook_resid_post", "token": 1, "kind": "previous"}),
        (f"{u}/similarity", {"hook": "blocks.1.hook_mlp_out", "token": 1, "kind": "residual"}),
        (f"{u}/vector", {"hook": "hook_embed", "token": 2}),
        (f"{u}/vector", {"hook": "ln_final.hook_normalized", "token": 2}),
        (f"{u}/logit_lens", {"token": 2}),
    ]
    return out


def test_every_route_answers_strict_json(client, trace_json):
    tid = trace_json["id"]
    other = client.post("/api/trace", json={"text": "Something else."}).json()["id"]
    nulls = 0
    for path, params in _routes(tid, other):
        r = client.get(path, params=params)
        assert r.status_code == 200, (path, params, r.text)
        nulls += r.text.count("null")
        strict_json(r.text)
    assert nulls > 100  # the model's lost values really went out, as null


def test_the_lens_ranks_nothing_where_the_logits_were_lost(client, trace_json):
    tid, ids = trace_json["id"], trace_json["token_ids"]
    lens = client.get(f"/api/traces/{tid}/logit_lens", params={"token": 2, "target": ids[3]}).json()
    target = lens["target"]
    lost = [p is None for p in target["probs"]]
    assert any(lost) and [r is None for r in target["ranks"]] == lost
    kept = [r for r, gone in zip(target["ranks"], lost, strict=True) if not gone]
    assert all(isinstance(r, int) and r >= 1 for r in kept)


def test_binary_attention_counts_what_is_not_finite(client, trace_json):
    url = f"/api/traces/{trace_json['id']}/attention?layer=1&head=0"
    r = client.get(url, headers={"accept": "application/octet-stream"})
    n = len(trace_json["tokens"])
    assert int(r.headers["x-nonfinite"]) == int(np.isnan(np.frombuffer(r.content, "<f2")).sum()) > 0
    assert "X-Nonfinite" in r.headers["access-control-expose-headers"]
    ok = client.get(url.replace("layer=1", "layer=0"), headers={"accept": "application/octet-stream"})
    assert ok.headers["x-nonfinite"] == "0" and len(ok.content) == 2 * n * n  # layer 0 reads a finite input


def test_generation_steps_are_strict_json_and_say_where(client):
    r = client.post("/api/generate", json={"prompt": "Hello", "max_new_tokens": 2})
    assert r.status_code == 200
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    steps = [strict_json(e) for e in events]
    tokens = [s for s in steps if "token_id" in s]
    assert tokens and all(s["nonfinite"][0] == "blocks.0.hook_mlp_out" for s in tokens)
    assert all(s["norms"]["mlp_out"][0] is None for s in tokens)
    assert "trace_id" in steps[-1] or "detail" in steps[-1]


def test_an_old_float16_trace_that_overflowed_is_refused_with_a_message(tmp_path):
    from safetensors.numpy import save_file

    from lmpeek.store.traces import RESID_FILE

    app = create_app("tiny:llama-big", background=False, store_dir=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        tid = c.post("/api/trace", json={"text": TEXT}).json()["id"]
        traces = c.app.state.traces
        resid = np.stack([traces.resid(tid, layer) for layer in range(3)])
        with np.errstate(over="ignore"):  # what lmpeek stored before float32
            save_file({"resid": resid.astype(np.float16)}, str(tmp_path / tid / RESID_FILE))
        r = c.get(f"/api/traces/{tid}/vector", params={"hook": "blocks.1.hook_resid_post", "token": 0})
        assert r.status_code == 409 and "float16" in r.json()["detail"] and "Run the text again" in r.text
        r = c.get(f"/api/traces/{tid}/logit_lens", params={"token": 0})
        assert r.status_code == 409 and "float16" in r.json()["detail"]
