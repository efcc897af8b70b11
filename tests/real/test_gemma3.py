"""Gemma 3 270M, a real model from the registry: `lmpeek check` passes; a served trace answers attention
rows and columns, vectors and the logit lens for every layer; a saved trace loads back; everything is
finite and within 1e-3 × max|ref| of the float32 forward.

Gemma 3's residual stream reaches about 1e5 from layer 8 on (float16 stops at 65,504), its layers
alternate sliding-window (512 tokens) and global attention, and q/k have their own norms: the text
below is longer than the window.
"""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import lmpeek
from lmpeek.capture.hooks import attach
from lmpeek.capture.tokens import tokenize
from lmpeek.models import hf_compat
from lmpeek.server.app import create_app

RTOL = 1e-3  # of max|ref|: what recomputed hook points must meet (issue 15)
TEXT = argparse.__doc__  # ~600 Gemma tokens of prose and code (the standard library's own text)


@pytest.fixture(scope="module")
def model(gemma3_gguf):
    return lmpeek.load(str(gemma3_gguf), progress=True)


@pytest.fixture(scope="module")
def ids(model) -> list[int]:
    ids = [int(i) for i in tokenize(model.tokenizer, TEXT, model.context_length).token_ids]
    window = getattr(model.hf.config, "sliding_window", None) or 0
    assert len(ids) > window, "the text must be longer than the sliding window"
    return ids


@pytest.fixture(scope="module")
def reference(model, ids) -> dict[str, np.ndarray]:
    """Every hook point from one full float32 forward ([T, ...], no batch), and the eager attention
    patterns of transformers' own forward (no lmpeek hooks) as `pattern.{layer}` [H, T, T]."""
    hf, b = model.hf, model.bound
    x = torch.tensor([ids], device=model.device)
    got: dict[str, np.ndarray] = {}

    def keeper(name):
        return lambda t: got.__setitem__(name, t[0].detach().float().cpu().numpy().copy())

    with torch.inference_mode():
        names = [n for n in b.hook_names() if not n.endswith("attn.hook_pattern")]
        with attach(b, {n: keeper(n) for n in names}):
            hf(input_ids=x, use_cache=False)
        with hf_compat.attention_implementation_as(hf, "eager"):
            out = hf(input_ids=x, output_attentions=True, use_cache=False)
    for layer, pattern in enumerate(out.attentions):
        got[f"pattern.{layer}"] = pattern[0].float().cpu().numpy()
    return got


