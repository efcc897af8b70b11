"""POST /api/why/attribute with a span target (`span`, `generate`), a score kind and user-drawn spans
(server/routes_why.py, Session.start_attribution): the token × input matrix equals lmpeek.attribute
called directly, F is checked against a plain transformers forward, the whole span costs one
teacher-forced pass per perturbation (not one per row), and bad combinations are refused before
any stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sse_client import events as _events

import lmpeek
from lmpeek.capture.generate import generate as lib_generate
from lmpeek.session import attribution_forwards

TEXT = "The cat sat on the mat and then it slept"
SPAN = " on the rug by the door"


def _result(client, **body) -> tuple[dict, dict]:
    with client.stream("POST", "/api/why/attribute", json={"text": TEXT, **body}) as r:
        assert r.status_code == 200, r.read()
        events = _events(r)
    assert events[0][0] == "estimate" and events[-1][0] == "result", events[-1]
    return events[0][1], events[-1][1]


class _Sequences:
    """Counts the sequences the model runs (a batched forward of B rows counts B) and where each call's
    rows end (a cached prefix's length + its own tokens)."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []  # (rows, end)
        self.handle = model.hf.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, _module, args, kwargs):
        x = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if x is None and args:
            x = args[0]
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        past = cache.get_seq_length() if cache is not None else 0
        self.calls.append((int(x.shape[0]), past + int(x.shape[1])))

    @property
    def n(self) -> int:
        return sum(rows for rows, _ in self.calls)

    def reaching(self, end: int) -> int:
        """Rows that ran up to `end` (not a shared prefix run on its own)."""
        return sum(rows for rows, e in self.calls if e == end)

    def remove(self):
        self.handle.remove()


def _plain_rows(model, text: str, span_ids: list[int], score: str) -> np.ndarray:
    """Each span token's log-prob / prob / logit given everything before it: one plain forward."""
    prompt = model.tokenizer(text)["input_ids"]
    ids = torch.as_tensor(prompt + span_ids)[None]
    with torch.no_grad():
        logits = model.hf(ids).logits[0].double()
    rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(span_ids)]
    if score == "logprob":
        rows = torch.log_softmax(rows, -1)
    elif score == "prob":
        rows = torch.softmax(rows, -1)
    return rows[torch.arange(len(span_ids)), torch.as_tensor(span_ids)].numpy()


def test_a_span_target_is_the_library_matrix(client):
    model = client.app.state.holder.model
    _, res = _result(client, method="occlusion", features="words", span=SPAN, faithfulness=False)
    direct = lmpeek.attribute(model, TEXT, method="occlusion", features="words", span=SPAN)
    scores = np.asarray(res["scores"])
    assert scores.shape == (len(direct.target_labels), len(direct.segments)) and scores.shape[0] > 3
    np.testing.assert_allclose(scores, direct.scores, rtol=1e-6, atol=1e-6)
    assert res["target_labels"] == list(direct.target_labels) and res["target"] == direct.target
    span_ids = model.tokenizer.encode(SPAN, add_special_tokens=False)
    np.testing.assert_allclose(res["f_input"], _plain_rows(model, TEXT, span_ids, "logprob"), atol=1e-4)


@pytest.mark.parametrize("score", ["prob", "logit"])
def test_the_score_kind_is_what_f_reads(client, score):
    model = client.app.state.holder.model
    _, res = _result(client, method="gradient_x_input", features="words", span=SPAN, score=score,
                     faithfulness=False)  # fmt: skip
    span_ids = model.tokenizer.encode(SPAN, add_special_tokens=False)
    np.testing.assert_allclose(
        res["f_input"], _plain_rows(model, TEXT, span_ids, score), rtol=1e-4, atol=1e-5
    )
    lib = "log_prob" if score == "logprob" else score
    direct = lmpeek.attribute(model, TEXT, method="gradient_x_input", features="words", span=SPAN, score=lib)
    np.testing.assert_allclose(res["scores"], direct.scores, rtol=1e-4, atol=1e-6)


def test_generate_explains_the_greedy_continuation(client):
    model = client.app.state.holder.model
    est, res = _result(client, method="occlusion", features="words", generate=6, faithfulness=False)
    greedy = [s.token_id for s in lib_generate(model, TEXT, max_new_tokens=6, temperature=0.0)]
    direct = lmpeek.attribute(model, TEXT, method="occlusion", features="words", span=greedy)
    np.testing.assert_allclose(res["scores"], direct.scores, rtol=1e-6, atol=1e-6)
    assert res["target_labels"] == list(direct.target_labels) and len(greedy) == 6
    assert est["forwards"] == 6 + 1 + 2 + len(direct.segments)  # the generation counted in the estimate


