"""Session: every number it answers equals an independent computation (a full forward with the hook
kept, a plain transformers forward, a reference formula), and bad questions get LmpeekErrors with the
status the server answers."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import lmpeek
from lmpeek.errors import LmpeekError
from lmpeek.session import NoStoredStream, OutOfRange, Session, TraceNotFound
from lmpeek.store.traces import TraceStore
from tests.reference import eager_attentions

TEXT = "The capital of France is Paris. It lies on the Seine."


def _load(arch: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lmpeek.load(f"tiny:{arch}")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def session(request):
    with Session(_load(request.param)) as s:
        yield s


@pytest.fixture(scope="module")
def stored(session):
    return session.trace(TEXT)


def _full(session, hooks):
    """The independent path: one full forward keeping the hooks (no stored stream, no recompute)."""
    return lmpeek.trace(session.model, TEXT, keep=hooks)


def test_trace_is_stored_and_read_back(session, stored):
    t = session.get(stored.id)
    assert t.tokens == stored.trace.tokens
    np.testing.assert_array_equal(t.token_ids, stored.trace.token_ids)
    assert any(row["id"] == stored.id for row in session.traces())


def test_component_equals_the_full_forward(session, stored):
    L = session.model.n_layers
    hooks = [f"blocks.{L - 1}.hook_mlp_out", f"blocks.{L - 1}.mlp.hook_post", "blocks.0.attn.hook_z"]
    full = _full(session, hooks)
    for hook in hooks[:2]:
        want = full[hook]
        got = session.component(stored.id, hook)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    z = session.component(stored.id, "blocks.0.attn.hook_z", head=1)
    np.testing.assert_allclose(z, full["blocks.0.attn.hook_z"][:, 1], rtol=1e-5, atol=1e-6)


def test_attention_equals_plain_transformers(session, stored):
    want = eager_attentions(session.model.hf, stored.trace.token_ids)
    for layer, head in ((0, 0), (session.model.n_layers - 1, 1)):
        got = session.attention(stored.id, layer, head).astype(np.float32)
        np.testing.assert_allclose(got, want[layer][head], atol=2e-3)  # float16 transport
        row = session.attention(stored.id, layer, head, query=3)
        np.testing.assert_array_equal(row[0], got[3].astype(np.float16))
        col = session.attention(stored.id, layer, head, key=2)
        np.testing.assert_array_equal(col[0], got[:, 2].astype(np.float16))


def test_logit_lens_last_layer_is_the_models_prediction(session, stored):
    T = len(stored.trace)
    rows = session.logit_lens(stored.id, T - 2, k=5)
    assert rows.ids.shape == (session.model.n_layers, 5)
    # the last layer's lens is the model's own output distribution at that position
    np.testing.assert_array_equal(rows.ids[-1], stored.trace.topk_ids[T - 2][:5])
    np.testing.assert_allclose(rows.probs[-1], stored.trace.topk_probs[T - 2][:5], rtol=1e-4, atol=1e-6)
    assert len(rows.tokens) == session.model.n_layers and all(len(r) == 5 for r in rows.tokens)


def test_activations_similarity_neuron_by_formula(session, stored):
    hook = "blocks.1.hook_resid_post"
    x = _full(session, [hook])[hook].astype(np.float64)
    np.testing.assert_allclose(session.activations(stored.id, hook), np.linalg.norm(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(
        session.activations(stored.id, hook, stat="abs_sum"), np.abs(x).sum(1), rtol=1e-5
    )
    np.testing.assert_allclose(session.activations(stored.id, hook, stat="value", dim=3), x[:, 3], atol=1e-5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(session.similarity(stored.id, hook, token=2), unit @ unit[2], atol=1e-5)
    post = _full(session, ["blocks.0.mlp.hook_post"])["blocks.0.mlp.hook_post"]
    np.testing.assert_allclose(session.neuron(stored.id, 0, 5), post[:, 5], rtol=1e-5, atol=1e-6)
    idx, vals = session.neurons(stored.id, 0, 4, k=3)
    assert list(idx) == list(np.argsort(-np.abs(post[4]), kind="stable")[:3])


def test_histogram_counts_every_dimension(session, stored):
    h = session.histogram(stored.id, "blocks.0.hook_resid_post", token=1, bins=16)
    assert h.token.sum() == session.model.d_model and h.edges.shape == (17,)
    assert h.nonfinite == 0


def test_compare_is_the_mean_norm_per_layer(session, stored):
    other = session.trace("Something else entirely.")
    c = session.compare(stored.id, other.id)
    np.testing.assert_allclose(c.mean_norm_a, stored.trace.norm_matrix("resid_post").mean(1))
    np.testing.assert_allclose(c.diff, c.mean_norm_a - c.mean_norm_b)


def test_bad_questions_say_what_to_fix(session, stored):
    with pytest.raises(TraceNotFound) as err:
        session.get("0123456789abcdef")
    assert err.value.status_code == 404
    T = len(stored.trace)
    with pytest.raises(OutOfRange, match=f"token must be < {T}"):
        session.vector(stored.id, "blocks.0.hook_resid_post", T)
    with pytest.raises(OutOfRange, match="layer must be <"):
        session.attention(stored.id, 99, 0)
    with pytest.raises(OutOfRange, match="query or key"):
        session.attention(stored.id, 0, 0, query=1, key=1)
    with pytest.raises(OutOfRange, match="needs a block hook at layer >= 1"):
        session.similarity(stored.id, "blocks.0.hook_resid_post", kind="previous")


def test_a_trace_without_a_stream_cannot_be_recomputed(session):
    t = lmpeek.trace(session.model, TEXT)
    trace_id = session.store.put(t)  # no residual stream
    with pytest.raises(NoStoredStream) as err:
        session.component(trace_id, "blocks.0.hook_resid_post")
    assert err.value.status_code == 409
    # attention still works: the model is run up to the layer
    assert session.attention(trace_id, 0, 0).shape == (len(t), len(t))


def test_model_work_runs_on_the_worker_thread(tmp_path):
    seen = []
    model = _load("llama")
    with Session(model, TraceStore(tmp_path)) as s:
        original = model.hf.forward

        def spy(*a, **kw):
            seen.append(threading.current_thread().name)
            return original(*a, **kw)

        model.hf.forward = spy
        try:
            s.trace("Hello there")
        finally:
            del model.hf.forward
    assert seen and all(name == s.worker.name for name in seen)


def test_session_is_exported():
    assert lmpeek.Session is Session


def test_metric_is_the_analysis_with_its_colour_scale(session, stored):
    from lmpeek.analysis.scales import colour_scale, colour_scales

    hook = "blocks.1.hook_mlp_out"
    m = session.metric(stored.id, "act-value", hook=hook, dim=2, mode="outliers", skip_first=True)
    values = session.activations(stored.id, hook, stat="value", dim=2)
    np.testing.assert_array_equal(m.values[0], values)
    assert m.scales[0] == colour_scale(values, "signed", "outliers", skip_first=True)
    # a second trace: the same metric, limits shared by both, the selected token clamped to its length
    other = session.trace("Short one.")
    T2 = len(other.trace)
    m = session.metric(stored.id, "cos-tokens", hook=hook, token=T2 + 3, mode="minmax", with_=other.id)
    a = session.similarity(stored.id, hook, token=T2 + 3)
    b = session.similarity(other.id, hook, token=T2 - 1)
    np.testing.assert_array_equal(m.values[1], b)
    want = colour_scales([a, b], "cosine", "minmax", leave_out=[[T2 + 3], [T2 - 1]])
    assert m.scales == want and m.scales[1].left_out == [T2 - 1]  # its cosine with itself is 1
    # loss: token t shows the prediction that produced it
    loss = session.metric(stored.id, "loss").values[0]
    assert np.isnan(loss[0]) and np.allclose(loss[1:], stored.trace.loss[:-1])
    with pytest.raises(LmpeekError, match="metric 'neuron' needs neuron") as err:
        session.metric(stored.id, "neuron", layer=0)
    assert err.value.status_code == 422
    with pytest.raises(OutOfRange, match="unknown metric 'bogus'"):
        session.metric(stored.id, "bogus")


def test_logit_lens_follows_a_target_outside_the_top_k(session, stored):
    token = 3
    full = session.logit_lens(stored.id, token, k=session.model.hf.config.vocab_size)
    target = int(full.ids[-1, -1])  # the least likely token at the last layer: far outside a top-5
    rows = session.logit_lens(stored.id, token, k=5, target=target)
    np.testing.assert_array_equal(rows.ids, full.ids[:, :5])
    for layer in range(session.model.n_layers):
        rank = int(np.flatnonzero(full.ids[layer] == target)[0]) + 1
        assert rows.target_ranks[layer] == rank
        np.testing.assert_allclose(rows.target_probs[layer], full.probs[layer, rank - 1], rtol=1e-12)
    assert rows.target == target and rows.target_token == full.tokens[-1][-1]
    with pytest.raises(OutOfRange, match="target: must be a token id <"):
        session.logit_lens(stored.id, token, target=10**9)


def test_a_generation_streams_scales_and_stores_its_text(session):
    from lmpeek.analysis.scales import colour_scale

    run = session.worker.call(lambda: session.start_generation("Once upon", max_new_tokens=4))
    steps = session.worker.call(lambda: list(run))
    assert len(steps) == 4 and run.seed is not None
    every = np.concatenate([np.asarray(s.attn_entropy).ravel() for s, _ in steps])
    assert steps[-1][1] == colour_scale(every, "magnitude", "raw")  # all steps so far, one scale
    t = session.get(session.worker.call(run.store))
    want = np.concatenate([run.prompt.token_ids, [s.token_id for s, _ in steps]])
    np.testing.assert_array_equal(t.token_ids, want)
    with pytest.raises(LmpeekError):
        session.start_generation("Once upon", max_new_tokens=0)


def test_scatter_needs_dimensions_or_tokens(session, stored):
    hook = "blocks.0.hook_resid_post"
    x, y = session.scatter(stored.id, hook, x=1, y=2)
    v = session.vectors(stored.id, hook)
    np.testing.assert_array_equal(x, v[:, 1])
    np.testing.assert_array_equal(y, v[:, 2])
    a, b = session.scatter(stored.id, hook, a=0, b=4)
    np.testing.assert_array_equal(b, v[4])
    with pytest.raises(LmpeekError, match="give x and y"):
        session.scatter(stored.id, hook, x=1)
