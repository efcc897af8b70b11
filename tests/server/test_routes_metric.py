"""GET /api/traces/{id}/metric: every Explore metric's values against numpy on a full forward, and the
colour scale that comes with them against the rules (sequential from 0 / diverging around 0)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lmpeek

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. def f(x): return x * 2"
BOUND = 1e-3  # × max|ref|


def metric(client, tid, name, status=200, **params):
    r = client.get(f"/api/traces/{tid}/metric", params={"name": name, **params})
    assert r.status_code == status, r.text
    return r.json()


def close(got, want, bound=BOUND):
    got = np.array([np.nan if v is None else v for v in got], dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=bound * np.nanmax(np.abs(want)), equal_nan=True)


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _finite(values):
    return [v for v in values if v is not None]


@pytest.fixture(scope="module")
def summary(client, tid):
    return client.get(f"/api/traces/{tid}").json()


def _cases(full, summary):
    x = full["blocks.1.hook_mlp_out"]
    mid = full["blocks.1.hook_resid_mid"]
    T = len(summary["tokens"])
    attn = full["blocks.1.attn.hook_pattern"][2]  # [T, T] of head 2
    from_row = np.where(np.arange(T) <= 5, attn[5], np.nan)
    to_col = np.where(np.arange(T) >= 3, attn[:, 3], np.nan)
    q = full["blocks.0.attn.hook_q"][:, 1]
    return [
        # each token shows the prediction that produced it: token t the summary's position t-1, none at 0
        ("loss", {}, [None, *summary["loss"][:-1]]),
        ("entropy", {}, [None, *summary["entropy"][:-1]]),
        ("prob", {}, [None, *summary["true_prob"][:-1]]),
        ("norm", {"hook": "blocks.1.hook_resid_post"}, summary["norms"]["blocks.1.hook_resid_post"]),
        ("norm", {"hook": "blocks.0.attn.hook_q", "head": 1}, np.linalg.norm(q, axis=1)),
        ("act-norm", {"hook": "blocks.1.hook_mlp_out"}, np.linalg.norm(x, axis=1)),
        ("act-abssum", {"hook": "blocks.1.hook_mlp_out"}, np.abs(x).sum(1)),
        ("act-value", {"hook": "blocks.0.attn.hook_q", "head": 1, "dim": 3}, q[:, 3]),
        ("cos-tokens", {"hook": "blocks.1.hook_mlp_out", "token": 4}, [_cos(x[4], v) for v in x]),
        (
            "cos-previous",
            {"hook": "blocks.1.hook_resid_post"},
            [
                _cos(a, b)
                for a, b in zip(
                    full["blocks.1.hook_resid_post"], full["blocks.0.hook_resid_post"], strict=True
                )
            ],
        ),  # fmt: skip
        (
            "cos-residual",
            {"hook": "blocks.1.hook_mlp_out"},
            [_cos(a, b) for a, b in zip(x, mid, strict=True)],
        ),
        ("neuron", {"layer": 1, "neuron": 7}, full["blocks.1.mlp.hook_post"][:, 7]),
        ("attn-from", {"layer": 1, "head": 2, "token": 5}, from_row),
        ("attn-to", {"layer": 1, "head": 2, "token": 3}, to_col),
    ]


KIND = {"loss": "sequential", "entropy": "sequential", "prob": "sequential", "norm": "sequential",
        "act-norm": "sequential", "act-abssum": "sequential", "attn-from": "sequential",
        "attn-to": "sequential"}  # fmt: skip


def test_every_metric_values_and_scale(client, tid, summary, full):
    for name, params, want in _cases(full, summary):
        for mode in ("raw", "minmax", "outliers"):
            r = metric(client, tid, name, mode=mode, **params)
            close(r["values"], want, bound=2e-3 if name.startswith("attn") else BOUND)  # float16 pattern
            s, v = r["scale"], _finite(r["values"])
            assert s["mode"] == mode, name
            assert s["kind"] == KIND.get(name, "diverging"), name
            if s["kind"] == "diverging":
                assert s["divider"] == 0.0 and s["min"] == -s["max"], (name, s)
            else:
                assert s["min"] >= 0 and s["divider"] == pytest.approx((s["min"] + s["max"]) / 2), (name, s)
            if mode == "minmax" and name != "cos-tokens":
                if s["kind"] == "diverging":
                    assert s["max"] == pytest.approx(max(abs(a) for a in v)), name
                else:
                    assert (s["min"], s["max"]) == pytest.approx((min(v), max(v))), name
            if mode == "raw" and name in ("prob", "attn-from", "attn-to"):
                assert (s["min"], s["max"]) == (0.0, 1.0)
            if mode == "raw" and name.startswith("cos"):
                assert (s["min"], s["max"]) == (-1.0, 1.0)
            want_clipped = [
                i for i, a in enumerate(r["values"]) if a is not None and not s["min"] <= a <= s["max"]
            ]
            assert s["clipped"] == want_clipped, name


def test_skip_first_and_the_selected_token_left_out(client, tid):
    r = metric(client, tid, "norm", hook="blocks.1.hook_resid_post", mode="minmax", skip_first=True)
    v, s = r["values"], r["scale"]
    assert s["left_out"] == [0] and (s["min"], s["max"]) == pytest.approx((min(v[1:]), max(v[1:])))
    r = metric(client, tid, "cos-tokens", hook="blocks.1.hook_mlp_out", token=4, mode="minmax")
    v, s = r["values"], r["scale"]
    assert s["left_out"] == [4] and v[4] == pytest.approx(1.0, abs=1e-6)  # itself: 1 by definition
    assert s["max"] == pytest.approx(max(abs(a) for i, a in enumerate(v) if i != 4))


def test_joint_limits_with_another_trace(client, tid):
    other = client.post("/api/trace", json={"text": "Short text."}).json()
    T_b = len(other["tokens"])
    r = metric(client, tid, "act-norm", hook="blocks.1.hook_resid_post", mode="minmax", skip_first=True,
               **{"with": other["id"]})  # fmt: skip
    a, b = r["values"][1:], r["values_with"][1:]
    assert len(r["values_with"]) == T_b
    assert (r["scale"]["min"], r["scale"]["max"]) == pytest.approx((min(a + b), max(a + b)))
    assert {k: r["scale_with"][k] for k in ("min", "max", "kind")} == {
        k: r["scale"][k] for k in ("min", "max", "kind")
    }
    assert r["scale_with"]["left_out"] == [0]
    # the selected token is clamped to the shorter text
    r = metric(
        client,
        tid,
        "cos-tokens",
        hook="blocks.1.hook_mlp_out",
        token=20,
        mode="minmax",
        **{"with": other["id"]},
    )
    assert r["scale_with"]["left_out"] == [T_b - 1] and r["values_with"][T_b - 1] == pytest.approx(
        1.0, abs=1e-6
    )


def test_a_trace_of_another_model_is_refused(client, tid):
    t = lmpeek.trace(client.app.state.holder.model, "foreign text")
    fp = dict(t.model.get("fingerprint") or {}, id="somebody-else")
    foreign = client.app.state.traces.put(dataclasses.replace(t, model={**t.model, "fingerprint": fp}))
    assert client.get(f"/api/traces/{foreign}").status_code == 409  # as the other routes
    for name in ("loss", "act-norm"):
        params = {"name": name, "hook": "blocks.0.hook_resid_post", "with": foreign}
        r = client.get(f"/api/traces/{tid}/metric", params=params)
        assert r.status_code == 409, r.text


@pytest.mark.parametrize(
    "params, message",
    [
        ({"name": "bogus"}, "unknown metric 'bogus': use one of loss, entropy, prob, norm"),
        ({"name": "act-value", "hook": "blocks.0.hook_resid_post"}, "needs dim in 0.."),
        ({"name": "act-norm"}, "metric 'act-norm' needs hook"),
        ({"name": "neuron", "layer": 0}, "metric 'neuron' needs neuron"),
        ({"name": "attn-from", "layer": 0}, "metric 'attn-from' needs head and token"),
        ({"name": "cos-tokens", "hook": "blocks.0.hook_resid_post"}, "metric 'cos-tokens' needs token"),
        ({"name": "cos-previous", "hook": "blocks.0.hook_resid_post"}, "layer >= 1"),
        ({"name": "attn-to", "layer": 0, "head": 0, "token": 999}, "key must be <"),
        ({"name": "neuron", "layer": 0, "neuron": 10**6}, "index must be <"),
    ],
)
def test_bad_requests_say_what_to_fix(client, tid, params, message):
    r = client.get(f"/api/traces/{tid}/metric", params=params)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_bad_mode_is_422(client, tid):
    r = client.get(f"/api/traces/{tid}/metric", params={"name": "loss", "mode": "zscore"})
    assert r.status_code == 422


def test_generate_heatmap_scale_covers_every_step_so_far(client):
    """Generate's attention-entropy heatmap is drawn with the server's scale: sequential from 0 to the
    largest entropy of all steps so far, sent with each step."""
    import json

    r = client.post(
        "/api/generate", json={"prompt": "Hello there", "max_new_tokens": 6, "temperature": 1.0, "seed": 3}
    )
    steps = []
    for frame in r.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        if lines["event"] == "token":
            steps.append(json.loads(lines["data"]))
    assert len(steps) == 6
    running = 0.0
    for s in steps:
        running = max(running, max(v for row in s["attn_entropy"] for v in row if v is not None))
        scale = s["attn_entropy_scale"]
        assert scale["kind"] == "sequential" and scale["min"] == 0.0 and scale["mode"] == "raw"
        assert scale["max"] == pytest.approx(running)
        assert scale["divider"] == pytest.approx(running / 2)