def test_a_long_span_costs_one_pass_per_perturbation(client):
    """Occlusion over a 20-token span of a 60-token prompt: n_segments + 3 sequences, not × 20."""
    model = client.app.state.holder.model
    tok = model.tokenizer
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    text = " ".join(words * 6)
    prompt_ids = tok(text)["input_ids"]
    while len(prompt_ids) > 60:
        text = text.rsplit(" ", 1)[0]
        prompt_ids = tok(text)["input_ids"]
    span_ids = tok.encode(" " + " ".join(words * 3), add_special_tokens=False)[:20]
    span = tok.decode(span_ids)
    assert tok.encode(span, add_special_tokens=False) == span_ids and 55 <= len(prompt_ids) <= 60
    count = _Sequences(model)
    try:
        est, res = _result(client, text=text, method="occlusion", features="tokens", span=span,
                           faithfulness=False)  # fmt: skip
    finally:
        count.remove()
    assert len(res["target_labels"]) == 20
    n = len(res["segments"])
    assert n == len(prompt_ids)  # ~60 forwards for the whole 20 x 60 matrix
    assert res["forwards"] == n + 3 and est["forwards"] == n + 3
    # what really ran up to the span's end: the n + 3 counted forwards but the target-finding one ...
    assert count.reaching(len(prompt_ids) + 20) == n + 2
    # ... and the rest, shorter: 4 forwards of the prompt alone (finding the target, in the route and in
    # attribute; timing this length) and, for each later batch of 16 perturbations (Captum's
    # perturbations_per_eval), the text's prefix up to the batch's first change, which its rows continue
    assert count.n - count.reaching(len(prompt_ids) + 20) <= 4 + -(-n // 16) - 1
    assert count.n < 2 * n  # nowhere near 20 passes per segment


def test_a_gradient_span_estimate_counts_a_backward_per_row(client):
    est, res = _result(client, text=TEXT + " too", method="gradient_x_input", features="words", span=SPAN,
                       faithfulness=False)  # fmt: skip
    rows = len(res["target_labels"])
    # one forward for all rows (the target's, F(x), F(x'), then the method's one) ...
    assert rows > 1 and est["forwards"] == 1 + 2 + 1 and res["forwards"] == est["forwards"]
    # ... and a backward per row, which the time counts (as two forwards each)
    assert attribution_forwards("gradient", "gradient_x_input", 3, None, False, rows, span=True) == (4, rows)
    ig = attribution_forwards("gradient", "integrated_gradients", 3, 8, False, rows, span=True)
    assert ig == (1 + 2 + 8, 8 * rows)


def test_user_spans_are_the_library_and_leave_other_tokens_alone(client):
    model = client.app.state.holder.model
    spans = [[4, 7], [8, 14], [19, 22]]  # "cat", "sat on", "mat"
    _, res = _result(client, method="shapley", features="spans", spans=spans, faithfulness=False)
    direct = lmpeek.attribute(model, TEXT, method="shapley", features=[tuple(s) for s in spans])
    np.testing.assert_allclose(res["scores"], direct.scores, rtol=1e-6, atol=1e-6)
    labels = [s["label"].strip() for s in res["segments"]]
    assert res["features"] == "spans" and labels == ["cat", "sat on", "mat"]
    assert [s["tokens"] for s in res["segments"]] == [list(r) for r in direct.segments.ranges]
    # exact Shapley over the three spans: every other token stayed as it was, so F(x') keeps them
    tok = model.tokenizer
    ids = list(tok(TEXT)["input_ids"])
    for a, b in direct.segments.ranges:
        ids[a:b] = [tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id] * (b - a)
    top = res["target_labels"][0]
    with torch.no_grad():
        logits = model.hf(torch.as_tensor(ids)[None]).logits[0, -1].double()
    tid = tok.encode(top, add_special_tokens=False)[0]
    np.testing.assert_allclose(res["f_baseline"][0], torch.log_softmax(logits, -1)[tid].item(), atol=1e-4)


def test_the_span_parameters_are_in_the_cache_key(client):
    _, a = _result(client, method="occlusion", features="words", span=SPAN, faithfulness=False)
    _, b = _result(client, method="occlusion", features="words", span=SPAN, score="logit", faithfulness=False)
    _, c = _result(client, method="occlusion", features="words", generate=3, faithfulness=False)
    assert not b["cached"] and not c["cached"] and a["scores"] != b["scores"] and len(c["scores"]) == 3


@pytest.mark.parametrize(
    "body",
    [
        {"span": SPAN, "generate": 4},
        {"generate": 0},
        {"generate": 65},
        {"span": ""},
        {"span": SPAN, "target": " dog"},
        {"generate": 3, "contrast": 5},
        {"score": "nats"},
        {"features": "spans"},
        {"features": "words", "spans": [[0, 3]]},
        {"features": "spans", "spans": [[5, 2]]},
        {"features": "spans", "spans": [[0, 6], [4, 9]]},
        {"features": "spans", "spans": [[0, 999]]},
        {"features": "spans", "spans": []},
        {"features": "spans", "spans": [[0, 1, 2]]},
    ],
)
def test_bad_span_input_is_refused_before_streaming(client, body):
    r = client.post("/api/why/attribute", json={"text": TEXT, "method": "occlusion", **body})
    assert 400 <= r.status_code < 500 and r.json()["detail"], (body, r.status_code, r.text)
