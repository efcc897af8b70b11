"""The information-flow graph (lmpeek.attribution.flow) against independent computations: hooked
vectors for the reconstruction, a NumPy loop for the importances, a dense [T, T, H, D] implementation
for the lazy walk, a hand-worked toy for the pruning, and the model's logits for the contrastive
projection."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.attribution.flow import Node, decompose, flow, proximity, walk
from lmpeek.capture.slices import head_results
from lmpeek.errors import InvalidInput
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model

TEXT = "The capital of France is Paris. The capital of Germany is"
LONG = "Once upon a time there was a small model that wanted to see inside itself. " * 2


def _load(arch: str, biases: bool = False):
    """A tiny model; with `biases`, every 1-D parameter (biases, norm gains) gets random values, so the
    value bias, o_proj bias and the final norm's gain and bias all matter (the tiny models keep them
    at their init: zeros and ones)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the generic adapter's note (olmo)
        if not biases:
            return lmpeek.load(f"tiny:{arch}")
        hf, tok = tiny_hf_model(arch)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in hf.parameters():
                if p.dim() == 1:
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
        return lmpeek.wrap(hf, tok, name=f"{arch}-biased")


@pytest.fixture(scope="module")
def llama():
    return _load("llama")


# --- parts reconstruct every sum ------------------------------------------------------------


def _check_reconstruction(model, text=TEXT):
    dec = decompose(model, text)
    kinds = ("resid",) if dec.parallel else ("attn", "resid")
    for layer in range(dec.n_layers):
        for i in range(dec.n_tokens):
            for kind in kinds:
                parts = dec.parts(layer, kind, i)
                total = sum(p.reshape(-1, p.shape[-1]).sum(0) for p in parts.values())
                whole = dec.whole(layer, kind, i)
                err = float((total - whole).norm() / whole.norm())
                assert err <= 1e-4, (model.name, layer, kind, i, err)
                if "heads" in parts:
                    assert parts["heads"].shape == (model.n_heads, i + 1, model.d_model)
    return dec


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_parts_reconstruct_every_residual_sum(arch):
    dec = _check_reconstruction(_load(arch))
    assert dec.parallel == (arch == "gpt_neox")


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "qwen2", "gemma3"])
def test_value_and_output_biases_are_counted_once(arch):
    # Σ_j a_ij = 1, so a value bias added twice (LM-TT #35) would leave b_V·W_O over per head
    _check_reconstruction(_load(arch, biases=True))


def test_the_whole_is_the_hooked_stream(llama):
    dec = decompose(llama, TEXT)
    t = lmpeek.trace(llama, TEXT, keep=["blocks.*.hook_resid_mid", "blocks.*.hook_resid_post"])
    for layer in range(dec.n_layers):
        for i in range(dec.n_tokens):
            for kind, point in (("attn", "hook_resid_mid"), ("resid", "hook_resid_post")):
                # a trace may run another attention kernel: equal to float rounding
                want = t.tensors[f"blocks.{layer}.{point}"][i]
                got = dec.whole(layer, kind, i).numpy()
                assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


# --- importances -----------------------------------------------------------------------------


def _np_proximity(parts: np.ndarray, whole: np.ndarray) -> np.ndarray:
    prox = np.array([max(0.0, -np.abs(x - whole).sum() + np.abs(whole).sum()) for x in parts])
    return prox / prox.sum() if prox.sum() > 0 else prox


def test_proximity_by_hand():
    parts = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # y = [2, 1], ‖y‖₁ = 3
    got = proximity(parts, parts.sum(0))
    np.testing.assert_allclose(got.numpy(), [0.5, 0.0, 0.5])  # 3-2, max(0, 3-4), 3-2
    zero = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert proximity(zero, zero.sum(0)).tolist() == [0.0, 0.0]  # y = 0: nothing is close


def test_proximity_matches_numpy_on_random_tensors():
    rng = np.random.default_rng(0)
    for k, d in [(3, 4), (7, 16), (40, 64)]:
        parts = rng.normal(size=(k, d)) * rng.uniform(0.1, 3, size=(k, 1))
        got = proximity(
            torch.tensor(parts, dtype=torch.float32), torch.tensor(parts.sum(0), dtype=torch.float32)
        )
        want = _np_proximity(parts.astype(np.float32).astype(np.float64), parts.sum(0))
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
        assert abs(float(got.sum()) - 1) < 1e-6


# --- the lazy walk equals a dense computation --------------------------------------------------


