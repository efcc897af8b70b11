"""Hook-point arrays of a stored trace, served per token, recomputed from the stored residual stream."""

from __future__ import annotations

import io

import numpy as np
import pytest

TEXT = "The capital of France is Paris. def f(x): return x"


def test_components_list(client):
    hooks = [c["hook"] for c in client.get("/api/components").json()]
    assert "blocks.{l}.attn.hook_rot_q" in hooks and "blocks.{l}.attn.hook_result" in hooks
    assert hooks[0] == "hook_embed" and hooks[-2:] == ["ln_final.hook_normalized", "ln_final.hook_out"]
    assert "blocks.{l}.ln1.hook_normalized" in hooks and "blocks.{l}.ln2.hook_out" in hooks
    assert "blocks.{l}.attn.hook_q_normed" not in hooks  # llama has no q_norm


@pytest.mark.parametrize(
    "hook, head, index",
    [
        ("blocks.1.hook_resid_post", None, None),
        ("blocks.0.hook_mlp_out", None, None),
        ("blocks.1.mlp.hook_post", None, None),
        ("blocks.1.attn.hook_q", 3, 3),
        ("blocks.1.attn.hook_k", 3, 1),  # query head 3 reads KV head 1 (4 heads, 2 KV heads)
        ("blocks.0.attn.hook_rot_q", 1, 1),
        ("blocks.1.attn.hook_z", 2, 2),
        ("hook_embed", None, None),
        ("blocks.1.ln1.hook_normalized", None, None),
        ("blocks.0.ln2.hook_out", None, None),
        ("ln_final.hook_normalized", None, None),
        ("ln_final.hook_out", None, None),
    ],
)
def test_vectors_equal_the_full_forward(client, full, tid, hook, head, index):
    for token in (0, 5, len(full) - 1):
        params = {"hook": hook, "token": token} | ({"head": head} if head is not None else {})
        got = np.array(client.get(f"/api/traces/{tid}/vector", params=params).json()["data"])
        want = full[hook][token] if index is None else full[hook][token, index]
        # recomputed from the stored residual stream (float32): within 1e-3 × max|ref| of the full forward
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())


def test_head_result_download_as_npy(client, tid):
    r = client.get(f"/api/traces/{tid}/vector", params={"hook": "blocks.1.attn.hook_result", "token": 2,
                                                         "head": 0, "format": "npy"})  # fmt: skip
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    v = np.load(io.BytesIO(r.content))
    assert v.shape == (64,) and v.dtype == np.float32


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"hook": "blocks.9.hook_resid_post", "token": 0}, 400, "layer must be"),
        ({"hook": "blocks.0.hook_nope", "token": 0}, 400, "unknown hook point"),
        ({"hook": "nonsense", "token": 0}, 400, "unknown hook"),
        ({"hook": "blocks.0.attn.hook_q", "token": 0}, 400, "per head"),
        ({"hook": "blocks.0.attn.hook_q", "token": 0, "head": 9}, 400, "head must be"),
        ({"hook": "blocks.0.hook_resid_post", "token": 999}, 422, "token must be"),
    ],
)
def test_bad_vector_requests(client, tid, params, status, message):
    r = client.get(f"/api/traces/{tid}/vector", params=params)
    assert r.status_code == status and message in r.text, r.text