def _close(name: str, got: np.ndarray, ref: np.ndarray, scale: float | None = None) -> str | None:
    """None when got is finite and within RTOL × max|ref| of ref, else what is wrong (one line)."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != ref.shape:
        return f"{name}: shape {got.shape} != {ref.shape}"
    bad = int(got.size - np.isfinite(got).sum())
    if bad:
        return f"{name}: {bad} of {got.size} values not finite"
    scale = float(np.abs(ref).max()) if scale is None else scale
    dev = float(np.abs(got - ref).max())
    if dev > RTOL * max(scale, 1e-30):
        return f"{name}: max|dev| {dev:.3g} > {RTOL:g} × {scale:.3g} ({dev / scale:.2g} of max|ref|)"
    return None


def _report(problems: list[str], what: str) -> None:
    """Fail with every problem listed (the first 40), so one run says all that is wrong."""
    assert not problems, f"{len(problems)} {what} failed:\n" + "\n".join(problems[:40])


def _json_array(payload) -> np.ndarray:
    """JSON numbers as float64; null (how lmpeek sends a non-finite value) becomes NaN."""
    return np.array(payload, dtype=np.float64)


# --- lmpeek check -------------------------------------------------------------------------------


def test_lmpeek_check_passes(gemma3_gguf):
    from lmpeek.cli import app

    result = CliRunner().invoke(app, ["check", str(gemma3_gguf)], catch_exceptions=False)
    failing = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert result.exit_code == 0, "\n".join(failing) or result.output
    assert re.search(r"all \d+ checks passed", result.stdout), result.stdout


def test_reference_is_finite(reference):
    bad = [k for k, v in reference.items() if not np.isfinite(v).all()]
    assert not bad, f"the float32 forward itself is not finite at {bad[:5]}"


# --- a served trace -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(model, ids, tmp_path_factory):
    """(client, trace id, summary) of the text traced through the app, the model loaded once."""
    app = create_app(
        "gemma3",
        loader=lambda _source: model,
        background=False,
        store_dir=tmp_path_factory.mktemp("store"),
        allowed_hosts=["testserver"],
    )
    # a server error is an HTTP 500 to list with the rest, not an exception that ends the test
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/api/trace", json={"text": TEXT})
        assert r.status_code == 200, r.text[:500]
        summary = r.json()
        yield client, summary["id"], summary


def test_served_summary_is_finite(served, ids):
    _, _, summary = served
    assert summary["token_ids"] == ids
    problems = []

    def walk(name, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{name}.{k}", v)
        elif isinstance(value, list):
            flat = np.array(value, dtype=object).ravel() if value else []
            if any(v is None for v in flat) and name.split(".")[-1] not in ("loss", "true_prob"):
                problems.append(f"{name}: null (a non-finite value) in the summary")
            elif all(isinstance(v, float) for v in flat) and not np.isfinite(np.array(flat, float)).all():
                problems.append(f"{name}: not finite")

    for key in ("entropy", "topk_probs", "norms", "attn_entropy"):
        walk(key, summary.get(key))
    # the last token has no next token: its loss is null by definition, every other one is a number
    assert all(v is not None for v in summary["loss"][:-1]), "a loss is null before the last token"
    assert not summary.get("nonfinite"), summary.get("nonfinite")
    _report(problems, "summary fields")


def test_attention_rows_and_columns_every_layer(served, model, reference, ids):
    client, trace_id, _ = served
    T, H = len(ids), model.n_heads
    problems = []
    for layer in range(model.n_layers):
        ref = reference[f"pattern.{layer}"]  # [H, T, T]
        for head in range(H):
            for kind, index, ref_slice in (
                ("query", T - 1, ref[head, T - 1][None]),  # the last token's row: attention from it
                ("query", T // 2, ref[head, T // 2][None]),
                ("key", 0, ref[head, :, 0][None]),  # the first token's column: attention to it
            ):
                url = f"/api/traces/{trace_id}/attention?layer={layer}&head={head}&{kind}={index}"
                r = client.get(url, headers={"Accept": "application/octet-stream"})
                if r.status_code != 200:
                    problems.append(f"L{layer} H{head} {kind}={index}: HTTP {r.status_code} {r.text[:200]}")
                    continue
                shape = tuple(int(s) for s in r.headers["X-Shape"].split(","))
                got = np.frombuffer(r.content, dtype="<f2").reshape(shape)
                problem = _close(f"L{layer} H{head} {kind}={index} (binary)", got, ref_slice)
                if problem:
                    problems.append(problem)
        r = client.get(f"/api/traces/{trace_id}/attention?layer={layer}&head=0&query={T - 1}")
        if r.status_code != 200:
            problems.append(f"L{layer} H0 row (JSON): HTTP {r.status_code} {r.text[:200]}")
        else:
            body = r.json()
            got = _json_array(body["data"]).reshape(body["shape"])
            problem = _close(f"L{layer} H0 query={T - 1} (JSON)", got, ref[0, T - 1][None])
            if problem:
                problems.append(problem)
    _report(problems, "attention slices")


def test_vectors_every_hook_point_every_layer(served, model, reference, ids):
    """Every hook point the app offers, at every layer, recomputed from the stored residual stream, at
    the first token (Gemma's largest activations), a middle one and the last: within RTOL × max|ref|
    of the whole hook point's array in the full float32 forward."""
    client, trace_id, _ = served
    T = len(ids)
    r = client.get("/api/components")
    assert r.status_code == 200, r.text
    H, group = model.n_heads, model.n_heads // model.bound.n_kv_heads
    requests = []  # (hook, head or None)
    for entry in r.json():
        names = [entry["hook"]]
        if entry["per_layer"]:
            names = [entry["hook"].replace("{l}", str(layer)) for layer in range(model.n_layers)]
        heads = (0, H - 1) if entry["per_head"] else (None,)  # a query head; K/V: the KV head it reads
        requests += [(name, head) for name in names for head in heads]
    problems, unchecked, compared = [], set(), 0
    for hook, head in requests:
        ref = reference.get(hook)
        if ref is not None and head is not None:
            ref = ref[:, head // group] if ref.shape[1] * group == H else ref[:, head]
        for token in (0, T // 2, T - 1):
            params = {"hook": hook, "token": token} | ({} if head is None else {"head": head})
            r = client.get(f"/api/traces/{trace_id}/vector", params=params)
            if r.status_code != 200:
                problems.append(f"{hook} head {head} token {token}: HTTP {r.status_code} {r.text[:200]}")
                continue
            body = r.json()
            got = _json_array(body["data"]).reshape(body["shape"])
            if ref is None:  # served but not a capture hook point (attn.hook_result): finite at least
                unchecked.add(hook.split(".", 2)[-1])
                if not np.isfinite(got).all():
                    problems.append(f"{hook} token {token}: not finite")
                continue
            compared += 1
            where = f"{hook}{'' if head is None else f' head {head}'} token {token}"
            problem = _close(where, got, ref[token], scale=float(np.abs(ref).max()))
            if problem:
                problems.append(problem)
    print(f"compared {compared} vectors; finite only: {sorted(unchecked)}")
    assert compared >= 3 * model.n_layers * 5, "too few hook points compared"
    _report(problems, "vectors")


def test_logit_lens_every_layer(served, model, reference, ids):
    """The lens (every layer's resid_post through the final norm and the unembedding) against the same
    computation on the float32 forward's resid_post, in float64."""
    client, trace_id, _ = served
    T, L = len(ids), model.n_layers
    b = model.bound
    norm, unembed = b.module(b.adapter.final_norm), b.module(b.adapter.unembed)
    W = unembed.weight.detach().double()
    problems = []
    for token in (0, T // 2, T - 1):
        r = client.get(f"/api/traces/{trace_id}/logit_lens", params={"token": token, "k": 5})
        if r.status_code != 200:
            problems.append(f"token {token}: HTTP {r.status_code} {r.text[:200]}")
            continue
        body = r.json()
        got_ids = np.array(body["ids"])
        got_probs = _json_array(body["probs"])
        if got_ids.shape != (L, 5):
            problems.append(f"token {token}: ids shape {got_ids.shape}, expected {(L, 5)}")
            continue
        for layer in range(L):
            resid = torch.as_tensor(reference[f"blocks.{layer}.hook_resid_post"][token])
            with torch.inference_mode():
                logits = norm(resid[None].float()).double() @ W.T
            probs = torch.softmax(logits[0], -1).numpy()
            # the served top-5 must be the reference's top-5 (up to near-ties) with its probabilities
            problem = _close(f"lens L{layer} token {token}: probs", got_probs[layer], probs[got_ids[layer]])
            kth = np.sort(probs)[-5]
            if problem:
                problems.append(problem)
            elif got_probs[layer].min() < kth - RTOL * probs.max():
                low = got_probs[layer].min()
                problems.append(f"lens L{layer} token {token}: not the top-5 ({low:.3g} < 5th {kth:.3g})")
    _report(problems, "lens rows")


# --- save and load ------------------------------------------------------------------------------


def test_saved_trace_round_trip(model, reference, ids, tmp_path):
    keep = ["blocks.*.hook_resid_post", "blocks.*.hook_mlp_out", "blocks.*.attn.hook_pattern"]
    t = lmpeek.trace(model, TEXT, keep=keep)
    assert [int(i) for i in t.token_ids] == ids
    folder = t.save(tmp_path / "gemma3-trace")
    loaded = lmpeek.Trace.load(folder)
    assert [int(i) for i in loaded.token_ids] == ids and loaded.tokens == t.tokens
    problems = []
    for name in sorted(loaded.kept):
        got = np.asarray(loaded.tensors[name])
        if name.endswith("attn.hook_pattern"):
            ref = reference[f"pattern.{int(name.split('.')[1])}"]
        else:
            ref = reference[name]
        problem = _close(f"saved {name}", got, ref)
        if problem:
            problems.append(problem)
    for field in ("entropy", "topk_probs", "attn_entropy"):
        if not np.isfinite(np.asarray(getattr(loaded, field), dtype=np.float64)).all():
            problems.append(f"saved {field}: not finite")
    assert len(loaded.kept) == 3 * model.n_layers
    _report(problems, "saved hook points")