def _dense_shares(model, text):
    """Every node's shares from [T, T, H, D] parts built at once: the hooked pattern, the hooked values
    through o_proj (capture.slices.head_results), NumPy proximity. No laziness, no pattern recompute."""
    b = model.bound
    keep = [f"blocks.*.{p}" for p in ("attn.hook_pattern", "attn.hook_v", "hook_resid_pre", "hook_attn_out",
                                      "hook_mlp_out", "hook_resid_post")]  # fmt: skip
    t = lmpeek.trace(model, text, keep=keep).tensors
    rep = b.n_heads // b.n_kv_heads
    table = {}
    for layer in range(b.n_layers):
        g = {p.split(".")[-1]: t[f"blocks.{layer}.{p}"] for p in (k[len("blocks.*.") :] for k in keep)}
        vo = head_results(model, layer, np.repeat(g["hook_v"], rep, axis=1))  # [T, H, D]
        o_proj = b.block_module(layer, b.adapter.o_proj)
        with torch.no_grad():
            bias = o_proj(torch.zeros(1, b.n_heads * b.d_head))[0].numpy()
        dense = np.einsum("hij,jhd->ijhd", g["hook_pattern"], vo)  # LM-TT's tensor
        pre, attn, mlp, post = (
            g["hook_resid_pre"],
            g["hook_attn_out"],
            g["hook_mlp_out"],
            g["hook_resid_post"],
        )
        for i in range(len(pre)):
            heads = dense[i, : i + 1].transpose(1, 0, 2)  # [H, i+1, D]
            if b.parallel:
                sums = {"resid": ({"residual": pre[i], "heads": heads, "bias": bias, "mlp": mlp[i]}, post[i])}
            else:
                sums = {
                    "attn": ({"residual": pre[i], "heads": heads, "bias": bias}, pre[i] + attn[i]),
                    "resid": ({"residual": pre[i] + attn[i], "mlp": mlp[i]}, post[i]),
                }
            for kind, (parts, whole) in sums.items():
                flat = np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts.values()])
                w = _np_proximity(flat.astype(np.float64), whole.astype(np.float64))
                shares, at = {}, 0
                for key, p in parts.items():
                    n = int(np.prod(p.shape[:-1]))
                    shares[key] = torch.tensor(w[at : at + n].reshape(p.shape[:-1]), dtype=torch.float32)
                    at += n
                table[layer, kind, i] = shares
    return lambda layer, kind, i: table[layer, kind, i]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_lazy_walk_equals_the_dense_computation(arch):
    model = _load(arch, biases=True)
    dense = _dense_shares(model, LONG)
    T = len(model.tokenizer(LONG)["input_ids"])
    for threshold, token in [(0.01, -1), (0.04, -1), (0.02, T // 2)]:
        g = flow(model, LONG, token=token, threshold=threshold)
        infl, edges, _ = walk(dense, model.n_layers, token % T, threshold, model.bound.parallel)
        assert set(g.nodes) == set(infl)
        # float32 parts against float64 NumPy: shares agree to ~1e-5 relative
        for n, v in infl.items():
            assert g.nodes[n] == pytest.approx(v, rel=1e-4, abs=1e-6)
        want = {(e.src, e.dst, e.kind, e.head): e for e in edges}
        got = {(e.src, e.dst, e.kind, e.head): e for e in g.edges}
        assert set(got) == set(want)
        for key, e in want.items():
            assert got[key].weight == pytest.approx(e.weight, rel=1e-4, abs=1e-6)
            assert got[key].flow == pytest.approx(e.flow, rel=1e-4, abs=1e-6)
    # lazy: only the sums of reached nodes were decomposed
    sums = model.n_layers * T
    assert 0 < flow(model, LONG, threshold=0.04).computed < sums


# --- the walk, pruning and the graph --------------------------------------------------------------


def test_walk_by_hand():
    # one sequential layer, two tokens, target 1: I0_1 = 0.7 A0_1 + 0.3 M0_1; A0_1 = 0.5 X_1 + heads
    table = {
        (0, "resid", 1): {"residual": torch.tensor(0.7), "mlp": torch.tensor(0.3)},
        (0, "attn", 1): {
            "residual": torch.tensor(0.5),
            "heads": torch.tensor([[0.2, 0.3]]),
            "bias": torch.tensor(0.0),
        },
    }
    infl, edges, calls = walk(lambda layer, k, i: table[layer, k, i], 1, 1, 0.1, parallel=False)
    X0, X1 = Node(-1, 0, "embed"), Node(-1, 1, "embed")
    A, M = Node(0, 1, "attn"), Node(0, 1, "mlp")
    assert infl == pytest.approx({Node(0, 1, "resid"): 1.0, A: 1.0, M: 0.3, X1: 0.8, X0: 0.2})
    assert calls == 1
    assert {(e.src, e.kind, e.head): round(e.flow, 6) for e in edges if e.dst == A} == {
        (X1, "residual", None): 0.5, (X0, "head", 0): 0.2, (X1, "head", 0): 0.3}  # fmt: skip
    infl, _, _ = walk(lambda layer, k, i: table[layer, k, i], 1, 1, 0.25, parallel=False)
    assert X0 not in infl and infl[X1] == pytest.approx(0.8)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_pruning_is_monotone_in_the_threshold(arch):
    model = _load(arch)
    graphs = [flow(model, LONG, threshold=t) for t in (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.2, 0.6)]
    for lo, hi in zip(graphs, graphs[1:], strict=False):
        assert set(hi.nodes) <= set(lo.nodes)
        assert {(e.src, e.dst, e.head) for e in hi.edges} <= {(e.src, e.dst, e.head) for e in lo.edges}
        assert all(hi.nodes[n] <= lo.nodes[n] + 1e-9 for n in hi.nodes)
    assert len(graphs[0].edges) > len(graphs[-1].edges)
    # threshold 0 keeps every edge with a positive share: incoming flows of a node add up to its
    # influence less the bias's share (≤ 1)
    g = graphs[0]
    into: dict[Node, float] = {}
    for e in g.edges:
        into[e.dst] = into.get(e.dst, 0.0) + e.weight
    assert all(v <= 1 + 1e-5 for v in into.values())


def test_one_token_text(llama):
    g = flow(llama, "a")
    assert g.target == 0 and len(g.tokens) == 1
    assert Node(-1, 0, "embed") in g.nodes and Node(llama.n_layers - 1, 0, "resid") in g.nodes
    # the only key a one-token text has is itself: all attention flow goes to token 0
    assert all(e.src.token == 0 for e in g.edges)


def test_json_is_ready_for_a_view(llama):
    g = flow(llama, TEXT, contrastive=" Berlin")
    d = json.loads(json.dumps(g.to_json()))
    ids = {n["id"] for n in d["nodes"]}
    assert len(ids) == len(d["nodes"]) == len(g.nodes)
    assert all(e["source"] in ids and e["target"] in ids for e in d["edges"])
    assert {e["kind"] for e in d["edges"]} <= {"head", "mlp", "residual"}
    assert all((e["head"] is not None) == (e["kind"] == "head") for e in d["edges"])
    assert f"I{llama.n_layers - 1}_{len(g.tokens) - 1}" in ids and d["tokens"] == g.tokens
    assert d["contrastive"]["b"] == g.contrastive["b"] and all("contrast" in e for e in d["edges"])


def test_bad_input_is_a_one_line_error(llama):
    T = len(llama.tokenizer(TEXT)["input_ids"])
    cases = [dict(token=T), dict(token=-T - 1), dict(token=1.5), dict(token=True), dict(threshold=-0.1),
             dict(threshold=float("nan")), dict(contrastive=("a", "b", "c")), dict(contrastive=10**9),
             dict(contrastive="")]  # fmt: skip
    for kw in cases:
        with pytest.raises(InvalidInput) as err:
            flow(llama, TEXT, **kw)
        assert "\n" not in str(err.value), kw
    with pytest.raises(InvalidInput, match="out of range"):
        flow(llama, TEXT, token=T)
    top = flow(llama, TEXT).prediction["id"]
    with pytest.raises(InvalidInput, match="same token"):
        flow(llama, TEXT, contrastive=top)
    with pytest.raises(InvalidInput):
        flow(object(), TEXT)


# --- contrastive ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_contrastive_projection_is_the_logprob_difference(arch):
    model = _load(arch, biases=True)
    a, b = 5, 9
    g = flow(model, TEXT, contrastive=(a, b))
    ids = torch.tensor([model.tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model.hf(input_ids=ids).logits[0, -1].double(), -1)
    want = float(logp[a] - logp[b])
    assert g.contrastive["logprob_diff"] == pytest.approx(want, abs=1e-5)
    # the final norm's bias and the unembedding's carry a constant no part owns
    bound = model.bound
    final, unembed = bound.module(bound.adapter.final_norm), bound.module(bound.adapter.unembed)
    with torch.no_grad():
        diff = unembed.weight[a] - unembed.weight[b]
        const = float(final.bias @ diff) if getattr(final, "bias", None) is not None else 0.0
    top = Node(model.n_layers - 1, g.target, "resid")
    assert g.node_contrast[top] + const == pytest.approx(want, abs=1e-4)
    # direct logit attribution at the target: the top node's residual and MLP edges (all kept at
    # threshold 0) project to the node, and the A node's edges (plus the bias) to the residual edge
    g0 = flow(model, TEXT, threshold=0.0, contrastive=(a, b))
    into_top = [e for e in g0.edges if e.dst == top]
    assert {e.kind for e in into_top} == {"residual", "mlp"}
    assert sum(e.contrast for e in into_top) == pytest.approx(g0.node_contrast[top], rel=1e-4, abs=1e-4)
    # swapping A and B negates every edge and keeps the graph
    h = flow(model, TEXT, contrastive=(b, a))
    assert [(e.src, e.dst, e.head) for e in h.edges] == [(e.src, e.dst, e.head) for e in g.edges]
    np.testing.assert_allclose([e.contrast for e in h.edges], [-e.contrast for e in g.edges], atol=1e-5)
    assert any(e.contrast < 0 for e in g.edges) or any(e.contrast < 0 for e in h.edges)


def test_contrastive_b_alone_takes_the_top_prediction_as_a(llama):
    g = flow(llama, TEXT, contrastive=" Berlin")
    assert g.contrastive["a_id"] == g.prediction["id"]
    assert g.contrastive["b_id"] == llama.tokenizer(" Berlin", add_special_tokens=False)["input_ids"][0]
    assert g.contrastive["logprob_diff"] > 0  # A is the top prediction
